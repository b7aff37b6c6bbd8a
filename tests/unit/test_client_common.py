"""The pieces every client shares: bodies, answers, OIP results, retry schedule."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch

from serving.client.common import (
    InferResult,
    decode_answer,
    encode_instances,
    json_inputs,
    named_arrays,
)
from serving.client.grpc import infer_request, infer_result
from serving.errors import (
    ModelNotFoundError,
    ModelNotReadyError,
    PayloadTooLargeError,
    RequestError,
    ServerError,
)
from serving.protos import grpc_predict_v2_pb2 as pb
from serving.retry import Backoff, retryable


def test_arrays_and_tensors_travel_as_npy_rows_as_json() -> None:
    body, media = encode_instances(torch.ones(2, 1, 8, 8, dtype=torch.bfloat16))
    assert media == "application/x-npy"
    assert np.load(io.BytesIO(body)).dtype == np.float32  # npy has no bfloat16
    body, media = encode_instances([[1, 2]])
    assert (json.loads(body), media) == ({"instances": [[1, 2]]}, "application/json")


def test_answers_decode_and_error_bodies_raise() -> None:
    buffer = io.BytesIO()
    np.save(buffer, np.eye(2, dtype=np.float32))
    assert np.array_equal(decode_answer(buffer.getvalue()), np.eye(2))
    assert decode_answer(b'{"predictions": [1]}') == {"predictions": [1]}
    with pytest.raises(PayloadTooLargeError, match="at most 64"):
        decode_answer(b'{"code": 413, "type": "PayloadTooLargeError", "error": "at most 64 instances"}')


def test_inputs_from_mappings_or_oip_json_objects() -> None:
    as_json = [{"name": "x", "shape": [1, 2], "datatype": "INT32", "data": [3, 4]}]
    ((name, array),) = named_arrays(as_json)
    assert name == "x" and array.dtype == np.int32 and array.tolist() == [[3, 4]]
    assert json_inputs({"x": np.array([[3, 4]], dtype=np.int32)}) == as_json
    with pytest.raises(RequestError, match="not an OIP tensor"):
        named_arrays([{"name": "x", "shape": [3], "data": [1]}])


def test_infer_request_is_raw_and_the_result_reads_as_arrays_or_json() -> None:
    request = infer_request("m", {"x": np.arange(6, dtype=np.float32).reshape(2, 3)}, ["y"], "id-1", "")
    assert (request.inputs[0].datatype, list(request.inputs[0].shape)) == ("FP32", [2, 3])
    assert request.raw_input_contents[0] == np.arange(6, dtype="<f4").tobytes()
    assert [o.name for o in request.outputs] == ["y"]
    reply = pb.ModelInferResponse(model_name="m", model_version="1", id="id-1")
    reply.outputs.add(name="y", datatype="INT64", shape=[2])
    reply.raw_output_contents.append(np.array([7, 8], dtype="<i8").tobytes())
    result = infer_result(reply)
    assert result.as_numpy("y").tolist() == [7, 8] and result.outputs["y"].flags.writeable
    assert result["outputs"] == [{"name": "y", "shape": [2], "datatype": "INT64", "data": [7, 8]}]
    assert InferResult.from_json(result.to_json()).outputs["y"].tolist() == [7, 8]


def test_only_unavailable_is_retried() -> None:
    assert list(Backoff(retries=3, first_s=0.1).delays()) == [0.1, 0.2, 0.4]
    assert retryable(ServerError("down")) and retryable(ModelNotReadyError("busy"))
    assert not retryable(RequestError("bad")) and not retryable(ModelNotFoundError("gone"))
