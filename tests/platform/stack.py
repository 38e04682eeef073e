"""The collector stack of ``containers/stack.pod.yaml`` (collector, Mosquitto, PostgreSQL),
brought up with ``podman kube play`` on the host network.

:func:`build_stack_images` builds the three images from the debootstrap base
(:mod:`tests.platform.images`); :class:`Stack` plays the pod with ports of the caller's
choosing (a ConfigMap like ``containers/stack-ports.yaml``), under a name and volumes of its
own so that it never meets a stack the machine runs, and removes pod and volumes at the end.

podman runs here with a containers.conf of the test's (:func:`containers_conf`): runc and
open-file limits below the host's hard limits, as ``podman run`` gets them from
:func:`~tests.platform.images.limit_flags`; ``podman kube play`` has no flags for either.
"""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from pathlib import Path

import httpx

from tests.platform.images import (
    CONTAINERS,
    build_image,
    container_limits,
    image_size_mb,
    podman_argv,
)

CHECKOUT = CONTAINERS.parent
POD_YAML = CONTAINERS / "stack.pod.yaml"
#: The images of the pod, by Containerfile; each tagged ``localhost/edgedl-NAME:TAG``.
SERVICES = ("mosquitto", "postgres", "collector")


def build_stack_images(collector_context: Path, tag: str, arch: str = "amd64") -> dict[str, float]:
    """Build the pod's three images (tagged ``TAG``); their sizes in MB."""
    sizes = {}
    for name in SERVICES:
        context = collector_context if name == "collector" else CONTAINERS
        image = f"localhost/edgedl-{name}:{tag}"
        build_image(f"{name}.Containerfile", context, image, arch)
        sizes[name] = image_size_mb(image)
    return sizes


def containers_conf(folder: Path) -> Path:
    """A containers.conf with runc and ulimits within the host's hard limits."""
    limits = ", ".join(f'"{limit}"' for limit in container_limits())
    path = folder / "containers.conf"
    path.write_text(f'[containers]\ndefault_ulimits = [{limits}]\n[engine]\nruntime = "runc"\n')
    return path


def ports_configmap(folder: Path, mqtt: int, postgres: int, collector: int) -> Path:
    """A ConfigMap of the pod's ports and URLs, as containers/stack-ports.yaml has them."""
    path = folder / "stack-ports.yaml"
    path.write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: edgedl-stack\ndata:\n"
        f'  mqtt-port: "{mqtt}"\n  postgres-port: "{postgres}"\n'
        f'  collector-port: "{collector}"\n'
        f"  mqtt-url: mqtt://127.0.0.1:{mqtt}\n"
        f"  postgres-url: postgresql://edgedl:edgedl@127.0.0.1:{postgres}/edgedl\n"
    )
    return path


class Stack:
    """``containers/stack.pod.yaml`` played under a name of its own; :meth:`down` ends it."""

    def __init__(self, folder: Path, tag: str, mqtt: int, postgres: int, collector: int) -> None:
        self.suffix = uuid.uuid4().hex[:8]
        self.pod = f"edgedl-stack-test-{self.suffix}"
        self.url = f"http://127.0.0.1:{collector}"
        self.mqtt_url = f"mqtt://127.0.0.1:{mqtt}"
        text = POD_YAML.read_text()
        text = text.replace("name: edgedl-stack\n", f"name: {self.pod}\n", 1)
        text = text.replace(":latest\n", f":{tag}\n")
        text = text.replace("claimName: edgedl-", f"claimName: edgedl-test-{self.suffix}-")
        self.yaml = folder / "stack.pod.yaml"
        self.yaml.write_text(text)
        self.configmap = ports_configmap(folder, mqtt, postgres, collector)
        self.env = {**os.environ, "CONTAINERS_CONF": str(containers_conf(folder))}

    def podman(self, *args: str, check: bool = True, timeout: float = 300) -> str:
        proc = subprocess.run(
            podman_argv(*args),
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.env,
            cwd=CHECKOUT,  # the pod mounts collector/edgedl/collector/mosquitto.conf
        )
        if check and proc.returncode != 0:
            raise RuntimeError(f"podman {' '.join(args[:2])} failed:\n{proc.stderr[-4000:]}")
        return proc.stdout.strip()

    def up(self, timeout: float = 180) -> float:
        """Play the pod; wait until the collector is subscribed. Seconds it took."""
        started = time.monotonic()
        self.podman("kube", "play", "--configmap", str(self.configmap), str(self.yaml))
        while time.monotonic() - started < timeout:
            try:
                health = httpx.get(f"{self.url}/healthz", timeout=2)
                if health.status_code == 200 and health.json().get("mqtt_subscribed"):
                    return time.monotonic() - started
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise AssertionError(f"the stack's collector is not up in {timeout} s:\n{self.logs()}")

    def container(self, service: str) -> str:
        return f"{self.pod}-{service}"

    def healthy(self, service: str) -> bool:
        """Run the image's HEALTHCHECK in the service's container now."""
        ran = subprocess.run(
            podman_argv("healthcheck", "run", self.container(service)),
            capture_output=True,
            env=self.env,
            timeout=120,
        )
        return ran.returncode == 0

    def exec(self, service: str, *argv: str) -> str:
        return self.podman("exec", self.container(service), *argv)

    def logs(self) -> str:
        return "\n".join(
            f"--- {s}:\n" + self.podman("logs", "--tail=30", self.container(s), check=False)
            for s in SERVICES
        )

    def down(self) -> None:
        """Stop and remove the pod and its volumes."""
        self.podman("kube", "down", str(self.yaml), check=False)
        self.podman("pod", "rm", "--force", self.pod, check=False)
        for name in ("mosquitto", "postgres", "collector"):
            self.podman(
                "volume", "rm", "--force", f"edgedl-test-{self.suffix}-{name}-data", check=False
            )
