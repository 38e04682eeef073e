"""Container images of the agent and collector, built with podman from a debootstrap base.

No registry is reachable here, so the base image is a cached Debian root
(:mod:`tests.platform.rootfs`) imported with ``podman import``; the Containerfiles in
``containers/`` take it as ``--build-arg BASE=...`` (elsewhere their default, Docker Hub's
``python:3.11-slim-bookworm``). podman keeps the layers between runs: the dependency layer
is rebuilt only when pyproject.toml or the base changes, and a run re-adds only the small
layer with this checkout's wheel. Builds use the host network (no bridge) and the host's
CA bundle for pip.

Two things of this kind of host (a VM whose init is not systemd, cgroups v1 and v2 mounted
side by side, a hard limit of open files below podman's default): Debian bookworm's crun
refuses hybrid cgroups, so podman runs with runc where it is installed; and every
container gets resource limits below the host's hard limits (:func:`limit_flags`), as
podman's defaults are above them and the runtime may not raise a hard limit.
"""

from __future__ import annotations

import resource
import shutil
import subprocess
from pathlib import Path

from tests.platform.rootfs import PYTHON_PACKAGES, RootfsSpec, ensure_rootfs, locked

CONTAINERS = Path(__file__).resolve().parents[2] / "containers"
HOST_CA = "/etc/ssl/certs/ca-certificates.crt"


def podman_argv(*args: str) -> list[str]:
    """``podman ARGS`` with the OCI runtime that works here (runc where installed)."""
    runtime = ["--runtime=runc"] if shutil.which("runc") else []
    return ["podman", *runtime, *args]


def container_limits() -> list[str]:
    """``NAME=SOFT:HARD`` limits of open files and processes, within the host's hard limits."""
    limits = []
    for name, kind in (("nofile", resource.RLIMIT_NOFILE), ("nproc", resource.RLIMIT_NPROC)):
        hard = resource.getrlimit(kind)[1]
        value = 16384 if hard == resource.RLIM_INFINITY else min(16384, hard // 2)
        limits.append(f"{name}={value}:{value}")
    return limits


def limit_flags() -> list[str]:
    """``--ulimit`` flags for open files and processes, within the host's hard limits."""
    return [f"--ulimit={limit}" for limit in container_limits()]


def podman(*args: str, timeout: float = 1800, check: bool = True) -> str:
    """Run ``podman ARGS``; its stdout, stripped."""
    proc = subprocess.run(podman_argv(*args), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise RuntimeError(f"podman {' '.join(args[:3])}... failed:\n{proc.stderr[-4000:]}")
    return proc.stdout.strip()


def base_image(arch: str) -> str:
    """The local base image of ``arch``: the cached Debian root, imported once."""
    spec = RootfsSpec(arch, PYTHON_PACKAGES)
    root = ensure_rootfs(spec)
    tag = f"localhost/edgedl-base:bookworm-{arch}-{spec.key}"
    with locked(root.with_name(root.name + ".image.lock")):
        if subprocess.run(["podman", "image", "exists", tag]).returncode != 0:
            tar = subprocess.Popen(
                # The agent venv and CA copy the chroot checks add to the root stay out.
                [
                    "tar",
                    "-C",
                    str(root),
                    "--exclude=./opt/edgedl-agent-*",
                    "--exclude=./etc/edgedl-host-ca.crt",
                    "--exclude=./.edgedl-complete",
                    "-c",
                    ".",
                ],
                stdout=subprocess.PIPE,
            )
            imported = subprocess.run(
                ["podman", "import", f"--arch={arch}", "-", tag],
                stdin=tar.stdout,
                capture_output=True,
                text=True,
            )
            tar.wait()
            if imported.returncode != 0:
                raise RuntimeError(f"podman import failed: {imported.stderr}")
    return tag


def build_context(pyproject: Path, wheel: Path, out: Path) -> Path:
    """The build context the Containerfiles expect: pyproject.toml and wheels/."""
    (out / "wheels").mkdir(parents=True, exist_ok=True)
    shutil.copyfile(pyproject, out / "pyproject.toml")
    shutil.copyfile(wheel, out / "wheels" / wheel.name)
    return out


def build_image(containerfile: str, context: Path, tag: str, arch: str) -> str:
    """Build ``containers/CONTAINERFILE`` for ``arch`` on the local base; the image id.

    The image the tag named before is removed when the build replaced it, so reruns do
    not pile up images (the cached layers stay).
    """
    previous = podman("image", "inspect", "--format", "{{.Id}}", tag, check=False)
    podman(
        "build",
        "--quiet",
        "--format=docker",  # HEALTHCHECK is kept in the docker format only
        "--network=host",
        f"--platform=linux/{arch}",
        f"--build-arg=BASE={base_image(arch)}",
        f"--volume={HOST_CA}:/run/edgedl-host-ca.crt:ro",
        "--build-arg=PIP_CERT=/run/edgedl-host-ca.crt",
        "-f",
        str(CONTAINERS / containerfile),
        "-t",
        tag,
        str(context),
    )
    current = podman("image", "inspect", "--format", "{{.Id}}", tag)
    if previous and previous != current:
        podman("rmi", previous, check=False)
    return current


def image_size_mb(tag: str) -> float:
    """The image's size as podman reports it (all layers, uncompressed)."""
    return int(podman("image", "inspect", "--format", "{{.Size}}", tag)) / 1e6
