"""The desired-state contract between the collector and the agents (edgedl.telemetry)."""

from __future__ import annotations

import pytest

from edgedl.errors import TelemetryError
from edgedl.telemetry import DesiredState, decode_desired, desired_topic, encode_desired


def test_desired_states_round_trip_and_bad_ones_say_why() -> None:
    assert desired_topic("plant-3", "pi-0") == "edgedl/v1/plant-3/pi-0/desired"
    with pytest.raises(TelemetryError, match="invalid device"):
        desired_topic("plant-3", "pi/#")
    state = DesiredState(
        rollout_id=7,
        model="digits",
        version="2",
        sha256="a" * 64,
        size_bytes=1024,
        url="http://collector/artifacts/digits/2.tar",
        strategy="shadow",
        options={"share": 0.2},
        issued_at=1.0,
    )
    assert decode_desired(encode_desired(state)) == state
    # a rollback names a version the device holds: no URL to download
    back = DesiredState(rollout_id=7, model="digits", version="1", promote=True, issued_at=2.0)
    assert decode_desired(encode_desired(back)).url is None
    with pytest.raises(TelemetryError, match="strategy"):
        decode_desired(encode_desired(state).replace(b'"shadow"', b'"yolo"'))
    with pytest.raises(TelemetryError, match="sha256"):
        decode_desired(encode_desired(state).replace(b"a" * 64, b"nothex"))
    with pytest.raises(TelemetryError, match="not valid JSON"):
        decode_desired(b'{"model": ')
