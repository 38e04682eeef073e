"""The device side stays light: the agent extra and the SDK never bring TensorFlow."""

from __future__ import annotations

import re
import subprocess
import sys
from importlib import metadata

from packaging.requirements import Requirement

HEAVY = {"tensorflow", "tensorflow-cpu", "tf-keras", "keras", "tf2onnx", "torch"}


def _closure(requirements: list[Requirement], extras: set[str]) -> set[str]:
    """Installed distributions reachable from ``requirements`` (markers evaluated here)."""
    seen: set[str] = set()
    todo = [(r, extras) for r in requirements]
    while todo:
        req, active = todo.pop()
        env_ok = req.marker is None or any(
            req.marker.evaluate({"extra": e}) for e in (active or {""})
        )
        name = re.sub(r"[-_.]+", "-", req.name).lower()
        if not env_ok or name in seen:
            continue
        seen.add(name)
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        todo += [(Requirement(r), set(req.extras)) for r in dist.requires or []]
    return seen


def test_agent_extra_does_not_pull_tensorflow():
    edgedl = metadata.distribution("edgedl")
    declared = [Requirement(r) for r in edgedl.requires or []]
    agent = _closure(declared, {"agent"})
    assert "ai-edge-litert" in agent and "onnxruntime" in agent and "paho-mqtt" in agent
    assert not agent & HEAVY, f"edgedl[agent] pulls {sorted(agent & HEAVY)}"
    # ...while the convert extra really does, so the walk above is not vacuous.
    assert "tensorflow" in _closure(declared, {"convert"})


def test_device_side_imports_do_not_load_tensorflow():
    code = (
        "import sys\n"
        "import edgedl.agent, edgedl.bundle, edgedl.runtime, edgedl.profile, edgedl.devices\n"
        "from click.testing import CliRunner\n"
        "from edgedl.cli import cli\n"
        "assert CliRunner().invoke(cli, ['--help']).exit_code == 0\n"
        "assert CliRunner().invoke(cli, ['devices']).exit_code == 0\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('tensorflow', 'keras', 'tf2onnx', 'torch'))\n"
        "print(heavy)\n"
        "sys.exit(1 if heavy else 0)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
