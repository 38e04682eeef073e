// The "Accuracy (late labels)" panel: real accuracy, precision, recall and F1 of the labelled
// predictions, per model version and per device, from /api/v1/accuracy, and beside them the
// accuracy estimated from confidences (with its 95% interval and the predictions it covers).
"use strict";
import { lineChart } from "/static/charts.js";

const METRICS = ["labelled", "accuracy", "precision", "recall", "f1"];

function pct(v) {
  return v === null || v === undefined ? "–" : `${(100 * v).toFixed(1)}%`;
}

function row(tbody, label, m, kind) {
  const tr = document.createElement("tr");
  tr.dataset.kind = kind;
  tr.dataset.accuracy = m.accuracy === null ? "" : String(m.accuracy);
  const name = document.createElement("td");
  name.textContent = label;
  tr.appendChild(name);
  for (const key of METRICS) {
    const td = document.createElement("td");
    td.className = `metric-${key}`;
    td.textContent = key === "labelled" ? String(m.labelled) : pct(m[key]);
    tr.appendChild(td);
  }
  const est = document.createElement("td");
  est.className = "metric-estimated";
  const e = m.estimated;
  est.textContent = e && e.accuracy !== null
    ? `${pct(e.accuracy)} [${pct(e.low)}, ${pct(e.high)}] of ${e.predictions}`
    : "–";
  tr.appendChild(est);
  tbody.appendChild(tr);
}

export function renderAccuracy(report) {
  const tbody = document.querySelector("#accuracy tbody");
  tbody.replaceChildren();
  const empty = !report.overall.labelled && !report.overall.estimated;
  document.getElementById("no-accuracy").hidden = !empty;
  if (empty) return;
  row(tbody, "all labelled", report.overall, "overall");
  for (const v of report.by_version) row(tbody, `${v.model} ${v.version}`, v, "version");
  for (const d of report.by_device) row(tbody, `${d.fleet}/${d.device}`, d, "device");
  const mid = (p) => (p.start + p.end) / 2;
  lineChart(document.getElementById("accuracy-chart"), {
    series: [
      { name: "real", color: "#27ae60", points: report.series.map((p) => [mid(p), p.accuracy]) },
      {
        name: "estimated", color: "#2e86de",
        points: report.series.map((p) => [mid(p), p.estimated ? p.estimated.accuracy : null]),
      },
    ],
    yLabel: "accuracy", xTime: true,
  });
}
