// holdfast phone page: one WebSocket to /ws?device=ID, one byte at a time at random pauses, and
// the server's {"durable":N} (N bytes of this connection are in the database) shown as they come.
// Plain JavaScript, no build step. Settings, totals and the battery log live in localStorage.
// The battery assessment: runs (baseline: no connection; connected: sending) whose rows are in
// the log; each run's drain in percent per hour, screen-off time and a chart of the level.
(() => {
  'use strict';

  const SETTINGS_KEY = 'holdfast.phone.v1';
  const LOG_KEY = 'holdfast.batterylog.v1';
  const RUNS_KEY = 'holdfast.batteryruns.v1';
  // Bounds of the pause between bytes, seconds. The aggregator closes a phone silent for 300 s
  // (--phone-idle-timeout-ms), so the longest pause stays below it.
  const MIN_PAUSE_S = 0.1;
  const MAX_PAUSE_S = 290;
  // Reconnects: exponential backoff with full jitter over [bound/2, bound], bound doubling from
  // 0.5 s to 60 s, as trunk::backoff::Backoff::PHONE, so a crowd of phones that lost the server
  // does not come back at the same instant.
  const BACKOFF_BASE_MS = 500;
  const BACKOFF_MAX_MS = 60000;
  // A connection counts as good (the backoff starts over) once a byte was confirmed on it or it
  // stayed up this long.
  const GOOD_AFTER_MS = 30000;
  // A byte not confirmed within this long means the connection is dead without the browser
  // knowing (the phone slept, the network changed): close it and reconnect. The server confirms
  // within its flush interval (200 ms by default).
  const CONFIRM_TIMEOUT_MS = 20000;
  // A connection attempt (TCP, TLS, upgrade) not done within this long is given up.
  const CONNECT_TIMEOUT_MS = 15000;
  // On Stop, wait this long for the last bytes to be confirmed before closing.
  const STOP_DRAIN_MS = 5000;
  // Battery log rows kept (about 100 bytes each in localStorage); the oldest go first. At one
  // row a minute this is a week.
  const LOG_MAX_ROWS = 10000;
  const LOG_COLUMNS = ['time', 'battery_percent', 'charging', 'bytes_sent', 'bytes_durable',
    'pause_min_s', 'pause_max_s', 'connection', 'page_visible', 'event', 'run', 'mode'];
  // Where each column of a row is.
  const C = { time: 0, level: 1, charging: 2, min: 5, max: 6, visible: 8, event: 9, run: 10, mode: 11 };
  // Runs kept (their rows are in the log); the chart shows the newest few.
  const RUNS_MAX = 50;
  const CHART_RUNS = 6;
  // A drain is shown once the level fell this many points, or the run lasted this long (a flat
  // line over half an hour is a result too): before that a rate is mostly rounding.
  const DRAIN_MIN_POINTS = 2;
  const DRAIN_MIN_MS = 30 * 60000;
  const ONE_BYTE = new Uint8Array([0x2a]);

  const $ = (id) => document.getElementById(id);
  const fmt = new Intl.NumberFormat();

  function read(key) {
    try { return JSON.parse(localStorage.getItem(key) || 'null'); } catch (e) { return null; }
  }
  function write(key, value) {
    try { localStorage.setItem(key, JSON.stringify(value)); return true; } catch (e) { return false; }
  }
  function randomDevice() {
    const b = new Uint8Array(5);
    crypto.getRandomValues(b);
    return 'web-' + Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
  }
  function defaultServer() {
    return (location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host + '/ws';
  }
  const utf8Length = (s) => new TextEncoder().encode(s).length;

  // --- settings and totals ------------------------------------------------------------------
  const saved = read(SETTINGS_KEY) || {};
  const s = {
    device: typeof saved.device === 'string' && saved.device ? saved.device : randomDevice(),
    server: typeof saved.server === 'string' ? saved.server : '',
    // The device token the operator issued for this device (docs/SECURITY.md), from the link.
    token: typeof saved.token === 'string' ? saved.token : '',
    min: Number(saved.min) || 1,
    max: Number(saved.max) || 10,
    every: Number(saved.every) || 60,
    running: !!saved.running,
    // The battery run in progress (its id in the runs list), or 0.
    run: Number(saved.run) || 0,
    wake: !!saved.wake,
    // Over every connection and page load: bytes sent, and bytes confirmed durable.
    sent: Number(saved.sent) || 0,
    durable: Number(saved.durable) || 0,
    reconnects: Number(saved.reconnects) || 0,
  };
  // A link can set things up: /?device=ID&server=wss://...&min=1&max=10&every=60
  const q = new URLSearchParams(location.search);
  if (q.get('device')) {
    const device = q.get('device').slice(0, 32);
    // A token belongs to its device: a link for another device brings its own, or none.
    if (device !== s.device) s.token = '';
    s.device = device;
  }
  if (q.get('token')) s.token = q.get('token').slice(0, 128);
  // An enrolment link (/?enrol=CODE, from the operator) gets this phone a device of its own.
  const enrolCode = q.get('enrol') || '';
  // A link's server (a ws:// or wss:// URL) holds for this visit only and is not remembered:
  // a link from anyone must not send this phone's later visits to another server. The settings
  // form shows it; changing the server there makes it the phone's own choice.
  let linkServer = '';
  if (q.has('server') && /^wss?:\/\/[^/]+/i.test(q.get('server'))) linkServer = q.get('server');
  const server = () => linkServer || s.server;
  if (q.get('min')) s.min = Number(q.get('min')) || s.min;
  if (q.get('max')) s.max = Number(q.get('max')) || s.max;
  if (q.get('every')) s.every = Number(q.get('every')) || s.every;
  clampPauses();

  let savedAt = 0;
  function save(now) {
    if (!now && Date.now() - savedAt < 2000) return;
    savedAt = Date.now();
    write(SETTINGS_KEY, s);
  }
  function clampPauses() {
    const clamp = (v) => Math.min(MAX_PAUSE_S, Math.max(MIN_PAUSE_S, v));
    s.min = clamp(s.min);
    s.max = Math.max(s.min, clamp(s.max));
    s.every = Math.min(3600, Math.max(5, Math.round(s.every)));
  }

  // --- the connection -------------------------------------------------------------------------
  let ws = null;
  let conn = null; // {sent, durable, openedAt, waitingSince, good}
  let failures = 0;
  let state = 'stopped';
  let stateNote = '';
  let reconnectAt = 0;
  let reconnectTimer = 0;
  let sendTimer = 0;
  let nextSendAt = 0;
  let drainTimer = 0;
  let connectingSince = 0;

  function setState(next, note) {
    const changed = next !== state;
    state = next;
    stateNote = note || '';
    if (changed && (next === 'connected' || next === 'waiting' || next === 'offline')) record(next);
    render();
  }

  function target() {
    const base = server() || defaultServer();
    const token = s.token ? '&token=' + encodeURIComponent(s.token) : '';
    return base + (base.includes('?') ? '&' : '?') + 'device=' + encodeURIComponent(s.device) + token;
  }

  function connect() {
    clearTimeout(reconnectTimer);
    reconnectTimer = 0;
    reconnectAt = 0;
    if (!s.running || ws) return;
    if (navigator.onLine === false) { setState('offline', 'no network'); return; }
    let sock;
    try {
      sock = new WebSocket(target());
    } catch (e) {
      setState('error', e.message);
      failures += 1;
      scheduleReconnect();
      return;
    }
    sock.binaryType = 'arraybuffer';
    ws = sock;
    connectingSince = Date.now();
    conn = { sent: 0, durable: 0, openedAt: 0, waitingSince: 0, good: false };
    setState('connecting');
    sock.onopen = () => {
      if (ws !== sock) return;
      conn.openedAt = Date.now();
      setState('connected');
      scheduleSend();
    };
    sock.onmessage = (ev) => {
      if (ws !== sock || typeof ev.data !== 'string') return;
      let m;
      try { m = JSON.parse(ev.data); } catch (e) { return; }
      if (!m || typeof m.durable !== 'number' || m.durable <= conn.durable) return;
      s.durable += m.durable - conn.durable;
      conn.durable = m.durable;
      conn.good = true;
      failures = 0;
      conn.waitingSince = conn.durable >= conn.sent ? 0 : Date.now();
      save(false);
      render();
      if (state === 'stopping' && conn.durable >= conn.sent) sock.close(1000, 'stopped');
    };
    sock.onclose = (ev) => {
      if (ws !== sock) return;
      closed(ev.code === 1000 || ev.code === 1005 ? '' : 'closed ' + ev.code + (ev.reason ? ' (' + ev.reason + ')' : ''));
    };
    // onerror is always followed by onclose, which does the work.
  }

  // The current connection is gone (closed by either side, or given up on).
  function closed(note) {
    const wasGood = conn && (conn.good || (conn.openedAt && Date.now() - conn.openedAt >= GOOD_AFTER_MS));
    ws = null;
    conn = null;
    clearTimeout(sendTimer);
    clearTimeout(drainTimer);
    sendTimer = 0;
    nextSendAt = 0;
    save(true);
    if (!s.running) { setState('stopped'); releaseWake(); return; }
    failures = wasGood ? 1 : failures + 1;
    s.reconnects += 1;
    scheduleReconnect(note);
  }

  function scheduleReconnect(note) {
    const bound = Math.min(BACKOFF_MAX_MS, BACKOFF_BASE_MS * 2 ** Math.min(failures - 1, 20));
    const delay = Math.max(0, bound / 2 + Math.random() * (bound / 2));
    reconnectAt = Date.now() + delay;
    clearTimeout(reconnectTimer);
    reconnectTimer = setTimeout(connect, delay);
    setState(navigator.onLine === false ? 'offline' : 'waiting', note);
  }

  function abandon(reason) {
    // The browser may never notice a connection that died while the phone slept: give up on it.
    const sock = ws;
    if (!sock) return;
    try { sock.close(4000, reason); } catch (e) { /* closing anyway */ }
    closed(reason);
  }

  function sendByte() {
    if (!ws || ws.readyState !== WebSocket.OPEN || state !== 'connected') return false;
    // A socket whose buffer is not draining is stuck: do not pile bytes on it.
    if (ws.bufferedAmount > 1024) return false;
    ws.send(ONE_BYTE);
    if (conn.durable >= conn.sent) conn.waitingSince = Date.now();
    conn.sent += 1;
    s.sent += 1;
    save(false);
    render();
    return true;
  }

  function scheduleSend() {
    clearTimeout(sendTimer);
    if (!s.running || state !== 'connected') return;
    const pause = (s.min + Math.random() * (s.max - s.min)) * 1000;
    nextSendAt = Date.now() + pause;
    sendTimer = setTimeout(() => { sendByte(); scheduleSend(); }, pause);
  }

  function start() {
    s.running = true;
    save(true);
    record('start');
    failures = 0;
    holdWake();
    connect();
    render();
  }

  function stop() {
    // The connection was what a connected run measured: it ends with it.
    if (currentRun() && currentRun().mode === 'connected') endRun(true);
    s.running = false;
    save(true);
    record('stop');
    clearTimeout(reconnectTimer);
    clearTimeout(sendTimer);
    sendTimer = 0;
    nextSendAt = 0;
    reconnectAt = 0;
    if (ws && ws.readyState === WebSocket.OPEN && conn.durable < conn.sent) {
      // Let the last bytes be confirmed, then close.
      setState('stopping');
      const sock = ws;
      drainTimer = setTimeout(() => { if (ws === sock) sock.close(1000, 'stopped'); }, STOP_DRAIN_MS);
      return;
    }
    if (ws) {
      const sock = ws;
      try { sock.close(1000, 'stopped'); } catch (e) { /* already closing */ }
      closed('');
    } else {
      setState('stopped');
      releaseWake();
    }
  }

  // Checked every second, and at once when the page comes back: a dead connection is replaced.
  function watchdog() {
    if (!s.running) return;
    if (ws && conn && conn.waitingSince && Date.now() - conn.waitingSince > CONFIRM_TIMEOUT_MS) {
      abandon('no confirmation for ' + CONFIRM_TIMEOUT_MS / 1000 + ' s');
    } else if (ws && ws.readyState === WebSocket.CONNECTING && Date.now() - connectingSince > CONNECT_TIMEOUT_MS) {
      abandon('connect timed out');
    } else if (!ws && reconnectAt && Date.now() >= reconnectAt) {
      connect(); // a timer throttled in the background is overdue
    }
  }

  function wakeUp() {
    // The page is visible again, or the network is back: reconnect now rather than after the
    // backoff, since the reason for waiting is probably gone.
    holdWake();
    if (!s.running) return;
    watchdog();
    if (!ws) { failures = 0; connect(); }
  }

  // --- screen wake lock (optional) -----------------------------------------------------------
  let wakeLock = null;
  async function holdWake() {
    if (!s.wake || !s.running || wakeLock || !('wakeLock' in navigator) || document.hidden) return;
    try {
      wakeLock = await navigator.wakeLock.request('screen');
      wakeLock.addEventListener('release', () => { wakeLock = null; });
    } catch (e) { wakeLock = null; }
  }
  function releaseWake() {
    if (wakeLock) { wakeLock.release().catch(() => {}); wakeLock = null; }
  }

  // --- battery log and runs ------------------------------------------------------------------
  let battery = null;
  let log = read(LOG_KEY);
  if (!Array.isArray(log)) log = [];
  let runs = read(RUNS_KEY);
  if (!Array.isArray(runs)) runs = [];
  let logTimer = 0;

  // The level as a percentage with two decimals: browsers report steps of 1 % (Chrome) but the
  // drain is a slope over many rows, which finer values (where a browser gives them) sharpen.
  const percent = (b) => Math.round(b.level * 10000) / 100;

  function record(event) {
    const run = currentRun();
    const row = [
      new Date().toISOString(),
      battery ? percent(battery) : '',
      battery ? (battery.charging ? 'yes' : 'no') : '',
      s.sent, s.durable, s.min, s.max, state, document.hidden ? 'no' : 'yes', event,
      run ? run.id : '', run ? run.mode : '',
    ];
    log.push(row);
    if (log.length > LOG_MAX_ROWS) log.splice(0, log.length - LOG_MAX_ROWS);
    while (!write(LOG_KEY, log) && log.length > 10) log.splice(0, Math.ceil(log.length / 4));
    renderLog();
  }
  function scheduleLog() {
    clearInterval(logTimer);
    logTimer = setInterval(() => record('tick'), s.every * 1000);
  }
  function csvCell(v) {
    const t = String(v);
    return /[",\n]/.test(t) ? '"' + t.replace(/"/g, '""') + '"' : t;
  }
  function exportCsv() {
    // Every row of the log, each with as many cells as there are columns (rows logged before the
    // run columns existed get them empty).
    const lines = [LOG_COLUMNS.join(',')].concat(log.map((r) =>
      LOG_COLUMNS.map((_, i) => csvCell(r[i] === undefined ? '' : r[i])).join(',')));
    const blob = new Blob([lines.join('\n') + '\n'], { type: 'text/csv' });
    const a = document.createElement('a');
    a.href = URL.createObjectURL(blob);
    a.download = 'holdfast-battery-' + s.device + '-' + new Date().toISOString().slice(0, 19).replace(/:/g, '') + '.csv';
    document.body.appendChild(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(a.href), 10000);
  }
  if (navigator.getBattery) {
    navigator.getBattery().then((b) => {
      battery = b;
      b.addEventListener('levelchange', () => { record('battery level'); renderBattery(); });
      b.addEventListener('chargingchange', () => { record('charging'); renderBattery(); });
      renderBattery();
      // The run's first row had no level yet: give it one.
      if (currentRun()) record('battery ready');
    }).catch(() => renderBattery());
  }

  function currentRun() {
    return s.run ? runs.find((r) => r.id === s.run) || null : null;
  }
  function saveRuns() {
    if (runs.length > RUNS_MAX) runs.splice(0, runs.length - RUNS_MAX);
    write(RUNS_KEY, runs);
  }
  // A run: a baseline (no connection) or a connected one (the connection runs with the pauses
  // set above). Its rows are the log's rows that carry its id.
  function startRun(mode) {
    if (currentRun()) endRun(false);
    if (mode === 'baseline' && s.running) stop();
    const id = runs.reduce((m, r) => Math.max(m, r.id), 0) + 1;
    runs.push({ id, mode, start: Date.now(), end: 0 });
    s.run = id;
    saveRuns();
    save(true);
    record('run start');
    if (mode === 'connected' && !s.running) start();
    renderRuns();
    render();
  }
  // `stopping`: called by stop(), which closes the connection itself.
  function endRun(stopping) {
    const run = currentRun();
    if (!run) return;
    record('run end');
    run.end = Date.now();
    s.run = 0;
    saveRuns();
    save(true);
    if (run.mode === 'connected' && s.running && stopping !== true) stop();
    renderRuns();
    render();
  }

  // Least-squares slope of the level over time, in points per hour (negative: draining). The
  // endpoints alone would be off by up to a whole step of 1 % on a phone.
  function slopePerHour(pts) {
    let mt = 0;
    let mv = 0;
    for (const p of pts) { mt += p[0]; mv += p[1]; }
    mt /= pts.length;
    mv /= pts.length;
    let num = 0;
    let den = 0;
    for (const p of pts) { num += (p[0] - mt) * (p[1] - mv); den += (p[0] - mt) ** 2; }
    return den > 0 ? (num / den) * 3600000 : 0;
  }

  // What a run's rows say: its level points (not charging), drain, screen-off time, pauses.
  function runStats(run) {
    const rows = log.filter((r) => r[C.run] === run.id);
    const end = run.end || Date.now();
    const pts = [];
    let charged = false;
    let hidden = 0;
    let hiddenSince = null;
    const pauses = [];
    for (const r of rows) {
      const t = Date.parse(r[C.time]);
      if (!Number.isFinite(t)) continue;
      if (r[C.charging] === 'yes') charged = true;
      else if (r[C.level] !== '' && r[C.level] != null) pts.push([t, Number(r[C.level])]);
      // Screen off: from a row logged while the page was hidden to the next one logged visible
      // (the page logs a row at each change).
      if (r[C.visible] === 'no') { if (hiddenSince === null) hiddenSince = t; } else if (hiddenSince !== null) { hidden += t - hiddenSince; hiddenSince = null; }
      const pause = r[C.min] + '–' + r[C.max] + ' s';
      if (!pauses.includes(pause)) pauses.push(pause);
    }
    if (hiddenSince !== null) hidden += Math.max(0, end - hiddenSince);
    let drain = null;
    if (pts.length >= 2) {
      const levels = pts.map((p) => p[1]);
      const fell = Math.max(...levels) - Math.min(...levels);
      if (fell >= DRAIN_MIN_POINTS || pts[pts.length - 1][0] - pts[0][0] >= DRAIN_MIN_MS) drain = -slopePerHour(pts);
    }
    return { pts, drain, hidden, length: end - run.start, charged, pauses, rows: rows.length };
  }
  // --- rendering ------------------------------------------------------------------------------
  function setCount(id, n) {
    const el = $(id);
    el.dataset.value = String(n);
    el.textContent = fmt.format(n);
  }
  function secs(ms) {
    const t = Math.max(0, ms) / 1000;
    if (t < 10) return t.toFixed(1) + ' s';
    if (t < 120) return Math.round(t) + ' s';
    if (t < 7200) return Math.round(t / 60) + ' min';
    return (t / 3600).toFixed(1) + ' h';
  }
  const LABELS = {
    stopped: 'stopped', connecting: 'connecting', connected: 'connected', waiting: 'reconnecting',
    offline: 'offline', error: 'error', stopping: 'stopping',
  };
  function render() {
    setCount('sent', s.sent);
    setCount('durable', s.durable);
    setCount('pending', Math.max(0, s.sent - s.durable));
    const pill = $('state');
    pill.dataset.state = state;
    pill.textContent = LABELS[state] || state;
    const now = Date.now();
    const parts = [];
    if (state === 'connected') {
      parts.push(nextSendAt ? 'next byte in ' + secs(nextSendAt - now) : 'sending');
      parts.push('up ' + secs(now - conn.openedAt));
    } else if (state === 'waiting' || state === 'offline') {
      if (reconnectAt) parts.push('retry in ' + secs(reconnectAt - now));
    } else if (state === 'stopping') {
      parts.push('waiting for the last confirmations');
    }
    if (stateNote) parts.push(stateNote);
    if (s.reconnects) parts.push(s.reconnects + (s.reconnects === 1 ? ' reconnect' : ' reconnects'));
    parts.push('device ' + s.device);
    $('detail').textContent = parts.join(' · ');
    const run = $('run');
    run.textContent = s.running ? 'Stop' : 'Start';
    run.classList.toggle('stop', s.running);
    // A baseline run measures the phone without the connection.
    const baseline = !!currentRun() && currentRun().mode === 'baseline';
    run.disabled = baseline && !s.running;
    run.title = run.disabled ? 'A baseline run is in progress: end it first' : '';
    $('once').disabled = state !== 'connected';
  }
  function renderBattery() {
    $('battery').textContent = battery
      ? 'Battery: ' + Math.round(battery.level * 100) + ' %, ' + (battery.charging ? 'charging' : 'not charging')
      : 'Battery: not exposed by this browser (rows are still logged, without it)';
  }
  function hm(ms) {
    const m = Math.round(Math.max(0, ms) / 60000);
    return m < 60 ? (ms < 60000 ? Math.round(ms / 1000) + ' s' : m + ' min') : Math.floor(m / 60) + ' h ' + String(m % 60).padStart(2, '0');
  }
  const drainText = (st) => (st.drain === null ? '—' : (Math.abs(st.drain) >= 100 ? Math.round(st.drain) : st.drain.toFixed(1)) + ' %/h');
  const SERIES = ['--c1', '--c2', '--c3', '--c4', '--muted', '--warn'];
  const css = (name) => getComputedStyle(document.documentElement).getPropertyValue(name).trim();

  // The runs' table and chart, and the line about the run in progress.
  function renderRuns() {
    const shown = runs.slice(-CHART_RUNS);
    const stats = new Map(runs.map((r) => [r.id, runStats(r)]));
    const body = $('runs');
    body.textContent = '';
    for (const run of runs.slice().reverse()) {
      const st = stats.get(run.id);
      const tr = document.createElement('tr');
      tr.dataset.run = String(run.id);
      tr.dataset.mode = run.mode;
      tr.dataset.drain = st.drain === null ? '' : String(st.drain);
      tr.dataset.hiddenMs = String(st.hidden);
      tr.dataset.rows = String(st.rows);
      const colour = shown.indexOf(run);
      const cells = [
        '#' + run.id + ' ' + run.mode + (run.end ? '' : ' (now)'),
        hm(st.length),
        hm(st.hidden),
        drainText(st),
      ];
      cells.forEach((text, i) => {
        const td = document.createElement('td');
        if (i === 0 && colour >= 0) {
          const sw = document.createElement('i');
          sw.style.background = css(SERIES[colour % SERIES.length]);
          td.appendChild(sw);
        }
        td.appendChild(document.createTextNode(text));
        if (i === 0) {
          // The pause setting under the run's name (all of them, if it changed during the run).
          const small = document.createElement('small');
          small.className = 'pause';
          small.textContent = run.mode === 'baseline' ? 'no connection' : 'pause ' + (st.pauses.join(', ') || '—');
          td.appendChild(small);
        }
        if (i === 3 && st.charged) td.title = 'rows while charging are left out';
        if (i >= 1) td.className = 'num';
        tr.appendChild(td);
      });
      body.appendChild(tr);
    }
    const run = currentRun();
    const now = $('run-now');
    now.dataset.mode = run ? run.mode : '';
    if (run) {
      const st = stats.get(run.id);
      now.textContent = (run.mode === 'baseline' ? 'Baseline run #' : 'Connected run #') + run.id + ' · ' +
        hm(st.length) + ' · screen off ' + hm(st.hidden) + ' · drain ' + drainText(st);
    } else {
      now.textContent = runs.length ? 'No run in progress.' : 'No run yet: start a baseline or a connected run.';
    }
    $('run-end').disabled = !run;
    drawChart(shown, stats);
  }

  // Battery level (%) against time since each run's start, one line per run.
  function drawChart(shown, stats) {
    const canvas = $('bchart');
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
    let lo = 100;
    let hi = 0;
    let span = 0;
    let drawn = 0;
    for (const run of shown) {
      for (const p of stats.get(run.id).pts) { lo = Math.min(lo, p[1]); hi = Math.max(hi, p[1]); span = Math.max(span, p[0] - run.start); drawn += 1; }
    }
    g.font = '12px system-ui, sans-serif';
    g.fillStyle = css('--muted');
    if (!drawn) {
      g.textAlign = 'center';
      g.textBaseline = 'middle';
      g.fillText(battery || !runs.length ? 'Start a run: its battery level is drawn here.' : 'This browser does not tell the battery level.', w / 2, h / 2);
      canvas.dataset.series = '0';
      canvas.dataset.points = '0';
      $('blegend').textContent = '';
      return;
    }
    // Whole percents around the data, at least 2 points tall; time from 0 to the longest run.
    lo = Math.max(0, Math.floor(lo) - 1);
    hi = Math.min(100, Math.ceil(hi) + 1);
    span = Math.max(span, 60000);
    const left = 40;
    const right = w - 8;
    const y0 = h - 20;
    const y1 = 8;
    const x = (t) => left + (t / span) * (right - left);
    const y = (v) => y0 - ((v - lo) / (hi - lo)) * (y0 - y1);
    g.strokeStyle = css('--line');
    g.lineWidth = 1;
    g.textAlign = 'right';
    g.textBaseline = 'middle';
    const vstep = [1, 2, 5, 10, 20, 25, 50].find((st) => (hi - lo) / st <= 4) || 50;
    for (let v = Math.ceil(lo / vstep) * vstep; v <= hi; v += vstep) {
      g.beginPath();
      g.moveTo(left, Math.round(y(v)) + 0.5);
      g.lineTo(right, Math.round(y(v)) + 0.5);
      g.stroke();
      g.fillText(v + ' %', left - 4, y(v));
    }
    g.textBaseline = 'alphabetic';
    const tstep = [10e3, 30e3, 60e3, 300e3, 600e3, 1800e3, 3600e3, 7200e3, 21600e3].find((st) => span / st <= 5) || 43200e3;
    for (let t = 0; t <= span; t += tstep) {
      g.textAlign = t === 0 ? 'left' : x(t) > right - 24 ? 'right' : 'center';
      g.fillText(t === 0 ? '0' : t < 60e3 ? t / 1e3 + ' s' : t < 3600e3 ? t / 60e3 + ' min' : t / 3600e3 + ' h', x(t), h - 4);
    }
    g.lineJoin = 'round';
    const legend = $('blegend');
    legend.textContent = '';
    shown.forEach((run, i) => {
      const colour = css(SERIES[i % SERIES.length]);
      const pts = stats.get(run.id).pts;
      g.strokeStyle = colour;
      g.lineWidth = run.id === s.run || (i === shown.length - 1 && !s.run) ? 3 : 2;
      g.beginPath();
      pts.forEach((p, k) => (k ? g.lineTo(x(p[0] - run.start), y(p[1])) : g.moveTo(x(p[0] - run.start), y(p[1]))));
      if (pts.length === 1) g.arc(x(pts[0][0] - run.start), y(pts[0][1]), 2, 0, 2 * Math.PI);
      g.stroke();
      const item = document.createElement('span');
      const sw = document.createElement('i');
      sw.style.background = colour;
      item.appendChild(sw);
      item.appendChild(document.createTextNode('#' + run.id + ' ' + run.mode + ' ' + drainText(stats.get(run.id))));
      legend.appendChild(item);
    });
    canvas.dataset.series = String(shown.filter((r) => stats.get(r.id).pts.length).length);
    canvas.dataset.points = String(drawn);
  }

  function renderLog() {
    $('logsize').textContent = fmt.format(log.length) + (log.length === 1 ? ' row' : ' rows') +
      (log.length ? ' since ' + new Date(log[0][0]).toLocaleString() : '') +
      ' (the oldest are dropped past ' + fmt.format(LOG_MAX_ROWS) + ')';
    if (!document.hidden) renderRuns();
  }
  function fillInputs() {
    $('min').value = s.min;
    $('max').value = s.max;
    $('device').value = s.device;
    $('server').value = server();
    $('server').placeholder = defaultServer();
    $('every').value = s.every;
    $('wake').checked = s.wake;
  }

  // --- inputs ---------------------------------------------------------------------------------
  function message(text) { $('msg').textContent = text || ''; }
  function onSettings() {
    const device = $('device').value.trim();
    const chosen = $('server').value.trim();
    if (!device || utf8Length(device) > 32) { message('A device id is 1 to 32 bytes.'); fillInputs(); return; }
    if (chosen && !/^wss?:\/\/[^/]+/i.test(chosen)) { message('The server is a ws:// or wss:// URL (empty: this site).'); fillInputs(); return; }
    message('');
    const reconnect = device !== s.device || chosen !== server();
    const pausesChanged = Number($('min').value) !== s.min || Number($('max').value) !== s.max;
    if (device !== s.device) {
      // The counts are this device's: the old device's connection ends here, and so does its
      // token (a server that requires tokens refuses the new device without its own link).
      s.token = '';
      if (ws) abandon('device changed');
      s.sent = 0;
      s.durable = 0;
      s.reconnects = 0;
    }
    s.device = device;
    if (chosen !== server()) {
      // The person chose a server: theirs from now on (a link's server is dropped).
      s.server = chosen;
      linkServer = '';
    }
    s.min = Number($('min').value) || s.min;
    s.max = Number($('max').value) || s.max;
    s.every = Number($('every').value) || s.every;
    s.wake = $('wake').checked;
    clampPauses();
    fillInputs();
    save(true);
    scheduleLog();
    if (pausesChanged) { record('settings'); scheduleSend(); }
    if (s.wake) holdWake(); else releaseWake();
    if (reconnect && ws) abandon('server changed');
    if (reconnect && s.running && !ws) { failures = 0; connect(); }
    render();
  }
  for (const id of ['min', 'max', 'device', 'server', 'every', 'wake']) $(id).addEventListener('change', onSettings);
  $('run').addEventListener('click', () => (s.running ? stop() : start()));
  $('once').addEventListener('click', sendByte);
  $('export').addEventListener('click', exportCsv);
  $('run-baseline').addEventListener('click', () => startRun('baseline'));
  $('run-connected').addEventListener('click', () => startRun('connected'));
  $('run-end').addEventListener('click', () => endRun(false));
  window.addEventListener('resize', () => renderRuns());
  $('clear').addEventListener('click', () => {
    if (!log.length || confirm('Delete all ' + log.length + ' rows of the battery log, and its runs?')) {
      if (currentRun()) endRun(false);
      log = [];
      runs = [];
      write(LOG_KEY, log);
      saveRuns();
      renderLog();
      renderRuns();
    }
  });

  // --- sleep, network and page life ------------------------------------------------------------
  document.addEventListener('visibilitychange', () => {
    if (document.hidden) { save(true); record('hidden'); } else { record('visible'); wakeUp(); }
  });
  window.addEventListener('online', wakeUp);
  window.addEventListener('offline', () => { if (s.running && !ws) setState('offline', 'no network'); });
  window.addEventListener('pageshow', (e) => { if (e.persisted) wakeUp(); });
  document.addEventListener('resume', wakeUp);
  window.addEventListener('pagehide', () => save(true));

  // Timers: the watchdog, and the countdowns (only while someone looks).
  setInterval(() => { watchdog(); if (!document.hidden) render(); }, 1000);
  // The run in progress: its length and screen-off time move on between rows.
  setInterval(() => { if (!document.hidden && s.run) renderRuns(); }, 10000);

  // Enrolment: this server (the aggregator that served the page) makes a new device id and its
  // token for whoever shows the operator's code (POST /api/enrol; a gateway's page has no such
  // endpoint). The code leaves the address bar at once; a refusal is shown, and the page goes on
  // with the device it had.
  async function enrol(code) {
    history.replaceState(null, '', location.pathname);
    try {
      const r = await fetch('/api/enrol', {
        method: 'POST', headers: { Authorization: 'Bearer ' + code }, cache: 'no-store',
      });
      const body = await r.text();
      if (!r.ok) { message('Enrolment refused: ' + body.trim()); return; }
      const got = JSON.parse(body);
      s.device = got.device;
      s.token = got.token;
      save(true);
      fillInputs();
      message('Enrolled: this phone is ' + got.device + '.');
    } catch (e) {
      message('Enrolment failed: ' + e.message);
    }
  }

  fillInputs();
  renderBattery();
  renderLog();
  renderRuns();
  scheduleLog();
  render();
  const carryOn = () => { if (s.running) { record('page load'); holdWake(); connect(); } };
  if (enrolCode) enrol(enrolCode).then(carryOn); else carryOn();
})();
