// holdfast dashboard: the aggregator's snapshot every second over server-sent events
// (/api/dashboard/events), drawn as tiles, tables and small canvas charts of the last 5 minutes.
// Plain JavaScript, no build step, no library.
(() => {
  'use strict';

  const TOKEN_KEY = 'holdfast.dashboard.token';
  const WINDOW_MS = 5 * 60 * 1000; // what the charts show at most
  const MIN_SPAN_MS = 60 * 1000;
  const TICKS_MS = [10000, 15000, 30000, 60000];
  const RETRY_MS = 2000;

  const $ = (id) => document.getElementById(id);
  const fmt = new Intl.NumberFormat();
  const fmt1 = new Intl.NumberFormat(undefined, { maximumFractionDigits: 1 });

  // The token: from ?token= (then taken out of the address bar), or kept for this tab.
  const q = new URLSearchParams(location.search);
  let token = q.get('token') || sessionStorage.getItem(TOKEN_KEY) || '';
  if (q.has('token')) {
    sessionStorage.setItem(TOKEN_KEY, token);
    q.delete('token');
    history.replaceState(null, '', location.pathname + (q.toString() ? '?' + q : ''));
  }
  const withToken = (path) => (token ? path + '?token=' + encodeURIComponent(token) : path);

  // --- charts ---------------------------------------------------------------------------------
  const points = [];

  function css(name) { return getComputedStyle(document.documentElement).getPropertyValue(name).trim(); }

  // A round step for about `count` ticks up to `max`.
  function niceStep(max, count) {
    const raw = max / count;
    const p = 10 ** Math.floor(Math.log10(raw));
    const m = raw / p;
    return (m <= 1 ? 1 : m <= 2 ? 2 : m <= 5 ? 5 : 10) * p;
  }
  function short(v) {
    const a = Math.abs(v);
    if (a >= 1e9) return fmt1.format(v / 1e9) + 'G';
    if (a >= 1e6) return fmt1.format(v / 1e6) + 'M';
    if (a >= 1e3) return fmt1.format(v / 1e3) + 'k';
    return fmt1.format(v);
  }

  // Draws `series` ([{key, color}]) of `points` over the last WINDOW_MS on `canvas`.
  function draw(canvas, series) {
    const dpr = window.devicePixelRatio || 1;
    const w = canvas.clientWidth;
    const h = canvas.clientHeight;
    if (!w || !h) return;
    if (canvas.width !== Math.round(w * dpr) || canvas.height !== Math.round(h * dpr)) {
      canvas.width = Math.round(w * dpr);
      canvas.height = Math.round(h * dpr);
    }
    const g = canvas.getContext('2d');
    g.setTransform(dpr, 0, 0, dpr, 0, 0);
    g.clearRect(0, 0, w, h);
    const now = points.length ? points[points.length - 1].t : Date.now();
    // The last 5 minutes, or since the first point (at least a minute): a dashboard that just
    // opened shows what it has across the width.
    const first = points.length ? points[0].t : now;
    const span = Math.min(WINDOW_MS, Math.max(MIN_SPAN_MS, now - first));
    const t0 = now - span;
    let max = 0;
    for (const p of points) {
      if (p.t < t0) continue;
      for (const s of series) if (p[s.key] != null && p[s.key] > max) max = p[s.key];
    }
    const step = niceStep(max > 0 ? max : 1, 3);
    const top = Math.max(step, Math.ceil((max || 1) / step) * step);
    const left = 44;
    const right = w - 6;
    const y0 = h - 18;
    const y1 = 6;
    const x = (t) => left + ((t - t0) / span) * (right - left);
    const y = (v) => y0 - (v / top) * (y0 - y1);
    g.font = '12px system-ui, sans-serif';
    g.fillStyle = css('--muted');
    g.strokeStyle = css('--line');
    g.lineWidth = 1;
    g.textAlign = 'right';
    g.textBaseline = 'middle';
    for (let v = 0; v <= top + step / 2; v += step) {
      g.beginPath();
      g.moveTo(left, Math.round(y(v)) + 0.5);
      g.lineTo(right, Math.round(y(v)) + 0.5);
      g.stroke();
      g.fillText(short(v), left - 6, y(v));
    }
    g.textAlign = 'center';
    g.textBaseline = 'alphabetic';
    const tick = TICKS_MS.find((t) => span / t <= 6) || 60000;
    for (let ago = 0; ago <= span; ago += tick) {
      const label = ago === 0 ? 'now' : ago < 60000 ? '-' + ago / 1000 + ' s' : '-' + ago / 60000 + ' min';
      g.textAlign = ago === 0 ? 'right' : 'center';
      g.fillText(label, x(now - ago), h - 3);
    }
    g.lineWidth = 2;
    g.lineJoin = 'round';
    for (const s of series) {
      g.strokeStyle = css(s.color);
      g.beginPath();
      let pen = false;
      for (const p of points) {
        const v = p[s.key];
        if (p.t < t0 || v == null) { pen = false; continue; }
        if (pen) g.lineTo(x(p.t), y(v)); else g.moveTo(x(p.t), y(v));
        pen = true;
      }
      g.stroke();
    }
  }
  const CHARTS = [
    ['c-sessions', [{ key: 'direct', color: '--c1' }, { key: 'trunk', color: '--c2' }]],
    ['c-rates', [{ key: 'phone_bps', color: '--c1' }, { key: 'reports_ps', color: '--c2' }, { key: 'persisted_bps', color: '--c3' }]],
    ['c-lag', [{ key: 'lag_ms', color: '--c3' }]],
    ['c-refused', [{ key: 'refused_ps', color: '--c4' }]],
  ];
  let drawPending = false;
  function drawAll() {
    if (drawPending) return;
    drawPending = true;
    requestAnimationFrame(() => {
      drawPending = false;
      for (const [id, series] of CHARTS) draw($(id), series);
    });
  }
  window.addEventListener('resize', drawAll);

  function addPoint(p) {
    if (!p || typeof p.t !== 'number') return;
    if (points.length && p.t <= points[points.length - 1].t) return;
    points.push(p);
    const t0 = p.t - WINDOW_MS - 5000;
    while (points.length && points[0].t < t0) points.shift();
  }

  // --- tiles and tables -----------------------------------------------------------------------
  function setValue(id, n, text) {
    const el = $(id);
    el.dataset.value = n == null ? '' : String(n);
    el.textContent = text != null ? text : n == null ? '–' : fmt.format(n);
  }
  function rate(v) { return v == null ? '–' : short(v); }
  function ago(s) {
    if (s == null) return '–';
    if (s < 120) return Math.round(s) + ' s';
    if (s < 7200) return Math.round(s / 60) + ' min';
    return fmt1.format(s / 3600) + ' h';
  }
  function cell(row, text, cls) {
    const td = document.createElement('td');
    td.textContent = text;
    if (cls) td.className = cls;
    row.appendChild(td);
    return td;
  }
  function reasons(tbody, r) {
    tbody.replaceChildren();
    const entries = Object.entries((r && r.by_reason) || {});
    if (!entries.length) { cell(tbody.insertRow(), 'none', 'hint'); return; }
    for (const [why, n] of entries) {
      const row = tbody.insertRow();
      cell(row, why);
      cell(row, fmt.format(n), 'num');
    }
  }
  function gateways(snap) {
    const tbody = $('gateways');
    tbody.replaceChildren();
    const list = snap.gateways || [];
    $('gw-count').textContent = snap.gateways_total > list.length
      ? '(the busiest ' + list.length + ' of ' + snap.gateways_total + ')'
      : '(' + list.length + ')';
    if (!list.length) { const c = cell(tbody.insertRow(), 'no gateway has connected to this aggregator', 'hint'); c.colSpan = 7; return; }
    for (const g of list) {
      const row = tbody.insertRow();
      row.dataset.gateway = g.name;
      cell(row, g.name, 'mono');
      cell(row, g.up ? 'up' : 'down ' + ago(g.down_s), g.up ? '' : 'down');
      cell(row, fmt.format(g.sessions), 'num');
      cell(row, fmt.format(g.opened), 'num');
      cell(row, fmt.format(g.closed), 'num');
      cell(row, fmt.format(g.count_reports), 'num');
      cell(row, g.links.map((l) => '#' + l.index + ' ' + l.peer + ' (' + ago(l.up_s) + ')').join(', ') || '–', 'mono');
    }
  }
  function database(snap) {
    const tbody = $('db');
    tbody.replaceChildren();
    const t = snap.totals;
    const f = snap.flush;
    const rows = [
      ['store', snap.store],
      ['bytes persisted', fmt.format(t.persisted_bytes)],
      ['sessions persisted', fmt.format(t.persisted_sessions)],
      ['flushes', fmt.format(t.flushes) + ' (' + fmt.format(t.flush_rows) + ' rows)'],
      ['last flush', fmt.format(f.last_rows) + ' rows in ' + fmt1.format(f.last_duration_ms) + ' ms, ' + ago(f.last_ago_s) + ' ago'],
      ['waiting in the ledger', fmt.format(f.ledger_entries) + ' sessions'],
      ['failed flushes', fmt.format(t.db_errors)],
    ];
    for (const [k, v] of rows) {
      const row = tbody.insertRow();
      cell(row, k);
      cell(row, v, 'num');
    }
  }
  function show(snap) {
    if (!snap || !snap.point) return;
    const p = snap.point;
    const s = snap.sessions;
    setValue('direct', s.direct);
    setValue('trunk', s.trunk);
    setValue('gateways-up', s.gateways_up);
    $('links').textContent = fmt.format(s.trunk_links) + ' trunk links';
    setValue('phone-bps', p.phone_bps, rate(p.phone_bps));
    setValue('reports-ps', p.reports_ps, rate(p.reports_ps));
    setValue('persisted-bps', p.persisted_bps, rate(p.persisted_bps));
    $('persisted').textContent = short(snap.totals.persisted_bytes) + ' bytes in the database';
    setValue('lag', p.lag_ms, p.lag_ms == null ? 'idle' : fmt.format(Math.round(p.lag_ms)) + ' ms');
    $('flush').textContent = 'every ' + fmt.format(snap.flush.interval_ms) + ' ms; last ' + fmt.format(Math.round(snap.flush.last_lag_ms)) + ' ms';
    setValue('refused', snap.refused.total);
    $('refused-ps').textContent = rate(p.refused_ps) + ' /s';
    gateways(snap);
    reasons($('refused-by'), snap.refused);
    reasons($('bad-by'), snap.closed_bad_input);
    database(snap);
    $('info').textContent = snap.store + (snap.worker != null ? ', worker ' + snap.worker : '') + ', up ' + ago(snap.uptime_s);
    addPoint(p);
    drawAll();
  }

  // --- the feed -------------------------------------------------------------------------------
  let source = null;
  let retryTimer = 0;
  function setState(state, text) {
    const pill = $('state');
    pill.dataset.state = state;
    pill.textContent = text || state;
  }
  function needToken(why) {
    $('live').hidden = true;
    $('login').hidden = false;
    $('login-why').textContent = why;
    setState('error', 'locked');
  }
  async function explain() {
    // EventSource does not tell why it failed: ask the same question once as a plain request.
    try {
      const r = await fetch(withToken('/api/dashboard'), { cache: 'no-store' });
      if (r.status === 401) return needToken(token ? 'That token was not accepted.' : 'This aggregator asks for its --dashboard-token.');
      if (r.status === 403) return needToken(await r.text());
    } catch (e) { /* the server is away: retry below */ }
    setState('waiting', 'reconnecting');
    retryTimer = setTimeout(open, RETRY_MS);
  }
  function open() {
    clearTimeout(retryTimer);
    if (source) source.close();
    $('login').hidden = true;
    $('live').hidden = false;
    setState('connecting');
    const es = new EventSource(withToken('/api/dashboard/events'));
    source = es;
    es.addEventListener('history', (ev) => {
      try { for (const p of JSON.parse(ev.data).history || []) addPoint(p); } catch (e) { /* skip */ }
      drawAll();
    });
    es.onmessage = (ev) => {
      setState('live');
      try { show(JSON.parse(ev.data)); } catch (e) { /* one bad snapshot: wait for the next */ }
    };
    es.onerror = () => {
      if (es.readyState === EventSource.CLOSED) { source = null; explain(); } else setState('waiting', 'reconnecting');
    };
  }
  $('login-go').addEventListener('click', () => {
    token = $('token').value.trim();
    sessionStorage.setItem(TOKEN_KEY, token);
    open();
  });
  $('token').addEventListener('keydown', (e) => { if (e.key === 'Enter') $('login-go').click(); });
  open();
})();
