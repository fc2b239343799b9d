// admin.js — the admin's pages: fleet, nodes and a node, queue, revenue,
// ledger audit, policy (current, history with diffs, simulate).
'use strict';

(function () {
  const h = GM.h;
  const A = (m, b) => GM.call('AdminService', m, b);

  // ---- fleet ----------------------------------------------------------------
  const fleet = { title: 'Fleet', role: 'admin', win: 3600 };
  fleet.render = async (el, ctx) => {
    ctx.summary = h('div', { id: 'fleet-summary' });
    ctx.charts = h('div', { class: 'grid2' });
    el.append(h('h1', {}, 'Fleet'), ctx.summary,
      h('div', { class: 'toolbar' }, GM.windowSelect(fleet.win, (v) => { fleet.win = v; fleet.charts(ctx); })), ctx.charts);
    await fleet.refresh(el, ctx);
  };
  fleet.refresh = async (el, ctx) => {
    const s = await A('GetFleetSummary', {});
    const t = s.totals || {};
    const card = (k, label, v) => h('div', { class: 'card' }, h('div', { class: 'v', 'data-k': k }, GM.num(v)), h('div', { class: 'k' }, label));
    const byName = (list, prefix) => GM.table([{ label: 'state', get: (r) => GM.enumName(r.name, prefix) }, { label: 'count', num: true, get: (r) => GM.num(r.count) }], list || []);
    ctx.summary.replaceChildren(
      h('div', { class: 'cards' }, card('total', 'GPUs', t.total), card('free', 'free', t.free), card('busy', 'busy', t.busy),
        card('unhealthy', 'unhealthy', t.unhealthy), card('unverified', 'unverified (idle)', t.unverified), card('offline', 'offline (idle)', t.offline)),
      h('div', { class: 'panel' }, h('h2', {}, 'GPUs by model'), GM.table([
        { label: 'model', get: (r) => r.gpuModel },
        { label: 'total', num: true, get: (r) => GM.num(r.total) }, { label: 'free', num: true, get: (r) => GM.num(r.free) },
        { label: 'busy', num: true, get: (r) => GM.num(r.busy) }, { label: 'unhealthy', num: true, get: (r) => GM.num(r.unhealthy) },
        { label: 'unverified', num: true, get: (r) => GM.num(r.unverified) }, { label: 'offline', num: true, get: (r) => GM.num(r.offline) },
      ], s.gpuModels || [], { id: (r) => r.gpuModel, cls: 'by-model' })),
      h('div', { class: 'grid2' },
        h('div', { class: 'panel' }, h('h2', {}, 'Nodes by state'), byName(s.nodesByState, 'NODE_STATE_')),
        h('div', { class: 'panel' }, h('h2', {}, 'Jobs by state'), byName(s.jobsByState, 'JOB_STATE_'))));
    await fleet.charts(ctx);
  };
  fleet.charts = async (ctx) => {
    const w = GM.windowOf(fleet.win);
    const r = await A('GetFleetSeries', w);
    const se = (r.series || [])[0] || { points: [] };
    const pts = (se.points || []).filter((p) => GM.num(p.samples) > 0);
    const x = (p) => GM.num(p.atUs);
    ctx.charts.replaceChildren(
      h('div', { class: 'panel' }, GM.lineChart({ id: 'utilization', title: 'Utilization (busy / all GPUs)', yMax: 100,
        series: [{ name: 'utilization', points: pts.map((p) => [x(p), GM.num(p.utilizationPpm) / 1e4]) }],
        xFmt: GM.timeFmt(fleet.win), yFmt: (y) => y.toFixed(0) + ' %' })),
      h('div', { class: 'panel' }, GM.lineChart({ id: 'gpu-states', title: 'GPUs by state (mean per step)',
        series: [['busy', 'gpusBusy'], ['free', 'gpusFree'], ['unhealthy', 'gpusUnhealthy'], ['unverified', 'gpusUnverified']]
          .map(([n, k]) => ({ name: n, points: pts.map((p) => [x(p), GM.num(p[k])]) })),
        xFmt: GM.timeFmt(fleet.win), yFmt: (y) => y.toFixed(0) })));
  };
  GM.pages['admin/fleet'] = fleet;

  // ---- nodes ----------------------------------------------------------------
  const nodes = { title: 'Nodes', role: 'admin' };
  GM.nodeColumns = (earn) => [
    { label: 'id', get: (n) => h('a', { href: `#/${GM.role() === 'operator' ? 'operator' : 'admin'}/node/${n.id}` }, n.id), csv: (n) => n.id },
    { label: 'name', get: (n) => n.name },
    { label: 'operator', get: (n) => n.operatorId },
    { label: 'region', get: (n) => n.region },
    { label: 'state', get: (n) => GM.state(n.state, 'NODE_STATE_'), csv: (n) => n.state },
    { label: 'verification', get: (n) => GM.enumName((n.verification || {}).status, 'VERIFICATION_STATUS_') },
    { label: 'GPUs', num: true, get: (n) => `${(n.busyGpuIndexes || []).length}/${(n.gpus || []).length} busy` },
    { label: 'model', get: (n) => ((n.gpus || [])[0] || {}).model || '' },
    { label: 'health', get: (n) => ((n.unhealthyGpuIndexes || []).length ? `✖ ${n.unhealthyGpuIndexes.length} unhealthy` : 'ok') },
    { label: 'reliability', num: true, get: (n) => GM.pct((n.reliability || {}).scorePpm) },
    { label: 'price / GPU-h', num: true, get: (n) => GM.money(n.pricePerGpuHourMicros) },
    { label: 'earned (24 h)', num: true, get: (n) => GM.money((earn && earn[n.id]) || 0) },
  ];
  GM.NODE_STATES = ['NODE_STATE_REGISTERED', 'NODE_STATE_READY', 'NODE_STATE_DRAINING', 'NODE_STATE_CORDONED', 'NODE_STATE_LOST', 'NODE_STATE_DISABLED'];
  GM.nodesPage = (role) => {
    const p = { title: role === 'admin' ? 'Nodes' : 'My nodes', role, filt: { state: '', region: '', op: '' } };
    p.render = async (el, ctx) => {
      ctx.pager = new GM.Pager(() => p.refresh(el, ctx));
      ctx.body = h('div', { class: 'panel' });
      const f = p.filt;
      const apply = () => { ctx.pager.reset(); p.refresh(el, ctx); };
      el.append(h('h1', {}, p.title), h('div', { class: 'toolbar' },
        h('label', {}, 'State', h('select', { id: 'f-state', onchange: (e) => { f.state = e.target.value; apply(); } },
          h('option', { value: '' }, 'any'), GM.NODE_STATES.map((s) => h('option', { value: s, selected: f.state === s }, GM.enumName(s, 'NODE_STATE_'))))),
        h('label', {}, 'Region', h('input', { id: 'f-region', value: f.region, size: 10, onchange: (e) => { f.region = e.target.value.trim(); apply(); } })),
        role === 'admin' && h('label', {}, 'Operator id', h('input', { id: 'f-op', value: f.op, size: 6, onchange: (e) => { f.op = e.target.value.trim(); apply(); } }))),
      ctx.body);
      await p.refresh(el, ctx);
    };
    p.refresh = async (el, ctx) => {
      const f = p.filt;
      const req = { pageSize: 50, pageToken: ctx.pager.token, states: f.state ? [f.state] : [], region: f.region };
      if (f.op) req.operatorId = f.op;
      const [r, earn] = await Promise.all([GM.call('NodeService', 'ListNodes', req), p.earnings()]);
      ctx.pager.seen(r.nextPageToken);
      const rows = r.nodes || [];
      const cols = GM.nodeColumns(earn);
      ctx.body.replaceChildren(GM.table(cols, rows, { id: (n) => n.id, cls: 'nodes', empty: 'no nodes match' }), ctx.pager.el(),
        GM.csvButton('nodes', cols, () => rows));
    };
    // gross revenue per node over the last day
    p.earnings = async () => {
      const w = { window: { startUs: String(Date.now() * 1000 - 86400e6), endUs: '0' } };
      const out = {};
      const r = role === 'admin' ? await A('GetRevenueReport', w) : await GM.call('NodeService', 'GetEarnings', w);
      for (const n of r.nodes || []) out[n.nodeId] = role === 'admin' ? GM.num(n.grossMicros) : GM.num(n.operatorMicros);
      return out;
    };
    return p;
  };
  GM.pages['admin/nodes'] = GM.nodesPage('admin');

  // ---- one node (admin and operator) ---------------------------------------------
  GM.nodePage = (role) => {
    const p = { title: 'Node', role, win: 3600 };
    p.render = async (el, ctx) => {
      ctx.id = ctx.args[0];
      ctx.info = h('div', {});
      ctx.charts = h('div', { class: 'grid2' });
      ctx.msg = h('div', {});
      el.append(h('h1', {}, `Node ${ctx.id}`), ctx.msg, ctx.info,
        h('div', { class: 'toolbar' }, GM.windowSelect(p.win, (v) => { p.win = v; p.charts(ctx); })), ctx.charts);
      await p.refresh(el, ctx);
    };
    p.action = async (ctx, svc, m, body) => {
      ctx.msg.replaceChildren();
      try {
        await GM.call(svc, m, body);
        await p.refresh(ctx.el, ctx);
      } catch (e) { ctx.msg.append(GM.errorBox(e)); }
    };
    p.refresh = async (el, ctx) => {
      const r = await GM.call('NodeService', 'GetNode', { nodeId: ctx.id });
      const n = r.node || {};
      const v = n.verification || {}, rel = n.reliability || {};
      const st = n.state;
      const buttons = role === 'admin'
        ? [st === 'NODE_STATE_CORDONED'
          ? h('button', { type: 'button', id: 'uncordon', onclick: () => p.action(ctx, 'AdminService', 'UncordonNode', { nodeId: ctx.id }) }, 'Uncordon')
          : h('button', { type: 'button', id: 'cordon', onclick: () => p.action(ctx, 'AdminService', 'CordonNode', { nodeId: ctx.id, reason: 'from the console' }) }, 'Cordon')]
        : [st === 'NODE_STATE_DRAINING'
          ? h('button', { type: 'button', id: 'undrain', onclick: () => p.action(ctx, 'NodeService', 'UndrainNode', { nodeId: ctx.id }) }, 'Undrain')
          : h('button', { type: 'button', id: 'drain', onclick: () => p.action(ctx, 'NodeService', 'DrainNode', { nodeId: ctx.id, reason: 'from the console' }) }, 'Drain')];
      const kv = (rows) => GM.table([{ label: 'field', get: (x) => x[0] }, { label: 'value', get: (x) => x[1] }], rows);
      ctx.info.replaceChildren(
        h('div', { class: 'toolbar' }, buttons),
        h('div', { class: 'grid2' },
          h('div', { class: 'panel' }, h('h2', {}, 'Node'), kv([['name', n.name], ['operator', n.operatorId], ['region', n.region],
            ['state', GM.state(st, 'NODE_STATE_')], ['state reason', n.stateReason || '—'], ['price / GPU-hour', GM.money(n.pricePerGpuHourMicros)],
            ['last heartbeat', GM.when(n.lastHeartbeatUs)], ['health', n.healthMessage || 'ok'], ['agent', n.agentVersion || '—']])),
          h('div', { class: 'panel', id: 'verification' }, h('h2', {}, 'Verification and reliability'), kv([
            ['status', GM.enumName(v.status, 'VERIFICATION_STATUS_')], ['verified at', GM.when(v.verifiedAtUs)], ['expires', GM.when(v.expiresAtUs)],
            ['challenges', `${GM.num(v.attempts)} issued, ${GM.num(v.failures)} failed`], ['last failure', v.lastFailure || '—'],
            ['reliability score', GM.pct(rel.scorePpm)], ['heartbeat uptime', GM.pct(rel.heartbeatUptimePpm)], ['lease success', GM.pct(rel.leaseSuccessPpm)]]))),
        h('div', { class: 'panel' }, h('h2', {}, 'GPUs'), GM.table([
          { label: 'index', num: true, get: (g) => GM.num(g.index) }, { label: 'model', get: (g) => g.model },
          { label: 'memory', num: true, get: (g) => `${GM.num(g.memoryMib)} MiB` }, { label: 'uuid', get: (g) => g.uuid || '' },
          { label: 'now', get: (g) => ((n.unhealthyGpuIndexes || []).includes(GM.num(g.index)) ? '✖ unhealthy' : (n.busyGpuIndexes || []).includes(GM.num(g.index)) ? '■ busy' : '□ idle') },
        ], n.gpus || [])));
      await p.charts(ctx);
    };
    p.charts = async (ctx) => {
      const w = GM.windowOf(p.win);
      const r = await GM.call('NodeService', 'GetNodeSeries', Object.assign(w, { nodeId: ctx.id }));
      const pts = ((r.series || {}).points || []);
      const x = (q) => GM.num(q.atUs);
      ctx.charts.replaceChildren(
        h('div', { class: 'panel' }, GM.lineChart({ id: 'node-utilization', title: 'Utilization', yMax: 100,
          series: [{ name: 'utilization', points: pts.filter((q) => GM.num(q.samples)).map((q) => [x(q), GM.num(q.utilizationPpm) / 1e4]) }],
          xFmt: GM.timeFmt(p.win), yFmt: (y) => y.toFixed(0) + ' %' })),
        h('div', { class: 'panel' }, GM.lineChart({ id: 'node-revenue', title: 'Revenue per step (tenants paid)',
          series: [{ name: 'revenue', points: pts.map((q) => [x(q), GM.num(q.revenueMicros) / 1e6]) }],
          xFmt: GM.timeFmt(p.win), yFmt: (y) => '$' + y.toFixed(2) })));
    };
    return p;
  };
  GM.pages['admin/node'] = GM.nodePage('admin');

  // ---- queue ----------------------------------------------------------------
  const queue = { title: 'Queue', role: 'admin' };
  queue.render = async (el, ctx) => {
    ctx.summary = h('div', {});
    ctx.list = h('div', { class: 'panel' });
    ctx.pager = new GM.Pager(() => queue.list(ctx));
    ctx.open = {};
    el.append(h('h1', {}, 'Queue'), ctx.summary, h('h2', {}, 'Queued jobs'), ctx.list);
    await queue.refresh(el, ctx);
  };
  queue.refresh = async (el, ctx) => {
    const s = await A('GetFleetSummary', {});
    const labels = ['≤10s', '≤30s', '≤1m', '≤5m', '≤15m', '≤1h', '≤4h', '≤1d', '>1d'];
    ctx.summary.replaceChildren(h('div', { class: 'grid2' },
      h('div', { class: 'panel' }, h('h2', {}, 'Pending by class'),
        GM.table([{ label: 'class', get: (r) => GM.enumName(r.name, 'PRIORITY_CLASS_') }, { label: 'queued', num: true, get: (r) => GM.num(r.count) }], s.queuedByClass || [], { cls: 'by-class' }),
        h('p', {}, `Wait so far: median ${GM.dur(GM.num(s.queueWaitP50S) * 1e6)}, 95th percentile ${GM.dur(GM.num(s.queueWaitP95S) * 1e6)}.`)),
      h('div', { class: 'panel' }, GM.barChart({ id: 'queue-wait', title: 'How long queued jobs have waited',
        bars: (s.queueWait || []).map((b, i) => ({ label: labels[i] || '', value: GM.num(b.count) })), yFmt: (v) => v.toFixed(0) }))));
    await queue.list(ctx);
  };
  GM.explainText = (ex) => {
    if (!ex) return 'no explanation (the job is not queued)';
    const parts = [ex.summary || `${GM.num(ex.fitNodes)}/${GM.num(ex.totalNodes)} nodes fit`];
    if (ex.queuePosition) parts.push(`queue position ${ex.queuePosition}`);
    if (ex.fleetFeasible === false || ex.fleetFeasible === undefined) parts.push('no node of the fleet could host it even idle');
    if (ex.reservation) parts.push(`holds a reservation, expected start ${GM.when(ex.reservation.expectedStartUs)}`);
    return parts.join(' · ');
  };
  GM.explainInto = async (cell, id) => {
    cell.replaceChildren(h('span', { class: 'muted' }, 'asking the scheduler…'));
    try {
      const r = await GM.call('JobService', 'ExplainJob', { jobId: id });
      cell.replaceChildren(h('div', { class: 'explanation', 'data-job': id }, GM.explainText(r.explanation),
        (r.explanation && r.explanation.counts || []).length ? h('ul', {}, r.explanation.counts.map((c) => h('li', {}, `${GM.num(c.nodeCount)} nodes: ${c.text || GM.enumName(c.reason, 'EXPLAIN_REASON_')}`))) : null));
    } catch (e) { cell.replaceChildren(GM.errorBox(e)); }
  };
  queue.list = async (ctx) => {
    const r = await GM.call('JobService', 'ListJobs', { pageSize: 25, pageToken: ctx.pager.token, states: ['JOB_STATE_QUEUED'] });
    ctx.pager.seen(r.nextPageToken);
    const jobs = r.jobs || [];
    const now = Date.now() * 1000;
    const rows = [];
    for (const j of jobs) {
      const cell = h('td', { colspan: 7 });
      rows.push(h('tr', { 'data-id': j.id },
        h('td', {}, h('a', { href: `#/tenant/job/${j.id}` }, j.id)), h('td', {}, j.name || ''), h('td', {}, j.tenantId),
        h('td', {}, GM.enumName((j.spec || {}).priorityClass || 'PRIORITY_CLASS_NORMAL', 'PRIORITY_CLASS_')),
        h('td', { class: 'num' }, `${GM.num((j.spec || {}).nodeCount) || 1}×${GM.num((j.spec || {}).gpusPerNode)}`),
        h('td', { class: 'num' }, GM.dur(now - GM.num(j.submittedAtUs))),
        h('td', {}, h('button', { type: 'button', class: 'secondary explain', onclick: () => { ctx.open[j.id] = true; GM.explainInto(cell, j.id); } }, 'Explain'))));
      rows.push(h('tr', { class: 'explain-row' }, cell));
      if (ctx.open[j.id]) GM.explainInto(cell, j.id);
    }
    ctx.list.replaceChildren(h('table', { class: 'queue' },
      h('thead', {}, h('tr', {}, ['job', 'name', 'tenant', 'class', 'GPUs', 'waiting', ''].map((l) => h('th', {}, l)))),
      h('tbody', {}, rows.length ? rows : h('tr', {}, h('td', { colspan: 7, class: 'muted' }, 'the queue is empty')))), ctx.pager.el());
  };
  GM.pages['admin/queue'] = queue;

  // ---- revenue ----------------------------------------------------------------
  const revenue = { title: 'Revenue', role: 'admin', win: 86400 };
  revenue.render = async (el, ctx) => {
    ctx.body = h('div', {});
    el.append(h('h1', {}, 'Revenue and GPU-hours sold'),
      h('div', { class: 'toolbar' }, GM.windowSelect(revenue.win, (v) => { revenue.win = v; revenue.refresh(el, ctx); })), ctx.body);
    await revenue.refresh(el, ctx);
  };
  revenue.refresh = async (el, ctx) => {
    const w = GM.windowOf(revenue.win);
    const [rev, use, ser] = await Promise.all([A('GetRevenueReport', { window: w.window }), A('GetUsageReport', { window: w.window }), A('GetFleetSeries', w)]);
    const pts = (((ser.series || [])[0]) || {}).points || [];
    const x = (q) => GM.num(q.atUs);
    const money = (k) => ({ label: k[0], num: true, get: (r) => GM.money(r[k[1]]), csv: (r) => (GM.num(r[k[1]]) / 1e6).toFixed(6) });
    const gh = (k) => ({ label: 'GPU-hours', num: true, get: (r) => GM.hours(r[k]), csv: (r) => (GM.num(r[k]) / 3600).toFixed(3) });
    const nodeCols = [{ label: 'node', get: (r) => r.nodeId }, { label: 'name', get: (r) => r.nodeName || '' }, { label: 'operator', get: (r) => r.operatorId },
      money(['gross', 'grossMicros']), money(['operator share', 'operatorMicros']), money(['platform fee', 'platformFeeMicros']), gh('gpuSeconds')];
    const opCols = [{ label: 'operator', get: (r) => r.operatorId }, { label: 'name', get: (r) => r.operatorName || '' },
      money(['gross', 'grossMicros']), money(['operator share', 'operatorMicros']), money(['paid out', 'paidOutMicros']), gh('gpuSeconds')];
    const soldCols = [{ label: 'model', get: (r) => r.gpuModel || '' }, { label: 'region', get: (r) => r.region || '' }, money(['revenue', 'revenueMicros']), gh('gpuSeconds')];
    const byRegion = {};
    for (const s of use.sold || []) {
      const r = (byRegion[s.region] = byRegion[s.region] || { region: s.region, revenueMicros: 0, gpuSeconds: 0 });
      r.revenueMicros += GM.num(s.revenueMicros); r.gpuSeconds += GM.num(s.gpuSeconds);
    }
    const regionCols = [{ label: 'region', get: (r) => r.region || '' }, money(['revenue', 'revenueMicros']), gh('gpuSeconds')];
    const section = (title, name, cols, rows) => h('div', { class: 'panel' }, h('h2', {}, title),
      GM.table(cols, rows, { cls: name }), h('div', { class: 'toolbar' }, GM.csvButton(name, cols, () => rows)));
    ctx.body.replaceChildren(
      h('div', { class: 'cards' },
        h('div', { class: 'card' }, h('div', { class: 'v', 'data-k': 'gross' }, GM.money(rev.grossMicros)), h('div', { class: 'k' }, 'tenants paid')),
        h('div', { class: 'card' }, h('div', { class: 'v' }, GM.money(rev.operatorMicros)), h('div', { class: 'k' }, 'operators earned')),
        h('div', { class: 'card' }, h('div', { class: 'v' }, GM.money(rev.platformFeeMicros)), h('div', { class: 'k' }, 'platform fees')),
        h('div', { class: 'card' }, h('div', { class: 'v' }, GM.pct(use.utilizationPpm)), h('div', { class: 'k' }, 'utilization'))),
      h('div', { class: 'grid2' },
        h('div', { class: 'panel' }, GM.lineChart({ id: 'revenue', title: 'Revenue per step', series: [{ name: 'revenue', points: pts.map((q) => [x(q), GM.num(q.revenueMicros) / 1e6]) }],
          xFmt: GM.timeFmt(revenue.win), yFmt: (y) => '$' + y.toFixed(2) })),
        h('div', { class: 'panel' }, GM.lineChart({ id: 'gpu-hours', title: 'GPU-hours sold per step', series: [{ name: 'GPU-hours', points: pts.map((q) => [x(q), GM.num(q.gpuSeconds) / 3600]) }],
          xFmt: GM.timeFmt(revenue.win), yFmt: (y) => y.toFixed(1) }))),
      section('Per node', 'revenue-nodes', nodeCols, rev.nodes || []),
      section('Per operator', 'revenue-operators', opCols, rev.operators || []),
      section('Per GPU model and region', 'revenue-models', soldCols, use.sold || []),
      section('Per region', 'revenue-regions', regionCols, Object.values(byRegion)));
  };
  GM.pages['admin/revenue'] = revenue;

  // ---- ledger audit ------------------------------------------------------------
  const ledger = { title: 'Ledger', role: 'admin' };
  ledger.render = async (el, ctx) => {
    ctx.audit = h('div', { class: 'panel' });
    ctx.list = h('div', { class: 'panel' });
    ctx.pager = new GM.Pager(() => ledger.transfers(ctx));
    el.append(h('h1', {}, 'Ledger'), ctx.audit, h('h2', {}, 'Transfers'), ctx.list);
    await ledger.refresh(el, ctx);
  };
  ledger.refresh = async (el, ctx) => {
    const a = await A('AuditLedger', { maxViolations: 50 });
    ctx.audit.replaceChildren(h('h2', {}, 'Audit'),
      h('p', { id: 'audit-status', class: a.ok ? 'ok' : 'bad' }, a.ok ? 'Balanced: no violations.' : `${GM.num(a.violationCount)} violations.`),
      h('p', { class: 'muted' }, `${GM.num(a.accountsChecked)} accounts and ${GM.num(a.transfersChecked)} transfers checked at ${GM.when(a.auditedAtUs)}.`),
      (a.violations || []).length ? GM.table(Object.keys(a.violations[0]).map((k) => ({ label: k, get: (r) => String(r[k]) })), a.violations) : null);
    await ledger.transfers(ctx);
  };
  ledger.transfers = async (ctx) => {
    const r = await A('ListTransfers', { pageSize: 25, pageToken: ctx.pager.token });
    ctx.pager.seen(r.nextPageToken);
    ctx.list.replaceChildren(GM.table([
      { label: 'id', get: (t) => t.id }, { label: 'kind', get: (t) => GM.enumName(t.kind, 'TRANSFER_KIND_') },
      { label: 'state', get: (t) => GM.enumName(t.state, 'TRANSFER_STATE_') }, { label: 'debit', get: (t) => t.debitAccountId },
      { label: 'credit', get: (t) => t.creditAccountId }, { label: 'amount', num: true, get: (t) => GM.money(t.amountMicros) },
      { label: 'lease', get: (t) => t.leaseId || '' }, { label: 'at', get: (t) => GM.when(t.createdAtUs) },
    ], r.transfers || []), ctx.pager.el());
  };
  GM.pages['admin/ledger'] = ledger;

  // ---- policy ----------------------------------------------------------------
  const TRACES = ['msr-itp/cluster01', 'msr-itp/cluster02', 'msr-itp/cluster03', 'msr-itp/cluster04', 'msr-itp/cluster05', 'msr-itp/cluster06',
    'alibaba-gpu-v2023/openb_pod_list_default', 'alibaba-gpu-v2023/openb_pod_list_gpuspec33'];
  const policy = { title: 'Policy', role: 'admin' };
  const candidateOf = (p) => {
    const c = Object.assign({}, p);
    for (const k of ['version', 'createdBy', 'createdAtUs', 'comment']) delete c[k];
    return c;
  };
  policy.render = async (el, ctx) => {
    const [cur, hist, audit] = await Promise.all([A('GetPolicy', {}), A('ListPolicies', { pageSize: 50 }), A('ListPolicyAudit', { pageSize: 50 })]);
    const active = cur.policy || {};
    const versions = hist.policies || [];
    const candText = h('textarea', { id: 'candidate', spellcheck: 'false', 'aria-label': 'Candidate policy (JSON)' }, JSON.stringify(candidateOf(active), null, 2));
    const pick = h('select', { id: 'candidate-version', onchange: (e) => {
      const v = versions.find((p) => String(p.version) === e.target.value);
      if (v) candText.value = JSON.stringify(candidateOf(v), null, 2);
    } }, h('option', { value: '' }, 'edit the JSON below'), versions.map((p) => h('option', { value: p.version }, `version ${p.version}${p.comment ? ' — ' + p.comment : ''}`)));
    const trace = h('select', { id: 'trace' }, TRACES.map((t) => h('option', { value: t }, t)));
    const hours = h('input', { id: 'trace-hours', type: 'number', min: 1, value: 24, size: 5 });
    const pre = h('label', {}, h('span', {}, 'all jobs preemptible'), h('input', { id: 'preemptible', type: 'checkbox' }));
    const out = h('div', { id: 'sim-out' });
    const run = h('button', { type: 'button', id: 'simulate' }, 'Simulate');
    run.addEventListener('click', async () => {
      out.replaceChildren(h('p', { class: 'muted' }, 'replaying the trace under both policies…'));
      run.disabled = true;
      try {
        let cand;
        try { cand = JSON.parse(candText.value); } catch (e) { throw new GM.ApiError('invalid_argument', 'candidates[0]: not JSON: ' + e.message); }
        const r = await A('SimulatePolicy', { candidates: [cand], source: 'SIMULATION_SOURCE_TRACE', traceName: trace.value,
          window: { startUs: '0', endUs: String(Number(hours.value || 24) * 3600e6) }, preemptible: pre.querySelector('input').checked });
        policy.showSim(out, r);
      } catch (e) { out.replaceChildren(GM.errorBox(e)); }
      run.disabled = false;
    });
    const diffRows = (audit.entries || []).flatMap((e) => (e.changes || []).map((c) => ({ e, c })));
    el.append(h('h1', {}, 'Policy'),
      h('div', { class: 'grid2' },
        h('div', { class: 'panel' }, h('h2', {}, `Active: version ${cur.activeVersion || active.version || '—'}`), h('pre', { id: 'policy-current' }, JSON.stringify(active, null, 2))),
        h('div', { class: 'panel' }, h('h2', {}, 'History'), GM.table([
          { label: 'version', get: (p) => p.version }, { label: 'by', get: (p) => p.createdBy || '' },
          { label: 'at', get: (p) => GM.when(p.createdAtUs) }, { label: 'comment', get: (p) => p.comment || '' }], versions, { cls: 'policy-history' }),
        h('h2', {}, 'Changes (diffs)'), GM.table([
          { label: 'version', get: (x) => `${x.e.previousVersion || 0} → ${x.e.version}` }, { label: 'field', get: (x) => x.c.field || '' },
          { label: 'was', get: (x) => h('span', { class: 'diff-old' }, x.c.oldValue || x.c.old || '') },
          { label: 'now', get: (x) => h('span', { class: 'diff-new' }, x.c.newValue || x.c.new || '') },
          { label: 'by', get: (x) => x.e.actor || '' }, { label: 'why', get: (x) => x.e.comment || '' }], diffRows, { cls: 'policy-diffs', empty: 'no changes yet' }))),
      h('div', { class: 'panel' }, h('h2', {}, 'Simulate a candidate against the active policy'),
        h('div', { class: 'toolbar' }, h('label', {}, 'Start from', pick), h('label', {}, 'Trace', trace), h('label', {}, 'First hours of the trace', hours), pre, run),
        candText, out));
  };
  policy.showSim = (out, r) => {
    const b = r.baseline || {}, c = (r.candidates || [])[0] || {};
    const bm = b.metrics || {}, cm = c.metrics || {};
    const rows = [['jobs completed', 'jobsCompleted', GM.num], ['jobs pending at the end', 'jobsPending', GM.num], ['preemptions', 'preemptions', GM.num],
      ['mean wait', 'waitMeanUs', GM.dur], ['mean JCT', 'jctMeanUs', GM.dur], ['median JCT', 'jctP50Us', GM.dur], ['99th pct JCT', 'jctP99Us', GM.dur],
      ['makespan', 'makespanUs', GM.dur], ['GPU utilization', 'gpuUtilizationPpm', GM.pct], ['fairness (Jain)', 'fairnessJainPpm', GM.pct], ['cost', 'costMicros', GM.money]];
    out.replaceChildren(
      h('p', { class: 'muted' }, `${GM.num(r.jobsSimulated)} jobs on ${GM.num(r.nodesSimulated)} nodes.`),
      h('div', { class: 'grid2' },
        h('div', { class: 'panel' }, GM.cdfChart({ id: 'cdf-jct', title: 'Job completion time (CDF)', series: [{ name: 'active policy', q: bm.jctQuantilesUs }, { name: 'candidate', q: cm.jctQuantilesUs }] })),
        h('div', { class: 'panel' }, GM.cdfChart({ id: 'cdf-wait', title: 'Wait before start (CDF)', series: [{ name: 'active policy', q: bm.waitQuantilesUs }, { name: 'candidate', q: cm.waitQuantilesUs }] }))),
      GM.table([{ label: 'metric', get: (x) => x[0] }, { label: 'active policy', num: true, get: (x) => x[2](bm[x[1]]) }, { label: 'candidate', num: true, get: (x) => x[2](cm[x[1]]) }], rows, { cls: 'sim-metrics' }));
  };
  GM.pages['admin/policy'] = policy;
})();
