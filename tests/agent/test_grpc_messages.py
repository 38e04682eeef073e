"""The agent's gRPC messages are the Open Inference Protocol's, byte for byte on the wire."""

from __future__ import annotations

from typing import Any

import pytest

from edgedl.agent.oip_grpc import messages

_MESSAGE_NAMES = [
    "ServerLiveRequest",
    "ServerLiveResponse",
    "ServerReadyRequest",
    "ServerReadyResponse",
    "ModelReadyRequest",
    "ModelReadyResponse",
    "ServerMetadataRequest",
    "ServerMetadataResponse",
    "ModelMetadataRequest",
    "ModelMetadataResponse",
    "ModelInferRequest",
    "ModelInferResponse",
    "InferParameter",
    "InferTensorContents",
    "SystemSharedMemoryStatusRequest",
    "SystemSharedMemoryStatusResponse",
    "SystemSharedMemoryRegisterRequest",
    "SystemSharedMemoryRegisterResponse",
    "SystemSharedMemoryUnregisterRequest",
    "SystemSharedMemoryUnregisterResponse",
]


def _fields(descriptor: Any, prefix: str = "") -> dict[str, tuple[int, int, bool, str]]:
    """Every field, nested ones included: (number, type, repeated, type name without package)."""
    found = {}
    for field in descriptor.fields:
        kind = field.message_type.full_name if field.message_type else ""
        found[prefix + field.name] = (
            field.number,
            field.type,
            field.is_repeated,
            kind.removeprefix("inference."),
        )
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            found.update(_fields(field.message_type, f"{prefix}{field.name}."))
    for nested in descriptor.nested_types:
        if not nested.GetOptions().map_entry:
            found.update(_fields(nested, f"{prefix}{nested.name}."))
    return found


@pytest.mark.parametrize("name", _MESSAGE_NAMES)
def test_every_message_matches_tritonclients_definition(name: str) -> None:
    from tritonclient.grpc import service_pb2

    ours = messages.message_class(name).DESCRIPTOR
    theirs = service_pb2.DESCRIPTOR.message_types_by_name[name]
    assert _fields(ours) == _fields(theirs)


def test_a_request_written_by_tritonclient_reads_back_whole() -> None:
    import numpy as np
    from tritonclient.grpc import service_pb2

    theirs = service_pb2.ModelInferRequest(model_name="digits", id="r-1")
    tensor = theirs.inputs.add(name="pixels", datatype="FP32", shape=[2, 3])
    tensor.parameters["note"].string_param = "x"
    theirs.parameters["timeout"].int64_param = 5000
    theirs.outputs.add(name="output_0")
    raw = np.arange(6, dtype="<f4").tobytes()
    theirs.raw_input_contents.append(raw)
    ours = messages.ModelInferRequest.FromString(theirs.SerializeToString())
    assert ours.model_name == "digits"
    assert ours.id == "r-1"
    assert list(ours.inputs[0].shape) == [2, 3]
    assert ours.inputs[0].parameters["note"].string_param == "x"
    assert ours.parameters["timeout"].int64_param == 5000
    assert ours.outputs[0].name == "output_0"
    assert ours.raw_input_contents[0] == raw
    assert ours.SerializeToString() == theirs.SerializeToString()


def test_every_agent_error_maps_to_the_documented_status_code() -> None:
    import grpc

    from edgedl.agent.batcher import DeadlineExceeded, QueueFull, ShuttingDown
    from edgedl.agent.oip import BadRequest
    from edgedl.agent.oip_grpc.service import status_code
    from edgedl.agent.repository import ModelNotFound
    from edgedl.agent.request_budget import MemoryBusy, PayloadTooLarge
    from edgedl.agent.served import BadInput, InferenceFailed

    codes = grpc.StatusCode
    expected = {
        BadRequest: codes.INVALID_ARGUMENT,
        BadInput: codes.INVALID_ARGUMENT,
        ModelNotFound: codes.NOT_FOUND,
        PayloadTooLarge: codes.RESOURCE_EXHAUSTED,
        MemoryBusy: codes.RESOURCE_EXHAUSTED,  # HTTP 503, but the cure is to retry smaller/later
        QueueFull: codes.RESOURCE_EXHAUSTED,
        ShuttingDown: codes.UNAVAILABLE,
        DeadlineExceeded: codes.DEADLINE_EXCEEDED,
        InferenceFailed: codes.INTERNAL,
    }
    assert {error: status_code(error("x")) for error in expected} == expected
