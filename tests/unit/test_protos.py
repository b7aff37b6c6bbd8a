"""Our .proto files against the committed stubs and against TorchServe's own descriptors in its jar."""

from __future__ import annotations

import functools
import importlib.util
import re
import struct
import zipfile
from collections.abc import Iterable
from pathlib import Path
from types import ModuleType
from typing import Any, NamedTuple

import grpc
from google.protobuf import any_pb2, descriptor_pb2, descriptor_pool, empty_pb2, message_factory

from serving.protos import (
    grpc_predict_v2_pb2,
    grpc_predict_v2_pb2_grpc,
    inference_pb2,
    inference_pb2_grpc,
    management_pb2,
    management_pb2_grpc,
)
from serving.protos.generate import PROTOS_DIR, generate

INFERENCE_CLASS = "org/pytorch/serve/grpc/inference/Inference.class"
MANAGEMENT_CLASS = "org/pytorch/serve/grpc/management/Management.class"
OPENINFERENCE_CLASS = "org/pytorch/serve/grpc/openinference/OpenInferenceGrpc.class"
RPC_STATUS_CLASS = "com/google/rpc/StatusProto.class"  # google/rpc/status.proto, bundled by grpc-java


# --- Reading the descriptors that protoc's Java generator embeds in TorchServe's frontend jar ---------
# Each outer class keeps its serialized FileDescriptorProto as a string literal (one part below 16 KB,
# which all of these are) whose chars 0-255 are the bytes. In the class file's constant pool that
# literal is stored in "modified UTF-8", where NUL is written as C0 80.


def _jar_path() -> Path:
    spec = importlib.util.find_spec("ts")  # finds TorchServe without importing it
    assert spec is not None and spec.submodule_search_locations, "torchserve is not installed"
    return Path(spec.submodule_search_locations[0]) / "frontend" / "model-server.jar"


def _utf8_constants(class_file: bytes) -> list[bytes]:
    """The raw CONSTANT_Utf8 entries of a Java class file (JVM spec 4.4)."""
    count = struct.unpack_from(">H", class_file, 8)[0]
    sizes = {3: 4, 4: 4, 5: 8, 6: 8, 7: 2, 8: 2, 9: 4, 10: 4, 11: 4, 12: 4, 15: 3, 16: 2, 17: 4, 18: 4}
    sizes |= {19: 2, 20: 2}
    pos, index, found = 10, 1, []
    while index < count:
        tag = class_file[pos]
        if tag == 1:
            length = struct.unpack_from(">H", class_file, pos + 1)[0]
            found.append(class_file[pos + 3 : pos + 3 + length])
            pos += 3 + length
        else:
            pos += 1 + sizes[tag]
        index += 2 if tag in (5, 6) else 1  # longs and doubles take two pool slots
    return found


@functools.cache
def _jar_file(class_name: str) -> descriptor_pb2.FileDescriptorProto:
    with zipfile.ZipFile(_jar_path()) as jar:
        constants = _utf8_constants(jar.read(class_name))
    files = []
    for raw in constants:
        data = raw.replace(b"\xc0\x80", b"\x00").decode("utf-8").encode("latin-1")
        if not data.startswith(b"\n"):  # field 1 (the file name) comes first
            continue
        try:
            file = descriptor_pb2.FileDescriptorProto.FromString(data)
        except Exception:  # a constant that merely starts like one
            continue
        if file.name.endswith(".proto") and file.SerializeToString() == data:
            files.append(file)
    assert len(files) == 1, f"expected one embedded descriptor in {class_name}, found {len(files)}"
    return files[0]


# --- Comparing files by what reaches the wire ---------------------------------------------------------


class Field(NamedTuple):
    name: str
    label: int
    type: int
    type_name: str  # relative to the file's package when inside it
    oneof: str | None
    proto3_optional: bool


def _file_proto(module: ModuleType) -> descriptor_pb2.FileDescriptorProto:
    return descriptor_pb2.FileDescriptorProto.FromString(module.DESCRIPTOR.serialized_pb)


def _wire_shape(file: descriptor_pb2.FileDescriptorProto) -> dict[str, Any]:
    """Messages, enums and rpcs with their names relative to the package (which callers compare)."""
    prefix = f".{file.package}."
    shape: dict[str, Any] = {}

    def walk(messages: Iterable[descriptor_pb2.DescriptorProto], scope: str) -> None:
        for message in messages:
            name = scope + message.name
            oneofs = [oneof.name for oneof in message.oneof_decl]
            fields = {
                f.number: Field(
                    f.name,
                    f.label,
                    f.type,
                    f.type_name.removeprefix(prefix),
                    oneofs[f.oneof_index] if f.HasField("oneof_index") else None,
                    f.proto3_optional,
                )
                for f in message.field
            }
            shape[name] = (message.options.map_entry, fields)
            for enum in message.enum_type:
                shape[f"enum {name}.{enum.name}"] = {v.number: v.name for v in enum.value}
            walk(message.nested_type, name + ".")

    walk(file.message_type, "")
    for enum in file.enum_type:
        shape[f"enum {enum.name}"] = {v.number: v.name for v in enum.value}
    for service in file.service:
        shape[f"service {service.name}"] = {
            m.name: (
                m.input_type.removeprefix(prefix),
                m.output_type.removeprefix(prefix),
                m.client_streaming,
                m.server_streaming,
            )
            for m in service.method
        }
    return shape


# --- Tests ---------------------------------------------------------------------------------------------


def test_committed_stubs_match_a_fresh_generation(tmp_path: Path) -> None:
    fresh = {path.name: path.read_bytes() for path in generate(tmp_path)}
    committed = {path.name: path.read_bytes() for path in PROTOS_DIR.glob("*_pb2*.py*")}
    assert sorted(fresh) == sorted(committed)
    stale = sorted(name for name in fresh if fresh[name] != committed[name])
    assert not stale, f"stale stubs {stale}: run `python -m serving.protos.generate` and commit them"


def test_stubs_import_each_other_through_the_package() -> None:
    for path in PROTOS_DIR.glob("*_pb2*.py"):
        bare = re.findall(r"^import \w+_pb2\b.*$", path.read_text(), flags=re.MULTILINE)
        assert not bare, f"{path.name} has bare imports that only work from inside serving/protos: {bare}"


def test_inference_proto_matches_torchserve_jar() -> None:
    ours, jar = _file_proto(inference_pb2), _jar_file(INFERENCE_CLASS)
    assert ours.package == jar.package == "org.pytorch.serve.grpc.inference"
    shape = _wire_shape(ours)
    # PredictionResponse.status is google.rpc.Status in the jar and our RpcStatus stand-in here:
    # the two must agree field for field with the jar's own google/rpc/status.proto.
    assert shape.pop("RpcStatus") == _wire_shape(_jar_file(RPC_STATUS_CLASS))["Status"]
    fields = shape["PredictionResponse"][1]
    assert fields[3].type_name == "RpcStatus"
    fields[3] = fields[3]._replace(type_name=".google.rpc.Status")
    assert shape == _wire_shape(jar)


def test_management_proto_matches_torchserve_jar() -> None:
    ours, jar = _file_proto(management_pb2), _jar_file(MANAGEMENT_CLASS)
    assert ours.package == jar.package == "org.pytorch.serve.grpc.management"
    assert _wire_shape(ours) == _wire_shape(jar)


def test_open_inference_proto_matches_torchserve_variant_field_for_field() -> None:
    ours, jar = _file_proto(grpc_predict_v2_pb2), _jar_file(OPENINFERENCE_CLASS)
    # Same messages in another package: standard clients call /inference.GRPCInferenceService/...
    assert (ours.package, jar.package) == ("inference", "org.pytorch.serve.grpc.openinference")
    shape = _wire_shape(ours)
    # Our only additions, from Triton's current proto: two more choices in InferParameter's oneof.
    extras = {n: shape["InferParameter"][1].pop(n) for n in (4, 5)}
    assert [(f.name, f.oneof) for f in extras.values()] == [
        ("double_param", "parameter_choice"),
        ("uint64_param", "parameter_choice"),
    ]
    assert shape == _wire_shape(jar)


def test_method_paths_are_the_ones_clients_call() -> None:
    stubs = {
        "org.pytorch.serve.grpc.inference.InferenceAPIsService": (
            inference_pb2,
            inference_pb2_grpc.InferenceAPIsServiceStub,
            ["Ping", "Predictions", "StreamPredictions", "StreamPredictions2"],
        ),
        "org.pytorch.serve.grpc.management.ManagementAPIsService": (
            management_pb2,
            management_pb2_grpc.ManagementAPIsServiceStub,
            ["DescribeModel", "ListModels", "RegisterModel", "ScaleWorker", "SetDefault", "UnregisterModel"],
        ),
        "inference.GRPCInferenceService": (
            grpc_predict_v2_pb2,
            grpc_predict_v2_pb2_grpc.GRPCInferenceServiceStub,
            ["ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata", "ModelInfer"],
        ),
    }
    with grpc.insecure_channel("127.0.0.1:9") as channel:  # never dialled: stubs only wrap it
        for full_name, (module, stub_class, rpcs) in stubs.items():
            (service,) = module.DESCRIPTOR.services_by_name.values()
            assert (service.full_name, list(service.methods_by_name)) == (full_name, rpcs)
            stub = stub_class(channel)
            assert all(callable(getattr(stub, rpc)) for rpc in rpcs)


def _jar_messages() -> descriptor_pool.DescriptorPool:
    """A private pool holding the jar's own definitions, to decode what our stubs encode."""
    pool = descriptor_pool.DescriptorPool()
    for module in (any_pb2, empty_pb2):
        pool.Add(_file_proto(module))
    for class_name in (RPC_STATUS_CLASS, INFERENCE_CLASS, OPENINFERENCE_CLASS):
        pool.Add(_jar_file(class_name))
    return pool


def test_bytes_round_trip_between_our_stubs_and_torchserve_definitions() -> None:
    pool = _jar_messages()

    def jar_class(full_name: str) -> Any:  # a class built at run time: its fields have no static types
        return message_factory.GetMessageClass(pool.FindMessageTypeByName(full_name))

    request = inference_pb2.PredictionsRequest(model_name="m", input={"data": b"\x00\x01"}, sequence_id="s")
    decoded = jar_class("org.pytorch.serve.grpc.inference.PredictionsRequest").FromString(
        request.SerializeToString()
    )
    assert (decoded.model_name, dict(decoded.input), decoded.sequence_id) == ("m", {"data": b"\x00\x01"}, "s")

    # What TorchServe sends on a StreamPredictions2 error, decoded by our stub.
    jar_response = jar_class("org.pytorch.serve.grpc.inference.PredictionResponse")()
    jar_response.prediction = b"out"
    jar_response.status.code = 13
    jar_response.status.message = "boom"
    jar_response.status.details.add(type_url="type.googleapis.com/google.rpc.ErrorInfo", value=b"\n\x01x")
    response = inference_pb2.PredictionResponse.FromString(jar_response.SerializeToString())
    assert (response.prediction, response.status.code, response.status.message) == (b"out", 13, "boom")
    assert response.status.details[0].type_url.endswith("google.rpc.ErrorInfo")

    infer = grpc_predict_v2_pb2.ModelInferRequest(
        model_name="m",
        id="7",
        parameters={"flag": grpc_predict_v2_pb2.InferParameter(bool_param=True)},
        inputs=[
            grpc_predict_v2_pb2.ModelInferRequest.InferInputTensor(name="x", datatype="FP32", shape=[1, 2])
        ],
        raw_input_contents=[b"\x00\x00\x80?\x00\x00\x00@"],
    )
    decoded = jar_class("org.pytorch.serve.grpc.openinference.ModelInferRequest").FromString(
        infer.SerializeToString()
    )
    assert (decoded.model_name, decoded.id, decoded.parameters["flag"].bool_param) == ("m", "7", True)
    assert (decoded.inputs[0].name, list(decoded.inputs[0].shape)) == ("x", [1, 2])
    assert list(decoded.raw_input_contents) == [b"\x00\x00\x80?\x00\x00\x00@"]
