"""The ``edgedl`` command line: the root group, shared commands and error handling.

Component commands (``convert``, and later ``agent`` and ``collector``) are imported only
when invoked, so ``edgedl --help`` on a device never imports TensorFlow, and a missing
extra is reported as a one-line hint instead of an ImportError.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import traceback
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from ._version import __version__
from .errors import BundleError, EdgeDLError, UsageError
from .fleet_cli import fleet
from .signing_cli import keys, sign, verify

# name -> ("module:attribute", extra that provides it, one-line help)
_LAZY_COMMANDS: dict[str, tuple[str, str, str]] = {
    "convert": (
        "edgedl.converters.cli:convert",
        "convert",
        "Convert a trained model into a quantized, validated bundle.",
    ),
    "compress": (
        "edgedl.converters.compress_cli:compress",
        "convert",
        "Make a Keras or PyTorch model smaller: pruning, distillation, low rank, clustering.",
    ),
    "targets": (
        "edgedl.converters.cli:targets",
        "convert",
        "List the conversion targets.",
    ),
    "report": (
        "edgedl.converters.readiness.cli:report",
        "convert",
        "Is a bundle ready to ship? Quality, calibration, robustness, load, release gates.",
    ),
    "loadtest": (
        "edgedl.loadtest.cli:loadtest",
        "",
        "Load an Open Inference Protocol server: requests/s, p50/p95/p99, errors, the knee.",
    ),
    "agent": (
        "edgedl.agent.cli:agent",
        "agent",
        "Serve bundles on a device: inference API, pipelines, rollout, telemetry.",
    ),
    "collector": (
        "edgedl.collector.cli:collector",
        "collector",
        "Receive device telemetry: storage, drift, alerts, dashboard.",
    ),
    "demo": (
        "edgedl.demo.cli:demo",
        "all",
        "The whole loop on this machine: train, convert, serve, watch, see a drift alert.",
    ),
}

_debug = {"on": bool(os.environ.get("EDGEDL_DEBUG"))}
err_console = Console(stderr=True, highlight=False, soft_wrap=True)


class _LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *_LAZY_COMMANDS])

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in _LAZY_COMMANDS:
            target, _, _ = _LAZY_COMMANDS[cmd_name]
            module_name, attr = target.split(":")
            module = importlib.import_module(module_name)
            command = getattr(module, attr)
            assert isinstance(command, click.Command)
            return command
        return super().get_command(ctx, cmd_name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # Listing help must not import the components: use the short help kept above.
        rows = [(name, help_) for name, (_, _, help_) in _LAZY_COMMANDS.items()]
        for name in super().list_commands(ctx):
            cmd = super().get_command(ctx, name)
            if cmd is not None and not cmd.hidden:
                rows.append((name, cmd.get_short_help_str(limit=70)))
        with formatter.section("Commands"):
            formatter.write_dl(sorted(rows))


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="edgedl")
@click.option("--debug", is_flag=True, help="Show tracebacks for errors.")
def cli(debug: bool) -> None:
    """edgedl: put deep-learning models on small devices and keep them healthy there."""
    if debug:
        _debug["on"] = True


def emit_json(data: Any) -> None:
    """Print ``data`` as JSON on stdout (for ``--json`` output)."""
    click.echo(json.dumps(data, indent=2, default=str))


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def devices(as_json: bool) -> None:
    """List the device profiles (--device) and what each implies."""
    from .devices import DEVICES

    if as_json:
        emit_json([d.to_dict() for d in DEVICES.values()])
        return
    table = Table(title="Device profiles")
    for col in ("device", "description", "default target", "runtime", "threads", "providers"):
        table.add_column(col)
    for d in DEVICES.values():
        table.add_row(
            d.name,
            d.description,
            d.default_target + (f" (--io {d.io_dtype})" if d.io_dtype else ""),
            d.runtime,
            str(d.threads or "all"),
            ", ".join(p.replace("ExecutionProvider", "") for p in d.execution_providers) or "-",
        )
    Console().print(table)


@cli.command()
@click.argument("bundle", type=click.Path(path_type=str))
@click.option("--json", "as_json", is_flag=True, help="Print the manifest as JSON.")
def inspect(bundle: str, as_json: bool) -> None:
    """Verify a bundle (sha256) and show what it holds."""
    from .bundle import Bundle

    b = Bundle.open(bundle)
    m = b.manifest
    if as_json:
        emit_json({"path": str(b.path), "verified": True, "manifest": m.model_dump()})
        return
    console = Console()
    console.print(f"[bold]{m.name}[/] {m.version}  target={m.target}  runtime={m.runtime}")
    console.print(f"{m.model_file}  {m.size_bytes} bytes  sha256={m.sha256}  [green]verified[/]")
    table = Table()
    for col in ("", "name", "shape", "dtype", "scale", "zero point"):
        table.add_column(col)
    for kind, specs in (("input", m.inputs), ("output", m.outputs)):
        for s in specs:
            q = s.quantization
            table.add_row(
                kind,
                s.name,
                str(s.shape),
                s.dtype,
                f"{q.scale:.6g}" if q else "-",
                str(q.zero_point) if q else "-",
            )
    console.print(table)


for _command in (keys, sign, verify):  # signed bundles (edgedl.signing)
    cli.add_command(_command)
cli.add_command(fleet)  # fleet rollouts through the collector (docs/fleet.md)


def _one_line(message: str) -> str:
    return " ".join(message.split())


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the CLI and turn user errors into one line and a non-zero exit."""
    code: int
    try:
        rv = cli.main(args=argv, prog_name="edgedl", standalone_mode=False)
        code = rv if isinstance(rv, int) else 0
    except click.exceptions.Abort:
        err_console.print("[red]error:[/] aborted")
        code = 130
    except click.UsageError as exc:
        hint = f" (see 'edgedl {exc.ctx.command_path.split(' ', 1)[-1]} --help')" if exc.ctx else ""
        if exc.ctx and exc.ctx.command_path == "edgedl":
            hint = " (see 'edgedl --help')"
        err_console.print(f"[red]error:[/] {_one_line(exc.format_message())}{hint}")
        code = exc.exit_code
    except click.ClickException as exc:
        err_console.print(f"[red]error:[/] {_one_line(exc.format_message())}")
        code = exc.exit_code
    except EdgeDLError as exc:
        if _debug["on"]:
            traceback.print_exc()
        err_console.print(f"[red]error:[/] {_one_line(str(exc))}")
        code = exc.exit_code
    except KeyboardInterrupt:
        err_console.print("[red]error:[/] interrupted")
        code = 130
    except ModuleNotFoundError as exc:
        if _debug["on"]:
            traceback.print_exc()
        extra = _extra_for(exc.name or "")
        err_console.print(
            f"[red]error:[/] missing module {exc.name!r}"
            + (f": install the extra with: pip install 'edgedl[{extra}]'" if extra else "")
        )
        code = 1
    except Exception as exc:
        if _debug["on"]:
            traceback.print_exc()
        err_console.print(
            f"[red]internal error:[/] {type(exc).__name__}: {_one_line(str(exc))[:300]} "
            "(run with --debug for the traceback, and please report it)"
        )
        code = 70
    sys.exit(code)


_EXTRA_MODULES = {
    "tensorflow": "convert",
    "keras": "convert",
    "tf2onnx": "convert",
    "onnx": "convert",
    "onnxconverter_common": "convert",
    "sklearn": "convert",
    "PIL": "convert",
    "matplotlib": "convert",
    "onnxruntime": "agent",
    "ai_edge_litert": "agent",
    "paho": "agent",
    "sqlalchemy": "collector",
    "starlette": "agent",
    "uvicorn": "agent",
    "prometheus_client": "agent",
    "psutil": "agent",
    "webrtcvad": "agent",
    "psycopg": "collector",
}


def _extra_for(module: str) -> str | None:
    return _EXTRA_MODULES.get(module.split(".")[0])


__all__ = ["BundleError", "UsageError", "cli", "emit_json", "main"]
