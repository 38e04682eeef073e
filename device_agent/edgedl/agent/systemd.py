"""Running under systemd: the sd_notify protocol, and the unit ``install-service`` writes.

sd_notify is a datagram of ``KEY=VALUE`` lines sent to the unix socket named by
``NOTIFY_SOCKET`` (a path, or ``@name`` for the abstract namespace). The agent sends
``READY=1`` once it listens, ``STATUS=...`` as it works, ``WATCHDOG=1`` every half
``WATCHDOG_USEC`` from its event loop (so a stuck loop stops the pings and systemd restarts
it), and ``STOPPING=1`` on SIGTERM. Without ``NOTIFY_SOCKET`` every call does nothing.
"""

from __future__ import annotations

import os
import shlex
import shutil
import socket
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import click

from edgedl.errors import UsageError

DEFAULT_UNIT_PATH = "/etc/systemd/system/edgedl-agent.service"
DEFAULT_CONFIG_PATH = "/etc/edgedl/agent.toml"


def notify(message: str, env: Mapping[str, str] | None = None) -> bool:
    """Send one sd_notify datagram; return False when not under systemd (or it fails)."""
    address = (env if env is not None else os.environ).get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(message.encode())
    except OSError:
        return False
    return True


class SystemdNotifier:
    """The agent's side of sd_notify, with the watchdog interval systemd asked for."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        self._env = dict(env if env is not None else os.environ)
        self.enabled = bool(self._env.get("NOTIFY_SOCKET"))
        self.watchdog_interval_s: float | None = None
        usec = self._env.get("WATCHDOG_USEC", "")
        pid = self._env.get("WATCHDOG_PID", "")
        if self.enabled and usec.isdigit() and int(usec) > 0 and pid in ("", str(os.getpid())):
            self.watchdog_interval_s = int(usec) / 2e6
        self._last_ping = 0.0

    def send(self, message: str) -> bool:
        """Send ``message`` as it is."""
        return self.enabled and notify(message, self._env)

    def ready(self, status: str) -> None:
        """Tell systemd the agent is up (Type=notify units wait for this)."""
        self.send(f"READY=1\nSTATUS={status}")

    def status(self, status: str) -> None:
        """Show ``status`` in ``systemctl status``."""
        self.send(f"STATUS={status}")

    def stopping(self, status: str) -> None:
        """Tell systemd the agent is shutting down."""
        self.send(f"STOPPING=1\nSTATUS={status}")

    def watchdog(self) -> None:
        """Ping the watchdog when half its interval has passed since the last ping."""
        if self.watchdog_interval_s is None:
            return
        now = time.monotonic()
        if now - self._last_ping >= self.watchdog_interval_s:
            self._last_ping = now
            self.send("WATCHDOG=1")


def render_unit(
    *,
    config: str,
    user: str,
    store_path: str,
    executable: str,
    watchdog_sec: int,
    description: str = "edgedl agent: on-device inference",
) -> str:
    """The text of a systemd service unit for the agent."""
    exec_start = shlex.join([executable, "agent", "serve", "--config", config])
    # A venv under /home (the usual place on a Pi) must stay readable to the service.
    in_home = any(p.startswith(("/home/", "/root/")) for p in (executable, config))
    protect_home = "read-only" if in_home else "yes"
    # systemd creates (and chowns) a store under /var/lib itself; elsewhere it must exist.
    state_dir = store_path.removeprefix("/var/lib/") if store_path.startswith("/var/lib/") else ""
    state_line = f"StateDirectory={state_dir}\n" if state_dir else ""
    return f"""[Unit]
Description={description}
Documentation=https://github.com/edgedl/edgedl/blob/main/docs/agent.md
After=network-online.target
Wants=network-online.target

[Service]
Type=notify
NotifyAccess=main
ExecStart={exec_start}
User={user}
Group={user}
Restart=on-failure
RestartSec=5
WatchdogSec={watchdog_sec}
TimeoutStopSec=60
KillMode=mixed
Environment=PYTHONUNBUFFERED=1
NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome={protect_home}
PrivateTmp=yes
{state_line}ReadWritePaths={store_path}

[Install]
WantedBy=multi-user.target
"""


def _store_path(config: str) -> str:
    from .config import load_config

    if not Path(config).is_file():
        from .rollout.config import StoreConfig

        return StoreConfig().path
    return load_config(config, env={}).store.path


def _edgedl_executable() -> str:
    found = shutil.which("edgedl")
    if found:
        return str(Path(found).resolve())
    return str(Path(sys.executable).with_name("edgedl"))


@click.command("install-service")
@click.option(
    "--config",
    "config",
    default=DEFAULT_CONFIG_PATH,
    show_default=True,
    help="The agent.toml the service runs with (its [store] path becomes writable).",
)
@click.option("--user", default="edgedl", show_default=True, help="Dedicated user to run as.")
@click.option(
    "--output",
    default=DEFAULT_UNIT_PATH,
    show_default=True,
    type=click.Path(dir_okay=False),
    help="Where to write the unit.",
)
@click.option("--watchdog-sec", default=30, show_default=True, type=click.IntRange(min=1))
@click.option("--executable", default=None, help="The edgedl program (default: this one).")
@click.option("--dry-run", is_flag=True, help="Print the unit instead of writing it.")
def install_service(
    config: str, user: str, output: str, watchdog_sec: int, executable: str | None, dry_run: bool
) -> None:
    """Write a systemd unit that runs `edgedl agent serve --config CONFIG`."""
    config_path = str(Path(config).absolute())
    if not Path(config_path).is_file() and not dry_run:
        raise UsageError(f"config file not found: {config_path} (write it first, or use --dry-run)")
    store = _store_path(config_path)
    unit = render_unit(
        config=config_path,
        user=user,
        store_path=str(Path(store).absolute()),
        executable=executable or _edgedl_executable(),
        watchdog_sec=watchdog_sec,
    )
    if dry_run:
        click.echo(unit, nl=False)
        return
    target = Path(output)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.tmp")
        tmp.write_text(unit, encoding="utf-8")
        tmp.replace(target)
    except OSError as exc:
        raise UsageError(
            f"cannot write {target}: {exc.strerror} (run with sudo, or pass --output)"
        ) from exc
    click.echo(f"wrote {target}")
    click.echo("next:")
    click.echo(f"  sudo useradd --system --no-create-home --shell /usr/sbin/nologin {user}")
    click.echo(f"  sudo install -d -o {user} -g {user} {store}")
    click.echo("  sudo systemctl daemon-reload")
    click.echo(f"  sudo systemctl enable --now {target.stem}")
