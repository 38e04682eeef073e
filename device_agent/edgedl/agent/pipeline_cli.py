"""``edgedl agent run-pipeline``: run one configured pipeline over a WAV file or stdin."""

from __future__ import annotations

import json
import sys
from typing import Any, BinaryIO

import click
from rich.console import Console
from rich.table import Table

from edgedl.errors import ConfigError, DataError, UsageError

from .pipeline.config import PipelineConfig
from .pipeline.pipeline import Pipeline, build_pipeline
from .pipeline.stream import Event, Output, Segment

CHUNK_MS = 100


@click.command("run-pipeline")
@click.option("--config", "config_path", required=True, type=click.Path(dir_okay=False),
              help="agent.toml with [[pipelines]].")  # fmt: skip
@click.option("--pipeline", "name", default=None, help="Which pipeline (default: the only one).")
@click.option("--input", "input_path", required=True,
              help="A 16-bit PCM WAV file, or - for raw s16le mono PCM on stdin.")  # fmt: skip
@click.option("--sample-rate", type=click.IntRange(min=1), default=None,
              help="Sample rate of the PCM on stdin (default: the pipeline's).")  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Outputs as JSON lines; the stage table on stderr.")  # fmt: skip
@click.option("--segments/--no-segments", default=None,
              help="Print the VAD's speech segments (default: the pipeline's `segments`).")  # fmt: skip
@click.option("--profile", "profile_path", type=click.Path(dir_okay=False), default=None,
              help="Write the run's stage-health reference profile (JSON) here.")  # fmt: skip
def run_pipeline(
    config_path: str,
    name: str | None,
    input_path: str,
    sample_rate: int | None,
    as_json: bool,
    segments: bool | None,
    profile_path: str | None,
) -> None:
    """Run a pipeline over audio; print each output as it is found, then the stage statistics."""
    from .config import load_config

    config = _choose(load_config(config_path).pipelines, name, config_path)
    pipeline = build_pipeline(config)
    if segments is not None:
        pipeline.emit_segments = segments
    chunk = config.sample_rate * CHUNK_MS // 1000
    if input_path == "-":
        rate = sample_rate or config.sample_rate
        _check_rate(rate, config, "stdin (--sample-rate)")
        events = _run_stdin(pipeline, sys.stdin.buffer, chunk * 2, as_json)
    else:
        from .pipeline.audio import read_wav

        samples, rate = read_wav(input_path)
        _check_rate(rate, config, input_path)
        if sample_rate is not None and sample_rate != rate:
            raise UsageError(f"--sample-rate {sample_rate} contradicts {input_path} ({rate} Hz)")
        events = 0
        for i in range(0, samples.shape[0], chunk):
            events += _show(pipeline.feed(samples[i : i + chunk]), as_json)
        events += _show(pipeline.flush(), as_json)
    _stage_table(pipeline, events, as_json)
    if profile_path is not None:
        _write_profile(pipeline, profile_path)


def _choose(pipelines: list[PipelineConfig], name: str | None, where: str) -> PipelineConfig:
    names = [p.name for p in pipelines]
    if not pipelines:
        raise ConfigError(f"{where}: no [[pipelines]] configured")
    if name is None:
        if len(pipelines) > 1:
            raise UsageError(f"{where} has {len(names)} pipelines ({', '.join(names)}): pick one with --pipeline")  # fmt: skip
        return pipelines[0]
    if name not in names:
        raise UsageError(f"no pipeline {name!r} in {where} (pipelines: {', '.join(names)})")
    return pipelines[names.index(name)]


def _check_rate(rate: int, config: PipelineConfig, where: str) -> None:
    if rate != config.sample_rate:
        raise DataError(
            f"{where}: audio at {rate} Hz, but pipeline {config.name!r} expects "
            f"{config.sample_rate} Hz (resample it, e.g. sox in.wav -r {config.sample_rate} out.wav)"
        )


def _run_stdin(pipeline: Pipeline, stream: BinaryIO, chunk_bytes: int, as_json: bool) -> int:
    events = 0
    while True:
        data = stream.read(chunk_bytes)
        if not data:
            break
        events += _show(pipeline.feed(data), as_json)
    return events + _show(pipeline.flush(), as_json)


def _show(outputs: list[Output], as_json: bool) -> int:
    for o in outputs:
        click.echo(json.dumps(o.to_dict()) if as_json else _line(o))
    if outputs:
        sys.stdout.flush()
    return len(outputs)


def _line(o: Output) -> str:
    times = f"{o.start:9.2f}s {o.end:9.2f}s  {o.kind:<10}"
    if isinstance(o, Event):
        return f"{times} {o.label:<12} {o.score:.2f}"
    if isinstance(o, Segment):
        prob = "" if o.mean_probability is None else f" p mean {o.mean_probability:.2f} peak {o.peak_probability:.2f}"  # fmt: skip
        return f"{times} {o.engine}{prob}"
    return f"{times} {o.text!r} ({o.confidence:.2f})"


def _write_profile(pipeline: Pipeline, path: str) -> None:
    from pathlib import Path

    from edgedl.stage_health import reference_profile

    profile = reference_profile(pipeline.name, pipeline.sample_rate, pipeline.stats())
    try:
        Path(path).write_text(json.dumps(profile, indent=2) + "\n")
    except OSError as exc:
        raise UsageError(f"cannot write the profile to {path}: {exc.strerror}") from exc
    click.echo(f"stage-health profile of {pipeline.name!r} written to {path}", err=True)


def _stage_table(pipeline: Pipeline, events: int, to_stderr: bool) -> None:
    table = Table(title=f"pipeline {pipeline.name}: {events} events")
    for col in ("stage", "received", "passed", "kept", "calls", "mean ms", "max ms"):
        table.add_column(col, justify="left" if col == "stage" else "right")
    for name, s in pipeline.stats().items():
        lat: dict[str, Any] = s["latency_ms"]
        kept = s.get("kept_share")
        table.add_row(
            name,
            f"{s['received']} {s['unit_in']}",
            f"{s['passed']} {s['unit_out']}",
            f"{kept:.1%}" if kept is not None else "",
            str(lat["count"]),
            f"{lat['mean']:.2f}",
            f"{lat['max']:.2f}",
        )
    Console(stderr=to_stderr, width=None if _tty(to_stderr) else 120).print(table)


def _tty(stderr: bool) -> bool:
    return (sys.stderr if stderr else sys.stdout).isatty()


__all__ = ["run_pipeline"]
