// operator.js — an operator's pages: my nodes, a node (verification,
// utilization and earnings over time, drain / undrain), earnings.
'use strict';

(function () {
  const h = GM.h;
  GM.pages['operator/nodes'] = GM.nodesPage('operator');
  GM.pages['operator/node'] = GM.nodePage('operator');

  const earn = { title: 'Earnings', role: 'operator', win: 86400 };
  earn.render = async (el, ctx) => {
    ctx.body = h('div', {});
    el.append(h('h1', {}, 'Earnings'), h('div', { class: 'toolbar' }, GM.windowSelect(earn.win, (v) => { earn.win = v; earn.refresh(el, ctx); })), ctx.body);
    await earn.refresh(el, ctx);
  };
  earn.refresh = async (el, ctx) => {
    const w = GM.windowOf(earn.win);
    const [e, ser] = await Promise.all([GM.call('NodeService', 'GetEarnings', { window: w.window }), GM.call('NodeService', 'GetNodeSeries', Object.assign({}, w, { nodeId: '0' }))]);
    const t = e.totals || {};
    const pts = ((ser.series || {}).points || []);
    const x = (q) => GM.num(q.atUs);
    const util = {};
    for (const u of e.utilization || []) util[u.nodeId] = u;
    const cols = [{ label: 'node', get: (r) => h('a', { href: `#/operator/node/${r.nodeId}` }, r.nodeId), csv: (r) => r.nodeId }, { label: 'name', get: (r) => r.nodeName || '' },
      { label: 'earned', num: true, get: (r) => GM.money(r.operatorMicros) }, { label: 'GPU-hours sold', num: true, get: (r) => GM.hours(r.gpuSeconds) },
      { label: 'utilization', num: true, get: (r) => GM.pct((util[r.nodeId] || {}).utilizationPpm) }];
    ctx.body.replaceChildren(
      h('div', { class: 'cards' },
        h('div', { class: 'card' }, h('div', { class: 'v', 'data-k': 'earned' }, GM.money(t.operatorMicros)), h('div', { class: 'k' }, 'earned in the window')),
        h('div', { class: 'card' }, h('div', { class: 'v' }, GM.money(t.paidOutMicros)), h('div', { class: 'k' }, 'paid out')),
        h('div', { class: 'card' }, h('div', { class: 'v' }, GM.hours(t.gpuSeconds)), h('div', { class: 'k' }, 'GPU-hours sold'))),
      h('div', { class: 'grid2' },
        h('div', { class: 'panel' }, GM.lineChart({ id: 'op-utilization', title: 'Utilization of my GPUs', yMax: 100,
          series: [{ name: 'utilization', points: pts.filter((q) => GM.num(q.samples)).map((q) => [x(q), GM.num(q.utilizationPpm) / 1e4]) }],
          xFmt: GM.timeFmt(earn.win), yFmt: (y) => y.toFixed(0) + ' %' })),
        h('div', { class: 'panel' }, GM.lineChart({ id: 'op-revenue', title: 'Tenants paid for my GPUs, per step',
          series: [{ name: 'gross', points: pts.map((q) => [x(q), GM.num(q.revenueMicros) / 1e6]) }], xFmt: GM.timeFmt(earn.win), yFmt: (y) => '$' + y.toFixed(2) }))),
      h('div', { class: 'panel' }, h('h2', {}, 'Per node'), GM.table(cols, e.nodes || []), h('div', { class: 'toolbar' }, GM.csvButton('earnings', cols, () => e.nodes || []))));
  };
  GM.pages['operator/earnings'] = earn;
})();
