/* Metronome browser tracker. <script src="https://METRONOME/metronome.js" data-site="ID" defer>
   Page views (history API too), metronome('event', name, {params}), downloads, outbound links;
   with data-errors, uncaught errors and unhandled rejections (data-errors-max per page, default 10).
   No cookies, no storage. Served by Metronome at GET /metronome.js; see docs/guides/tracker.md. */
(function (w, d, n) {
  var s = d.currentScript;
  if (!s || (w.metronome && w.metronome.v)) return; // loaded twice: count once
  var loc = w.location;
  var attr = function (k) { return s.getAttribute('data-' + k); };
  var end = new URL('tick', s.src);
  if (attr('site')) end.searchParams.set('site', attr('site'));
  end = end.href;
  var exts = (attr('download-extensions') ||
    'csv zip pdf xlsx xls docx doc pptx odt ods kml kmz shp geojson json xml txt gpkg tif gz 7z'
  ).toLowerCase().split(/[\s,.]+/);
  var off = attr('respect-dnt') == 'true' &&
    (/^(1|yes)$/.test(n.doNotTrack || w.doNotTrack || n.msDoNotTrack) || n.globalPrivacyControl);
  var queued = (w.metronome && w.metronome.q) || [];
  var last, ref = d.referrer;

  function send(t) {
    if (off) return;
    var body = JSON.stringify(t);
    try { if (n.sendBeacon(end, body)) return; } catch (e) { /* no beacon: fetch */ }
    if (w.fetch) {
      fetch(end, { method: 'POST', body: body, keepalive: true, mode: 'no-cors',
        credentials: 'omit', headers: { 'Content-Type': 'text/plain' } })['catch'](function () {});
    }
  }

  function page() { return attr('id') || loc.pathname; }

  // One view per path: pushState/replaceState/popstate to the same path count once.
  function view(p, force) {
    if (!force && last == loc.pathname) return;
    last = loc.pathname;
    var t = { id: page(), url: loc.href, referrer: ref };
    for (var k in p) t[k] = p[k];
    ref = loc.href; // the next in-app view came from this one, as with page loads
    send(t);
  }

  function metronome(cmd, name, p) {
    if (cmd == 'event') {
      var t = { id: page(), event: name, url: loc.href };
      for (var k in p) t[k] = p[k];
      send(t);
    } else if (cmd == 'view') {
      view(name, true);
    }
  }

  function click(e) {
    if (e.type == 'auxclick' && e.button != 1) return; // middle click opens; right does not
    var a = e.target.closest && e.target.closest('a[href]');
    if (!a || typeof a.href != 'string') return;
    var u = new URL(a.href);
    if (!/^https?:$/.test(u.protocol)) return;
    var x = (u.pathname.match(/\.(\w+)$/) || [])[1];
    x = x && x.toLowerCase();
    var id = a.getAttribute('data-metronome-id');
    if ((x && exts.indexOf(x) >= 0) || a.hasAttribute('download')) {
      send({ id: id || u.pathname, event: 'download', format: x, url: u.href, referrer: loc.href });
    } else if (u.host != loc.host) {
      send({ id: id || u.href, event: 'outbound', url: u.href, referrer: loc.href });
    }
  }

  // data-errors: each distinct error once, at most data-errors-max per page load
  var seen = {}, errs = 0, maxErrs = +attr('errors-max') || 10;
  function error(x, msg, src, line, col) {
    var ok = x instanceof Error, m = String(ok ? x.message : msg).slice(0, 1000);
    var k = [m, src, line, col].join(' ');
    if (seen[k] || errs >= maxErrs) return;
    seen[k] = 1;
    errs++;
    send({ id: page(), event: 'error', url: loc.href, message: m, source: src && src.slice(0, 2000),
      line: line, column: col, type: ok ? x.name : void 0, stack: ok && x.stack ? x.stack.slice(0, 16000) : void 0 });
  }

  metronome.v = 1;
  w.metronome = metronome;
  if (off) return;
  d.addEventListener('click', click, true);
  d.addEventListener('auxclick', click, true);
  if (attr('errors') != null && attr('errors') != 'false') {
    w.addEventListener('error', function (e) {
      if (e.message) error(e.error, e.message, e.filename, e.lineno, e.colno); // not a failed <img>
    });
    w.addEventListener('unhandledrejection', function (e) { error(e.reason, e.reason, void 0); });
  }
  if (attr('auto') != 'false') {
    var h = w.history;
    ['pushState', 'replaceState'].forEach(function (k) {
      var f = h[k];
      h[k] = function () { var r = f.apply(this, arguments); view(); return r; };
    });
    w.addEventListener('popstate', function () { view(); });
    w.addEventListener('pageshow', function (e) { if (e.persisted) view(0, true); });
    if (d.prerendering) d.addEventListener('prerenderingchange', function () { view(); });
    else view();
  }
  for (var i = 0; i < queued.length; i++) metronome.apply(0, queued[i]);
})(window, document, navigator);
