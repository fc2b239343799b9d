// api.js — the JSON Connect client and the small DOM and formatting helpers
// every page uses. The bearer token lives in sessionStorage only.
'use strict';

const GM = (window.GM = {});
GM.TOKEN_KEY = 'gpumatch.token';
GM.ROLE_KEY = 'gpumatch.role';
GM.token = () => sessionStorage.getItem(GM.TOKEN_KEY) || '';
GM.role = () => sessionStorage.getItem(GM.ROLE_KEY) || '';

class ApiError extends Error {
  constructor(code, message, status) {
    super(`${code}: ${message}`);
    this.code = code;
    this.apiMessage = message;
    this.status = status;
  }
}
GM.ApiError = ApiError;

// Calls /gpumatch.v1.<service>/<method> with a JSON body. Resolves to the
// decoded answer; rejects with an ApiError carrying the Connect code.
GM.call = async function (service, method, body, token) {
  let res;
  try {
    res = await fetch(`/gpumatch.v1.${service}/${method}`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json', Authorization: 'Bearer ' + (token || GM.token()) },
      body: JSON.stringify(body || {}),
      cache: 'no-store',
      credentials: 'omit',
    });
  } catch (e) {
    throw new ApiError('unavailable', 'cannot reach gpumatchd: ' + e.message, 0);
  }
  const text = await res.text();
  let data = {};
  try {
    data = text ? JSON.parse(text) : {};
  } catch (e) {
    throw new ApiError('internal', `unreadable answer (HTTP ${res.status})`, res.status);
  }
  if (!res.ok) {
    const err = new ApiError(data.code || 'unknown', data.message || `HTTP ${res.status}`, res.status);
    if (err.code === 'unauthenticated' && !token && GM.onUnauthenticated) GM.onUnauthenticated(err);
    throw err;
  }
  return data;
};

// ---- DOM ----------------------------------------------------------------
// h('div', {class: 'x', onclick: fn}, child, 'text', [more]) — text is
// always set as text, never parsed as HTML.
GM.h = function (tag, attrs, ...kids) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
    else if (k === 'text') el.textContent = v;
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  const add = (c) => {
    if (c === undefined || c === null || c === false) return;
    if (Array.isArray(c)) c.forEach(add);
    else el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  };
  kids.forEach(add);
  return el;
};
const h = GM.h;

GM.errorBox = (e) => h('div', { class: 'error', 'data-code': e.code || 'error' },
  e instanceof ApiError ? `${e.code}: ${e.apiMessage}` : String(e.message || e));

// ---- formatting ---------------------------------------------------------
GM.num = (v) => (v === undefined || v === null || v === '' ? 0 : Number(v));
GM.money = (micros, cur) => {
  const v = GM.num(micros) / 1e6;
  return (cur && cur !== 'USD' ? cur + ' ' : '$') + v.toLocaleString('en-US', { minimumFractionDigits: 2, maximumFractionDigits: 2 });
};
GM.hours = (secs) => (GM.num(secs) / 3600).toLocaleString('en-US', { maximumFractionDigits: 1 });
GM.pct = (ppm) => (GM.num(ppm) / 1e4).toFixed(1) + ' %';
GM.when = (us) => {
  const v = GM.num(us);
  if (!v) return '—';
  return new Date(v / 1000).toISOString().replace('T', ' ').slice(0, 19) + 'Z';
};
GM.dur = (us) => {
  let s = Math.round(GM.num(us) / 1e6);
  if (s < 60) return s + 's';
  const d = Math.floor(s / 86400); s -= d * 86400;
  const hh = Math.floor(s / 3600); s -= hh * 3600;
  const m = Math.floor(s / 60); s -= m * 60;
  return [d && d + 'd', hh && hh + 'h', m && m + 'm', !d && !hh && s && s + 's'].filter(Boolean).join(' ');
};
// JOB_STATE_QUEUED -> queued
GM.enumName = (v, prefix) => (v ? String(v).replace(prefix, '').toLowerCase().replace(/_/g, ' ') : '—');
GM.state = (v, prefix) => h('span', { class: 'state', 'data-state': v || '' }, GM.enumName(v, prefix));

// A table: cols = [{label, get(row) -> text|Node, num: bool}]
GM.table = function (cols, rows, opts) {
  opts = opts || {};
  return h('table', { class: opts.cls },
    h('thead', {}, h('tr', {}, cols.map((c) => h('th', { class: c.num ? 'num' : null, scope: 'col' }, c.label)))),
    h('tbody', {}, rows.length
      ? rows.map((r) => h('tr', { 'data-id': opts.id ? opts.id(r) : null },
        cols.map((c) => h('td', { class: c.num ? 'num' : null }, c.get(r)))))
      : h('tr', {}, h('td', { colspan: cols.length, class: 'muted' }, opts.empty || 'nothing here'))));
};

// A CSV file of the same columns, offered for download.
GM.csvButton = function (name, cols, rowsFn) {
  return h('button', {
    type: 'button', class: 'secondary', 'data-csv': name,
    onclick: () => {
      const esc = (s) => {
        s = String(s === undefined || s === null ? '' : s);
        return /[",\n]/.test(s) ? '"' + s.replace(/"/g, '""') + '"' : s;
      };
      const rows = rowsFn();
      const text = [cols.map((c) => esc(c.label)).join(',')]
        .concat(rows.map((r) => cols.map((c) => esc(c.csv ? c.csv(r) : c.get(r))).join(','))).join('\n') + '\n';
      const a = h('a', { href: URL.createObjectURL(new Blob([text], { type: 'text/csv' })), download: name + '.csv' });
      document.body.append(a);
      a.click();
      a.remove();
    },
  }, 'Download CSV');
};

// Window choices shared by the charts: [label, seconds, step seconds].
GM.WINDOWS = [['1 hour', 3600, 60], ['6 hours', 21600, 300], ['24 hours', 86400, 900], ['7 days', 604800, 3600], ['30 days', 2592000, 14400]];
GM.windowSelect = function (value, onchange) {
  return h('label', {}, 'Window',
    h('select', { 'data-window': '1', onchange: (e) => onchange(Number(e.target.value)) },
      GM.WINDOWS.map(([l, s]) => h('option', { value: s, selected: s === value }, l))));
};
GM.windowOf = (secs) => {
  const w = GM.WINDOWS.find((x) => x[1] === secs) || GM.WINDOWS[0];
  const now = Date.now() * 1000;
  return { window: { startUs: String(now - w[1] * 1e6), endUs: '0' }, stepS: w[2] };
};

// Server-side paging: keeps the tokens of the pages seen.
GM.Pager = class {
  constructor(onchange) { this.tokens = ['']; this.i = 0; this.next = ''; this.onchange = onchange; }
  get token() { return this.tokens[this.i]; }
  reset() { this.tokens = ['']; this.i = 0; }
  seen(next) { this.next = next || ''; }
  el() {
    return h('div', { class: 'pager' },
      h('button', { type: 'button', class: 'secondary', disabled: this.i === 0, onclick: () => { this.i--; this.onchange(); } }, '← Previous'),
      h('span', { class: 'muted' }, `page ${this.i + 1}`),
      h('button', { type: 'button', class: 'secondary', 'data-next': '1', disabled: !this.next, onclick: () => { this.tokens[this.i + 1] = this.next; this.i++; this.onchange(); } }, 'Next →'));
  }
};
