// Small SVG charts for the edgedl dashboard: no library, no network.
// lineChart(el, {series: [{name, color, points: [[x, y], ...]}], yLabel, xTime, thresholds})
// barChart(el, {bars: [{label, value, color}], thresholds: [{value, label, color}], yLabel})
"use strict";

const SVG_NS = "http://www.w3.org/2000/svg";
const PAD = { left: 48, right: 12, top: 12, bottom: 28 };

function svgEl(name, attrs, text) {
  const node = document.createElementNS(SVG_NS, name);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
  if (text !== undefined) node.textContent = text;
  return node;
}

function niceMax(v) {
  if (!(v > 0)) return 1;
  const p = Math.pow(10, Math.floor(Math.log10(v)));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}

function fmt(v) {
  if (v === null || v === undefined || !isFinite(v)) return "–";
  const a = Math.abs(v);
  if (a >= 1000) return v.toFixed(0);
  if (a >= 10) return v.toFixed(1);
  if (a >= 0.01 || a === 0) return v.toFixed(2);
  return v.toExponential(1);
}

function frame(el, width, height) {
  el.replaceChildren();
  const svg = svgEl("svg", { viewBox: `0 0 ${width} ${height}`, width, height, role: "img" });
  el.appendChild(svg);
  return svg;
}

function yAxis(svg, width, height, yMax, label) {
  const plotH = height - PAD.top - PAD.bottom;
  for (let i = 0; i <= 4; i++) {
    const v = (yMax * i) / 4;
    const y = PAD.top + plotH - (plotH * i) / 4;
    svg.appendChild(svgEl("line", { x1: PAD.left, x2: width - PAD.right, y1: y, y2: y, class: "gridline" }));
    svg.appendChild(svgEl("text", { x: PAD.left - 6, y: y + 4, "text-anchor": "end", class: "tick" }, fmt(v)));
  }
  if (label) {
    svg.appendChild(svgEl("text", { x: 4, y: PAD.top - 2, class: "axis-label" }, label));
  }
}

function thresholdLines(svg, width, scaleY, thresholds) {
  for (const t of thresholds || []) {
    const y = scaleY(t.value);
    svg.appendChild(svgEl("line", {
      x1: PAD.left, x2: width - PAD.right, y1: y, y2: y,
      class: "threshold", stroke: t.color || "#c0392b", "data-threshold": t.value,
    }));
    svg.appendChild(svgEl("text", { x: width - PAD.right - 2, y: y - 3, "text-anchor": "end",
      class: "threshold-label", fill: t.color || "#c0392b" }, `${t.label} ${fmt(t.value)}`));
  }
}

export function lineChart(el, opts) {
  const width = 520, height = 200;
  const svg = frame(el, width, height);
  const all = opts.series.flatMap((s) => s.points).filter((p) => p[1] !== null && isFinite(p[1]));
  if (all.length === 0) {
    svg.appendChild(svgEl("text", { x: width / 2, y: height / 2, "text-anchor": "middle", class: "empty" }, "no data yet"));
    return;
  }
  const xs = all.map((p) => p[0]);
  const xMin = Math.min(...xs), xMax = Math.max(...xs);
  const yMax = niceMax(Math.max(...all.map((p) => p[1]), ...(opts.thresholds || []).map((t) => t.value)));
  const plotW = width - PAD.left - PAD.right, plotH = height - PAD.top - PAD.bottom;
  const sx = (x) => PAD.left + (xMax > xMin ? ((x - xMin) / (xMax - xMin)) * plotW : plotW / 2);
  const sy = (y) => PAD.top + plotH - (Math.min(y, yMax) / yMax) * plotH;
  yAxis(svg, width, height, yMax, opts.yLabel);
  thresholdLines(svg, width, sy, opts.thresholds);
  if (opts.xTime) {
    for (const x of [xMin, xMax]) {
      svg.appendChild(svgEl("text", { x: sx(x), y: height - 8, "text-anchor": x === xMin ? "start" : "end", class: "tick" },
        new Date(x * 1000).toLocaleTimeString()));
    }
  }
  opts.series.forEach((s, i) => {
    const pts = s.points.filter((p) => p[1] !== null && isFinite(p[1]));
    if (!pts.length) return;
    const d = pts.map((p, j) => `${j ? "L" : "M"}${sx(p[0]).toFixed(1)},${sy(p[1]).toFixed(1)}`).join("");
    svg.appendChild(svgEl("path", { d, class: "series", stroke: s.color, "data-series": s.name }));
    if (pts.length <= 60) {  // dots too, so a single point still shows
      for (const p of pts) svg.appendChild(svgEl("circle", { cx: sx(p[0]), cy: sy(p[1]), r: 2.5, fill: s.color }));
    }
    svg.appendChild(svgEl("text", { x: width - PAD.right - (opts.series.length - i) * 70, y: PAD.top - 2, fill: s.color, class: "legend" }, s.name));
  });
}

export function barChart(el, opts) {
  const bars = opts.bars;
  const width = 520, height = Math.max(160, 60 + bars.length * 22);
  const svg = frame(el, width, height);
  if (!bars.length) {
    svg.appendChild(svgEl("text", { x: width / 2, y: height / 2, "text-anchor": "middle", class: "empty" }, "no drift figures yet"));
    return;
  }
  const labelW = 190;
  const plotW = width - labelW - PAD.right - 40;
  // Scale to the bounds, not to an extreme bar, so the bounds stay readable; longer bars are cut.
  const bounds = (opts.thresholds || []).map((t) => t.value);
  const cap = bounds.length ? 5 * Math.max(...bounds) : Infinity;
  const xMax = niceMax(Math.min(cap, Math.max(...bars.map((b) => b.value || 0), ...bounds)));
  const sx = (v) => labelW + (Math.min(v, xMax) / xMax) * plotW;
  bars.forEach((b, i) => {
    const y = PAD.top + i * 22;
    svg.appendChild(svgEl("text", { x: labelW - 6, y: y + 13, "text-anchor": "end", class: "bar-label" }, b.label));
    const w = Math.max(1, sx(b.value || 0) - labelW);
    svg.appendChild(svgEl("rect", { x: labelW, y, width: w, height: 16, fill: b.color, class: "bar", "data-value": b.value }));
    if ((b.value || 0) > xMax) {
      svg.appendChild(svgEl("text", { x: labelW + w - 12, y: y + 13, class: "cut" }, "»"));
    }
    svg.appendChild(svgEl("text", { x: labelW + w + 4, y: y + 13, class: "tick" }, fmt(b.value)));
  });
  const bottom = PAD.top + bars.length * 22;
  (opts.thresholds || []).forEach((t, i) => {
    const x = sx(t.value);
    svg.appendChild(svgEl("line", { x1: x, x2: x, y1: PAD.top - 4, y2: bottom, class: "threshold",
      stroke: t.color || "#c0392b", "data-threshold": t.value }));
    svg.appendChild(svgEl("text", { x: x + (i % 2 ? 3 : -3), y: bottom + 14, "text-anchor": i % 2 ? "start" : "end",
      class: "threshold-label", fill: t.color || "#c0392b" }, `${t.label} ${fmt(t.value)}`));
  });
  if (opts.yLabel) svg.appendChild(svgEl("text", { x: labelW, y: height - 4, class: "axis-label" }, opts.yLabel));
}

export { fmt };
