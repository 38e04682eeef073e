"""Benchmark telemetry: bytes on the wire, agent CPU, collector ingest rate, drift time.

One function per measurement, registered in ``MEASUREMENTS``; ``main`` runs the ones asked
for (all by default), prints a markdown table per measurement and merges the results into
``bench/results/telemetry.json`` (measurements not run keep their previous figures).

Collector measurements (cloud side):

  ingest_direct   windows/s through ``Ingestor.ingest`` (validation + one transaction per
                  batch of 500 + drift folding off), straight into SQLite and PostgreSQL,
                  with 1,000 simulated devices. No broker: the collector's own ceiling.
                  ``commit_cpu_s``: the CPU seconds of it spent in ``Store.commit_batch``.
  ingest_mqtt     windows/s end to end: a publisher process sends 1,000 devices' windows
                  (QoS 1) through a Mosquitto started with the collector's tuned config
                  (collector/edgedl/collector/mosquitto.conf) to an in-process ``Collector``
                  (manual acks after commit, drift monitor on), into SQLite and PostgreSQL.
  ingest_group    windows/s of a group of ``edgedl collector run`` processes (1, then 3; see
                  ``--collectors``) on one PostgreSQL database and one MQTT 5 shared
                  subscription of a tuned Mosquitto, the publisher process sending meanwhile:
                  the group's rate, and each collector's windows and CPU seconds.
  drift           time to compute every drift figure for 1,000 devices x 20 statistics
                  (PSI, JS, KS, Wasserstein on 12-bin histograms), vectorised, and per device.

Agent measurements (device side):

  wire            bytes on the wire (MQTT 5 QoS 1 PUBLISH + PUBACK) per window and per 1,000
                  inferences, windows of 10 to 10,000 inferences (zstd, gzip, plain JSON),
                  against one JSON message per inference (with its tensors, or with only the
                  statistics a window keeps).
  agent_cpu       CPU time of the window builder per inference (the observer calls of the
                  serving path: the batch's statistics binned on the reference edges, latency
                  and batch size), and of cut + zstd encode per window, amortised.

Both ingest measurements tune the garbage collector as ``edgedl collector run`` does
(``edgedl.collector.service.tune_gc``).

Ingest rows give wall-clock windows/s and windows per CPU-second of the collector process
(``time.process_time``: all its threads, not the broker's or the publisher's). The machine is
shared; the second figure says what the collector's work costs whatever the load average
(recorded too).

Usage: python bench/telemetry.py [--only ingest_direct,drift] [--devices 1000] [--windows 20]
       python bench/telemetry.py --only ingest_group --collectors 1,3
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "telemetry.json"
TUNED_CONF = ROOT / "collector" / "edgedl" / "collector" / "mosquitto.conf"
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/test"

Row = dict[str, Any]


def machine() -> dict[str, object]:
    """CPU, cores, Python: where the figures were taken."""
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version()}


def _load() -> float:
    """The 1-minute load average: how busy the shared machine was."""
    return round(os.getloadavg()[0], 1)


# ---------------------------------------------------------------- simulated fleet


def reference_manifest() -> Any:
    """A digits-like manifest: 8x8 images, 10 classes, a 10-bin reference profile."""
    from edgedl.bundle import Manifest, TensorSpec
    from edgedl.profile import Profile

    inputs, outputs = _batch(np.random.default_rng(0), 2000)
    return Manifest(
        name="digits", version="1", target="tflite-int8", runtime="litert",
        model_file="model.tflite", sha256="5e" * 32, size_bytes=1,
        inputs=[TensorSpec(name="image", shape=[-1, 8, 8, 1], dtype="float32")],
        outputs=[TensorSpec(name="probs", shape=[-1, 10], dtype="float32")],
        profile=Profile.from_reference(inputs, outputs, bins=10).to_dict(),
    )  # fmt: skip


def _batch(rng: np.random.Generator, n: int) -> tuple[dict[str, Any], dict[str, Any]]:
    z = rng.normal(0, 2, (n, 10))
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return {"image": rng.random((n, 8, 8, 1))}, {"probs": e / e.sum(axis=1, keepdims=True)}


def fleet_payloads(devices: int, windows: int, fleet: str = "bench") -> list[tuple[str, bytes]]:
    """Encoded windows (zstd) of ``devices`` devices, ``windows`` each, 100 inferences a window.

    A handful of distinct windows is built and re-addressed, so building 20,000 stays fast;
    every (device, seq) is distinct.
    """
    from edgedl.telemetry import (
        TelemetryWindow,
        batch_size_histogram,
        encode_window,
        latency_histogram,
        telemetry_topic,
    )  # fmt: skip

    manifest = reference_manifest()
    ref = manifest.reference_profile()
    rng = np.random.default_rng(1)
    templates = []
    for _ in range(8):
        live = ref.empty_like()
        live.observe(*_batch(rng, 100))
        lat, bs = latency_histogram(), batch_size_histogram()
        lat.add(rng.gamma(4, 0.5, 100))
        bs.add(np.ones(100))
        templates.append((live.to_dict(), lat.to_dict(), bs.to_dict()))
    out = []
    # Windows a second apart, the newest ending now: never ahead of the collector's clock.
    now = time.time() - windows
    for seq in range(windows):
        for d in range(devices):
            profile, lat, bs = templates[(seq + d) % len(templates)]
            w = TelemetryWindow(
                fleet=fleet, device=f"dev-{d:04d}", seq=seq, window_start=now - 60 + seq,
                window_end=now + seq, agent_version="bench",
                models=[{"name": "digits", "version": "1", "sha256": "5e" * 32,
                         "counts": {"requests": 100, "inferences": 100},
                         "latency_ms": lat, "batch_size": bs, "profile": profile}],
                system={"cpu_percent": 3.0, "memory_rss_bytes": 40_000_000, "memory_percent": 1.0},
            )  # fmt: skip
            out.append((telemetry_topic(fleet, w.device), encode_window(w)[0]))
    return out


# ---------------------------------------------------------------- databases


def _pg_available() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 5432), timeout=0.5):
            return True
    except OSError:
        return False


def databases(work: Path) -> list[tuple[str, str, Callable[[], None]]]:
    """``(label, url, cleanup)`` for SQLite and, when it answers, a fresh PostgreSQL database."""
    out: list[tuple[str, str, Callable[[], None]]] = []
    out.append(
        ("SQLite (WAL)", f"sqlite:///{work / f'bench-{uuid.uuid4().hex[:6]}.db'}", lambda: None)
    )
    if _pg_available():
        import psycopg

        name = f"edgedl_bench_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')

        def drop(name: str = name) -> None:
            with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

        out.append(("PostgreSQL", PG_ADMIN.rsplit("/", 1)[0] + f"/{name}", drop))
    else:
        print("PostgreSQL does not answer on 127.0.0.1:5432: skipped")
    return out


# ---------------------------------------------------------------- measurements


def measure_ingest_direct(args: argparse.Namespace) -> list[Row]:
    """Windows/s through Ingestor.ingest in batches of 500, no broker."""
    from edgedl.collector.ingest import Ingestor, Message
    from edgedl.collector.service import tune_gc
    from edgedl.collector.store import Store

    payloads = fleet_payloads(args.devices, args.windows)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, url, cleanup in databases(Path(tmp)):
            store = Store(url)
            ingestor = Ingestor(store)
            messages = [Message(t, p, time.time()) for t, p in payloads]
            commit_cpu = _time_commits(store)
            tune_gc()  # as `edgedl collector run` does
            started, cpu = time.perf_counter(), time.process_time()
            stored = 0
            for i in range(0, len(messages), 500):
                stored += len(ingestor.ingest(messages[i : i + 500]).stored)
            elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
            assert stored == len(payloads) == store.count_windows()
            store.close()
            cleanup()
            rows.append({"storage": label, "path": "Ingestor.ingest (no broker)", "devices": args.devices,
                         "windows": stored, "seconds": round(elapsed, 2),
                         "windows_per_s": round(stored / elapsed), "cpu_s": round(cpu, 2),
                         "windows_per_cpu_s": round(stored / cpu),
                         "commit_cpu_s": round(commit_cpu[0], 2), "load_avg": _load()})  # fmt: skip
    return rows


def _time_commits(store: Any) -> list[float]:
    """Count the CPU seconds ``store.commit_batch`` takes from now on (one-element list)."""
    spent = [0.0]
    commit = store.commit_batch

    def timed(*args: Any, **kwargs: Any) -> Any:
        cpu = time.process_time()
        try:
            return commit(*args, **kwargs)
        finally:
            spent[0] += time.process_time() - cpu

    store.commit_batch = timed
    return spent


def _publisher(host: str, port: int, payloads: list[tuple[str, bytes]], ready: Any) -> None:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=f"bench-{os.getpid()}", protocol=mqtt.MQTTv5
    )
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    client.connect(host, port)
    client.loop_start()
    ready.wait()
    infos = [client.publish(t, p, qos=1) for t, p in payloads]
    for info in infos:
        info.wait_for_publish(120)
    client.disconnect()
    client.loop_stop()


def _start_broker(work: Path) -> tuple[subprocess.Popen[bytes], int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    conf = work / "mosquitto.conf"
    conf.write_text(
        TUNED_CONF.read_text()
        + f"\nlistener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
    )
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    proc = subprocess.Popen(
        [binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 10
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return proc, port
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def measure_ingest_mqtt(args: argparse.Namespace) -> list[Row]:
    """Windows/s end to end through a tuned Mosquitto into an in-process Collector.

    Two ways: *live*, the publisher process sending while the collector ingests (both, and
    the broker, share the two cores); *backlog*, everything published while the collector is
    away (its persistent session queues it in the broker), then drained by the collector.
    """
    from edgedl.collector.config import load_config
    from edgedl.collector.service import Collector, tune_gc

    payloads = fleet_payloads(args.devices, args.windows)
    total = len(payloads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        broker, port = _start_broker(Path(tmp))
        manifest = Path(tmp) / "manifest.json"
        manifest.write_text(reference_manifest().model_dump_json())
        try:
            for label, url, cleanup in databases(Path(tmp)):
                for mode in ("live", "backlog"):
                    config = load_config(None, env={}, overrides={
                        "mqtt.url": f"mqtt://127.0.0.1:{port}", "mqtt.group": f"b{uuid.uuid4().hex[:6]}",
                        "mqtt.client_id": f"bench-{uuid.uuid4().hex[:6]}", "storage.url": url,
                        "http.port": 0, "references": [str(manifest)],
                    })  # fmt: skip
                    collector = _started(Collector(config))
                    tune_gc()  # as `edgedl collector run` does
                    ready = multiprocessing.Event()
                    pub = multiprocessing.Process(
                        target=_publisher, args=("127.0.0.1", port, payloads, ready)
                    )
                    pub.start()
                    if mode == "backlog":
                        collector.stop()  # the broker keeps its session and queues for it
                        ready.set()
                        pub.join(300)
                        collector = Collector(config)
                    else:
                        time.sleep(0.5)
                    base = collector.store.count_windows()
                    started, cpu = time.perf_counter(), time.process_time()
                    if mode == "backlog":
                        _started(collector)
                    ready.set()
                    deadline = time.monotonic() + 300
                    while (
                        collector.store.count_windows() - base < total
                        and time.monotonic() < deadline
                    ):
                        time.sleep(0.05)
                    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
                    stored = collector.store.count_windows() - base
                    pub.join(60)
                    collector.stop()
                    what = (
                        "publisher sending meanwhile"
                        if mode == "live"
                        else "backlog queued in the broker"
                    )
                    rows.append({"storage": label, "path": f"MQTT QoS 1, tuned Mosquitto, drift on; {what}",
                                 "devices": args.devices, "windows": stored, "seconds": round(elapsed, 2),
                                 "windows_per_s": round(stored / elapsed), "cpu_s": round(cpu, 2),
                                 "windows_per_cpu_s": round(stored / cpu), "load_avg": _load()})  # fmt: skip
                    _wipe(url)
                cleanup()
        finally:
            broker.terminate()
            broker.wait(10)
    return rows


def _process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _ingested(url: str) -> float:
    import httpx

    text = httpx.get(f"{url}/metrics", timeout=10).text
    for line in text.splitlines():
        if line.startswith("edgedl_collector_windows_ingested_total "):
            return float(line.split()[1])
    return 0.0


def measure_ingest_group(args: argparse.Namespace) -> list[Row]:
    """Windows/s of 1 and 3 collector processes on one PostgreSQL, one shared subscription."""
    import httpx

    if not _pg_available():
        print("PostgreSQL does not answer on 127.0.0.1:5432: ingest_group skipped")
        return []
    edgedl = str(Path(sys.executable).with_name("edgedl"))
    payloads = fleet_payloads(args.devices, args.windows)
    total = len(payloads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        broker, port = _start_broker(work)
        manifest = work / "manifest.json"
        manifest.write_text(reference_manifest().model_dump_json())
        try:
            for n in [int(x) for x in args.collectors.split(",")]:
                _, url, cleanup = next(d for d in databases(work) if d[0] == "PostgreSQL")
                group = f"g{uuid.uuid4().hex[:6]}"
                procs: list[tuple[subprocess.Popen[bytes], str]] = []
                for i in range(n):
                    with socket.socket() as s:
                        s.bind(("127.0.0.1", 0))
                        http = s.getsockname()[1]
                    cmd = [edgedl, "collector", "run", "--mqtt", f"mqtt://127.0.0.1:{port}",
                           "--db", url, "--group", group, "--client-id", f"{group}-{i}",
                           "--http-port", str(http), "--reference", str(manifest)]  # fmt: skip
                    proc = subprocess.Popen(
                        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
                    )
                    procs.append((proc, f"http://127.0.0.1:{http}"))
                for _, base in procs:
                    deadline = time.monotonic() + 180
                    while True:
                        try:
                            if httpx.get(f"{base}/healthz", timeout=1).json()["mqtt_subscribed"]:
                                break
                        except (httpx.HTTPError, ValueError):
                            pass
                        assert time.monotonic() < deadline, "a collector did not subscribe"
                        time.sleep(0.1)
                cpu0 = [_process_cpu_s(p.pid) for p, _ in procs]
                ready = multiprocessing.Event()
                pub = multiprocessing.Process(
                    target=_publisher, args=("127.0.0.1", port, payloads, ready)
                )
                pub.start()
                time.sleep(0.5)
                started = time.perf_counter()
                ready.set()
                deadline = time.monotonic() + 600
                done = [0.0] * n
                while time.monotonic() < deadline:
                    done = [_ingested(base) for _, base in procs]
                    if sum(done) >= total:
                        break
                    time.sleep(0.1)
                elapsed = time.perf_counter() - started
                cpu = [_process_cpu_s(p.pid) - c0 for (p, _), c0 in zip(procs, cpu0, strict=True)]
                pub.join(60)
                for proc, _ in procs:
                    proc.terminate()
                for proc, _ in procs:
                    try:  # stopping finishes the drift evaluations queued during the run
                        proc.wait(120)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        proc.wait(10)
                cleanup()
                stored = int(sum(done))
                rows.append({"collectors": n, "devices": args.devices, "windows": stored,
                             "seconds": round(elapsed, 2), "windows_per_s": round(stored / elapsed),
                             "per_collector_windows": "/".join(str(int(d)) for d in done),
                             "per_collector_cpu_s": "/".join(f"{c:.1f}" for c in cpu),
                             "windows_per_cpu_s": round(stored / sum(cpu)),
                             "load_avg": _load()})  # fmt: skip
                print(rows[-1], flush=True)
        finally:
            broker.terminate()
            broker.wait(10)
    return rows


def _started(collector: Any) -> Any:
    collector.start()
    assert collector.mqtt is not None and collector.mqtt.subscribed.wait(10)
    return collector


def _wipe(url: str) -> None:
    """Empty the windows and devices tables between two runs on one database."""
    from edgedl.collector.schema import devices, windows
    from edgedl.collector.store import Store

    store = Store(url)
    with store.engine.begin() as conn:
        conn.execute(windows.delete())
        conn.execute(devices.delete())
    store.close()


def measure_drift(args: argparse.Namespace) -> list[Row]:
    """Every drift figure for 1,000 devices x 20 statistics: vectorised and one device at a time."""
    from edgedl.collector import drift

    rng = np.random.default_rng(2)
    devices, stats, bins = args.devices, 20, 12
    ref = rng.integers(50, 500, (stats, bins)).astype(float)
    positions = np.tile(np.arange(bins, dtype=float), (stats, 1))
    std = rng.random(stats) + 0.5
    mask = np.ones((stats, bins), dtype=bool)
    cur = rng.integers(0, 300, (devices, stats, bins)).astype(float)

    def all_figures(
        r: np.ndarray, c: np.ndarray, p: np.ndarray, s: np.ndarray, m: np.ndarray
    ) -> None:
        drift.psi(r, c, m)
        drift.js_distance(r, c)
        drift.ks_binned(r, c)
        drift.wasserstein_binned(r, c, p, s)

    started = time.perf_counter()
    all_figures(
        np.broadcast_to(ref, cur.shape), cur, np.broadcast_to(positions, cur.shape),
        np.broadcast_to(std, (devices, stats)), np.broadcast_to(mask, cur.shape),
    )  # fmt: skip
    vectorised = time.perf_counter() - started
    started = time.perf_counter()
    for d in range(devices):
        all_figures(ref, cur[d], positions, std, mask)
    per_device = time.perf_counter() - started
    full, full_stats = _full_evaluations(devices)
    figures = devices * stats * 4
    return [
        {"how": "PSI, JS, KS, Wasserstein: all devices in one call", "devices": devices,
         "statistics": stats, "seconds": round(vectorised, 4),
         "us_per_statistic": round(vectorised / (devices * stats) * 1e6, 2), "figures": figures},
        {"how": "PSI, JS, KS, Wasserstein: one call per device", "devices": devices,
         "statistics": stats, "seconds": round(per_device, 4),
         "us_per_statistic": round(per_device / (devices * stats) * 1e6, 2), "figures": figures},
        {"how": "the monitor's whole evaluation per device (+ chi-square, class PSI, confidence, "
                "latency p50/p95/p99 vs baseline, error rate)", "devices": devices,
         "statistics": full_stats, "seconds": round(full, 4),
         "us_per_statistic": round(full / (devices * full_stats) * 1e6, 2), "figures": None},
    ]  # fmt: skip


def _full_evaluations(devices: int) -> tuple[float, int]:
    """Seconds for ``monitor.evaluate`` on ``devices`` sliding windows of a 20-statistic model."""
    from edgedl.bundle import Manifest, TensorSpec
    from edgedl.collector.config import DriftConfig
    from edgedl.collector.evaluation import evaluate
    from edgedl.collector.references import ReferenceModel
    from edgedl.collector.sliding import Contribution, LatencyBaseline
    from edgedl.profile import Profile
    from edgedl.telemetry import ModelWindow, batch_size_histogram, latency_histogram

    rng = np.random.default_rng(3)

    def batch(n: int) -> tuple[dict[str, Any], dict[str, Any]]:
        z = rng.normal(0, 2, (n, 10))
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return {"x": rng.normal(0, 1, (n, 13))}, {"probs": e / e.sum(axis=1, keepdims=True)}

    # 13 features: 6 per-sample statistics + 13 per-feature ones + top-1 confidence = 20.
    profile = Profile.from_reference(*batch(2000), bins=10)
    manifest = Manifest(
        name="tabular", version="1", target="onnx-fp32", runtime="onnxruntime",
        model_file="m.onnx", sha256="7a" * 32, size_bytes=1,
        inputs=[TensorSpec(name="x", shape=[-1, 13], dtype="float32")],
        outputs=[TensorSpec(name="probs", shape=[-1, 10], dtype="float32")],
        profile=profile.to_dict(),
    )  # fmt: skip
    reference = ReferenceModel.from_manifest(manifest)
    cfg = DriftConfig()
    totals, baselines = [], []
    for _ in range(devices):
        live = profile.empty_like()
        live.observe(*batch(300))
        lat, bs = latency_histogram(), batch_size_histogram()
        lat.add(rng.gamma(4, 0.5, 300))
        bs.add(np.ones(300))
        model = ModelWindow.model_validate({
            "name": "tabular", "version": "1", "sha256": "7a" * 32,
            "counts": {"requests": 300, "inferences": 300}, "latency_ms": lat.to_dict(),
            "batch_size": bs.to_dict(), "profile": live.to_dict(),
        })  # fmt: skip
        total, _ = Contribution.from_window(0, model, reference)
        baseline = LatencyBaseline(1, 1)
        baseline.add(total)
        totals.append(total)
        baselines.append(baseline)
    started = time.perf_counter()
    for total, baseline in zip(totals, baselines, strict=True):
        evaluate(total, reference, baseline, cfg)
    return time.perf_counter() - started, len(reference.stats)


# ---------------------------------------------------------------- agent side


def _agent_builder(on_pending: Callable[[], None] | None = None) -> Any:
    """A WindowBuilder that knows the digits-like model (reference profile and all)."""
    from edgedl.agent.telemetry.window import ModelInfo, WindowBuilder

    manifest = reference_manifest()
    builder = WindowBuilder("bench", "pi-42", on_pending=on_pending)
    builder.register(ModelInfo("digits", "1", manifest.sha256, manifest.reference_profile(), 100.0))
    return builder


def _mqtt_bytes(topic: str, payload: int, content_type: str | None) -> int:
    """Bytes of a QoS 1 PUBLISH on the wire (fixed header, topic, packet id, MQTT 5
    properties with the content type) plus the broker's 4-byte PUBACK."""
    props = 3 + len(content_type) if content_type else 0
    body = 2 + len(topic) + 2 + 1 + props + payload
    length_bytes = 1 if body < 128 else 2 if body < 16_384 else 3 if body < 2_097_152 else 4
    return 1 + length_bytes + body + 4


def measure_wire(args: argparse.Namespace) -> list[Row]:
    """Bytes on the wire per window and per 1,000 inferences: windows against one record each."""
    from edgedl.profile import batch_statistics
    from edgedl.telemetry import CONTENT_TYPES, encode_window, telemetry_topic

    topic = telemetry_topic("bench", "pi-42")
    rng = np.random.default_rng(3)
    rows: list[Row] = []
    for per_window in (10, 100, 1_000, 10_000):
        builder = _agent_builder()
        done = 0
        while done < per_window:
            n = min(8, per_window - done)
            inputs, outputs = _batch(rng, n)
            builder.on_batch("digits", "1", n, 0.002, inputs, outputs)
            for _ in range(n):
                builder.on_request("digits", "1", float(rng.gamma(4, 0.0005)), True)
            done += n
        window = builder.cut(seq=1)
        for compression in ("zstd", "gzip", "none"):
            payload, ctype = encode_window(window, compression)
            wire = _mqtt_bytes(topic, len(payload), ctype)
            rows.append({
                "what": f"window, {compression}", "inferences per window": per_window,
                "payload bytes": len(payload), "wire bytes per window": wire,
                "wire bytes per 1,000 inferences": round(wire * 1000 / per_window),
            })  # fmt: skip
    # The alternative: every inference its own JSON message, QoS 1, on the same topic.
    inputs, outputs = _batch(rng, 1)
    stats, classes = batch_statistics(inputs, outputs)
    common = {"fleet": "bench", "device": "pi-42", "model": "digits", "version": "1",
              "time": time.time(), "latency_ms": 2.1}  # fmt: skip
    records = {
        "one JSON record per inference (inputs and outputs)": {
            **common,
            "inputs": {"image": [round(float(v), 4) for v in inputs["image"].ravel()]},
            "outputs": {"probs": [round(float(v), 4) for v in outputs["probs"].ravel()]},
        },
        "one JSON record per inference (statistics and prediction only)": {
            **common,
            **{k: round(float(v[0]), 4) for k, v in stats.items()},
            **{f"{k}/class": int(v[0]) for k, v in classes.items()},
        },
    }
    for what, record in records.items():
        size = len(json.dumps(record, separators=(",", ":")).encode())
        wire = _mqtt_bytes(topic, size, CONTENT_TYPES["none"])
        rows.append({
            "what": what, "inferences per window": 1, "payload bytes": size,
            "wire bytes per window": wire, "wire bytes per 1,000 inferences": wire * 1000,
        })  # fmt: skip
    return rows


def measure_agent_cpu(args: argparse.Namespace) -> list[Row]:
    """Agent CPU spent on telemetry per inference: serving thread, telemetry thread, cut."""
    from edgedl.telemetry import encode_window

    rng = np.random.default_rng(4)
    rows: list[Row] = []
    for batch in (1, 8, 32):
        inputs, outputs = _batch(rng, batch)
        inputs["image"] = inputs["image"].astype(np.float32)
        outputs["probs"] = outputs["probs"].astype(np.float32)
        # As TelemetryService runs it: serving threads copy and count, and the telemetry
        # thread folds the buffered statistics when asked. Both timed, separately.
        asked: list[int] = []
        builder = _agent_builder(on_pending=lambda: asked.append(1))  # noqa: B023 - used in this iteration only
        calls = max(200, 20_000 // batch)
        serving = folding = 0.0
        for _ in range(calls):
            t0 = time.process_time()
            builder.on_batch("digits", "1", batch, 0.002, inputs, outputs)
            for _ in range(batch):
                builder.on_request("digits", "1", 0.0021, True)
            t1 = time.process_time()
            serving += t1 - t0
            if asked:
                asked.clear()
                builder.fold_pending()
                folding += time.process_time() - t1
        n = calls * batch
        start = time.process_time()
        cuts = 50
        for _ in range(cuts):
            builder.on_batch("digits", "1", batch, 0.002, inputs, outputs)
            encode_window(builder.cut(seq=1), "zstd")
        cut_s = (time.process_time() - start) / cuts
        for per_window in (100, 1_000):
            rows.append({
                "batch size": batch, "inferences per window": per_window,
                "serving thread µs per inference": round(serving / n * 1e6, 1),
                "statistics µs per inference (telemetry thread)": round(folding / n * 1e6, 1),
                "cut + encode ms per window": round(cut_s * 1e3, 2),
                "total µs per inference": round(
                    (serving / n + folding / n + cut_s / per_window) * 1e6, 1
                ),
            })  # fmt: skip
    return rows


MEASUREMENTS: dict[str, tuple[str, Callable[[argparse.Namespace], list[Row]]]] = {
    "ingest_direct": ("Collector ingest, straight into storage", measure_ingest_direct),
    "ingest_mqtt": ("Collector ingest through the broker", measure_ingest_mqtt),
    "ingest_group": ("Collector group on PostgreSQL, 1 and 3 processes", measure_ingest_group),
    "drift": ("Drift computation, 20 statistics per device", measure_drift),
    "wire": ("Agent: bytes on the wire, windows against one message per inference", measure_wire),
    "agent_cpu": ("Agent: CPU spent on telemetry per inference", measure_agent_cpu),
}


def markdown(rows: list[Row]) -> str:
    """A markdown table of rows that share their keys."""
    if not rows:
        return "(nothing measured)"
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(str(r.get(k, "")) for k in keys) + " |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    """Run the asked measurements, print their tables, merge them into the JSON results."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--only", default=",".join(MEASUREMENTS), help="comma-separated measurements"
    )
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--windows", type=int, default=20, help="windows per device")
    parser.add_argument("--collectors", default="1,3", help="ingest_group: group sizes")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    chosen = [m.strip() for m in args.only.split(",") if m.strip()]
    unknown = [m for m in chosen if m not in MEASUREMENTS]
    if unknown:
        parser.error(f"unknown measurement(s) {unknown}; known: {', '.join(MEASUREMENTS)}")
    results: dict[str, Any] = {}
    if args.out.exists():
        results = json.loads(args.out.read_text())
    results.setdefault("measurements", {})
    for name in chosen:
        title, fn = MEASUREMENTS[name]
        rows = fn(args)
        print(f"\n### {title} ({name})\n\n{markdown(rows)}")
        results["measurements"][name] = {
            "title": title,
            "rows": rows,
            "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
    results["machine"] = machine()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
