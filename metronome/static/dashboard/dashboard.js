// Metronome's dashboard: plain JavaScript, no framework, no build step.
// Everything comes from the public API: POST /live/token (sign-in), POST /query (panels),
// GET /tock (an item's page) and GET /live or /live/events (the "now" panel). The panels
// are the list the server embeds in the page (metronome/live/dashboard.py).
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
  const state = { range: "30d", from: "", to: "", compare: false, filters: [], item: null };

  // -- the URL holds the view, so a view can be shared ------------------------------
  function readURL() {
    const q = new URLSearchParams(location.search);
    state.range = q.get("range") || "30d";
    state.from = q.get("from") || "";
    state.to = q.get("to") || "";
    state.compare = q.get("compare") === "1";
    state.item = q.get("item");
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

  function chipFilters() {
    return state.filters.map(([dim, value]) => ["is", dim, [numericDims.has(dim) ? Number(value) : value]]);
  }

  function panelQuery(panel) {
    const q = JSON.parse(JSON.stringify(panel.query));
    q.range = rangeSpec();
    q.tz = tz;
    if (panel.kind === "insights") return q; // no referrers or countries on insights: no chips
    if (state.compare) q.compare = "previous_period";
    q.filters = (q.filters || []).concat(chipFilters());
    if (panel.kind === "chart") { q.dimensions = ["time:" + interval()]; q.limit = 1000; }
    return q;
  }

  // -- drawing --------------------------------------------------------------------------
  const fmt = new Intl.NumberFormat();
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "text") node.textContent = v;
      else if (k.startsWith("data-") || k.startsWith("aria-") || k === "role" || k === "scope" || k === "type" || k === "href" || k === "for" || k === "tabindex") node.setAttribute(k, v);
      else node[k] = v;
    }
    for (const child of children) if (child != null) node.append(child);
    return node;
  }

  function change(now, before) {
    if (before == null) return null;
    const diff = before ? Math.round(((now - before) / before) * 100) : null;
    const text = "previous " + fmt.format(before) + (diff == null ? "" : " (" + (diff >= 0 ? "+" : "") + diff + "%)");
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
    panel.labels.forEach((label, i) => {
      figures.append(el("div", { className: "figure" },
        el("span", { className: "label", text: label }),
        el("span", { className: "value", id: "total-" + label.toLowerCase(), "data-value": String(row.metrics[i]), text: fmt.format(row.metrics[i]) }),
        row.previous ? change(row.metrics[i], row.previous[i]) : null));
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
      const button = el("button", { type: "button", className: "value", text: shown, title: "Filter everything by " + panel.dimension + " " + shown, "data-dimension": panel.dimension, "data-value": shown });
      button.addEventListener("click", () => addFilter(panel.dimension, shown));
      const cell = el("th", { scope: "row" }, button);
      if (panel.opens === "item" && value != null) {
        const link = el("a", { href: viewURL({ item: shown, filters: [] }), className: "open", text: "report", "aria-label": "Report of item " + shown });
        link.addEventListener("click", (e) => { e.preventDefault(); go({ item: shown }); });
        cell.append(" ", link);
      }
      const tr = el("tr", {}, cell);
      tr.style.setProperty("--share", `${(r.metrics[0] / top) * 100}%`); // CSSOM: allowed by the CSP
      r.metrics.forEach((m, i) => tr.append(el("td", { "data-value": String(m) }, fmt.format(m), r.previous ? change(m, r.previous[i]) : null)));
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
    if (state.item) await renderItem(seq); else await renderPanels(seq);
    if (seq === loadSeq) { board.setAttribute("aria-busy", "false"); board.dataset.loaded = String(seq); }
  }

  async function renderPanels(seq) {
    $("item-view").hidden = true;
    $("panels").hidden = false;
    const boxes = await Promise.all(config.panels.map(async (panel) => {
      try {
        const answer = await api("/query", panelQuery(panel));
        if (panel.kind === "totals") return drawTotals(panel, answer);
        if (panel.kind === "chart") return drawChart(panel, answer);
        if (panel.kind === "insights") return drawInsights(panel, answer);
        return drawTable(panel, answer);
      } catch (e) {
        const box = panelBox(panel, null);
        box.append(el("p", { className: "empty", text: "Not available here: " + e.message }));
        return box;
      }
    }));
    if (seq === loadSeq) $("panels").replaceChildren(...boxes);
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
    $("panels").hidden = true;
    $("item-view").hidden = false;
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
  $("home").addEventListener("click", (e) => { e.preventDefault(); go({ item: null, filters: [] }); });
  window.addEventListener("popstate", () => { readURL(); render(); });

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
