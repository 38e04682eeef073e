// Small SVG charts for the edgedl dashboard: no library, no network.
// lineChart(el, {series: [{name, color, points: [[x, y], ...]}], yLabel, xTime, thresholds})
//   (hovering shows the values at the nearest x)
// barChart(el, {bars: [{label, value, color}], thresholds: [{value, label, color}], yLabel})
"use strict";

const SVG_NS = "http://www.w3.org/2000/svg";
const PAD = { left: 48, right: 12, top: 30, bottom: 28 };

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
  if (label) {  // above the plot, clear of the top tick
    svg.appendChild(svgEl("text", { x: 4, y: 12, class: "axis-label" }, label));
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
      class: "threshold-label", style: `fill: ${t.color || "#c0392b"}` }, `${t.label} ${fmt(t.value)}`));
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
        timeLabel(x, xMax - xMin)));
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
    // The colour as a style: the stylesheet's text fill would override an attribute.
    // Rows of five, right-aligned, above the plot.
    const perRow = Math.min(5, opts.series.length), col = i % 5, row = Math.floor(i / 5);
    svg.appendChild(svgEl("text", { x: width - PAD.right - (perRow - col) * 78, y: 11 + row * 11,
      style: `fill: ${s.color}`, class: "legend", "data-series": s.name },
      s.name.length > 13 ? `${s.name.slice(0, 12)}…` : s.name));
  });
  hover(svg, width, height, opts, sx, sy);
}

function timeLabel(t, span) {
  const d = new Date(t * 1000);
  return span > 86400 ? d.toLocaleString([], { month: "short", day: "numeric", hour: "2-digit", minute: "2-digit" })
    : d.toLocaleTimeString();
}

// Hover: a vertical line at the nearest x and every series' value there.
function hover(svg, width, height, opts, sx, sy) {
  const xs = [...new Set(opts.series.flatMap((s) => s.points.map((p) => p[0])))].sort((a, b) => a - b);
  const line = svgEl("line", { y1: PAD.top, y2: height - PAD.bottom, class: "hover-line", visibility: "hidden" });
  const box = svgEl("text", { y: PAD.top + 10, class: "hover-text", visibility: "hidden" });
  const area = svgEl("rect", { x: PAD.left, y: PAD.top, width: width - PAD.left - PAD.right,
    height: height - PAD.top - PAD.bottom, class: "hover-area", fill: "transparent" });
  svg.append(line, box, area);
  area.addEventListener("mousemove", (ev) => {
    const r = svg.getBoundingClientRect();
    const px = ((ev.clientX - r.left) / r.width) * width;
    let best = xs[0];
    for (const x of xs) if (Math.abs(sx(x) - px) < Math.abs(sx(best) - px)) best = x;
    const parts = opts.series.map((s) => {
      const p = s.points.find((q) => q[0] === best);
      return `${s.name} ${fmt(p ? p[1] : null)}`;
    });
    const x = sx(best);
    line.setAttribute("x1", x); line.setAttribute("x2", x); line.setAttribute("visibility", "visible");
    box.textContent = `${timeLabel(best, 0)} · ${parts.join(" · ")}`;
    box.setAttribute("x", x < width / 2 ? x + 6 : x - 6);
    box.setAttribute("text-anchor", x < width / 2 ? "start" : "end");
    box.setAttribute("visibility", "visible");
  });
  area.addEventListener("mouseleave", () => {
    line.setAttribute("visibility", "hidden"); box.setAttribute("visibility", "hidden");
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
      class: "threshold-label", style: `fill: ${t.color || "#c0392b"}` }, `${t.label} ${fmt(t.value)}`));
  });
  if (opts.yLabel) svg.appendChild(svgEl("text", { x: labelW, y: height - 4, class: "axis-label" }, opts.yLabel));
}

export { fmt };
