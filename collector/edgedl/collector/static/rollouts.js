// The rollouts panel: every fleet rollout's wave, devices and why it stopped.
"use strict";

function text(tag, value, cls) {
  const el = document.createElement(tag);
  el.textContent = value;
  if (cls) el.className = cls;
  return el;
}

const STATE_CLASS = { running: "pill watch", completed: "pill online", halted: "pill alert" };

export function renderRollouts(rollouts) {
  const body = document.querySelector("#rollouts tbody");
  body.replaceChildren();
  for (const r of rollouts.slice(0, 20)) {
    const tr = document.createElement("tr");
    tr.className = `rollout-row state-${r.state}`;
    tr.append(
      text("td", String(r.id)),
      text("td", `${r.model} ${r.version}`),
      text("td", `${r.strategy} · ${r.fleet}`),
      text("td", r.state, STATE_CLASS[r.state] || "pill"),
      text("td", `${r.wave}/${r.waves} (${r.wave_sizes.join(", ")}) ${r.phase}`),
    );
    const devices = document.createElement("td");
    for (const name of r.devices) {
      const d = r.device_states[name] || {};
      const serving = Object.values(d.serving || {}).join(", ") || "–";
      devices.append(text("span", `${name}: ${serving} ${d.state || "pending"}`, "device-state"), " ");
    }
    tr.append(devices, text("td", r.reason || "–", "rollout-reason"));
    body.appendChild(tr);
  }
  document.getElementById("no-rollouts").hidden = rollouts.length > 0;
}
