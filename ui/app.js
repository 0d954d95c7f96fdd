// Lucid's web console. Every key and value is data: it reaches the page
// through textContent, attributes and blob URLs only, never as markup.
'use strict';

const TOKEN_KEY = 'lucid.token';
const PAGE = 100;
const FEED_ROWS = 200;
const CHART_POINTS = 500;
const SVG = 'http://www.w3.org/2000/svg';

const $ = (id) => document.getElementById(id);

// An element with properties (`text`, `class`, `on<event>`, attributes)
// and children (nodes, or strings as text).
function el(tag, props, ...children) {
  const node = tag.startsWith('svg:')
    ? document.createElementNS(SVG, tag.slice(4))
    : document.createElement(tag);
  for (const [name, value] of Object.entries(props || {})) {
    if (name === 'text') node.textContent = value;
    else if (name.startsWith('on')) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value);
  }
  for (const child of children) if (child != null) node.append(child);
  return node;
}

const state = {
  auth: false,
  token: sessionStorage.getItem(TOKEN_KEY),
  claims: null,
  prefix: '',
  after: null,
  folders: new Set(),
  selected: null,
  feed: null,
  chart: null,
  nodeTimer: null,
};

function say(text, bad) {
  $('status').textContent = text || '';
  $('status').className = bad ? 'error' : '';
}

// --- The API --------------------------------------------------------------

function api(method, path, options = {}) {
  const headers = Object.assign({}, options.headers);
  if (state.token) headers.Authorization = 'Bearer ' + state.token;
  return fetch(path, { method, headers, body: options.body, signal: options.signal, cache: 'no-store' });
}

async function message(response) {
  try {
    return (await response.json()).message || response.statusText;
  } catch (_) {
    return response.status + ' ' + response.statusText;
  }
}

const kvPath = (key) => '/api/kv/' + encodeURIComponent(key);
const etagVersion = (response) => (response.headers.get('ETag') || '').replace(/"/g, '');

// --- Scopes: what the token offers (the node enforces it anyway) ----------

function decodeClaims(token) {
  const part = token.split('.')[1] || '';
  const base64 = part.replace(/-/g, '+').replace(/_/g, '/');
  const bytes = Uint8Array.from(atob(base64), (c) => c.charCodeAt(0));
  return JSON.parse(new TextDecoder().decode(bytes));
}

function scopesFor(key) {
  if (!state.auth) return ['read', 'write', 'admin'];
  const claims = state.claims || {};
  if (!Array.isArray(claims.scopes)) return ['read', 'write', 'admin'];
  if (!Array.isArray(claims.prefixes)) return claims.scopes;
  let best = null;
  for (const rule of claims.prefixes) {
    const prefix = typeof rule === 'string' ? rule : rule.prefix;
    if (key.startsWith(prefix) && (!best || prefix.length > best.prefix.length)) {
      best = { prefix, scopes: typeof rule === 'string' ? claims.scopes : rule.scopes };
    }
  }
  return best ? best.scopes : [];
}

const can = (scope, key) => scopesFor(key).includes(scope);

// --- Sign in -------------------------------------------------------------

async function start() {
  const response = await fetch('/ui/auth.json', { cache: 'no-store' });
  state.auth = (await response.json()).authentication;
  $('signout').addEventListener('click', signOut);
  $('signin-form').addEventListener('submit', (event) => {
    event.preventDefault();
    signIn($('signin-token').value.trim());
  });
  $('search-form').addEventListener('submit', (event) => {
    event.preventDefault();
    openPrefix($('search-prefix').value);
  });
  $('more-keys').addEventListener('click', () => loadKeys(false));
  $('new-key').addEventListener('click', showEditor);
  $('feed-form').addEventListener('submit', (event) => {
    event.preventDefault();
    startFeed($('feed-prefix').value);
  });
  $('chart-form').addEventListener('submit', (event) => {
    event.preventDefault();
    startChart($('chart-keys').value);
  });
  window.addEventListener('hashchange', route);
  if (state.auth && !state.token) return showSignIn('');
  if (state.auth) return signIn(state.token);
  enter();
}

async function signIn(token) {
  let claims;
  try {
    claims = decodeClaims(token);
  } catch (_) {
    return showSignIn('That is not a token: paste the whole eyJ... text.');
  }
  state.token = token;
  const response = await api('GET', '/api/kv?limit=1&keys_only=true&prefix=' + encodeURIComponent(firstPrefix(claims)));
  if (response.status === 401) {
    state.token = null;
    sessionStorage.removeItem(TOKEN_KEY);
    return showSignIn('The node refused this token (expired, or signed with another secret).');
  }
  sessionStorage.setItem(TOKEN_KEY, token);
  state.claims = claims;
  $('who').textContent = 'Signed in' + (claims.sub ? ' as ' + claims.sub : '') +
    ' (' + (Array.isArray(claims.scopes) ? claims.scopes.join(', ') : 'unscoped') + ')';
  $('signout').hidden = false;
  enter();
}

// The first prefix a token may list, to check the token where it may read.
function firstPrefix(claims) {
  if (!Array.isArray(claims.prefixes) || claims.prefixes.length === 0) return '';
  const rule = claims.prefixes[0];
  return typeof rule === 'string' ? rule : rule.prefix;
}

function showSignIn(problem) {
  for (const view of document.querySelectorAll('main > section')) view.hidden = true;
  $('nav').hidden = true;
  $('view-signin').hidden = false;
  $('signin-error').textContent = problem;
}

function signOut() {
  sessionStorage.removeItem(TOKEN_KEY);
  stopStreams();
  state.token = null;
  state.claims = null;
  $('signout').hidden = true;
  $('who').textContent = '';
  showSignIn('');
}

function enter() {
  $('view-signin').hidden = true;
  $('nav').hidden = false;
  const prefix = firstPrefix(state.claims || {});
  $('feed-prefix').value = prefix;
  $('chart-keys').value = prefix;
  openPrefix(prefix);
  route();
}

function route() {
  if (!$('view-signin').hidden) return;
  const view = (location.hash || '#keys').slice(1);
  const known = ['keys', 'feed', 'charts', 'node'].includes(view) ? view : 'keys';
  for (const name of ['keys', 'feed', 'charts', 'node']) {
    $('view-' + name).hidden = name !== known;
    $('nav-' + name).className = name === known ? 'current' : '';
  }
  clearInterval(state.nodeTimer);
  if (known === 'node') {
    loadNode();
    state.nodeTimer = setInterval(loadNode, 5000);
  }
  say('');
}

function stopStreams() {
  for (const stream of [state.feed, state.chart]) if (stream) stream.abort();
  state.feed = state.chart = null;
}

// --- Key browser -----------------------------------------------------------

function openPrefix(prefix) {
  state.prefix = prefix;
  $('search-prefix').value = prefix;
  $('new-key').hidden = !can('write', prefix);
  renderCrumbs();
  loadKeys(true);
}

function renderCrumbs() {
  const crumbs = $('crumbs');
  crumbs.replaceChildren(el('a', { text: '(all keys)', onclick: () => openPrefix('') }));
  const parts = state.prefix.split('/');
  let path = '';
  parts.forEach((part, index) => {
    if (part === '' && index === parts.length - 1) return;
    path += part + (index < parts.length - 1 ? '/' : '');
    const target = path;
    crumbs.append(' / ', el('a', { text: part, onclick: () => openPrefix(target) }));
  });
}

async function loadKeys(fresh) {
  if (fresh) {
    state.after = null;
    state.folders = new Set();
    $('key-rows').replaceChildren();
  }
  let query = '/api/kv?limit=' + PAGE + '&prefix=' + encodeURIComponent(state.prefix);
  if (state.after !== null) query += '&after=' + encodeURIComponent(state.after);
  const response = await api('GET', query);
  if (!response.ok) return say('Cannot list keys: ' + await message(response), true);
  const page = await response.json();
  for (const entry of page.keys) addKeyRow(entry);
  state.after = page.next;
  $('more-keys').hidden = page.next === null;
}

const fmtTime = (ms) => (ms == null ? '' : new Date(ms).toLocaleString());

function addKeyRow(entry) {
  const rest = entry.key.slice(state.prefix.length);
  const slash = rest.indexOf('/');
  if (slash >= 0) {
    const folder = state.prefix + rest.slice(0, slash + 1);
    if (state.folders.has(folder)) return;
    state.folders.add(folder);
    $('key-rows').append(el('tr', { class: 'row folder', onclick: () => openPrefix(folder) },
      el('td', { class: 'key', text: rest.slice(0, slash + 1) }), el('td', { colspan: '6', text: 'folder' })));
    return;
  }
  const row = el('tr', { class: 'row', 'data-key': entry.key, onclick: () => openKey(entry.key, row) },
    el('td', { class: 'key', text: rest }),
    el('td', { text: String(entry.size) }),
    el('td', { text: String(entry.version) }),
    el('td', { text: entry.content_type }),
    el('td', { text: fmtTime(entry.updated_at) }),
    el('td', { text: fmtTime(entry.expires_at) }),
    el('td', { text: entry.locked ? 'locked' : '' }));
  $('key-rows').append(row);
}

// --- Value view and edit ---------------------------------------------------

async function openKey(key, row) {
  for (const other of document.querySelectorAll('tr.selected')) other.classList.remove('selected');
  if (row) row.classList.add('selected');
  const response = await api('GET', kvPath(key));
  if (!response.ok) return showPane([el('p', { class: 'error', text: key + ': ' + await message(response) })]);
  const blob = await response.blob();
  const bytes = new Uint8Array(await blob.arrayBuffer());
  const meta = await keyMeta(key);
  state.selected = {
    key,
    version: etagVersion(response),
    type: response.headers.get('Content-Type') || 'application/octet-stream',
    bytes,
    blob,
    meta,
  };
  showValue();
}

// The key's listing entry (lock and expiry are not in a GET's headers).
async function keyMeta(key) {
  const response = await api('GET', '/api/kv?limit=1&prefix=' + encodeURIComponent(key));
  if (!response.ok) return null;
  const page = await response.json();
  return page.keys.find((entry) => entry.key === key) || null;
}

// Blob URLs made for the pane being built, and those of the pane shown,
// released when it is replaced.
let newBlobUrls = [];
let shownBlobUrls = [];

function blobUrl(blob) {
  const url = URL.createObjectURL(blob);
  newBlobUrls.push(url);
  return url;
}

function showPane(children) {
  for (const url of shownBlobUrls) URL.revokeObjectURL(url);
  shownBlobUrls = newBlobUrls;
  newBlobUrls = [];
  $('value-pane').replaceChildren(...children);
}

function asText(bytes) {
  try {
    return new TextDecoder('utf-8', { fatal: true }).decode(bytes);
  } catch (_) {
    return null;
  }
}

function hexDump(bytes) {
  const lines = [];
  const shown = bytes.subarray(0, 4096);
  for (let at = 0; at < shown.length; at += 16) {
    const row = Array.from(shown.subarray(at, at + 16), (b) => b.toString(16).padStart(2, '0'));
    lines.push(at.toString(16).padStart(8, '0') + '  ' + row.join(' '));
  }
  if (bytes.length > shown.length) lines.push('... ' + (bytes.length - shown.length) + ' more bytes');
  return lines.join('\n');
}

// Image types shown as images. Not SVG: an SVG opened from its blob URL in
// a tab of its own is a document of this origin and may run script.
const RASTER_TYPES = ['image/png', 'image/jpeg', 'image/gif', 'image/webp', 'image/avif', 'image/bmp'];

function isRaster(type) {
  return RASTER_TYPES.includes(type.split(';')[0].trim().toLowerCase());
}

function renderValue(value) {
  const { type, bytes, blob, key } = value;
  if (isRaster(type)) {
    return el('img', { class: 'value', alt: key, src: blobUrl(blob) });
  }
  const text = asText(bytes);
  if (text !== null && /json/.test(type)) {
    try {
      return el('pre', { class: 'value', text: JSON.stringify(JSON.parse(text), null, 2) });
    } catch (_) { /* shown as text */ }
  }
  if (text !== null) return el('pre', { class: 'value', text });
  const name = key.split('/').pop() || 'value';
  return el('div', {}, el('pre', { class: 'value hex', text: hexDump(bytes) }),
    // Downloaded as bytes whatever the stored type, so the link never opens
    // as a page of this origin.
    el('a', { href: blobUrl(new Blob([bytes], { type: 'application/octet-stream' })), download: name,
      text: 'Download ' + bytes.length + ' bytes' }));
}

function showValue() {
  const value = state.selected;
  const meta = value.meta || {};
  const facts = 'version ' + value.version + ' · ' + value.type + ' · ' + value.bytes.length + ' bytes' +
    (meta.expires_at ? ' · expires ' + fmtTime(meta.expires_at) : '') + (meta.locked ? ' · locked' : '');
  const children = [el('h3', { class: 'key', text: value.key }), el('p', { class: 'meta', text: facts }), renderValue(value)];
  if (can('write', value.key)) children.push(...writeControls(value, meta));
  children.push(el('p', { id: 'edit-result' }));
  showPane(children);
}

function writeControls(value, meta) {
  const text = asText(value.bytes);
  const controls = [];
  if (text !== null && !isRaster(value.type)) {
    const editor = el('textarea', { id: 'edit-value', rows: '8' });
    editor.value = text;
    controls.push(editor, el('div', { class: 'controls' },
      el('button', { type: 'button', id: 'save', text: 'Save', onclick: () => save(value, editor.value) })));
  }
  const ttl = el('input', { id: 'ttl-seconds', size: '6', placeholder: 'seconds' });
  const row = el('div', { class: 'controls' },
    el('button', { type: 'button', id: 'delete', text: 'Delete', onclick: () => remove(value) }),
    el('button', { type: 'button', id: 'lock', text: meta.locked ? 'Unlock' : 'Lock',
      onclick: () => patch(value, { operation: meta.locked ? 'unlock' : 'lock' }) }),
    ttl,
    el('button', { type: 'button', id: 'set-ttl', text: 'Set TTL',
      onclick: () => patch(value, { operation: 'ttl', value: Number(ttl.value) }) }),
    el('button', { type: 'button', id: 'clear-ttl', text: 'Clear TTL', onclick: () => patch(value, { operation: 'persist' }) }));
  if (text !== null && text.trim() !== '' && !Number.isNaN(Number(text))) {
    row.append(
      el('button', { type: 'button', id: 'increment', text: '+1', onclick: () => patch(value, { operation: 'increment' }) }),
      el('button', { type: 'button', id: 'decrement', text: '−1', onclick: () => patch(value, { operation: 'decrement' }) }));
  }
  controls.push(row);
  return controls;
}

async function report(response, key, done) {
  const result = $('edit-result');
  if (response.status === 412) {
    result.replaceChildren(el('div', { class: 'conflict', id: 'conflict' },
      'Conflict: ' + key + ' was changed by someone else since version ' + state.selected.version +
      ' was shown; nothing was written. ',
      el('button', { type: 'button', id: 'reload', text: 'Reload', onclick: () => openKey(key) })));
    return;
  }
  if (!response.ok) {
    result.className = 'error';
    result.textContent = await message(response);
    return;
  }
  await done();
}

async function save(value, text) {
  const response = await api('PUT', kvPath(value.key), {
    body: text, headers: { 'If-Match': '"' + value.version + '"', 'Content-Type': value.type },
  });
  await report(response, value.key, async () => {
    await openKey(value.key);
    $('edit-result').textContent = 'Saved as version ' + etagVersion(response) + '.';
    loadKeys(true);
  });
}

async function remove(value) {
  const response = await api('DELETE', kvPath(value.key), { headers: { 'If-Match': '"' + value.version + '"' } });
  await report(response, value.key, async () => {
    showPane([el('p', { text: 'Deleted ' + value.key + '.' })]);
    loadKeys(true);
  });
}

async function patch(value, operation) {
  const response = await api('PATCH', kvPath(value.key), {
    body: JSON.stringify(operation), headers: { 'If-Match': '"' + value.version + '"', 'Content-Type': 'application/json' },
  });
  await report(response, value.key, async () => {
    await openKey(value.key);
    loadKeys(true);
  });
}

function showEditor() {
  const key = el('input', { id: 'new-key-name', size: '40', spellcheck: 'false' });
  key.value = state.prefix;
  const type = el('input', { id: 'new-key-type', size: '24' });
  type.value = 'text/plain';
  const body = el('textarea', { id: 'new-key-value', rows: '8' });
  showPane([
    el('h3', { text: 'New key' }),
    el('label', {}, 'Key ', key), el('label', {}, ' Content type ', type), body,
    el('div', { class: 'controls' }, el('button', { type: 'button', id: 'create', text: 'Create', onclick: async () => {
      const response = await api('PUT', kvPath(key.value), {
        body: body.value, headers: { 'If-None-Match': '*', 'Content-Type': type.value },
      });
      if (response.status === 412) return say(key.value + ' exists already: nothing was written.', true);
      if (!response.ok) return say(await message(response), true);
      say('Created ' + key.value + '.');
      await loadKeys(true);
      openKey(key.value);
    } })),
  ]);
}

// --- Streams: the watch feed read with fetch (so the token can be sent) ----

// Reads /api/watch?prefix=...&since=... and calls onEvent with each change;
// onState(status, body) says how it goes (200 open, 0 ended, -1 failed, or
// the refusal's status and JSON); returns the AbortController that stops it.
function watch(prefix, since, onEvent, onState) {
  const controller = new AbortController();
  let path = '/api/watch?prefix=' + encodeURIComponent(prefix);
  if (since !== null) path += '&since=' + since;
  (async () => {
    const response = await api('GET', path, { signal: controller.signal, headers: { Accept: 'text/event-stream' } });
    if (!response.ok) return onState(response.status, await response.json());
    onState(200, null);
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = '';
    let data = [];
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += value;
      let end;
      while ((end = buffer.indexOf('\n')) >= 0) {
        const line = buffer.slice(0, end).replace(/\r$/, '');
        buffer = buffer.slice(end + 1);
        if (line === '') {
          if (data.length) onEvent(JSON.parse(data.join('\n')));
          data = [];
        } else if (line.startsWith('data:')) {
          data.push(line.slice(5).replace(/^ /, ''));
        }
      }
    }
    onState(0, null);
  })().catch((error) => {
    if (error.name !== 'AbortError') onState(-1, { message: String(error) });
  });
  return controller;
}

function startFeed(prefix) {
  if (state.feed) state.feed.abort();
  $('feed-rows').replaceChildren();
  state.feed = watch(prefix, null, (event) => {
    const value = event.value == null ? (event.op === 'put' ? '(' + event.size + ' bytes)' : '') : event.value;
    const rows = $('feed-rows');
    rows.prepend(el('tr', { class: 'event' },
      el('td', { text: new Date().toLocaleTimeString() }),
      el('td', { text: event.op }),
      el('td', { class: 'key', text: event.key }),
      el('td', { text: String(event.version) }),
      el('td', { class: 'key', text: value.length > 200 ? value.slice(0, 200) + '…' : value })));
    while (rows.children.length > FEED_ROWS) rows.lastChild.remove();
  }, (status, body) => {
    $('feed-state').textContent = status === 200 ? 'watching' : status === 0 ? 'ended' : 'stopped: ' + body.message;
  });
}

// --- Charts: numeric values of keys over versions -------------------------

function startChart(spec) {
  if (state.chart) state.chart.abort();
  const names = spec.split(',').map((s) => s.trim()).filter((s) => s);
  const keys = names.length > 1 ? new Set(names) : null;
  const prefix = keys ? commonPrefix(names) : names[0] || '';
  const series = new Map();
  let drawing = false;
  const onEvent = (event) => {
    if (keys && !keys.has(event.key)) return;
    if (event.op !== 'put' || event.value == null || event.value.trim() === '') return;
    const y = Number(event.value);
    if (!Number.isFinite(y)) return;
    if (!series.has(event.key)) series.set(event.key, []);
    const points = series.get(event.key);
    points.push([event.version, y]);
    if (points.length > CHART_POINTS) points.shift();
    if (!drawing) {
      drawing = true;
      requestAnimationFrame(() => { drawing = false; drawChart(series); });
    }
  };
  // Seeded from the node's history: since=0 is older than any history, and
  // the 410 names the oldest version the node can resume after.
  const onState = (status, body) => {
    if (status === 410 && body && body.oldest !== undefined) {
      state.chart = watch(prefix, body.oldest, onEvent, onState);
      return;
    }
    $('chart-state').textContent = status === 200 ? 'live' : status === 0 ? 'ended' : 'stopped: ' + body.message;
  };
  state.chart = watch(prefix, 0, onEvent, onState);
  drawChart(series);
}

function commonPrefix(names) {
  return names.reduce((a, b) => {
    let n = 0;
    while (n < a.length && a[n] === b[n]) n++;
    return a.slice(0, n);
  });
}

function drawChart(series) {
  const width = 800, height = 320, pad = 48;
  const all = [...series.values()].flat();
  const svg = el('svg:svg', { viewBox: '0 0 ' + width + ' ' + height, role: 'img' });
  const legend = $('chart-legend');
  legend.replaceChildren();
  if (all.length === 0) {
    svg.append(el('svg:text', { x: pad, y: height / 2, text: 'No numeric values yet under this prefix.' }));
    $('chart').replaceChildren(svg);
    return;
  }
  const xs = all.map((p) => p[0]), ys = all.map((p) => p[1]);
  const [x0, x1, y0, y1] = [Math.min(...xs), Math.max(...xs), Math.min(...ys), Math.max(...ys)];
  const sx = (x) => pad + (x1 === x0 ? 0.5 : (x - x0) / (x1 - x0)) * (width - 2 * pad);
  const sy = (y) => height - pad - (y1 === y0 ? 0.5 : (y - y0) / (y1 - y0)) * (height - 2 * pad);
  svg.append(
    el('svg:line', { class: 'axis', x1: pad, y1: height - pad, x2: width - pad, y2: height - pad }),
    el('svg:line', { class: 'axis', x1: pad, y1: pad, x2: pad, y2: height - pad }),
    el('svg:text', { x: 4, y: pad, text: String(y1) }),
    el('svg:text', { x: 4, y: height - pad, text: String(y0) }),
    el('svg:text', { x: pad, y: height - pad / 3, text: 'version ' + x0 }),
    el('svg:text', { x: width - pad * 2, y: height - pad / 3, text: 'version ' + x1 }));
  let index = 0;
  for (const [key, points] of series) {
    const color = 's' + (index++ % 6);
    const group = el('svg:g', { class: 'series ' + color, 'data-key': key });
    group.append(el('svg:title', { text: key }),
      el('svg:polyline', { class: color, points: points.map((p) => sx(p[0]) + ',' + sy(p[1])).join(' ') }));
    for (const [x, y] of points) group.append(el('svg:circle', { class: 'point', cx: sx(x), cy: sy(y), r: 2.5 }));
    svg.append(group);
    legend.append(el('li', {}, el('span', { class: 'swatch ' + color }), key + ' (' + points.length + ' points, last ' + points[points.length - 1][1] + ')'));
  }
  $('chart').replaceChildren(svg);
}

// --- Node page -------------------------------------------------------------

async function loadNode() {
  const rows = [];
  const health = await fetch('/health', { cache: 'no-store' });
  rows.push(['Health', (await health.json()).status]);
  const response = await api('GET', '/metrics');
  if (!response.ok) {
    rows.push(['Metrics', await message(response)]);
    renderRows($('node-rows'), rows);
    return;
  }
  const metrics = parseMetrics(await response.text());
  const one = (name) => (metrics.get(name) || [{ value: NaN }])[0].value;
  const mib = (bytes) => (bytes / 1048576).toFixed(2) + ' MiB';
  const fsyncs = one('lucid_fsyncs_total');
  rows.push(
    ['Keys', String(one('lucid_keys'))],
    ['Log bytes', mib(one('lucid_log_bytes'))],
    ['Dead bytes', mib(one('lucid_dead_bytes'))],
    ['Compactions', String(one('lucid_compactions_total'))],
    ['Fsyncs', String(fsyncs)],
    ['Fsync time', (one('lucid_fsync_seconds_total') * 1000).toFixed(1) + ' ms in all' +
      (fsyncs > 0 ? ', ' + (one('lucid_fsync_seconds_total') * 1000 / fsyncs).toFixed(2) + ' ms each' : '')],
    ['Watchers', String(one('lucid_watchers'))],
    ['Read-only', one('lucid_read_only') ? 'yes' : 'no'],
    ['Uptime', Math.round(one('lucid_uptime_seconds')) + ' s']);
  renderRows($('node-rows'), rows);
  const byStatus = new Map();
  for (const sample of metrics.get('lucid_requests_total') || []) {
    const status = sample.labels.status || '?';
    byStatus.set(status, (byStatus.get(status) || 0) + sample.value);
  }
  renderRows($('node-requests'), [...byStatus].sort().map(([status, count]) => [status, String(count)]));
}

// Prometheus text: name -> [{labels, value}].
function parseMetrics(text) {
  const metrics = new Map();
  for (const line of text.split('\n')) {
    const match = /^([a-z_]+)(?:\{([^}]*)\})? (\S+)$/.exec(line);
    if (!match) continue;
    const labels = {};
    for (const pair of (match[2] || '').split(',')) {
      const at = pair.indexOf('=');
      if (at > 0) labels[pair.slice(0, at)] = pair.slice(at + 1).replace(/"/g, '');
    }
    if (!metrics.has(match[1])) metrics.set(match[1], []);
    metrics.get(match[1]).push({ labels, value: Number(match[3]) });
  }
  return metrics;
}

function renderRows(body, rows) {
  body.replaceChildren(...rows.map(([name, value]) => el('tr', {}, el('th', { text: name }), el('td', { text: value }))));
}

start().catch((error) => say('The console could not start: ' + error, true));
