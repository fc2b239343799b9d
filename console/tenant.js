// tenant.js — a tenant's pages: jobs (live states, explain, logs, cancel),
// submit from a pasted YAML or JSON spec, spend over time. Admins see every
// tenant's jobs on the same pages.
'use strict';

(function () {
  const h = GM.h;
  const J = (m, b) => GM.call('JobService', m, b);
  const TERMINAL = ['JOB_STATE_SUCCEEDED', 'JOB_STATE_FAILED', 'JOB_STATE_CANCELLED', 'JOB_STATE_PREEMPTED'];
  const STATES = ['JOB_STATE_QUEUED', 'JOB_STATE_RUNNING', 'JOB_STATE_STOPPING'].concat(TERMINAL);

  // ---- jobs -------------------------------------------------------------------
  const jobs = { title: 'Jobs', role: 'tenant', state: '' };
  jobs.render = async (el, ctx) => {
    ctx.pager = new GM.Pager(() => jobs.refresh(el, ctx));
    ctx.body = h('div', { class: 'panel' });
    ctx.msg = h('div', {});
    el.append(h('h1', {}, GM.role() === 'admin' ? 'Jobs (every tenant)' : 'My jobs'),
      h('div', { class: 'toolbar' }, h('label', {}, 'State', h('select', { id: 'f-jobstate', onchange: (e) => { jobs.state = e.target.value; ctx.pager.reset(); jobs.refresh(el, ctx); } },
        h('option', { value: '' }, 'any'), STATES.map((s) => h('option', { value: s, selected: jobs.state === s }, GM.enumName(s, 'JOB_STATE_'))))),
      GM.role() === 'tenant' ? h('a', { href: '#/tenant/submit' }, 'Submit a job') : null), ctx.msg, ctx.body);
    await jobs.refresh(el, ctx);
  };
  jobs.cancel = async (ctx, id) => {
    ctx.msg.replaceChildren();
    try {
      await J('CancelJob', { jobId: id, reason: 'cancelled from the console' });
      await jobs.refresh(ctx.el, ctx);
    } catch (e) { ctx.msg.append(GM.errorBox(e)); }
  };
  jobs.refresh = async (el, ctx) => {
    const r = await J('ListJobs', { pageSize: 50, pageToken: ctx.pager.token, states: jobs.state ? [jobs.state] : [] });
    ctx.pager.seen(r.nextPageToken);
    const now = Date.now() * 1000;
    ctx.body.replaceChildren(GM.table([
      { label: 'job', get: (j) => h('a', { href: `#/tenant/job/${j.id}` }, j.id) }, { label: 'name', get: (j) => j.name || '' },
      GM.role() === 'admin' ? { label: 'tenant', get: (j) => j.tenantId } : null,
      { label: 'state', get: (j) => GM.state(j.state, 'JOB_STATE_') },
      { label: 'GPUs', num: true, get: (j) => `${GM.num((j.spec || {}).nodeCount) || 1}×${GM.num((j.spec || {}).gpusPerNode)}` },
      { label: 'submitted', get: (j) => GM.when(j.submittedAtUs) },
      { label: 'age', num: true, get: (j) => GM.dur(now - GM.num(j.submittedAtUs)) },
      { label: '', get: (j) => (TERMINAL.includes(j.state) ? '' : h('button', { type: 'button', class: 'secondary cancel', onclick: () => jobs.cancel(ctx, j.id) }, 'Cancel')) },
    ].filter(Boolean), r.jobs || [], { id: (j) => j.id, cls: 'jobs', empty: 'no jobs yet' }), ctx.pager.el());
  };
  GM.pages['tenant/jobs'] = jobs;

  // ---- one job -----------------------------------------------------------------
  const job = { title: 'Job', role: 'tenant' };
  job.render = async (el, ctx) => {
    ctx.id = ctx.args[0];
    ctx.body = h('div', {});
    ctx.msg = h('div', {});
    ctx.logs = h('div', { class: 'panel', id: 'logs' }, h('h2', {}, 'Logs'));
    el.append(h('h1', {}, `Job ${ctx.id}`), ctx.msg, ctx.body, ctx.logs);
    await job.refresh(el, ctx);
  };
  job.refresh = async (el, ctx) => {
    const j = (await J('GetJob', { jobId: ctx.id })).job || {};
    const s = j.spec || {};
    const explain = h('div', { id: 'explain' });
    const kv = (rows) => GM.table([{ label: 'field', get: (x) => x[0] }, { label: 'value', get: (x) => x[1] }], rows);
    ctx.body.replaceChildren(
      h('div', { class: 'toolbar' }, TERMINAL.includes(j.state) ? null : h('button', { type: 'button', id: 'cancel', onclick: async () => {
        ctx.msg.replaceChildren();
        try { await J('CancelJob', { jobId: ctx.id, reason: 'cancelled from the console' }); await job.refresh(el, ctx); } catch (e) { ctx.msg.append(GM.errorBox(e)); }
      } }, 'Cancel job')),
      h('div', { class: 'grid2' },
        h('div', { class: 'panel' }, h('h2', {}, 'Status'), kv([['name', j.name || '—'], ['state', GM.state(j.state, 'JOB_STATE_')], ['tenant', j.tenantId],
          ['attempts', GM.num(j.attempts)], ['submitted', GM.when(j.submittedAtUs)],
          ['placement', (j.placement || []).map((p) => `node ${p.nodeId} GPUs ${(p.gpuIndexes || []).join(',')}`).join('; ') || '—'],
          ['failure', j.failure ? GM.enumName(j.failure, 'FAILURE_REASON_') : '—']])),
        h('div', { class: 'panel' }, h('h2', {}, 'Spec'), h('pre', {}, JSON.stringify(s, null, 2)))),
      j.state === 'JOB_STATE_QUEUED' ? h('div', { class: 'panel' }, h('h2', {}, 'Why is it waiting?'), explain) : null);
    if (j.state === 'JOB_STATE_QUEUED') await GM.explainInto(explain, ctx.id);
    await job.logs(ctx);
  };
  // Logs come from JobService.GetJobLogs where the server has it.
  job.logs = async (ctx) => {
    try {
      // the last 64 KiB of the latest attempt's output
      const r = await J('GetJobLogs', { jobId: ctx.id, offset: '-65536' });
      const bytes = Uint8Array.from(atob(r.data || ''), (ch) => ch.charCodeAt(0));
      const text = new TextDecoder().decode(bytes);
      ctx.logs.replaceChildren(h('h2', {}, 'Logs'), h('pre', { id: 'log-text' }, text || '(no output yet)'),
        r.truncated ? h('p', { class: 'muted' }, `output was cut at ${GM.num(r.truncatedAt)} bytes`) : null);
    } catch (e) {
      ctx.logs.replaceChildren(h('h2', {}, 'Logs'), e.code === 'unimplemented'
        ? h('p', { class: 'muted' }, 'This server does not serve job logs.') : GM.errorBox(e));
    }
  };
  GM.pages['tenant/job'] = job;

  // ---- submit ------------------------------------------------------------------
  // A YAML subset (block maps and lists, flow lists, quoted and plain
  // scalars, comments): what job spec files use. JSON is YAML too.
  GM.parseYaml = function (text) {
    const t = text.trim();
    if (t.startsWith('{')) return JSON.parse(t);
    const lines = [];
    text.split('\n').forEach((raw, i) => {
      let s = '', q = null;
      for (let k = 0; k < raw.length; k++) {
        const c = raw[k];
        if (q) { s += c; if (c === q && raw[k - 1] !== '\\') q = null; continue; }
        if (c === '"' || c === "'") q = c;
        if (c === '#' && (k === 0 || /\s/.test(raw[k - 1]))) break;
        s += c;
      }
      if (s.trim()) lines.push({ ind: s.search(/\S/), text: s.trim(), no: i + 1 });
    });
    const scalar = (v, no) => {
      v = v.trim();
      if (v === '' || v === '~' || v === 'null') return null;
      if (v.startsWith('"')) { try { return JSON.parse(v); } catch (e) { throw new Error(`line ${no}: bad quoted string`); } }
      if (v.startsWith("'")) return v.slice(1, -1).replace(/''/g, "'");
      if (v.startsWith('[')) {
        if (!v.endsWith(']')) throw new Error(`line ${no}: unclosed [`);
        const inner = v.slice(1, -1).trim();
        if (!inner) return [];
        const out = []; let cur = '', q = null;
        for (const c of inner) {
          if (q) { cur += c; if (c === q) q = null; continue; }
          if (c === '"' || c === "'") { q = c; cur += c; continue; }
          if (c === ',') { out.push(scalar(cur, no)); cur = ''; continue; }
          cur += c;
        }
        out.push(scalar(cur, no));
        return out;
      }
      if (v.startsWith('{')) return JSON.parse(v);
      if (v === 'true') return true;
      if (v === 'false') return false;
      if (/^-?\d+(\.\d+)?([eE][-+]?\d+)?$/.test(v)) return Number(v);
      return v;
    };
    let i = 0;
    const block = (ind) => {
      if (i >= lines.length) return null;
      if (lines[i].text.startsWith('- ') || lines[i].text === '-') {
        const arr = [];
        while (i < lines.length && lines[i].ind === ind && (lines[i].text.startsWith('- ') || lines[i].text === '-')) {
          const l = lines[i], rest = l.text.slice(1).trim();
          if (!rest) { i++; arr.push(block(lines[i] ? lines[i].ind : ind + 2)); continue; }
          if (/^[^"'\[{][^:]*:(\s|$)/.test(rest)) {
            lines[i] = { ind: ind + 2, text: rest, no: l.no };
            arr.push(block(ind + 2));
          } else { arr.push(scalar(rest, l.no)); i++; }
        }
        return arr;
      }
      const obj = {};
      while (i < lines.length && lines[i].ind === ind) {
        const l = lines[i];
        const m = /^("[^"]*"|'[^']*'|[^:]+):(\s+(.*))?$/.exec(l.text);
        if (!m) throw new Error(`line ${l.no}: expected "key: value"`);
        const key = m[1].replace(/^["']|["']$/g, '').trim();
        i++;
        if (m[3] !== undefined && m[3] !== '') obj[key] = scalar(m[3], l.no);
        else if (i < lines.length && lines[i].ind > ind) obj[key] = block(lines[i].ind);
        else if (i < lines.length && lines[i].ind === ind && lines[i].text.startsWith('- ')) obj[key] = block(ind);
        else obj[key] = null;
      }
      if (i < lines.length && lines[i].ind > ind) throw new Error(`line ${lines[i].no}: unexpected indentation`);
      return obj;
    };
    const out = block(lines.length ? lines[0].ind : 0);
    if (i < lines.length) throw new Error(`line ${lines[i].no}: unexpected indentation`);
    return out;
  };

  class FieldError extends Error { constructor(field, msg) { super(`${field}: ${msg}`); this.field = field; this.code = 'invalid_argument'; this.apiMessage = `${field}: ${msg}`; } }
  const DUR = { s: 1, m: 60, h: 3600, d: 86400 };
  // The spec file conveniences the CLI takes (docs/jobs.md), turned into
  // the API's fields; the server checks everything else.
  GM.specFromFile = function (doc) {
    if (!doc || typeof doc !== 'object' || Array.isArray(doc)) throw new FieldError('spec', 'expected a mapping with name and spec');
    const spec = Object.assign({}, doc.spec || {});
    if ('maxDuration' in spec) {
      const v = String(spec.maxDuration);
      const parts = [...v.matchAll(/(\d+(?:\.\d+)?)([smhd])/g)];
      if (!parts.length || parts.map((p) => p[0]).join('') !== v) throw new FieldError('spec.maxDuration', 'expected a duration such as "90m" or "2h"');
      spec.maxDurationUs = String(Math.round(parts.reduce((a, p) => a + Number(p[1]) * DUR[p[2]], 0) * 1e6));
      delete spec.maxDuration;
    }
    if ('maxPricePerGpuHour' in spec) {
      const v = String(spec.maxPricePerGpuHour);
      if (!/^\d+(\.\d{1,6})?$/.test(v)) throw new FieldError('spec.maxPricePerGpuHour', 'expected an amount such as "2.50"');
      spec.maxPricePerGpuHourMicros = String(Math.round(Number(v) * 1e6));
      delete spec.maxPricePerGpuHour;
    }
    for (const [k, prefix] of [['kind', 'JOB_KIND_'], ['precision', 'PRECISION_'], ['priorityClass', 'PRIORITY_CLASS_']])
      if (typeof spec[k] === 'string' && !spec[k].startsWith(prefix)) spec[k] = prefix + spec[k].toUpperCase();
    const req = { spec, idempotencyKey: doc.idempotencyKey || 'console-' + Date.now().toString(36) + '-' + Math.random().toString(36).slice(2, 10) };
    if (doc.name !== undefined) req.name = String(doc.name);
    for (const k of Object.keys(doc)) if (!['name', 'spec', 'idempotencyKey'].includes(k)) throw new FieldError(k, 'unknown field (expected name and spec)');
    return req;
  };

  const EXAMPLE = 'name: hello\nspec:\n  gpusPerNode: 1\n  maxDuration: 10m\n  command: ["sh", "-c", "echo hello; sleep 30"]\n';
  const submit = { title: 'Submit a job', role: 'tenant' };
  submit.render = async (el) => {
    const ta = h('textarea', { id: 'spec', spellcheck: 'false', 'aria-label': 'Job spec (YAML or JSON)', 'aria-describedby': 'spec-error' }, EXAMPLE);
    const err = h('div', { id: 'spec-error', 'aria-live': 'polite' });
    const done = h('div', { id: 'submitted' });
    const btn = h('button', { type: 'submit', id: 'submit' }, 'Submit');
    el.append(h('h1', {}, 'Submit a job'),
      h('p', { class: 'muted' }, 'Paste a job file as the gpumatch command takes it (YAML or JSON: name and spec; see docs/jobs.md).'),
      h('form', { onsubmit: async (ev) => {
        ev.preventDefault();
        err.replaceChildren(); done.replaceChildren(); ta.classList.remove('invalid');
        btn.disabled = true;
        try {
          let doc;
          try { doc = GM.parseYaml(ta.value); } catch (e) { throw new FieldError('spec file', e.message); }
          const r = await J('SubmitJob', GM.specFromFile(doc));
          const id = (r.job || {}).id;
          done.append(h('p', { class: 'ok' }, 'Submitted: ', h('a', { href: `#/tenant/job/${id}` }, `job ${id}`), r.created === false ? ' (an earlier submit with this key)' : ''));
        } catch (e) {
          const msg = e.apiMessage || e.message;
          const field = (/^([\w.\[\]"]+):/.exec(msg) || [])[1] || '';
          ta.classList.add('invalid');
          err.append(h('div', { class: 'field-error', 'data-field': field, 'data-code': e.code || '' }, field ? h('strong', {}, field) : null, field ? msg.slice(field.length) : msg,
            e.code ? h('span', { class: 'muted' }, ` (${e.code})`) : null));
        } finally { btn.disabled = false; }
      } }, ta, err, h('div', { class: 'toolbar' }, btn)), done);
  };
  GM.pages['tenant/submit'] = submit;

  // ---- spend -------------------------------------------------------------------
  const spend = { title: 'Spend', role: 'tenant', win: 86400 };
  spend.render = async (el, ctx) => {
    ctx.body = h('div', {});
    el.append(h('h1', {}, 'Spend'), h('div', { class: 'toolbar' }, GM.windowSelect(spend.win, (v) => { spend.win = v; spend.refresh(el, ctx); })), ctx.body);
    await spend.refresh(el, ctx);
  };
  spend.refresh = async (el, ctx) => {
    const w = GM.windowOf(spend.win);
    const [s, ser] = await Promise.all([J('GetSpend', { window: w.window }), J('GetSpendSeries', w)]);
    const acct = s.account || {}, sp = s.spend || {};
    const pts = ((ser.series || {}).points || []);
    const x = (q) => GM.num(q.atUs);
    let cum = 0;
    ctx.body.replaceChildren(
      h('div', { class: 'cards' },
        h('div', { class: 'card' }, h('div', { class: 'v', 'data-k': 'spend' }, GM.money(sp.spendMicros)), h('div', { class: 'k' }, 'spent in the window')),
        h('div', { class: 'card' }, h('div', { class: 'v' }, GM.hours(sp.gpuSeconds)), h('div', { class: 'k' }, 'GPU-hours')),
        h('div', { class: 'card' }, h('div', { class: 'v' }, GM.money(acct.balanceMicros)), h('div', { class: 'k' }, 'balance')),
        h('div', { class: 'card' }, h('div', { class: 'v' }, GM.money(acct.pendingDebitsMicros)), h('div', { class: 'k' }, 'held for running jobs'))),
      h('div', { class: 'grid2' },
        h('div', { class: 'panel' }, GM.lineChart({ id: 'spend', title: 'Spend per step', series: [{ name: 'spend', points: pts.map((q) => [x(q), GM.num(q.revenueMicros) / 1e6]) }],
          xFmt: GM.timeFmt(spend.win), yFmt: (y) => '$' + y.toFixed(2) })),
        h('div', { class: 'panel' }, GM.lineChart({ id: 'spend-cumulative', title: 'Cumulative spend', series: [{ name: 'cumulative', points: pts.map((q) => [x(q), (cum += GM.num(q.revenueMicros) / 1e6)]) }],
          xFmt: GM.timeFmt(spend.win), yFmt: (y) => '$' + y.toFixed(2) }))));
  };
  GM.pages['tenant/spend'] = spend;
})();
