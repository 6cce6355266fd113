// Metronome's dashboard: plain JavaScript, no framework, no build step.
// Everything comes from the public API: POST /live/token (sign-in), POST /query (panels),
// GET /tock (an item's page) and GET /live or /live/events (the "now" panel). The panels
// are the list the server embeds in the page (metronome/live/dashboard.py). The Journeys
// view adds GET /reports/transitions, GET /items/related, GET /reports/error-groups and
// the funnel builder's POST /query.
"use strict";

(function () {
  const config = JSON.parse(document.getElementById("config").textContent);
  const $ = (id) => document.getElementById(id);
  const TOKEN = "metronome.dashboard.token";
  const tz = (Intl.DateTimeFormat().resolvedOptions().timeZone) || "UTC";
  const numericDims = new Set(config.panels.filter((p) => p.numeric).map((p) => p.dimension));
  const titles = Object.fromEntries(config.panels.filter((p) => p.dimension).map((p) => [p.dimension, p.title]));

  let auth = null; // {token, site, expires_s, open}
  let live = null; // the open WebSocket or EventSource
  let liveRetry = null;
  let loadSeq = 0;
  const state = { range: "30d", from: "", to: "", compare: false, filters: [], item: null, view: "", page: "", steps: [], within: "visit" };
  const visitChips = new Set(config.visit_chips);

  // -- the URL holds the view, so a view can be shared ------------------------------
  function readURL() {
    const q = new URLSearchParams(location.search);
    state.range = q.get("range") || "30d";
    state.from = q.get("from") || "";
    state.to = q.get("to") || "";
    state.compare = q.get("compare") === "1";
    state.item = q.get("item");
    state.view = q.get("view") === "journeys" ? "journeys" : "";
    state.page = q.get("page") || "";
    state.within = q.get("within") || "visit";
    state.steps = q.getAll("step").filter((s) => /^[en]:/.test(s)).map((s) => ({ next: s[0] === "n", page: s.slice(2) }));
    state.filters = q.getAll("f").map((f) => {
      const at = f.indexOf(":");
      return at > 0 ? [f.slice(0, at), f.slice(at + 1)] : null;
    }).filter(Boolean);
  }

  function viewURL(overrides) {
    const s = Object.assign({}, state, overrides || {});
    const q = new URLSearchParams();
    const site = new URLSearchParams(location.search).get("site");
    if (site) q.set("site", site);
    if (s.range !== "30d") q.set("range", s.range);
    if (s.range === "custom") { q.set("from", s.from); q.set("to", s.to); }
    if (s.compare) q.set("compare", "1");
    for (const [dim, value] of s.filters) q.append("f", dim + ":" + value);
    if (s.item) q.set("item", s.item);
    if (s.view) q.set("view", s.view);
    if (s.page) q.set("page", s.page);
    for (const step of s.steps) q.append("step", (step.next ? "n:" : "e:") + step.page);
    if (s.within !== "visit") q.set("within", s.within);
    const text = q.toString();
    return location.pathname + (text ? "?" + text : "");
  }

  function go(overrides) {
    Object.assign(state, overrides);
    history.pushState(null, "", viewURL());
    render();
  }

  // -- sign-in: a short-lived token made from a key (never the key itself) -----------
  function saved() {
    try {
      const a = JSON.parse(sessionStorage.getItem(TOKEN) || "null");
      return a && a.expires_s * 1000 > Date.now() + 30000 ? a : null;
    } catch (e) { return null; }
  }

  async function mint(key, site) {
    const headers = key ? { Authorization: "Bearer " + key } : {};
    const url = "/live/token" + (site ? "?site=" + encodeURIComponent(site) : "");
    const resp = await fetch(url, { method: "POST", headers: headers });
    const body = await resp.json().catch(() => ({}));
    if (!resp.ok) { const err = new Error(body.message || resp.statusText); err.body = body; err.status = resp.status; throw err; }
    return body;
  }

  function signedIn(minted, open) {
    auth = Object.assign({ open: open }, minted);
    sessionStorage.setItem(TOKEN, JSON.stringify(auth));
    $("sign-in").hidden = true;
    $("board").hidden = false;
    $("sign-out").hidden = open;
    $("site-name").textContent = auth.site === "default" ? "" : auth.site;
    const left = auth.expires_s * 1000 - Date.now() - 60000;
    setTimeout(() => signOut("Your sign-in expired; sign in again."), Math.max(left, 1000));
    render();
    connectLive();
  }

  function signOut(message) {
    sessionStorage.removeItem(TOKEN);
    auth = null;
    stopLive();
    $("board").hidden = true;
    $("sign-out").hidden = true;
    $("sign-in").hidden = false;
    $("sign-in-error").textContent = message || "";
    $("key").focus();
  }

  async function start() {
    readURL();
    drawBuilder();
    const kept = saved();
    if (kept) { signedIn(kept, kept.open); return; }
    try {
      signedIn(await mint(null, null), true); // no site yet: nothing needs a key
    } catch (e) {
      signOut("");
    }
  }

  $("sign-in-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const key = $("key").value.trim();
    const site = $("site").value.trim() || new URLSearchParams(location.search).get("site");
    try {
      const minted = await mint(key, site);
      $("key").value = "";
      signedIn(minted, false);
    } catch (e) {
      if (e.body && e.body.details && e.body.details.parameter === "site") {
        const list = $("site-list");
        list.replaceChildren(
          ...(e.body.details.sites || []).map((id) => Object.assign(document.createElement("option"), { value: id })),
        );
        $("site-field").hidden = false;
        $("site").focus();
      }
      $("sign-in-error").textContent = e.message;
    }
  });
  $("sign-out").addEventListener("click", () => signOut("Signed out."));

  // -- asking the API -------------------------------------------------------------------
  async function api(path, body) {
    const init = { headers: { Authorization: "Bearer " + auth.token } };
    if (body !== undefined) {
      init.method = "POST";
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const resp = await fetch(path, init);
    const data = await resp.json().catch(() => ({}));
    if (resp.status === 401) { signOut("Your sign-in is no longer valid; sign in again."); throw new Error(data.message); }
    if (!resp.ok) throw new Error(data.message || resp.statusText);
    return data;
  }

  function rangeSpec() {
    if (state.range === "custom" && state.from) {
      return state.to ? { from: state.from, to: state.to } : { from: state.from };
    }
    return state.range === "custom" ? "30d" : state.range;
  }

  function interval() {
    if (state.range === "today") return "hour";
    if (state.range === "year") return "month";
    if (state.range === "custom" && state.from && state.to) {
      const days = (Date.parse(state.to) - Date.parse(state.from)) / 86400000;
      if (days <= 2) return "hour";
      if (days > 180) return "month";
    }
    return "day";
  }

  function chipFilters(visits) { // visits: only the chips a visit summary can answer
    return state.filters.filter(([dim]) => !visits || visitChips.has(dim))
      .map(([dim, value]) => ["is", dim, [numericDims.has(dim) ? Number(value) : value]]);
  }

  function rangeParams(extra) { // the range and time zone as a report's URL parameters
    const p = new URLSearchParams(extra || {});
    const range = rangeSpec();
    if (typeof range === "string") p.set("range", range);
    else { p.set("from", range.from); if (range.to) p.set("to", range.to); }
    p.set("tz", tz);
    return p.toString();
  }

  function panelQuery(panel, visits) {
    const q = JSON.parse(JSON.stringify(panel.query));
    q.range = rangeSpec();
    q.tz = tz;
    if (panel.kind === "insights") return q; // no referrers or countries on insights: no chips
    if (state.compare) q.compare = "previous_period";
    q.filters = (q.filters || []).concat(chipFilters(visits));
    if (panel.kind === "chart") { q.dimensions = ["time:" + interval()]; q.limit = 1000; }
    return q;
  }

  // -- drawing --------------------------------------------------------------------------
  const fmt = new Intl.NumberFormat();
  const pct = new Intl.NumberFormat(undefined, { style: "percent", maximumFractionDigits: 0 });
  const dec = new Intl.NumberFormat(undefined, { maximumFractionDigits: 1 });
  function duration(ms) {
    const s = Math.round(ms / 1000);
    if (s < 60) return s + "s";
    const m = Math.floor(s / 60);
    return m < 60 ? m + "m " + (s % 60) + "s" : Math.floor(m / 60) + "h " + (m % 60) + "m";
  }
  function show(format, value) { // a panel's "formats": number (default), percent, duration (ms), decimal
    if (value == null) return "–";
    if (format === "percent") return pct.format(value);
    if (format === "duration") return duration(value);
    if (format === "decimal") return dec.format(value);
    return fmt.format(value);
  }
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "text") node.textContent = v;
      else if (k.startsWith("data-") || k.startsWith("aria-") || k === "role" || k === "scope" || k === "type" || k === "href" || k === "for" || k === "tabindex" || k === "list") node.setAttribute(k, v);
      else node[k] = v;
    }
    for (const child of children) if (child != null) node.append(child);
    return node;
  }

  function change(now, before, format) {
    if (before == null) return null;
    const diff = before && now != null ? Math.round(((now - before) / before) * 100) : null;
    const text = "previous " + show(format, before) + (diff == null ? "" : " (" + (diff >= 0 ? "+" : "") + diff + "%)");
    return el("span", { className: "previous", text: text });
  }

  function panelBox(panel, csvRows) {
    const box = el("section", { className: "panel panel-" + panel.kind, id: "panel-" + panel.id, "aria-labelledby": "title-" + panel.id });
    const head = el("header", {}, el("h2", { id: "title-" + panel.id, text: panel.title }));
    if (csvRows) {
      const button = el("button", { type: "button", className: "csv", text: "CSV", "aria-label": "Download " + panel.title + " as CSV" });
      button.addEventListener("click", () => download(panel.id + ".csv", csvRows()));
      head.append(button);
    }
    box.append(head);
    return box;
  }

  function download(name, rows) {
    const text = rows.map((r) => r.map((c) => {
      const s = String(c == null ? "" : c);
      return /[",\n]/.test(s) ? '"' + s.replace(/"/g, '""') + '"' : s;
    }).join(",")).join("\n") + "\n";
    const link = el("a", { href: URL.createObjectURL(new Blob([text], { type: "text/csv" })), download: name });
    document.body.append(link);
    link.click();
    link.remove();
  }

  function drawTotals(panel, answer) {
    const row = answer.results[0] || { metrics: panel.labels.map(() => 0) };
    const box = panelBox(panel, null);
    const figures = el("div", { className: "figures" });
    const formats = panel.formats || [];
    panel.labels.forEach((label, i) => {
      figures.append(el("div", { className: "figure" },
        el("span", { className: "label", text: label }),
        el("span", { className: "value", id: "total-" + (panel.keys ? panel.keys[i] : label.toLowerCase()), "data-value": String(row.metrics[i]), text: show(formats[i], row.metrics[i]) }),
        row.previous ? change(row.metrics[i], row.previous[i], formats[i]) : null));
    });
    box.append(figures);
    return box;
  }

  function bucketLabel(text) {
    const iv = interval();
    if (iv === "hour") return text.slice(11, 16);
    if (iv === "month") return text.slice(0, 7);
    return text.slice(0, 10);
  }

  function svgChart(labels, series, caption) {
    const NS = "http://www.w3.org/2000/svg";
    const W = 600, H = 200, P = 28;
    const svg = document.createElementNS(NS, "svg");
    svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
    svg.setAttribute("role", "img");
    svg.setAttribute("aria-label", caption);
    const max = Math.max(1, ...series.flatMap((s) => s.values));
    const x = (i) => P + (labels.length <= 1 ? 0 : (i * (W - 2 * P)) / (labels.length - 1));
    const y = (v) => H - P - (v / max) * (H - 2 * P);
    const axis = document.createElementNS(NS, "path");
    axis.setAttribute("d", `M${P},${P} V${H - P} H${W - P}`);
    axis.setAttribute("class", "axis");
    svg.append(axis);
    for (const [text, tx, ty, anchor] of [[fmt.format(max), P - 4, P + 4, "end"], ["0", P - 4, H - P, "end"],
      [labels[0] || "", P, H - 8, "start"], [labels[labels.length - 1] || "", W - P, H - 8, "end"]]) {
      const t = document.createElementNS(NS, "text");
      t.setAttribute("x", tx); t.setAttribute("y", ty); t.setAttribute("text-anchor", anchor);
      t.textContent = text;
      svg.append(t);
    }
    series.forEach((s) => {
      const line = document.createElementNS(NS, "polyline");
      line.setAttribute("points", s.values.map((v, i) => `${x(i)},${y(v)}`).join(" "));
      line.setAttribute("class", "series " + s.className);
      svg.append(line);
    });
    return svg;
  }

  function chartFigure(panelId, caption, labels, series) {
    const figure = el("figure", {});
    figure.append(svgChart(labels, series, caption));
    const legend = el("figcaption", { className: "legend" });
    series.forEach((s) => legend.append(el("span", { className: "key " + s.className, text: s.name })));
    figure.append(legend);
    const table = el("table", { className: "data", id: "data-" + panelId },
      el("thead", {}, el("tr", {}, el("th", { scope: "col", text: "Time" }),
        ...series.map((s) => el("th", { scope: "col", text: s.name })))));
    const body = el("tbody");
    labels.forEach((label, i) => body.append(el("tr", {}, el("th", { scope: "row", text: label }),
      ...series.map((s) => el("td", { text: fmt.format(s.values[i]), "data-value": String(s.values[i]) })))));
    table.append(body);
    figure.append(el("details", {}, el("summary", { text: "Show as a table" }), table));
    return figure;
  }

  function drawChart(panel, answer) {
    const rows = answer.results;
    const labels = rows.map((r) => bucketLabel(String(r.dimensions[0])));
    const series = panel.labels.map((name, i) => ({ name: name, className: "s" + i, values: rows.map((r) => r.metrics[i]) }));
    if (state.compare) {
      panel.labels.forEach((name, i) => series.push({ name: name + " (previous)", className: "s" + i + " previous", values: rows.map((r) => (r.previous ? r.previous[i] : 0)) }));
    }
    const csv = () => [["time", ...series.map((s) => s.name)], ...rows.map((r, j) => [r.dimensions[0], ...series.map((s) => s.values[j])])];
    const box = panelBox(panel, csv);
    box.append(chartFigure(panel.id, panel.title + " by " + interval(), labels, series));
    return box;
  }

  function drawTable(panel, answer) {
    const rows = answer.results;
    const csv = () => [[panel.dimension, ...panel.labels], ...rows.map((r) => [r.dimensions[0], ...r.metrics])];
    const box = panelBox(panel, csv);
    if (!rows.length) { box.append(el("p", { className: "empty", text: "Nothing in this range." })); return box; }
    const table = el("table", {},
      el("thead", {}, el("tr", {}, el("th", { scope: "col", text: titles[panel.dimension] === panel.title ? panel.dimension : panel.dimension }),
        ...panel.labels.map((l) => el("th", { scope: "col", text: l })))));
    const body = el("tbody");
    const top = Math.max(1, ...rows.map((r) => r.metrics[0]));
    for (const r of rows) {
      const value = r.dimensions[0];
      const shown = value == null ? "(none)" : String(value);
      const picks = panel.picks === "page" && value != null;
      const button = el("button", { type: "button", className: "value", text: shown, title: picks ? "Show where visits to " + shown + " came from and went" : "Filter everything by " + panel.dimension + " " + shown, "data-dimension": panel.dimension, "data-value": shown });
      button.addEventListener("click", () => (picks ? pickPage(shown) : addFilter(panel.dimension, shown)));
      const cell = el("th", { scope: "row" }, button);
      if (panel.opens === "item" && value != null) {
        const link = el("a", { href: viewURL({ item: shown, filters: [] }), className: "open", text: "report", "aria-label": "Report of item " + shown });
        link.addEventListener("click", (e) => { e.preventDefault(); go({ item: shown }); });
        cell.append(" ", link);
      }
      const tr = el("tr", {}, cell);
      tr.style.setProperty("--share", `${(r.metrics[0] / top) * 100}%`); // CSSOM: allowed by the CSP
      const formats = panel.formats || [];
      r.metrics.forEach((m, i) => tr.append(el("td", { "data-value": String(m) }, show(formats[i], m), r.previous ? change(m, r.previous[i], formats[i]) : null)));
      body.append(tr);
    }
    table.append(body);
    box.append(table);
    return box;
  }

  function drawInsights(panel, answer) {
    const rows = answer.results;
    const csv = () => [["raised_at", "kpi", "kind", "state", "message", "observed", "low", "high"],
      ...rows.map((r) => [new Date(r.metrics[0]).toISOString(), ...r.dimensions.slice(0, 3), r.dimensions[3], ...r.metrics.slice(1)])];
    const box = panelBox(panel, csv);
    if (!rows.length) { box.append(el("p", { className: "empty", text: "No insights in this range." })); return box; }
    const list = el("ol", { className: "insights" });
    for (const r of rows) {
      const [kpi, kind, status, message] = r.dimensions;
      const [raisedAt, observed, low, high] = r.metrics;
      const when = new Date(raisedAt);
      const facts = [];
      if (observed != null) facts.push("observed " + fmt.format(observed));
      if (low != null && high != null) facts.push("expected " + fmt.format(low) + " to " + fmt.format(high));
      list.append(el("li", { className: "insight " + kind + " " + status, "data-kind": kind, "data-state": status, "data-observed": String(observed) },
        el("p", { className: "what" },
          el("strong", { text: kind + " " + status }), " · ", el("span", { className: "kpi", text: kpi }), " · ",
          el("time", { dateTime: when.toISOString(), text: when.toLocaleString() })),
        el("p", { className: "message", text: message }),
        facts.length ? el("p", { className: "facts", text: facts.join(", ") }) : null));
    }
    box.append(list);
    return box;
  }

  function addFilter(dim, value) {
    if (state.filters.some(([d, v]) => d === dim && v === value)) return;
    go({ filters: state.filters.concat([[dim, value]]) });
  }

  function drawChips() {
    const chips = $("chips");
    chips.replaceChildren();
    state.filters.forEach(([dim, value], index) => {
      const button = el("button", { type: "button", className: "chip", "aria-label": "Remove filter " + dim + " is " + value, "data-dimension": dim, "data-value": value },
        el("span", { text: dim + ": " + value }), el("span", { "aria-hidden": "true", text: " ×" }));
      button.addEventListener("click", () => go({ filters: state.filters.filter((_, i) => i !== index) }));
      chips.append(el("span", { role: "listitem" }, button));
    });
  }

  function syncControls() {
    $("range").value = state.range;
    $("custom-range").hidden = state.range !== "custom";
    $("from").value = state.from;
    $("to").value = state.to;
    $("compare").checked = state.compare;
  }

  async function render() {
    if (!auth) return;
    syncControls();
    drawChips();
    const seq = ++loadSeq;
    const board = $("board");
    board.setAttribute("aria-busy", "true");
    drawViews();
    if (state.item) await renderItem(seq);
    else if (state.view === "journeys") await renderJourneys(seq);
    else await renderPanels(seq);
    if (seq === loadSeq) { board.setAttribute("aria-busy", "false"); board.dataset.loaded = String(seq); }
  }

  function showOnly(id) {
    for (const part of ["panels", "item-view", "journeys"]) $(part).hidden = part !== id;
  }

  async function queryPanel(panel, visits) {
    try {
      const answer = await api("/query", panelQuery(panel, visits));
      if (panel.kind === "totals") return drawTotals(panel, answer);
      if (panel.kind === "chart") return drawChart(panel, answer);
      if (panel.kind === "insights") return drawInsights(panel, answer);
      return drawTable(panel, answer);
    } catch (e) {
      return failedBox(panel, e);
    }
  }

  function failedBox(panel, e) {
    const box = panelBox(panel, null);
    box.append(el("p", { className: "empty", text: "Not available here: " + e.message }));
    return box;
  }

  async function renderPanels(seq) {
    showOnly("panels");
    const boxes = await Promise.all(config.panels.map((panel) => queryPanel(panel, false)));
    if (seq === loadSeq) $("panels").replaceChildren(...boxes);
  }

  // -- journeys: visits, entry and exit pages, a page's transitions and related items, a
  // funnel, error groups --------------------------------------------------------------------
  async function renderJourneys(seq) {
    showOnly("journeys");
    const ignored = [...new Set(state.filters.map(([dim]) => dim).filter((dim) => !visitChips.has(dim)))];
    const note = !state.filters.length ? "" : "Filters apply to the visit figures, entry and exit pages and the funnel, by "
      + [...visitChips].join(", ") + " only" + (ignored.length ? " (not by " + ignored.join(", ") + ")" : "")
      + "; a page's transitions, related items and the errors are unfiltered.";
    const [boxes, parts, funnelled, errors] = await Promise.all([
      Promise.all(config.journeys.map((panel) => queryPanel(panel, true))),
      pageParts(),
      funnelPart(),
      errorsPanel(),
    ]);
    if (seq !== loadSeq) return;
    $("journey-note").textContent = note;
    $("journey-panels").replaceChildren(...boxes);
    $("page-parts").replaceChildren(...parts);
    $("funnel-result").replaceChildren(funnelled);
    $("journey-errors").replaceChildren(errors);
    const pages = new Set([...$("journey-panels").querySelectorAll("button.value")].map((b) => b.dataset.value));
    $("page-list").replaceChildren(...[...pages].sort().map((value) => el("option", { value: value })));
  }

  function pickPage(page) {
    $("page").value = page;
    go({ page: page });
    $("panel-page").scrollIntoView({ block: "nearest" });
  }

  function pageButton(page) {
    if (page === "entry" || page === "exit") return el("span", { text: "(" + page + ")" });
    const button = el("button", { type: "button", className: "value", text: page, title: "Show " + page + " instead", "data-value": page });
    button.addEventListener("click", () => pickPage(page));
    return button;
  }

  function sharesBox(id, title, head, side) {
    const csv = () => [["page", "count", "share"], ...side.rows.map((r) => [r.page, r.count, r.share])];
    const box = panelBox({ id: id, kind: "table", title: title }, csv);
    if (!side.rows.length) { box.append(el("p", { className: "empty", text: "No visits in this range." })); return box; }
    const body = el("tbody");
    for (const r of side.rows) {
      const tr = el("tr", {}, el("th", { scope: "row" }, pageButton(r.page)),
        el("td", { "data-value": String(r.count), text: fmt.format(r.count) }),
        el("td", { "data-value": String(r.share), text: pct.format(r.share) }));
      tr.style.setProperty("--share", `${r.share * 100}%`);
      body.append(tr);
    }
    box.append(el("table", {}, el("thead", {}, el("tr", {}, el("th", { scope: "col", text: head }),
      el("th", { scope: "col", text: "Count" }), el("th", { scope: "col", text: "Share" }))), body));
    return box;
  }

  async function pageParts() {
    if (!state.page) return [el("p", { className: "empty", text: "Pick a page: type it above, or click one in Entry pages or Exit pages." })];
    const page = state.page;
    const transitions = api("/reports/transitions?" + rangeParams({ item: page })).then((answer) => [
      sharesBox("came-from", "Came to " + page + " from", "Previous page or referrer", answer.before),
      sharesBox("went-to", "Went from " + page + " to", "Next page", answer.after),
    ], (e) => [failedBox({ id: "came-from", kind: "table", title: "Transitions of " + page }, e)]);
    const related = api("/items/related?" + rangeParams({ id: page })).then((answer) => drawRelated(page, answer),
      (e) => failedBox({ id: "related", kind: "table", title: "Related items" }, e));
    const [boxes, box] = await Promise.all([transitions, related]);
    return [...boxes, box];
  }

  function drawRelated(page, answer) {
    const rows = answer.results;
    const csv = () => [["item", "score", "visits_with_both", "item_visits", "other_visits"],
      ...rows.map((r) => [r.item, r.score, r.together, r.item_baskets, r.other_baskets])];
    const box = panelBox({ id: "related", kind: "table", title: "Related to " + page }, csv);
    if (!rows.length) {
      box.append(el("p", { className: "empty", text: "No item shares at least " + answer.meta.min_support + " visits with it in this range." }));
      return box;
    }
    const body = el("tbody");
    const top = Math.max(...rows.map((r) => r.score), 1e-9);
    for (const r of rows) {
      const tr = el("tr", {}, el("th", { scope: "row" }, pageButton(r.item)),
        el("td", { "data-value": String(r.score), text: r.score.toFixed(3) }),
        el("td", { "data-value": String(r.together), text: fmt.format(r.together) }));
      tr.style.setProperty("--share", `${(r.score / top) * 100}%`);
      body.append(tr);
    }
    box.append(el("table", {}, el("thead", {}, el("tr", {}, el("th", { scope: "col", text: "Item" }),
      el("th", { scope: "col", text: "Score" }), el("th", { scope: "col", text: "Visits with both" }))), body));
    return box;
  }

  async function funnelPart() {
    const steps = state.steps.filter((s) => s.page);
    if (steps.length < 2) return el("p", { className: "empty", text: "Name two steps or more, then show the funnel." });
    const body = {
      source: "visits", range: rangeSpec(), tz: tz,
      funnel: { steps: steps.map((s) => (s.next ? { page: s.page, next: true } : { page: s.page })), within: state.within },
    };
    const filters = chipFilters(true);
    if (filters.length) body.filters = filters;
    try {
      return drawFunnel((await api("/query", body)).funnel);
    } catch (e) {
      return el("p", { className: "empty", text: "Not available here: " + e.message });
    }
  }

  function drawFunnel(funnel) {
    const unit = funnel.unit === "visits" ? "Visits" : "Visitors";
    const steps = funnel.steps;
    const first = steps[0].reached;
    const last = steps[steps.length - 1];
    const wrap = el("div", {});
    wrap.append(el("p", { className: "conversion", id: "funnel-conversion", "data-value": String(last.from_start) },
      first ? pct.format(last.from_start) + " of the " + fmt.format(first) + " " + unit.toLowerCase() + " that reached " + steps[0].page + " went on to " + last.page + "."
        : "No " + unit.toLowerCase() + " reached " + steps[0].page + " in this range."));
    const body = el("tbody");
    for (const s of steps) {
      const dropped = s.dropped_to.map((d) => d.page + " " + fmt.format(d.count)).join(", ");
      const tr = el("tr", { "data-page": s.page },
        el("th", { scope: "row", text: s.step + ". " + s.page + (s.next ? " (right after)" : "") }),
        el("td", { "data-value": String(s.reached), text: fmt.format(s.reached) }),
        el("td", { "data-value": String(s.from_previous), text: show("percent", s.from_previous) }),
        el("td", { "data-value": String(s.from_start), text: show("percent", s.from_start) }),
        el("td", { "data-value": String(s.median_ms_from_previous), text: show("duration", s.median_ms_from_previous) }),
        el("td", { "data-value": dropped, text: dropped || "–" }));
      tr.style.setProperty("--share", `${first ? (s.reached / first) * 100 : 0}%`);
      body.append(tr);
    }
    wrap.append(el("div", { className: "scroll" }, el("table", { id: "funnel-table" }, el("thead", {}, el("tr", {},
      ...["Step", unit, "From previous", "From start", "Median time from previous", "Left instead to"].map((h) => el("th", { scope: "col", text: h })))), body)));
    return wrap;
  }

  async function errorsPanel() {
    const panel = { id: "error-groups", kind: "table", title: "Errors" };
    try {
      const answer = await api("/reports/error-groups?" + rangeParams({ limit: "10" }));
      const rows = answer.results;
      const csv = () => [["group", "fingerprint", "errors", "visitors", "first_seen", "last_seen"],
        ...rows.map((r) => [r.group, r.fingerprint, r.errors, r.visitors, r.first_seen, r.last_seen])];
      const box = panelBox(panel, csv);
      if (!rows.length) { box.append(el("p", { className: "empty", text: "No errors in this range." })); return box; }
      const when = (iso) => el("td", { "data-value": String(iso) }, el("time", { dateTime: String(iso), text: new Date(iso).toLocaleString() }));
      const body = el("tbody");
      const top = Math.max(1, ...rows.map((r) => r.errors));
      for (const r of rows) {
        const name = r.group == null ? r.fingerprint : String(r.group);
        const more = el("tr", { className: "details", hidden: true }, el("td", { colSpan: 5 }));
        const button = el("button", { type: "button", className: "value", text: name, "aria-expanded": "false", title: "Pages and browsers affected" });
        button.addEventListener("click", () => toggleGroup(r.fingerprint, button, more));
        const tr = el("tr", { "data-fingerprint": r.fingerprint }, el("th", { scope: "row" }, button),
          el("td", { "data-value": String(r.errors), text: fmt.format(r.errors) }),
          el("td", { "data-value": String(r.visitors), text: fmt.format(r.visitors) }),
          when(r.first_seen), when(r.last_seen));
        tr.style.setProperty("--share", `${(r.errors / top) * 100}%`);
        body.append(tr, more);
      }
      box.append(el("div", { className: "scroll" }, el("table", {}, el("thead", {}, el("tr", {},
        ...["Error", "Errors", "Visitors", "First seen", "Last seen"].map((h) => el("th", { scope: "col", text: h })))), body)));
      return box;
    } catch (e) {
      return failedBox(panel, e);
    }
  }

  async function toggleGroup(fingerprint, button, row) { // an error group's pages and browsers
    const open = button.getAttribute("aria-expanded") !== "true";
    button.setAttribute("aria-expanded", String(open));
    row.hidden = !open;
    if (!open || row.dataset.loaded) return;
    const cell = row.firstChild;
    try {
      const answer = await api("/reports/error-groups?" + rangeParams({ group: fingerprint }));
      const group = answer.results[0] || { pages_affected: [], browsers_affected: [] };
      const list = (rows) => rows.map((r) => (r.name == null ? "(none)" : r.name) + " " + fmt.format(r.errors)).join(", ") || "–";
      cell.replaceChildren(
        el("p", { className: "pages", text: "Pages: " + list(group.pages_affected) }),
        el("p", { className: "browsers", text: "Browsers: " + list(group.browsers_affected) }));
      row.dataset.loaded = "1";
    } catch (e) {
      cell.textContent = "Not available here: " + e.message;
    }
  }

  // the funnel builder: its steps are in the address once shown; the form is drawn from
  // there at start and on back/forward only, so a refresh never erases what is typed
  function drawSteps(steps) {
    const rows = steps.map((step, i) => {
      const n = i + 1;
      const remove = el("button", { type: "button", className: "remove", text: "×", "aria-label": "Remove step " + n, disabled: steps.length <= 2 });
      remove.addEventListener("click", () => { const now = readSteps(); now.splice(i, 1); drawSteps(now); });
      return el("li", {},
        el("label", { for: "step-" + n, text: "Step " + n + " " }),
        el("input", { type: "text", id: "step-" + n, className: "step-page", value: step.page, list: "page-list", autocomplete: "off", spellcheck: false }), " ",
        n > 1 ? el("label", { className: "check" }, el("input", { type: "checkbox", className: "step-next", checked: step.next }), "right after step " + i) : null, " ",
        remove);
    });
    $("funnel-steps").replaceChildren(...rows);
  }

  function readSteps() {
    return [...$("funnel-steps").children].map((li) => {
      const next = li.querySelector(".step-next");
      return { page: li.querySelector(".step-page").value.trim(), next: next ? next.checked : false };
    });
  }

  function drawBuilder() {
    const steps = state.steps.map((step) => Object.assign({}, step));
    while (steps.length < 2) steps.push({ page: "", next: false });
    drawSteps(steps);
    $("within").value = state.within;
    $("page").value = state.page;
  }

  function drawViews() {
    const journeys = !state.item && state.view === "journeys";
    $("view-overview").href = viewURL({ view: "", item: null });
    $("view-journeys").href = viewURL({ view: "journeys", item: null });
    for (const [id, on] of [["view-overview", !journeys], ["view-journeys", journeys]]) {
      if (on) $(id).setAttribute("aria-current", "page"); else $(id).removeAttribute("aria-current");
    }
  }

  function localDate(d) {
    return `${d.getFullYear()}-${String(d.getMonth() + 1).padStart(2, "0")}-${String(d.getDate()).padStart(2, "0")}`;
  }

  function tockParams() {
    const today = new Date();
    const from = new Date(today);
    const p = new URLSearchParams({ id: state.item, tz: tz, interval: interval() });
    if (state.range === "custom" && state.from) { p.set("from", state.from); if (state.to) p.set("to", state.to); return p; }
    if (state.range === "7d") from.setDate(today.getDate() - 6);
    else if (state.range === "30d") from.setDate(today.getDate() - 29);
    else if (state.range === "month") from.setDate(1);
    else if (state.range === "year") from.setMonth(0, 1);
    p.set("from", localDate(from));
    p.set("to", localDate(today));
    return p;
  }

  async function renderItem(seq) {
    showOnly("item-view");
    $("item-title").textContent = "Item " + state.item;
    let boxes;
    try {
      const tock = await api("/tock?" + tockParams().toString());
      const days = Object.keys(tock.views).sort();
      const views = { id: "item-views", kind: "chart", title: "Views" };
      const viewsBox = panelBox(views, () => [["time", "views"], ...days.map((d) => [d, tock.views[d]])]);
      viewsBox.append(chartFigure("item-views", "Views of " + state.item, days.map(bucketLabel), [{ name: "Views", className: "s0", values: days.map((d) => tock.views[d]) }]));
      const part = (id, title, dimension, label, counts) => {
        const entries = Object.entries(counts).sort((a, b) => b[1] - a[1]);
        return drawTable({ id: id, kind: "table", title: title, dimension: dimension, labels: [label] },
          { results: entries.map(([k, v]) => ({ dimensions: [k], metrics: [v] })) });
      };
      boxes = [viewsBox, part("item-downloads", "Downloads by format", "format", "Downloads", tock.downloads),
        part("item-referrers", "Referrers", "referrer", "Views", tock.referers)];
    } catch (e) {
      boxes = [el("p", { className: "empty", text: "Not available: " + e.message })];
    }
    if (seq === loadSeq) $("item-panels").replaceChildren(...boxes);
  }

  // -- controls ---------------------------------------------------------------------------
  $("range").addEventListener("change", () => {
    const range = $("range").value;
    if (range === "custom") {
      $("custom-range").hidden = false;
      const today = new Date();
      const from = new Date(today); from.setDate(today.getDate() - 29);
      go({ range: range, from: state.from || localDate(from), to: state.to || localDate(today) });
    } else {
      go({ range: range });
    }
  });
  for (const id of ["from", "to"]) $(id).addEventListener("change", () => go({ [id]: $(id).value }));
  $("compare").addEventListener("change", () => go({ compare: $("compare").checked }));
  $("back").addEventListener("click", (e) => { e.preventDefault(); go({ item: null }); });
  $("home").addEventListener("click", (e) => { e.preventDefault(); go({ item: null, filters: [], view: "" }); });
  $("view-overview").addEventListener("click", (e) => { e.preventDefault(); go({ item: null, view: "" }); });
  $("view-journeys").addEventListener("click", (e) => { e.preventDefault(); go({ item: null, view: "journeys" }); });
  $("page-form").addEventListener("submit", (e) => { e.preventDefault(); go({ page: $("page").value.trim() }); });
  $("add-step").addEventListener("click", () => {
    const steps = readSteps();
    if (steps.length >= 10) return; // the query model's most steps
    drawSteps(steps.concat([{ page: "", next: false }]));
    $("step-" + (steps.length + 1)).focus();
  });
  $("funnel-form").addEventListener("submit", (e) => {
    e.preventDefault();
    go({ steps: readSteps().filter((s) => s.page), within: $("within").value });
  });
  window.addEventListener("popstate", () => { readURL(); drawBuilder(); render(); });

  // -- now: live subscriptions (WebSocket, else Server-Sent Events) -------------------------
  function setLive(text) { $("live-state").textContent = text; }

  function drawFigures() {
    $("now-figures").replaceChildren(...config.live.map((f) => el("div", { className: "figure" },
      el("span", { className: "label", text: f.title }),
      el("span", { className: "value", id: "now-" + f.id, text: "…" }))));
  }

  function onLive(message, reply) {
    if (message.type === "ping" && reply) reply('{"type":"pong"}');
    else if (message.type === "result") {
      const row = message.data.results[0];
      const node = $("now-" + message.id);
      const value = String(row ? row.metrics[0] : 0);
      if (node) {
        if (node.dataset.value !== undefined && node.dataset.value !== value) refreshSoon();
        node.textContent = fmt.format(Number(value));
        node.dataset.value = value;
      }
    } else if (message.type === "error") setLive("error: " + message.message);
  }

  let refresh = null;
  function refreshSoon() { // new events arrived: the panels follow, at most every 2 s
    if (refresh === null) refresh = setTimeout(() => { refresh = null; render(); }, 2000);
  }

  function stopLive() {
    clearTimeout(liveRetry);
    if (live) { live.onclose = null; live.onerror = null; live.close(); live = null; }
  }

  function connectLive() {
    stopLive();
    drawFigures();
    if (!auth) return;
    if (new URLSearchParams(location.search).get("live") === "events" || !("WebSocket" in window)) { connectEvents(); return; }
    const url = (location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/live?token=" + encodeURIComponent(auth.token);
    const ws = new WebSocket(url);
    let opened = false;
    live = ws;
    ws.onopen = () => {
      opened = true;
      setLive("live");
      for (const f of config.live) ws.send(JSON.stringify({ type: "subscribe", id: f.id, query: Object.assign({ tz: tz }, f.query), frequency: f.frequency }));
    };
    ws.onmessage = (e) => onLive(JSON.parse(e.data), (text) => ws.send(text));
    ws.onclose = (e) => {
      live = null;
      if (!opened) { connectEvents(); return; } // WebSockets blocked on the way: events instead
      if (e.code === 4001) { signOut("Your sign-in expired; sign in again."); return; }
      setLive("reconnecting…");
      liveRetry = setTimeout(connectLive, 3000);
    };
  }

  function connectEvents() {
    const q = new URLSearchParams({ token: auth.token });
    for (const f of config.live) q.append("s", JSON.stringify({ id: f.id, query: Object.assign({ tz: tz }, f.query), frequency: f.frequency }));
    const source = new EventSource("/live/events?" + q.toString());
    live = source;
    source.onopen = () => setLive("live (events)");
    source.onmessage = (e) => onLive(JSON.parse(e.data), null);
    source.onerror = () => setLive("reconnecting…"); // EventSource reconnects by itself
  }

  start();
})();
