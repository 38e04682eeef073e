"""``edgedl demo``: the command line of the whole-loop demo."""

from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.option(
    "--http-port",
    type=click.IntRange(0, 65535),
    default=8090,
    show_default=True,
    help="Port of the collector's dashboard and API (0: any free one).",
)
@click.option(
    "--agent-port",
    type=click.IntRange(0, 65535),
    default=8080,
    show_default=True,
    help="Port of the agent's inference API (0: any free one).",
)
@click.option(
    "--mqtt",
    "mqtt_url",
    help="Broker URL (default: EDGEDL_MQTT_URL, else mqtt://127.0.0.1:1883, else a broker "
    "the demo starts: mosquitto (EDGEDL_MOSQUITTO names its binary) or, where it is not "
    "installed, amqtt).",
)
@click.option(
    "--collector",
    "collector_url",
    help="URL of a running collector (e.g. http://127.0.0.1:8090) to use instead of starting "
    "one; --mqtt names its broker (the demo then starts none). --http-port is not used.",
)
@click.option(
    "--workdir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where the model, bundle, database and logs go (kept afterwards; "
    "default: a temporary folder, removed afterwards).",
)
@click.option("--keep", is_flag=True, help="Leave everything running until Ctrl-C.")
@click.option(
    "--epochs",
    type=click.IntRange(1, 200),
    default=20,
    show_default=True,
    help="Training epochs of the digits CNN.",
)
@click.option(
    "--loop",
    is_flag=True,
    help="Go on to the fix: samples and late labels, accuracy falling, retraining on the "
    "exported samples, a signed canary rollout, accuracy recovering (docs/loop.md).",
)
def demo(
    http_port: int,
    agent_port: int,
    mqtt_url: str | None,
    collector_url: str | None,
    workdir: Path | None,
    keep: bool,
    epochs: int,
    loop: bool,
) -> None:
    """Train, convert, serve and watch the digits model; shift its inputs; see the drift alert.

    Starts a collector (unless --collector names one), an agent and (when no broker answers
    and no --collector is given) mosquitto or, where it is not installed, an embedded amqtt
    broker, and stops them all at the end. With --loop it goes on: sampled inputs and late
    labels, real and estimated accuracy falling, a fine-tuned model converted, signed and
    rolled out as a canary, accuracy recovering.
    """
    from .story import Demo, DemoOptions

    if loop and collector_url is not None:
        from edgedl.errors import ConfigError

        raise ConfigError(
            "--loop starts its own collector (fleet rollouts, and its database for the "
            "export): leave out --collector"
        )
    if loop:
        from .loop import LoopDemo

        story: type[Demo] = LoopDemo
    else:
        story = Demo
    story(
        DemoOptions(
            workdir=workdir,
            http_port=http_port,
            agent_port=agent_port,
            mqtt_url=mqtt_url,
            collector_url=collector_url,
            keep=keep,
            epochs=epochs,
        )
    ).run()


__all__ = ["demo"]
