"""The protobuf messages of the Open Inference Protocol's gRPC API (KServe v2), built in code.

The messages are those of KServe's ``grpc_predict_v2.proto`` (package ``inference``; the
protocol is published by KServe under Apache-2.0): field for field the same names, numbers
and types, so they are the same bytes on the wire as what ``tritonclient.grpc`` and KServe's
clients send (``tests/agent/test_grpc_messages.py`` checks them against tritonclient's own
definitions). ``InferParameter`` also carries Triton's ``double_param`` and ``uint64_param``,
and Triton's system shared memory RPCs (``SystemSharedMemoryRegister`` ...) have their
messages here too.

They are described here as a table and loaded into a private descriptor pool, not generated
by ``protoc``: nothing is generated at build time, no generated code is pinned to one
protobuf release, and a process that also imports tritonclient (whose messages have the same
full names in the default pool) does not see two definitions of one name.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

PACKAGE = "inference"
SERVICE = f"{PACKAGE}.GRPCInferenceService"

_F = descriptor_pb2.FieldDescriptorProto
_SCALARS = {
    "bool": _F.TYPE_BOOL,
    "string": _F.TYPE_STRING,
    "bytes": _F.TYPE_BYTES,
    "int32": _F.TYPE_INT32,
    "int64": _F.TYPE_INT64,
    "uint32": _F.TYPE_UINT32,
    "uint64": _F.TYPE_UINT64,
    "float": _F.TYPE_FLOAT,
    "double": _F.TYPE_DOUBLE,
}

# message -> [(field, number, type, "repeated" | "map" | "" | a oneof's name)]; a type that
# is not a scalar names a message (".inference.X", or a nested one by its short name).
_Field = tuple[str, int, str, str]
_PARAMETERS: _Field = ("parameters", 4, ".inference.InferParameter", "map")
_MESSAGES: dict[str, list[_Field]] = {
    "ServerLiveRequest": [],
    "ServerLiveResponse": [("live", 1, "bool", "")],
    "ServerReadyRequest": [],
    "ServerReadyResponse": [("ready", 1, "bool", "")],
    "ModelReadyRequest": [("name", 1, "string", ""), ("version", 2, "string", "")],
    "ModelReadyResponse": [("ready", 1, "bool", "")],
    "ServerMetadataRequest": [],
    "ServerMetadataResponse": [
        ("name", 1, "string", ""),
        ("version", 2, "string", ""),
        ("extensions", 3, "string", "repeated"),
    ],
    "ModelMetadataRequest": [("name", 1, "string", ""), ("version", 2, "string", "")],
    "ModelMetadataResponse": [
        ("name", 1, "string", ""),
        ("versions", 2, "string", "repeated"),
        ("platform", 3, "string", ""),
        ("inputs", 4, "TensorMetadata", "repeated"),
        ("outputs", 5, "TensorMetadata", "repeated"),
    ],
    "ModelMetadataResponse.TensorMetadata": [
        ("name", 1, "string", ""),
        ("datatype", 2, "string", ""),
        ("shape", 3, "int64", "repeated"),
    ],
    "ModelInferRequest": [
        ("model_name", 1, "string", ""),
        ("model_version", 2, "string", ""),
        ("id", 3, "string", ""),
        _PARAMETERS,
        ("inputs", 5, "InferInputTensor", "repeated"),
        ("outputs", 6, "InferRequestedOutputTensor", "repeated"),
        ("raw_input_contents", 7, "bytes", "repeated"),
    ],
    "ModelInferRequest.InferInputTensor": [
        ("name", 1, "string", ""),
        ("datatype", 2, "string", ""),
        ("shape", 3, "int64", "repeated"),
        _PARAMETERS,
        ("contents", 5, ".inference.InferTensorContents", ""),
    ],
    "ModelInferRequest.InferRequestedOutputTensor": [
        ("name", 1, "string", ""),
        ("parameters", 2, ".inference.InferParameter", "map"),
    ],
    "ModelInferResponse": [
        ("model_name", 1, "string", ""),
        ("model_version", 2, "string", ""),
        ("id", 3, "string", ""),
        _PARAMETERS,
        ("outputs", 5, "InferOutputTensor", "repeated"),
        ("raw_output_contents", 6, "bytes", "repeated"),
    ],
    "ModelInferResponse.InferOutputTensor": [
        ("name", 1, "string", ""),
        ("datatype", 2, "string", ""),
        ("shape", 3, "int64", "repeated"),
        _PARAMETERS,
        ("contents", 5, ".inference.InferTensorContents", ""),
    ],
    # Triton's system shared memory extension
    "SystemSharedMemoryStatusRequest": [("name", 1, "string", "")],
    "SystemSharedMemoryStatusResponse": [
        ("regions", 1, ".inference.SystemSharedMemoryStatusResponse.RegionStatus", "map"),
    ],
    "SystemSharedMemoryStatusResponse.RegionStatus": [
        ("name", 1, "string", ""),
        ("key", 2, "string", ""),
        ("offset", 3, "uint64", ""),
        ("byte_size", 4, "uint64", ""),
    ],
    "SystemSharedMemoryRegisterRequest": [
        ("name", 1, "string", ""),
        ("key", 2, "string", ""),
        ("offset", 3, "uint64", ""),
        ("byte_size", 4, "uint64", ""),
    ],
    "SystemSharedMemoryRegisterResponse": [],
    "SystemSharedMemoryUnregisterRequest": [("name", 1, "string", "")],
    "SystemSharedMemoryUnregisterResponse": [],
    "InferParameter": [
        ("bool_param", 1, "bool", "parameter_choice"),
        ("int64_param", 2, "int64", "parameter_choice"),
        ("string_param", 3, "string", "parameter_choice"),
        ("double_param", 4, "double", "parameter_choice"),
        ("uint64_param", 5, "uint64", "parameter_choice"),
    ],
    "InferTensorContents": [
        ("bool_contents", 1, "bool", "repeated"),
        ("int_contents", 2, "int32", "repeated"),
        ("int64_contents", 3, "int64", "repeated"),
        ("uint_contents", 4, "uint32", "repeated"),
        ("uint64_contents", 5, "uint64", "repeated"),
        ("fp32_contents", 6, "float", "repeated"),
        ("fp64_contents", 7, "double", "repeated"),
        ("bytes_contents", 8, "bytes", "repeated"),
    ],
}


def _file() -> descriptor_pb2.FileDescriptorProto:
    """The protocol's messages as one proto3 file descriptor."""
    file = descriptor_pb2.FileDescriptorProto(
        name="edgedl/agent/oip_grpc/inference.proto", package=PACKAGE, syntax="proto3"
    )
    built: dict[str, descriptor_pb2.DescriptorProto] = {}
    for full_name, fields in _MESSAGES.items():
        outer, _, inner = full_name.partition(".")
        if inner:
            message = built[outer].nested_type.add(name=inner)
        else:
            message = file.message_type.add(name=outer)
        built[full_name] = message
        for name, number, kind, label in fields:
            _add_field(message, f".{PACKAGE}.{full_name}", name, number, kind, label)
    return file


def _add_field(
    message: descriptor_pb2.DescriptorProto,
    scope: str,
    name: str,
    number: int,
    kind: str,
    label: str,
) -> None:
    field = message.field.add(name=name, number=number, json_name=_camel(name))
    field.label = _F.LABEL_REPEATED if label in ("repeated", "map") else _F.LABEL_OPTIONAL
    if label == "map":  # map<string, V>: a nested XEntry message with map_entry set
        entry = message.nested_type.add(name=_camel(name, upper=True) + "Entry")
        entry.options.map_entry = True
        entry.field.add(name="key", number=1, json_name="key", type=_F.TYPE_STRING)
        entry.field.add(name="value", number=2, json_name="value", type=_F.TYPE_MESSAGE)
        entry.field[0].label = entry.field[1].label = _F.LABEL_OPTIONAL
        entry.field[1].type_name = kind
        field.type = _F.TYPE_MESSAGE
        field.type_name = f"{scope}.{entry.name}"
    elif kind in _SCALARS:
        field.type = _SCALARS[kind]
    else:
        field.type = _F.TYPE_MESSAGE
        field.type_name = kind if kind.startswith(".") else f"{scope}.{kind}"
    if label not in ("", "repeated", "map"):  # a oneof member
        names = [o.name for o in message.oneof_decl]
        if label not in names:
            message.oneof_decl.add(name=label)
            names.append(label)
        field.oneof_index = names.index(label)


def _camel(name: str, upper: bool = False) -> str:
    head, *rest = name.split("_")
    return (head.capitalize() if upper else head) + "".join(p.capitalize() for p in rest)


_POOL = descriptor_pool.DescriptorPool()
_POOL.Add(_file())


def message_class(name: str) -> Any:
    """The message class of ``inference.<name>`` (e.g. ``"ModelInferRequest"``)."""
    return message_factory.GetMessageClass(_POOL.FindMessageTypeByName(f"{PACKAGE}.{name}"))


ServerLiveResponse = message_class("ServerLiveResponse")
ServerReadyResponse = message_class("ServerReadyResponse")
ModelReadyRequest = message_class("ModelReadyRequest")
ModelReadyResponse = message_class("ModelReadyResponse")
ServerMetadataResponse = message_class("ServerMetadataResponse")
ModelMetadataRequest = message_class("ModelMetadataRequest")
ModelMetadataResponse = message_class("ModelMetadataResponse")
ModelInferRequest = message_class("ModelInferRequest")
ModelInferResponse = message_class("ModelInferResponse")
InferTensorContents = message_class("InferTensorContents")
InferParameter = message_class("InferParameter")
SystemSharedMemoryStatusResponse = message_class("SystemSharedMemoryStatusResponse")
SystemSharedMemoryRegisterResponse = message_class("SystemSharedMemoryRegisterResponse")
SystemSharedMemoryUnregisterResponse = message_class("SystemSharedMemoryUnregisterResponse")
