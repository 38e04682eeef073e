// The edgedl dashboard: polls the collector's JSON API and draws what it says.
"use strict";
import { barChart, fmt, lineChart } from "/static/charts.js";
import { renderAccuracy } from "/static/accuracy.js";
import { renderRollouts } from "/static/rollouts.js";

const REFRESH_MS = 3000;
const COLORS = { p50: "#2e86de", p95: "#e67e22", p99: "#8e44ad", ok: "#27ae60", watch: "#f1c40f", alert: "#c0392b", muted: "#95a5a6" };
const STAT_COLORS = ["#2e86de", "#e67e22", "#8e44ad", "#16a085", "#c0392b", "#2c3e50", "#d35400", "#7f8c8d"];
const state = { selected: null, fleet: "", rangeS: 3600 };

// "?fleet=..." (or "&fleet=...") when a fleet is picked, else "".
function fleetParam(sep) {
  return state.fleet ? `${sep}fleet=${encodeURIComponent(state.fleet)}` : "";
}

async function getJSON(path) {
  const res = await fetch(path, { cache: "no-store" });
  if (!res.ok) throw new Error(`${path}: HTTP ${res.status}`);
  return res.json();
}

function cell(tr, text, cls) {
  const td = document.createElement("td");
  td.textContent = text;
  if (cls) td.className = cls;
  tr.appendChild(td);
  return td;
}

function ago(t) {
  if (!t) return "never";
  const s = Math.max(0, Date.now() / 1000 - t);
  if (s < 60) return `${s.toFixed(0)} s ago`;
  if (s < 3600) return `${(s / 60).toFixed(0)} min ago`;
  return `${(s / 3600).toFixed(1)} h ago`;
}

function statusColor(status) {
  return COLORS[status] || COLORS.muted;
}

// A device is its fleet and its name: two fleets may each have a "pi-1".
function sameDevice(a, b) {
  return Boolean(a && b) && a.fleet === b.fleet && a.device === b.device;
}

function renderDevices(devices) {
  const body = document.querySelector("#devices tbody");
  body.replaceChildren();
  for (const d of devices) {
    const tr = document.createElement("tr");
    tr.dataset.device = d.device;
    tr.dataset.fleet = d.fleet;
    if (sameDevice(d, state.selected)) tr.className = "selected";
    cell(tr, d.device, "device-name");
    cell(tr, d.fleet);
    cell(tr, d.online ? "online" : "offline", d.online ? "pill online" : "pill offline");
    cell(tr, ago(d.last_seen));
    cell(tr, d.model || "–");
    cell(tr, d.version || "–");
    cell(tr, String(d.inferences));
    cell(tr, String(d.windows));
    cell(tr, String(d.missing || 0), d.missing ? "missing some" : "missing");
    tr.addEventListener("click", () => { state.selected = { fleet: d.fleet, device: d.device }; refresh(); });
    body.appendChild(tr);
  }
  const online = devices.filter((d) => d.online).length;
  const versions = [...new Set(devices.filter((d) => d.model).map((d) => `${d.model} ${d.version}`))];
  document.getElementById("summary").textContent =
    `${devices.length} devices: ${online} online, ${devices.length - online} offline · versions: ${versions.join(", ") || "–"}`;
}

function renderAlerts(alerts) {
  const body = document.querySelector("#alerts tbody");
  body.replaceChildren();
  for (const a of alerts) {
    const tr = document.createElement("tr");
    tr.className = `alert-row kind-${a.kind}`;
    cell(tr, a.kind, "pill alert");
    cell(tr, a.device ? `${a.fleet}/${a.device}` : `fleet ${a.fleet}`);
    cell(tr, a.model ? `${a.model} ${a.version}` : "–");
    cell(tr, a.metric);
    cell(tr, fmt(a.current_value), "current-value");
    cell(tr, fmt(a.value));
    cell(tr, fmt(a.threshold));
    cell(tr, ago(a.opened_at));
    const td = cell(tr, a.acknowledged_at ? ago(a.acknowledged_at) : "", "acked");
    if (!a.acknowledged_at) {
      const button = document.createElement("button");
      button.className = "ack";
      button.dataset.alert = String(a.id);
      button.textContent = "acknowledge";
      button.addEventListener("click", () => acknowledge(a.id));
      td.appendChild(button);
    }
    body.appendChild(tr);
  }
  document.getElementById("no-alerts").hidden = alerts.length > 0;
}

async function acknowledge(id) {
  const token = document.getElementById("admin-token").value;
  const res = await fetch(`/api/v1/alerts/${id}/ack`, {
    method: "POST", headers: token ? { Authorization: `Bearer ${token}` } : {},
  });
  const body = await res.json();
  const out = document.getElementById("ack-result");
  out.dataset.status = String(res.status);
  out.textContent = res.ok ? `alert ${id} acknowledged` : `refused (HTTP ${res.status}): ${body.error}`;
  refresh();
}

function renderAlertHistory(alerts) {
  const body = document.querySelector("#alert-history tbody");
  body.replaceChildren();
  const when = (t) => (t ? new Date(t * 1000).toLocaleString() : "–");
  for (const a of alerts) {
    const tr = document.createElement("tr");
    tr.dataset.alert = String(a.id);
    tr.dataset.state = a.state;
    cell(tr, a.state, a.state === "open" ? "pill alert" : "pill ok");
    cell(tr, a.kind);
    cell(tr, a.device ? `${a.fleet}/${a.device}` : `fleet ${a.fleet}`);
    cell(tr, a.metric);
    cell(tr, fmt(a.value));
    cell(tr, fmt(a.current_value), "current-value");
    cell(tr, fmt(a.threshold));
    cell(tr, when(a.opened_at));
    cell(tr, when(a.resolved_at), "resolved-at");
    cell(tr, when(a.acknowledged_at));
    body.appendChild(tr);
  }
}

function renderDeadLetters(rows) {
  const body = document.querySelector("#dead-letters tbody");
  body.replaceChildren();
  for (const d of rows) {
    const tr = document.createElement("tr");
    cell(tr, ago(d.received_at));
    cell(tr, d.topic);
    cell(tr, d.reason);
    cell(tr, String(d.payload_size));
    cell(tr, d.payload_head, "payload-head");
    body.appendChild(tr);
  }
  document.getElementById("no-dead-letters").hidden = rows.length > 0;
}

function renderFleetOptions(devices) {
  const select = document.getElementById("fleet-filter");
  const fleets = [...new Set(devices.map((d) => d.fleet))].sort();
  const have = [...select.options].map((o) => o.value).filter(Boolean);
  if (have.join("|") === fleets.join("|")) return;
  select.replaceChildren(new Option("all fleets", ""), ...fleets.map((f) => new Option(f, f)));
  select.value = state.fleet;
}

function driftBars(result) {
  const t = result.thresholds || {};
  const bars = (result.statistics || []).filter((s) => s.psi !== null).map((s) => ({
    label: s.statistic, value: s.psi, color: s.judged ? statusColor(s.status) : COLORS.muted,
  }));
  for (const c of result.classes || []) {
    bars.push({ label: `classes ${c.output}`, value: c.psi, color: c.judged ? statusColor(c.status) : COLORS.muted });
  }
  return {
    bars,
    yLabel: `PSI (grey: fewer than ${t.min_samples} samples, not judged)`,
    thresholds: [
      { value: t.psi_watch, label: "watch", color: "#d4ac0d" },
      { value: t.psi_alert, label: "alert", color: "#c0392b" },
    ],
  };
}

function renderDriftTable(result) {
  const body = document.querySelector("#drift-table tbody");
  body.replaceChildren();
  for (const s of result ? result.statistics : []) {
    const tr = document.createElement("tr");
    cell(tr, s.statistic);
    cell(tr, String(s.samples));
    for (const k of ["psi", "js", "ks", "wasserstein", "mean", "reference_mean"]) cell(tr, fmt(s[k]));
    cell(tr, s.status, `pill ${s.status.replace(/ /g, "-")}`);
    body.appendChild(tr);
  }
  const out = document.getElementById("output-drift");
  out.replaceChildren();
  if (!result) return;
  for (const c of result.classes || []) {
    const p = document.createElement("p");
    p.textContent = `${c.output}: chi-square ${fmt(c.chi2)} (p = ${fmt(c.p_value)}), class PSI ${fmt(c.psi)} over ${c.samples} predictions`;
    out.appendChild(p);
  }
  for (const c of result.confidence || []) {
    const p = document.createElement("p");
    p.textContent = `${c.statistic}: mean ${fmt(c.mean)} vs reference ${fmt(c.reference_mean)} (shift ${fmt(c.shift)})`;
    out.appendChild(p);
  }
  const l = result.latency;
  if (l) {
    const p = document.createElement("p");
    p.textContent = `latency p95 ${fmt(l.p95_ms)} ms vs own baseline ${fmt(l.baseline_p95_ms)} ms (ratio ${fmt(l.ratio)})`;
    out.appendChild(p);
  }
}

const HEALTH_LABELS = {
  kept_share: "VAD kept share",
  segments_per_min: "segments per minute",
  asr_confidence: "ASR confidence",
  words_per_segment: "words per segment",
};

function renderStageHealth(results) {
  const root = document.getElementById("stage-health");
  root.replaceChildren();
  if (!results || !results.length) {
    root.textContent = "No pipeline stage health reported.";
    return;
  }
  for (const r of results) {
    const panel = document.createElement("div");
    panel.className = "stage-health";
    panel.dataset.pipeline = r.pipeline;
    const h = document.createElement("h4");
    h.textContent = `${r.pipeline} · ${fmt(r.counters.audio_s || 0)} s of audio in ${r.windows} windows` +
      (r.reference ? (r.judged ? "" : " · not judged yet (too little audio)") : " · no reference profile");
    panel.appendChild(h);
    const table = document.createElement("table");
    const head = document.createElement("tr");
    for (const c of ["figure", "now", "reference", "drift", "bound", ""]) {
      const th = document.createElement("th");
      th.textContent = c;
      head.appendChild(th);
    }
    table.appendChild(head);
    for (const [name, value] of Object.entries(r.figures)) {
      const v = r.verdicts[name];
      const tr = document.createElement("tr");
      tr.dataset.figure = name;
      cell(tr, HEALTH_LABELS[name] || name);
      cell(tr, fmt(value));
      cell(tr, v ? fmt(v.reference) : "–");
      cell(tr, v ? fmt(v.drift) : "–");
      cell(tr, v ? fmt(v.threshold) : "–");
      const status = v && r.judged ? (v.alert ? "drift" : "ok") : "";
      cell(tr, status);
      if (status === "drift") tr.className = "alert";
      table.appendChild(tr);
    }
    panel.appendChild(table);
    root.appendChild(panel);
  }
}

function renderPipelines(latest) {
  const body = document.querySelector("#pipelines tbody");
  body.replaceChildren();
  const pipelines = (latest && latest.pipelines) || {};
  for (const [pipe, stages] of Object.entries(pipelines)) {
    for (const [stage, figures] of Object.entries(stages)) {
      if (stage === "_health") continue; // shown judged, in the stage-health panel
      const tr = document.createElement("tr");
      cell(tr, pipe);
      cell(tr, stage);
      const flat = Object.entries(figures).map(([k, v]) =>
        typeof v === "object" ? `${k}: ${Object.entries(v).map(([a, b]) => `${a} ${fmt(b)}`).join(", ")}` : `${k} ${fmt(v)}`);
      cell(tr, flat.join(" · "));
      body.appendChild(tr);
    }
  }
  const sys = latest && latest.system;
  document.getElementById("system").textContent = sys
    ? `CPU ${fmt(sys.cpu_percent)} % · memory ${fmt(sys.memory_rss_bytes / 1048576)} MiB (${fmt(sys.memory_percent)} %)` +
      (sys.temperature_c !== undefined && sys.temperature_c !== null ? ` · ${fmt(sys.temperature_c)} °C` : "") +
      (latest.spool ? ` · spool ${latest.spool.pending} pending, ${latest.spool.dropped} dropped` : "")
    : "";
}

async function renderDevice(selected) {
  document.getElementById("device-name").textContent = selected ? selected.device : "–";
  if (!selected) return;
  const name = encodeURIComponent(selected.device);
  const fleet = encodeURIComponent(selected.fleet);
  const to = Date.now() / 1000, from = to - state.rangeS;
  const range = `device=${name}&fleet=${fleet}&from=${from}&to=${to}&points=120`;
  const [detail, latency, throughput, drift] = await Promise.all([
    getJSON(`/api/v1/devices/${fleet}/${name}`),
    getJSON(`/api/v1/series?metric=latency&${range}`),
    getJSON(`/api/v1/series?metric=throughput&${range}`),
    getJSON(`/api/v1/drift?device=${name}&fleet=${fleet}&scope=device&history=true`),
  ]);
  document.getElementById("device-model").textContent = detail.model ? `${detail.model} ${detail.version}` : "";
  const latencyChart = document.getElementById("latency-chart");
  latencyChart.dataset.points = String(latency.points.length);
  latencyChart.dataset.windows = String(latency.points.reduce((n, p) => n + p.windows, 0));
  lineChart(latencyChart, {
    xTime: true, yLabel: "ms",
    series: ["p50", "p95", "p99"].map((q) => ({ name: q, color: COLORS[q], points: latency.points.map((p) => [p.t, p[`${q}_ms`]]) })),
  });
  lineChart(document.getElementById("throughput-chart"), {
    xTime: true, yLabel: "inferences/s",
    series: [{ name: "throughput", color: "#16a085", points: throughput.points.map((p) => [p.t, p.per_s]) }],
  });
  const result = drift[0] || null;
  barChart(document.getElementById("drift-chart"), result ? driftBars(result) : { bars: [] });
  const hist = (result && result.history) || [];
  const t = (result && result.thresholds) || {};
  const stats = [...new Set(hist.flatMap((h) => Object.keys(h).filter((k) => k !== "t")))].sort();
  lineChart(document.getElementById("drift-history"), {
    xTime: true, yLabel: "PSI",
    thresholds: result ? [{ value: t.psi_alert, label: "alert" }] : [],
    series: stats.map((st, i) => ({
      name: st.split("/").slice(-1)[0], color: STAT_COLORS[i % STAT_COLORS.length],
      points: hist.filter((h) => h[st] !== undefined).map((h) => [h.t, h[st]]),
    })),
  });
  renderDriftTable(result);
  renderPipelines(detail.latest_window);
  renderStageHealth(detail.stage_health);
}

async function renderFleetDrift() {
  const results = await getJSON(`/api/v1/drift?scope=fleet${fleetParam("&")}`);
  const root = document.getElementById("fleet-drift");
  root.replaceChildren();
  if (!results.length) {
    root.textContent = "No fleet-wide figures yet.";
    return;
  }
  for (const r of results) {
    const card = document.createElement("div");
    card.className = "card";
    const h = document.createElement("h3");
    h.textContent = `${r.fleet}: ${r.model} ${r.version} (${r.samples} samples in the sliding window)`;
    const chart = document.createElement("div");
    chart.className = "chart drift-chart fleet";
    card.append(h, chart);
    root.appendChild(card);
    barChart(chart, driftBars(r));
  }
}

async function refresh() {
  try {
    const [allDevices, alerts, history, deadLetters, rollouts, accuracy] = await Promise.all([
      getJSON("/api/v1/devices"), getJSON(`/api/v1/alerts?state=open${fleetParam("&")}`),
      getJSON(`/api/v1/alerts?limit=100${fleetParam("&")}`), getJSON("/api/v1/dead-letters?limit=50"),
      getJSON("/api/v1/rollouts"),
      getJSON(`/api/v1/accuracy?since=${Date.now() / 1000 - state.rangeS}&bucket_s=${Math.max(60, state.rangeS / 60)}${fleetParam("&")}`),
    ]);
    renderFleetOptions(allDevices);
    const devices = allDevices.filter((d) => !state.fleet || d.fleet === state.fleet);
    if (state.selected && !devices.some((d) => sameDevice(d, state.selected))) state.selected = null;
    if (!state.selected && devices.length) {
      const alerted = alerts.find((a) => a.device && devices.some((d) => sameDevice(d, a)));
      const first = alerted || devices[0];
      state.selected = { fleet: first.fleet, device: first.device };
    }
    renderDevices(devices);
    renderAlerts(alerts);
    renderAlertHistory(history);
    renderDeadLetters(deadLetters);
    renderRollouts(rollouts);
    renderAccuracy(accuracy);
    await Promise.all([renderDevice(state.selected), renderFleetDrift()]);
    document.getElementById("refreshed").textContent = `updated ${new Date().toLocaleTimeString()}`;
    document.body.dataset.loaded = "true";
  } catch (err) {
    document.getElementById("refreshed").textContent = `cannot reach the collector: ${err.message}`;
  }
}

document.getElementById("fleet-filter").addEventListener("change", (ev) => {
  state.fleet = ev.target.value;
  refresh();
});
document.getElementById("range").addEventListener("change", (ev) => {
  state.rangeS = Number(ev.target.value);
  refresh();
});
refresh();
setInterval(refresh, REFRESH_MS);
