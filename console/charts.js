// charts.js — small SVG charts (lines, steps, bars) drawn by hand: no
// library, nothing fetched. Series are told apart by dash pattern and a
// legend, not by colour alone.
'use strict';

(function () {
  const NS = 'http://www.w3.org/2000/svg';
  const s = (tag, attrs, ...kids) => {
    const el = document.createElementNS(NS, tag);
    for (const [k, v] of Object.entries(attrs || {})) if (v !== undefined && v !== null) el.setAttribute(k, String(v));
    kids.forEach((k) => k !== undefined && el.append(k instanceof Node ? k : document.createTextNode(String(k))));
    return el;
  };
  const W = 720, H = 240, L = 64, R = 16, T = 12, B = 34;

  function niceMax(v) {
    if (!(v > 0)) return 1;
    const p = Math.pow(10, Math.floor(Math.log10(v)));
    for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
    return 10 * p;
  }

  function frame(svg, xmin, xmax, ymax, xFmt, yFmt) {
    for (let i = 0; i <= 4; i++) {
      const y = T + (H - T - B) * (1 - i / 4);
      svg.append(s('line', { class: 'grid', x1: L, x2: W - R, y1: y, y2: y }));
      svg.append(s('text', { x: L - 6, y: y + 4, 'text-anchor': 'end' }, yFmt((ymax * i) / 4)));
    }
    for (let i = 0; i <= 4; i++) {
      const x = L + ((W - L - R) * i) / 4;
      svg.append(s('text', { x, y: H - B + 16, 'text-anchor': i === 0 ? 'start' : i === 4 ? 'end' : 'middle' },
        xFmt(xmin + ((xmax - xmin) * i) / 4)));
    }
    svg.append(s('line', { class: 'axis', x1: L, x2: W - R, y1: H - B, y2: H - B }));
    svg.append(s('line', { class: 'axis', x1: L, x2: L, y1: T, y2: H - B }));
  }

  function legend(series) {
    return GM.h('div', { class: 'legend' }, series.map((se, i) => GM.h('span', {},
      (() => {
        const sv = s('svg', { width: 28, height: 10, class: 'chart swatch' });
        sv.append(s('line', { class: `line s${i % 4}`, x1: 0, x2: 28, y1: 5, y2: 5 }));
        return sv;
      })(), ' ' + se.name)));
  }

  // opts: {title, series: [{name, points: [[x, y], ...]}], xFmt, yFmt, yMax, step, empty}
  GM.lineChart = function (opts) {
    const series = opts.series.filter((x) => x.points.length);
    const n = series.reduce((a, x) => a + x.points.length, 0);
    const fig = GM.h('figure', { class: 'chart', 'data-chart': opts.id || '', 'data-points': n },
      GM.h('figcaption', {}, opts.title));
    const svg = s('svg', { class: 'chart', viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-label': opts.title });
    if (!n) {
      svg.append(s('text', { x: W / 2, y: H / 2, 'text-anchor': 'middle' }, opts.empty || 'no data in this window yet'));
      fig.append(svg);
      return fig;
    }
    let xmin = Infinity, xmax = -Infinity, ymax = opts.yMax || 0;
    for (const se of series) for (const [x, y] of se.points) {
      xmin = Math.min(xmin, x); xmax = Math.max(xmax, x);
      if (!opts.yMax) ymax = Math.max(ymax, y);
    }
    if (xmax === xmin) { xmin -= 1; xmax += 1; }
    ymax = opts.yMax || niceMax(ymax);
    frame(svg, xmin, xmax, ymax, opts.xFmt || String, opts.yFmt || String);
    const px = (x) => L + ((W - L - R) * (x - xmin)) / (xmax - xmin);
    const py = (y) => T + (H - T - B) * (1 - Math.min(y, ymax) / ymax);
    series.forEach((se, i) => {
      let d = '';
      se.points.forEach(([x, y], k) => {
        if (k === 0) d += `M${px(x).toFixed(1)},${py(y).toFixed(1)}`;
        else if (opts.step) d += `H${px(x).toFixed(1)}V${py(y).toFixed(1)}`;
        else d += `L${px(x).toFixed(1)},${py(y).toFixed(1)}`;
      });
      svg.append(s('path', { class: `line s${i % 4}`, d, 'data-series': se.name }));
      if (se.points.length <= 120)
        se.points.forEach(([x, y]) => svg.append(s('circle', { class: `pt s${i % 4}`, cx: px(x).toFixed(1), cy: py(y).toFixed(1), r: 2.5 },
          s('title', {}, `${se.name}: ${(opts.xFmt || String)(x)} → ${(opts.yFmt || String)(y)}`))));
    });
    fig.append(svg, legend(series));
    return fig;
  };

  // opts: {title, bars: [{label, value}], yFmt}
  GM.barChart = function (opts) {
    const fig = GM.h('figure', { class: 'chart', 'data-chart': opts.id || '', 'data-points': opts.bars.length },
      GM.h('figcaption', {}, opts.title));
    const svg = s('svg', { class: 'chart', viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-label': opts.title });
    const ymax = niceMax(Math.max(0, ...opts.bars.map((b) => b.value)));
    const yFmt = opts.yFmt || String;
    for (let i = 0; i <= 4; i++) {
      const y = T + (H - T - B) * (1 - i / 4);
      svg.append(s('line', { class: 'grid', x1: L, x2: W - R, y1: y, y2: y }));
      svg.append(s('text', { x: L - 6, y: y + 4, 'text-anchor': 'end' }, yFmt((ymax * i) / 4)));
    }
    const bw = (W - L - R) / Math.max(1, opts.bars.length);
    opts.bars.forEach((b, i) => {
      const hgt = ((H - T - B) * b.value) / ymax;
      svg.append(s('rect', { class: 'bar', x: (L + i * bw + 2).toFixed(1), y: (H - B - hgt).toFixed(1), width: Math.max(1, bw - 4).toFixed(1), height: hgt.toFixed(1) },
        s('title', {}, `${b.label}: ${yFmt(b.value)}`)));
      svg.append(s('text', { x: (L + i * bw + bw / 2).toFixed(1), y: H - B + 16, 'text-anchor': 'middle' }, b.label));
    });
    svg.append(s('line', { class: 'axis', x1: L, x2: W - R, y1: H - B, y2: H - B }));
    fig.append(svg);
    return fig;
  };

  // Overlaid CDFs from quantiles (0 %, 5 %, ..., 100 %): [{name, q: [us...]}]
  GM.cdfChart = function (opts) {
    const max = Math.max(0, ...opts.series.flatMap((se) => (se.q || []).map(GM.num)));
    const [div, unit] = max >= 7200e6 ? [3.6e9, 'h'] : max >= 120e6 ? [60e6, 'min'] : [1e6, 's'];
    const series = opts.series.map((se) => ({
      name: se.name,
      points: (se.q || []).map((v, i, a) => [GM.num(v) / div, i / (a.length - 1)]),
    }));
    return GM.lineChart({
      id: opts.id, title: opts.title, series, step: true, yMax: 1,
      xFmt: (x) => x.toFixed(x < 10 ? 1 : 0) + ' ' + unit, yFmt: (y) => Math.round(y * 100) + ' %',
      empty: 'no job finished in this replay',
    });
  };

  GM.timeFmt = (spanS) => (x) => {
    const d = new Date(x / 1000);
    return spanS > 2 * 86400 ? d.toISOString().slice(5, 10) : d.toISOString().slice(11, 16);
  };
})();
