"""Debian root file systems for the platform checks, built once with debootstrap and cached.

A root file system is keyed by a hash of what goes into it (suite, architecture, variant,
packages, mirror), so a second run on the same machine reuses it and a change of inputs
builds a new one. The cache lives outside the clone, in ``EDGEDL_TEST_CACHE`` (default
``/var/cache/edgedl-tests``), and a build takes an exclusive lock so that concurrent runs
wait for one another instead of building twice.

Run as a script to build (or find) one ahead of the tests::

    python -m tests.platform.rootfs --arch arm64
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

SUITE = "bookworm"
MIRROR = os.environ.get("EDGEDL_DEBIAN_MIRROR", "http://deb.debian.org/debian")
COMPLETE = ".edgedl-complete"

#: Python and a venv: enough for ``pip install '.[agent]'`` (chroot checks, container bases).
PYTHON_PACKAGES = ("python3", "python3-venv", "ca-certificates")
#: What booting with systemd as PID 1 needs on top (``systemd-nspawn -b``).
SYSTEMD_PACKAGES = (*PYTHON_PACKAGES, "systemd", "systemd-sysv", "dbus")


def cache_dir() -> Path:
    """Where root file systems and venvs are cached, outside any clone."""
    return Path(os.environ.get("EDGEDL_TEST_CACHE", "/var/cache/edgedl-tests"))


def host_arch() -> str:
    """The host's Debian architecture name."""
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())


@dataclass(frozen=True)
class RootfsSpec:
    """What a root file system is built from; its hash names the cache entry."""

    arch: str
    packages: tuple[str, ...] = PYTHON_PACKAGES
    variant: str = "minbase"

    @property
    def key(self) -> str:
        text = "|".join((SUITE, self.arch, self.variant, MIRROR, ",".join(sorted(self.packages))))
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    @property
    def path(self) -> Path:
        return cache_dir() / f"rootfs-{SUITE}-{self.arch}-{self.key}"


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created when missing) for the block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def foreign_arch_runs(arch: str) -> bool:
    """Whether binfmt_misc has an interpreter registered and enabled for ``arch``."""
    if arch == host_arch():
        return True
    qemu = {"arm64": "aarch64", "armhf": "arm"}.get(arch, arch)
    entry = Path(f"/proc/sys/fs/binfmt_misc/qemu-{qemu}")
    try:
        return entry.read_text().splitlines()[0].strip() == "enabled"
    except OSError:
        return False


def missing_requirements(arch: str, *tools: str) -> str | None:
    """Why root file systems of ``arch`` cannot be built or run here, or None."""
    if os.geteuid() != 0:
        return "needs root (debootstrap, chroot and mounts)"
    for tool in ("debootstrap", *tools):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (Debian package {tool.split('-')[0]})"
    if not foreign_arch_runs(arch):
        return f"binfmt_misc has no enabled qemu interpreter for {arch} (qemu-user-static)"
    return None


def unmount_under(path: Path) -> None:
    """Unmount whatever is mounted at or below ``path`` (a failed debootstrap leaves /proc)."""
    prefix = str(path.resolve())
    mounts = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()]
    for point in sorted(
        (m for m in mounts if m == prefix or m.startswith(prefix + "/")), key=len, reverse=True
    ):
        subprocess.run(["umount", "-l", point], check=False)


def ensure_rootfs(spec: RootfsSpec, log: bool = True) -> Path:
    """The cached root file system for ``spec``, built with debootstrap when missing."""
    target = spec.path
    if (target / COMPLETE).exists():
        return target
    with locked(target.with_name(target.name + ".lock")):
        if (target / COMPLETE).exists():
            return target
        staging = target.with_name(target.name + ".building")
        shutil.rmtree(staging, ignore_errors=True)
        started = time.monotonic()
        command = [
            "debootstrap",
            f"--arch={spec.arch}",
            f"--variant={spec.variant}",
            f"--include={','.join(spec.packages)}",
            SUITE,
            str(staging),
            MIRROR,
        ]
        if log:
            print(f"building {target.name}: {' '.join(command)}", file=sys.stderr, flush=True)
        proc = subprocess.run(command, capture_output=True, text=True)
        if proc.returncode != 0:
            tail = (proc.stdout + proc.stderr)[-4000:]
            unmount_under(staging)
            shutil.rmtree(staging, ignore_errors=True)
            raise RuntimeError(f"debootstrap failed ({proc.returncode}):\n{tail}")
        unmount_under(staging)  # debootstrap can leave the target's /proc mounted
        shutil.rmtree(staging / "var/cache/apt/archives", ignore_errors=True)
        (staging / "var/cache/apt/archives/partial").mkdir(parents=True, exist_ok=True)
        elapsed = time.monotonic() - started
        (staging / COMPLETE).write_text(f"built in {elapsed:.0f} s\n")
        staging.rename(target)
        if log:
            print(f"built {target.name} in {elapsed:.0f} s", file=sys.stderr, flush=True)
    return target


def chroot_argv(root: Path, argv: list[str]) -> list[str]:
    """``argv`` run in ``root``, with /proc and /dev mounted for it alone.

    No /sys: under qemu-user the host's (x86) CPU topology there makes the cpuinfo library
    that ONNX Runtime and LiteRT bundle crash the arm64 process; without it they warn and
    run on defaults.

    The mounts are made in a private mount namespace (``unshare --mount``) that ends with
    the process, so nothing stays mounted on the host whatever happens to the test. No
    fork: the process the caller starts becomes the command itself (same pid, same
    signals). The host network is shared (a chroot has no network namespace).
    """
    script = 'mount -t proc proc "$0/proc" && mount --rbind /dev "$0/dev" && exec chroot "$0" "$@"'
    return [
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "--",
        "sh",
        "-c",
        script,
        str(root),
        *argv,
    ]


def agent_requirements(pyproject: Path) -> list[str]:
    """The requirements of ``edgedl[agent]`` (core and agent extra), from pyproject.toml."""
    import tomllib

    project = tomllib.loads(pyproject.read_text())["project"]
    return [*project["dependencies"], *project["optional-dependencies"]["agent"]]


def ensure_agent_venv(root: Path, pyproject: Path, log: bool = True) -> tuple[str, float]:
    """A venv with the agent's dependencies inside ``root``; its path there, install seconds.

    Keyed by the requirements, so a change of the agent extra installs a new one and the
    edgedl package itself is installed separately (:func:`install_wheel`) on every run.
    pip runs inside the root (under emulation for a foreign architecture) with the host's
    CA bundle, so that it works behind an intercepting proxy too.
    """
    requirements = agent_requirements(pyproject)
    key = hashlib.sha256("\n".join(requirements).encode()).hexdigest()[:12]
    venv = f"/opt/edgedl-agent-{key}"
    done = root / venv.lstrip("/") / COMPLETE
    with locked(root.with_name(root.name + ".lock")):
        if not done.exists():
            shutil.rmtree(done.parent, ignore_errors=True)
            shutil.copyfile("/etc/ssl/certs/ca-certificates.crt", root / "etc/edgedl-host-ca.crt")
            shutil.copyfile("/etc/resolv.conf", root / "etc/resolv.conf")
            started = time.monotonic()
            for argv in (
                ["python3", "-m", "venv", venv],
                [
                    f"{venv}/bin/pip",
                    "install",
                    "--quiet",
                    "--cert",
                    "/etc/edgedl-host-ca.crt",
                    "--disable-pip-version-check",
                    *requirements,
                ],
            ):
                if log:
                    print(f"in {root.name}: {' '.join(argv)}", file=sys.stderr, flush=True)
                proc = subprocess.run(
                    chroot_argv(root, argv),
                    capture_output=True,
                    text=True,
                    env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root"},
                )
                if proc.returncode != 0:
                    raise RuntimeError(
                        f"{argv[0]} failed in {root}:\n{(proc.stdout + proc.stderr)[-4000:]}"
                    )
            done.write_text(f"{time.monotonic() - started:.1f}\n")
    return venv, float(done.read_text())


def install_wheel(root: Path, venv: str, wheel: Path) -> None:
    """Install (or replace) the edgedl wheel ``wheel`` in ``venv`` inside ``root``, offline."""
    inside = root / "tmp" / wheel.name
    shutil.copyfile(wheel, inside)
    argv = [
        f"{venv}/bin/pip",
        "install",
        "--quiet",
        "--no-deps",
        "--no-index",
        "--force-reinstall",
        "--disable-pip-version-check",
        f"/tmp/{wheel.name}",
    ]
    proc = subprocess.run(chroot_argv(root, argv), capture_output=True, text=True)
    inside.unlink()
    if proc.returncode != 0:
        raise RuntimeError(
            f"installing {wheel.name} failed:\n{(proc.stdout + proc.stderr)[-4000:]}"
        )


def build_wheel(checkout: Path, out: Path) -> Path:
    """The edgedl wheel of ``checkout`` (pure Python: one wheel for every architecture)."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--disable-pip-version-check",
            "-w",
            str(out),
            str(checkout),
        ],
        check=True,
        capture_output=True,
    )
    return next(out.glob("edgedl-*.whl"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default=host_arch())
    parser.add_argument("--systemd", action="store_true", help="the bootable variant")
    parser.add_argument("--agent", action="store_true", help="also the agent's venv in it")
    args = parser.parse_args()
    reason = missing_requirements(args.arch)
    if reason:
        sys.exit(f"error: {reason}")
    parser_packages = SYSTEMD_PACKAGES if args.systemd else PYTHON_PACKAGES
    root = ensure_rootfs(RootfsSpec(args.arch, parser_packages))
    if args.agent:
        venv, seconds = ensure_agent_venv(root, Path(__file__).parents[2] / "pyproject.toml")
        print(f"{venv} (installed in {seconds:.0f} s)", file=sys.stderr)
    print(root)


if __name__ == "__main__":
    main()
