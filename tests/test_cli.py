"""The ``edgedl`` root command: help everywhere, version, listings, inspect."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from edgedl._version import __version__
from edgedl.cli import cli
from tests.conftest import run_edgedl


def _all_commands() -> list[list[str]]:
    ctx = cli.make_context("edgedl", ["--help"], resilient_parsing=True)
    return [[name] for name in cli.list_commands(ctx)]


@pytest.mark.parametrize("command", [[], *_all_commands()])
def test_every_command_has_help(command):
    result = CliRunner().invoke(cli, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output


def test_version():
    result = run_edgedl("--version")
    assert result.code == 0 and __version__ in result.stdout


def test_devices_json_lists_every_profile():
    result = run_edgedl("devices", "--json")
    assert result.code == 0
    devices = {d["name"]: d for d in json.loads(result.stdout)}
    assert set(devices) == {"rpi4", "rpi5", "jetson-orin", "jetson-nano", "coral", "x86"}
    assert devices["jetson-orin"]["execution_providers"][0] == "TensorrtExecutionProvider"
    assert devices["coral"]["io_dtype"] == "uint8"


def test_targets_json_comes_from_the_registry():
    from edgedl.converters import TARGETS

    result = run_edgedl("targets", "--json")
    assert result.code == 0
    listed = json.loads(result.stdout)
    assert [t["name"] for t in listed] == list(TARGETS)
    assert {t["name"] for t in listed if "onnx" in t["sources"]} == {
        n for n in TARGETS if n.startswith("onnx-")
    }


def test_inspect_verifies_and_describes_a_bundle(digits_bundles):
    path = digits_bundles["tflite-int8"].bundle.path
    result = run_edgedl("inspect", path, "--json")
    assert result.code == 0
    data = json.loads(result.stdout)
    assert data["verified"] is True
    assert data["manifest"]["inputs"][0]["quantization"]["zero_point"] == -128


def test_inspect_refuses_a_tampered_bundle(digits_bundles, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(digits_bundles["onnx-int8"].bundle.path, copy)
    model = copy / "model.onnx"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model.write_bytes(bytes(data))
    result = run_edgedl("inspect", copy)
    assert result.code == 1
    assert result.last_error_line.startswith("error:") and "sha256 mismatch" in result.stderr
    assert "Traceback" not in result.stderr


def test_unknown_command_is_one_line():
    result = run_edgedl("frobnicate")
    assert result.code == 2
    assert result.stderr.strip().count("\n") == 0 and "frobnicate" in result.stderr
