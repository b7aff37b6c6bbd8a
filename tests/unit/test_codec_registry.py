"""The codec registry's order and extension point, named outputs, and the one OIP datatype table."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from typing import Literal

import numpy as np
import pytest
import torch

from serving.codecs import (
    CODECS,
    DecodedRequest,
    InputSpec,
    PostProcess,
    Protocol,
    Registry,
    decode_request,
    encode_error,
    encode_response,
)
from serving.codecs.base import Body, ModelRef, NamedOutputs
from serving.codecs.datatypes import DATATYPES, NUMERIC, TYPES, datatype_of, json_dtype, oip_of_torch_name
from serving.codecs.kserve_v1 import KServeV1Codec
from serving.codecs.npy import NpyCodec
from serving.codecs.oip_grpc import bf16_bits, fill, has_typed_contents, to_numpy
from serving.codecs.oip_v2 import OipV2Codec
from serving.codecs.postprocess import TOPK_INDICES, TOPK_LABELS, TOPK_SCORES, postprocess, rank_batch, single
from serving.codecs.torch_dtypes import OIP_OF_TORCH, TORCH_DTYPES
from serving.errors import CkptServeError, RequestError, UnsupportedMediaTypeError
from serving.protos import grpc_predict_v2_pb2 as pb

SPEC = InputSpec(shape=(2,))
INPUTS = [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [1, 2]}]
BOTH = {"instances": [[1.0, 2.0]], "inputs": INPUTS}


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


class CsvCodec:
    """A codec the package does not have: "1,2;3,4" (rows of numbers) in, the outputs as text out."""

    protocol = "csv"
    reads: Literal["bytes", "json"] = "bytes"

    def speaks(self, media: str) -> bool:
        return media == "text/csv"

    def matches(self, body: Body, media: str) -> bool:
        return media == "text/csv"

    def decode(self, body: Body, spec: InputSpec) -> DecodedRequest:
        assert isinstance(body, bytes)
        rows = [[float(v) for v in row.split(",")] for row in body.decode().split(";")]
        return DecodedRequest(torch.tensor(rows, dtype=spec.dtype), self.protocol)

    def encode(self, outputs: NamedOutputs, request: DecodedRequest, model: ModelRef) -> tuple[bytes, str]:
        lines = [f"{name}={value.tolist()}" for name, value in outputs.items()]
        return "\n".join(lines).encode(), "text/csv"

    def encode_error(self, error: CkptServeError) -> bytes:
        return f"error: {error.message}".encode()


# --- the registry: order, first claim wins ------------------------------------------------------


def test_the_registry_asks_npy_then_oip_v2_then_kserve_v1() -> None:
    assert [type(codec) for codec in CODECS.codecs] == [NpyCodec, OipV2Codec, KServeV1Codec]
    assert [codec.protocol for codec in CODECS.codecs] == [Protocol.NPY, Protocol.V2, Protocol.V1]


def test_npy_claims_its_magic_before_any_json_codec() -> None:
    # sent with a JSON type, the npy bytes still reach the npy codec: it is asked first
    decoded = decode_request(npy(np.ones((3, 2), np.float32)), "application/json", SPEC)
    assert decoded.protocol is Protocol.NPY and decoded.instances.shape == (3, 2)


def test_the_first_codec_that_claims_a_request_wins() -> None:
    with pytest.raises(RequestError, match="both 'instances' and 'inputs'"):  # OIP v2 claims it first
        decode_request(BOTH, "application/json", SPEC)
    v1_first = Registry([KServeV1Codec(), OipV2Codec()])
    assert v1_first.decode(BOTH, "application/json", SPEC).protocol is Protocol.V1


def test_each_request_is_answered_by_the_codec_that_decoded_it() -> None:
    for body, content_type in [
        (b"[[1, 2]]", "application/json"),
        (json.dumps({"inputs": INPUTS}).encode(), "application/json"),
        (npy(np.ones((1, 2), np.float32)), "application/x-npy"),
    ]:
        decoded = decode_request(body, content_type, SPEC)
        assert CODECS.codec_for(decoded.protocol).protocol == decoded.protocol


# --- the extension point: one codec, one registration -------------------------------------------


def test_a_registered_codec_claims_its_media_type(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(UnsupportedMediaTypeError):  # unknown until registered
        decode_request(b"1,2", "text/csv", SPEC)
    monkeypatch.setattr("serving.codecs.registry.CODECS", Registry([*CODECS.codecs, CsvCodec()]))

    decoded = decode_request(b"1,2;3,4", "text/csv; charset=utf-8", SPEC)
    assert decoded.protocol == "csv" and decoded.instances.tolist() == [[1.0, 2.0], [3.0, 4.0]]
    out = torch.tensor([[0.0, 2.0], [1.0, 0.0]])
    body, content_type = encode_response(out, decoded, model_name="m", post=PostProcess("topk", k=1))
    scores = out.softmax(dim=-1).max(dim=-1, keepdim=True).values.tolist()
    assert content_type == "text/csv" and body == f"topk_indices=[[1], [0]]\ntopk_scores={scores}".encode()
    assert encode_error(RequestError("bad row"), decoded.protocol) == b"error: bad row"
    # the other formats are untouched
    assert decode_request(b"[[1, 2]]", "application/json", SPEC).protocol is Protocol.V1


# --- post-processing: named outputs, encoded alike by every codec --------------------------------


def test_raw_and_softmax_give_one_output_named_by_the_config() -> None:
    out = torch.tensor([[1.0, 3.0], [0.0, 0.0]])
    raw = postprocess(out, 2, PostProcess(output_name="logits"))
    assert list(raw) == ["logits"] and torch.equal(single(raw), out)
    soft = postprocess(out, 2, PostProcess("softmax"))
    assert list(soft) == ["output__0"] and torch.allclose(single(soft), out.softmax(dim=-1))


def test_topk_gives_named_indices_scores_and_labels() -> None:
    out = torch.tensor([[1.0, 3.0, 2.0], [5.0, 4.0, 0.0]])
    named = postprocess(out, 2, PostProcess("topk", k=2, labels=("cat", "dog")))
    assert list(named) == [TOPK_INDICES, TOPK_SCORES, TOPK_LABELS]
    assert named[TOPK_INDICES].tolist() == [[1, 2], [0, 1]]
    scores = named[TOPK_SCORES]
    assert isinstance(scores, torch.Tensor) and torch.equal(scores, out.softmax(dim=-1).topk(2).values)
    assert named[TOPK_LABELS].tolist() == [["dog", "2"], ["cat", "dog"]]  # beyond the labels: the index
    assert list(postprocess(out, 2, PostProcess("topk", k=2))) == [TOPK_INDICES, TOPK_SCORES]


def test_topk_takes_a_ranking_the_caller_computed_for_the_whole_batch() -> None:
    ranked = (torch.tensor([[0.9]]), torch.tensor([[7]]))
    named = postprocess(torch.zeros(1, 9), 1, PostProcess("topk", k=1), ranked)
    assert named[TOPK_INDICES] is ranked[1] and named[TOPK_SCORES] is ranked[0]


def test_a_batch_ranked_at_once_gives_each_request_its_own_top_k() -> None:
    post = PostProcess("topk", k=2)
    batch = torch.tensor([[1.0, 3.0, 2.0], [5.0, 4.0, 0.0], [0.0, 0.0, 9.0]])
    ranked = rank_batch(batch, post)
    assert ranked is not None
    for rows in (slice(0, 1), slice(1, 3)):  # two requests of one and two instances
        own = postprocess(batch[rows], len(batch[rows]), post)
        shared = postprocess(batch[rows], len(batch[rows]), post, (ranked[0][rows], ranked[1][rows]))
        assert {k: v.tolist() for k, v in shared.items()} == {k: v.tolist() for k, v in own.items()}
    assert rank_batch(batch, PostProcess("softmax")) is None
    assert rank_batch(torch.zeros(3, 2, 2), post) is None


def test_every_codec_encodes_the_named_outputs() -> None:
    out, post = torch.tensor([[1.0, 3.0, 2.0]]), PostProcess("topk", k=2, labels=("a", "b", "c"))
    named = postprocess(out, 1, post)
    model = ModelRef("m")
    v2 = json.loads(OipV2Codec().encode(named, DecodedRequest(torch.zeros(1, 2), Protocol.V2), model)[0])
    assert [o["name"] for o in v2["outputs"]] == list(named)
    assert v2["outputs"][2] == {"name": TOPK_LABELS, "shape": [1, 2], "datatype": "BYTES", "data": ["b", "c"]}
    rows = [[{"index": 1, "label": "b", "score": named[TOPK_SCORES][0, 0].item()},
             {"index": 2, "label": "c", "score": named[TOPK_SCORES][0, 1].item()}]]  # fmt: skip
    for codec in (KServeV1Codec(), NpyCodec()):  # one array cannot hold a ranking: npy answers as v1
        body, content_type = codec.encode(named, DecodedRequest(torch.zeros(1, 2), codec.protocol), model)
        assert content_type == "application/json" and json.loads(body) == {"predictions": rows}


# --- the one OIP datatype table -------------------------------------------------------------------


@pytest.mark.parametrize("name", DATATYPES)
def test_every_datatype_round_trips_through_the_table(name: str) -> None:
    datatype = TYPES[name]
    if name == "BYTES":
        array = np.array([b"a", b"", b"xyz"], dtype=object)
        assert datatype_of(array.dtype) == "BYTES" and datatype.size is None and datatype.torch is None
    else:
        assert datatype.size == datatype.wire.itemsize
        assert oip_of_torch_name(datatype.torch or "") == name
        assert OIP_OF_TORCH[TORCH_DTYPES[datatype.torch or ""]] == name
        assert torch.empty(0, dtype=TORCH_DTYPES[datatype.torch or ""]).element_size() == datatype.size
        values = (np.arange(6) % 2).astype(datatype.values)
        if name != "BF16":  # numpy has no bfloat16: its bits travel as UINT16
            assert datatype_of(datatype.values) == name and json_dtype(name) == datatype.values
        array = values.reshape(2, 3)
    # over gRPC: raw contents always, the typed contents field where the table names one
    for raw in (True, False) if datatype.field else (True,):
        tensor = pb.ModelInferRequest.InferInputTensor()
        contents = fill(tensor, "x", array, raw=raw) if name != "BF16" else bf16_bits(array).tobytes()
        tensor.datatype = name
        if name == "BF16":
            tensor.shape.extend(array.shape)
        back = to_numpy(tensor, contents)
        assert back.dtype == datatype.values and np.array_equal(back, array)
        assert has_typed_contents(name) == (datatype.field is not None)
    # over OIP v2 JSON: every numeric datatype decodes
    if name in NUMERIC:
        data = [True, False] if name == "BOOL" else [1, 0]
        doc = {"inputs": [{"name": "x", "shape": [1, 2], "datatype": name, "data": data}]}
        assert decode_request(doc, "application/json", SPEC).instances.tolist() == [[1.0, 0.0]]


def test_each_datatype_travels_in_the_narrowest_proto_field_that_holds_it() -> None:
    # The OIP spec's rule: 8/16/32-bit integers in the 32-bit fields, 64-bit ones in the 64-bit fields.
    proto = pb.InferTensorContents.DESCRIPTOR.fields_by_name
    F = type(proto["int_contents"])
    assert {t.name: proto[t.field].type for t in TYPES.values() if t.field} == {
        "BOOL": F.TYPE_BOOL,
        **dict.fromkeys(("UINT8", "UINT16", "UINT32"), F.TYPE_UINT32),
        "UINT64": F.TYPE_UINT64,
        **dict.fromkeys(("INT8", "INT16", "INT32"), F.TYPE_INT32),
        "INT64": F.TYPE_INT64,
        "FP32": F.TYPE_FLOAT,
        "FP64": F.TYPE_DOUBLE,
        "BYTES": F.TYPE_BYTES,
    }
    assert {t.field for t in TYPES.values() if t.field} == set(proto)  # every field is used


def test_the_table_and_the_protobuf_tensors_load_without_torch() -> None:
    code = (
        "import sys, serving.client, serving.codecs.datatypes, serving.codecs.oip_grpc; "
        "print('torch' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
