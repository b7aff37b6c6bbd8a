"""Unit tests of serving.codecs: every format round-trips exactly and every bad request gets a clear 4xx."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from serving.codecs import (
    DecodedRequest,
    InputSpec,
    PostProcess,
    Protocol,
    decode_request,
    encode_error,
    encode_response,
    load_labels,
)
from serving.errors import (
    CkptServeError,
    ConfigError,
    PayloadTooLargeError,
    RequestError,
    UnsupportedMediaTypeError,
)

SPEC = InputSpec(shape=(1, 4, 4))
JSON = "application/json"


def v1(x: torch.Tensor) -> dict[str, Any]:
    return {"instances": x.tolist()}


def v2(x: torch.Tensor, datatype: str = "FP32", name: str = "input__0", **extra: Any) -> dict[str, Any]:
    inp = {"name": name, "shape": list(x.shape), "datatype": datatype, "data": x.reshape(-1).tolist()}
    return {"inputs": [inp], **extra}


def npy(x: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, x, allow_pickle=True)
    return buf.getvalue()


def raw(doc: Any) -> bytes:
    return json.dumps(doc).encode()


def fails(
    cls: type[Exception], body: Any, match: str, spec: InputSpec = SPEC, ctype: str | None = JSON
) -> str:
    """Decode must raise exactly ``cls`` (not a subclass) with ``match`` in its message."""
    with pytest.raises(CkptServeError) as info:
        decode_request(body, ctype, spec)
    assert type(info.value) is cls, f"{type(info.value).__name__}: {info.value}"
    assert match in info.value.message, info.value.message
    assert info.value.hint, "every request error tells the client what to do"
    return info.value.message


def request(protocol: Protocol, n: int = 2, request_id: str | None = None, **kw: Any) -> DecodedRequest:
    return DecodedRequest(torch.zeros(n, 1, 4, 4), protocol, request_id=request_id, **kw)


# --- decoding: round trips ----------------------------------------------------------------------


@pytest.mark.parametrize("make", [v1, v2, lambda x: x.tolist()], ids=["v1", "v2", "bare-list"])
@pytest.mark.parametrize("form", ["parsed", "bytes", "str", "bytearray"])
def test_json_round_trips_exactly_in_every_input_form(make: Any, form: str) -> None:
    x = torch.randn(3, 1, 4, 4)
    doc = make(x)
    body = {"parsed": doc, "bytes": raw(doc), "str": json.dumps(doc), "bytearray": bytearray(raw(doc))}[form]
    req = decode_request(body, "application/json; charset=utf-8" if form != "parsed" else JSON, SPEC)
    assert torch.equal(req.instances, x)
    assert req.instances.dtype == torch.float32 and req.instances.is_contiguous()
    assert req.protocol is (Protocol.V2 if make is v2 else Protocol.V1)


@pytest.mark.parametrize(
    "ctype", [None, "text/plain", "application/x-www-form-urlencoded", "application/octet-stream"]
)
def test_json_is_recognised_by_content_under_any_accepted_header(ctype: str | None) -> None:
    x = torch.randn(2, 1, 4, 4)
    assert torch.equal(decode_request(raw(v1(x)), ctype, SPEC).instances, x)


def test_v2_nested_data_id_and_any_name_for_a_lone_input() -> None:
    x = torch.randn(2, 1, 4, 4)
    doc = v2(x, name="pixels", id="req-7")
    doc["inputs"][0]["data"] = x.tolist()  # nested instead of flat
    req = decode_request(doc, JSON, SPEC)
    assert torch.equal(req.instances, x) and req.request_id == "req-7" and req.outputs is None


V2_CASES = [
    ("BOOL", [True, False], [1.0, 0.0]),
    ("UINT8", [0, 255], [0.0, 255.0]),
    ("UINT16", [0, 65535], [0.0, 65535.0]),
    ("UINT32", [1, 2**32 - 1], [1.0, float(2**32 - 1)]),
    ("UINT64", [0, 7], [0.0, 7.0]),
    ("INT8", [-128, 127], [-128.0, 127.0]),
    ("INT16", [-300, 300], [-300.0, 300.0]),
    ("INT32", [-70000, 70000], [-70000.0, 70000.0]),
    ("INT64", [-(2**40), 2**40], [-float(2**40), float(2**40)]),
    ("FP16", [0.5, -2.0], [0.5, -2.0]),
    ("FP32", [0.25, 3], [0.25, 3.0]),
    ("FP64", [1.5, -0.125], [1.5, -0.125]),
    ("BF16", [2.0, -0.5], [2.0, -0.5]),
]


@pytest.mark.parametrize(("datatype", "data", "expected"), V2_CASES, ids=[c[0] for c in V2_CASES])
def test_v2_datatypes_cast_to_the_model_dtype(datatype: str, data: list[Any], expected: list[float]) -> None:
    spec = InputSpec(shape=(2,), dtype=torch.float64)
    doc = {"inputs": [{"name": "x", "shape": [1, 2], "datatype": datatype, "data": data}]}
    req = decode_request(raw(doc), JSON, spec)
    assert req.instances.dtype == torch.float64
    assert req.instances.tolist() == [expected]


@pytest.mark.parametrize("dtype", [torch.int64, torch.bfloat16, torch.float16, torch.uint8])
def test_decoded_tensor_has_the_spec_dtype(dtype: torch.dtype) -> None:
    spec = InputSpec(shape=(3,), dtype=dtype)
    req = decode_request({"instances": [[1, 2, 3], [4.0, 5.0, 6.0]]}, JSON, spec)
    assert req.instances.dtype == dtype
    assert req.instances.tolist() == [[1, 2, 3], [4, 5, 6]]


def test_integer_model_takes_exact_large_integers() -> None:
    spec = InputSpec(shape=(2,), dtype=torch.int64)
    big = 2**62 + 1  # not representable in float64: must not pass through a float
    req = decode_request(raw({"instances": [[big, -big]]}), JSON, spec)
    assert req.instances.tolist() == [[big, -big]]


@pytest.mark.parametrize("ctype", [None, "application/x-npy", "application/octet-stream", JSON])
def test_npy_batch_round_trips_exactly_whatever_the_header(ctype: str | None) -> None:
    x = np.random.default_rng(0).standard_normal((3, 1, 4, 4)).astype(np.float32)
    req = decode_request(npy(x), ctype, SPEC)
    assert req.protocol is Protocol.NPY and torch.equal(req.instances, torch.from_numpy(x))


def test_npy_single_instance_gets_a_batch_axis() -> None:
    x = np.arange(16, dtype=np.float32).reshape(1, 4, 4)
    req = decode_request(npy(x), "application/x-npy", SPEC)
    assert req.instances.shape == (1, 1, 4, 4) and torch.equal(req.instances[0], torch.from_numpy(x))


@pytest.mark.parametrize(
    "x",
    [
        np.arange(32, dtype=">f4").reshape(2, 1, 4, 4),  # big-endian
        np.asfortranarray(np.arange(32, dtype=np.float64).reshape(2, 1, 4, 4)),
        np.arange(32, dtype=np.int16).reshape(2, 1, 4, 4),
    ],
    ids=["big-endian", "fortran-f64", "int16"],
)
def test_npy_layouts_and_dtypes_are_normalised(x: np.ndarray) -> None:
    req = decode_request(bytearray(npy(x)), "application/octet-stream", SPEC)
    assert req.instances.dtype == torch.float32 and req.instances.is_contiguous()
    assert req.instances.tolist() == x.astype(np.float32).tolist()


def test_nonfinite_inputs_pass_when_allowed() -> None:
    spec = InputSpec(shape=(2,), allow_nonfinite=True)
    req = decode_request(b'{"instances": [[NaN, -Infinity]]}', JSON, spec)
    assert torch.isnan(req.instances[0, 0]) and req.instances[0, 1] == -float("inf")


def test_wildcard_axis_takes_any_size() -> None:
    spec = InputSpec(shape=(-1,))
    assert decode_request([[1, 2, 3]], JSON, spec).instances.shape == (1, 3)
    assert decode_request([[1, 2]], JSON, spec).instances.shape == (1, 2)


# --- decoding: validation -----------------------------------------------------------------------


@pytest.mark.parametrize("body", [None, b"", "", b"  \n", bytearray()])
def test_empty_body(body: Any) -> None:
    fails(RequestError, body, "empty")


def test_malformed_json_names_the_position() -> None:
    msg = fails(
        RequestError, b'{"instances": [1, 2,', "malformed JSON", ctype="application/json; charset=utf-8"
    )
    assert "line 1 column 21" in msg


def test_non_utf8_bytes_are_a_400() -> None:
    fails(RequestError, b'{"instances": "\x80"}', "neither npy nor JSON", ctype=None)


@pytest.mark.parametrize("ctype", ["image/png", "audio/wav", "text/csv", "application/xml"])
def test_foreign_media_type_is_415_naming_the_accepted_ones(ctype: str) -> None:
    fails(UnsupportedMediaTypeError, b"\x89PNG\r\n\x1a\n\x00\x00", "application/json", ctype=ctype)


def test_npy_content_type_without_npy_magic() -> None:
    fails(RequestError, b"\x00\x01\x02", "npy magic", ctype="application/x-npy")


@pytest.mark.parametrize("body", [{}, {"data": [1]}, '{"foo": 1}'])
def test_missing_instances_or_inputs(body: Any) -> None:
    msg = fails(RequestError, body, "'instances'")
    assert "'inputs'" in msg


def test_both_instances_and_inputs() -> None:
    fails(RequestError, {"instances": [], "inputs": []}, "both")


def test_wrong_instance_shape_names_the_instance() -> None:
    spec = InputSpec(shape=(1, 8, 8))
    rows = torch.zeros(3, 1, 8, 8).tolist()
    rows[2] = torch.zeros(8, 7).tolist()
    msg = fails(RequestError, {"instances": rows}, "instance 2 has shape (8, 7); expected (1, 8, 8)", spec)
    assert msg.startswith("instance 2")


def test_single_instance_sent_without_the_list_wrapper() -> None:
    fails(RequestError, {"instances": torch.zeros(1, 4, 4).tolist()}, "instance 0 has shape (4, 4)")


def test_ragged_instance() -> None:
    rows = torch.zeros(2, 1, 4, 4).tolist()
    rows[1][0][3] = [0.0, 0.0]
    fails(RequestError, {"instances": rows}, "instance 1 is ragged")


def test_instances_of_different_sizes_under_a_wildcard() -> None:
    fails(RequestError, [[1, 2], [1, 2, 3]], "differ in shape", InputSpec(shape=(-1,)))


@pytest.mark.parametrize(("bad", "shown"), [("a", "'a' (str)"), (None, "None"), ({"v": 1}, "{'v': 1}")])
def test_non_numeric_element_names_instance_and_value(bad: Any, shown: str) -> None:
    rows = torch.zeros(2, 1, 4, 4).tolist()
    rows[1][0][2][1] = bad
    msg = fails(RequestError, {"instances": rows}, f"instance 1 holds {shown}")
    assert "expected numbers" in msg


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e300"])
def test_nonfinite_inputs_are_refused_by_default(literal: str) -> None:
    body = f'{{"instances": [[1, 2], [3, {literal}]]}}'.encode()
    fails(RequestError, body, "instance 1 holds NaN or Infinity", InputSpec(shape=(2,)))


def test_integer_model_refuses_fractions_and_nan() -> None:
    spec = InputSpec(shape=(2,), dtype=torch.int64)
    fails(RequestError, [[1, 2], [3, 4.5]], "instance 1 holds non-integer values", spec)
    fails(RequestError, b"[[1, NaN]]", "instance 0 holds non-integer values", spec)
    assert decode_request([[1.0, 2.0]], JSON, spec).instances.tolist() == [[1, 2]]


@pytest.mark.parametrize(
    "body",
    [
        {"instances": []},
        [],
        {"inputs": [{"name": "x", "shape": [0, 1, 4, 4], "datatype": "FP32", "data": []}]},
        npy(np.zeros((0, 1, 4, 4), np.float32)),
    ],
    ids=["v1", "bare", "v2", "npy"],
)
def test_zero_instances(body: Any) -> None:
    fails(RequestError, body, "zero instances")


@pytest.mark.parametrize(
    "body",
    [v1(torch.zeros(3, 1, 4, 4)), v2(torch.zeros(3, 1, 4, 4)), npy(np.zeros((3, 1, 4, 4), np.float32))],
)
def test_too_many_instances_is_413(body: Any) -> None:
    spec = InputSpec(shape=(1, 4, 4), max_instances=2)
    fails(PayloadTooLargeError, body, "at most 2", spec)
    assert PayloadTooLargeError.http_status == 413


def test_v2_several_inputs_names_the_expected_one() -> None:
    doc = v2(torch.zeros(1, 1, 4, 4))
    doc["inputs"].append(dict(doc["inputs"][0], name="mask"))
    msg = fails(RequestError, doc, "exactly one input, 'input__0'")
    assert "mask" in msg


@pytest.mark.parametrize("datatype", ["BYTES", "FLOAT32", "fp32"])
def test_v2_non_numeric_or_unknown_datatype_lists_the_allowed_ones(datatype: str) -> None:
    msg = fails(RequestError, v2(torch.zeros(1, 1, 4, 4), datatype=datatype), f"datatype {datatype!r}")
    assert "FP32" in msg and "INT64" in msg and "BF16" in msg


@pytest.mark.parametrize(
    ("datatype", "data", "match"),
    [
        ("FP32", [1.0, "2"], "holds '2' (str); expected FP32"),
        ("FP32", [1.0, None], "holds None"),
        ("INT32", [1, 2.5], "holds 2.5 (float); expected INT32"),
        ("BOOL", [1, 0], "holds 1 (int); expected BOOL"),
        ("UINT8", [1, 300], "outside UINT8's range [0, 255]"),
        ("INT8", [-129, 0], "outside INT8's range"),
    ],
)
def test_v2_elements_must_fit_the_datatype(datatype: str, data: list[Any], match: str) -> None:
    doc = {"inputs": [{"name": "x", "shape": [1, 2], "datatype": datatype, "data": data}]}
    fails(RequestError, doc, match, InputSpec(shape=(2,)))


@pytest.mark.parametrize(
    ("shape", "match"),
    [([1, 4, 4], "expected [n, 1, 4, 4]"), ([2, 1, 4, 4], "has 16 elements"), ("1,1,4,4", "expected [n")],
)
def test_v2_shape_must_match(shape: Any, match: str) -> None:
    doc = v2(torch.zeros(1, 1, 4, 4))
    doc["inputs"][0]["shape"] = shape
    fails(RequestError, doc, match)


def test_v2_missing_fields_are_named() -> None:
    fails(RequestError, {"inputs": [{"name": "x", "data": [1]}]}, "lacks ['shape', 'datatype']")


@pytest.mark.parametrize(
    "body",
    [
        {"instances": "x"},
        {"instances": [{"a": 1}]},
        {"inputs": [1, 2]},
        {"inputs": {"x": [1]}},
        {"inputs": []},
        {"inputs": [{"name": "x", "shape": [1, 1, 4, 4], "datatype": "FP32", "data": 5}]},
        {"inputs": [{"name": "x", "shape": [1, 1, 4, 4], "datatype": "FP32", "data": [[1, 2], [3]]}]},
        {"inputs": [{"name": "x", "shape": [1, 1, 4, 4], "datatype": None, "data": [1]}]},
        {**v2(torch.zeros(1, 1, 4, 4)), "id": 5},
        {**v2(torch.zeros(1, 1, 4, 4)), "outputs": "all"},
        42,
        b"null",
        b'"text"',
        [[[[2**70] * 4] * 4]],
        npy(np.zeros((2, 1, 4, 4), np.complex64)),
        npy(np.array([{"a": 1}], dtype=object)),
        npy(np.array(["ab", "cd"])),
        npy(np.zeros((2, 4, 4), np.float32)),
        npy(np.zeros((2, 1, 4, 4), np.float32))[:-8],  # truncated
    ],
)
def test_odd_bodies_give_a_request_error_never_a_raw_exception(body: Any) -> None:
    with pytest.raises(RequestError) as info:
        decode_request(body, None, SPEC)
    assert info.value.http_status == 400 and info.value.message


@pytest.mark.parametrize("depth", [500, 100_000])
def test_hostile_nesting_is_a_400(depth: int) -> None:
    body = b"[" * depth + b"1" + b"]" * depth
    with pytest.raises(RequestError):
        decode_request(body, JSON, SPEC)


# --- encoding -----------------------------------------------------------------------------------


def test_v1_raw_round_trips_exactly_and_compactly() -> None:
    out = torch.randn(2, 5)
    body, ctype = encode_response(out, request(Protocol.V1), model_name="m", post=PostProcess())
    assert ctype == JSON and b" " not in body
    assert torch.equal(torch.tensor(json.loads(body)["predictions"]), out)


def test_v1_softmax_rows() -> None:
    out = torch.randn(2, 5)
    body, _ = encode_response(out, request(Protocol.V1), model_name="m", post=PostProcess("softmax"))
    got = torch.tensor(json.loads(body)["predictions"])
    assert torch.equal(got, out.softmax(-1)) and torch.allclose(got.sum(-1), torch.ones(2))


@pytest.mark.parametrize("labels", [None, ("cat", "dog", "eel", "fox")])
def test_v1_topk_sorted_with_and_without_labels(labels: tuple[str, ...] | None) -> None:
    out = torch.tensor([[0.1, 3.0, 2.0, -1.0], [5.0, 0.0, 1.0, 2.0]])
    body, _ = encode_response(
        out, request(Protocol.V1), model_name="m", post=PostProcess("topk", k=3, labels=labels)
    )
    preds = json.loads(body)["predictions"]
    probs = out.softmax(-1)
    assert [[p["index"] for p in row] for row in preds] == [[1, 2, 0], [0, 3, 2]]
    names = labels or ("0", "1", "2", "3")
    assert [[p["label"] for p in row] for row in preds] == [
        [names[i] for i in r] for r in ([1, 2, 0], [0, 3, 2])
    ]
    for row, p in zip(preds, probs, strict=True):
        assert [e["score"] for e in row] == [p[e["index"]].item() for e in row]


def test_topk_clamps_k_to_the_number_of_classes() -> None:
    body, _ = encode_response(
        torch.randn(2, 3), request(Protocol.V1), model_name="m", post=PostProcess("topk", k=10)
    )
    assert [len(row) for row in json.loads(body)["predictions"]] == [3, 3]


def test_v2_raw_response_fields() -> None:
    out = torch.randn(2, 5)
    body, ctype = encode_response(
        out, request(Protocol.V2, request_id="r1"), model_name="m", post=PostProcess(), model_version="3"
    )
    doc = json.loads(body)
    assert ctype == JSON and (doc["model_name"], doc["model_version"], doc["id"]) == ("m", "3", "r1")
    [o] = doc["outputs"]
    assert (o["name"], o["shape"], o["datatype"]) == ("output__0", [2, 5], "FP32")
    assert torch.equal(torch.tensor(o["data"]).reshape(2, 5), out)


def test_v2_omits_absent_id_and_version() -> None:
    body, _ = encode_response(torch.zeros(2, 3), request(Protocol.V2), model_name="m", post=PostProcess())
    assert set(json.loads(body)) == {"model_name", "outputs"}


@pytest.mark.parametrize(
    ("dtype", "datatype"),
    [(torch.int64, "INT64"), (torch.float64, "FP64"), (torch.bfloat16, "BF16"), (torch.bool, "BOOL")],
)
def test_v2_output_datatype_follows_the_tensor(dtype: torch.dtype, datatype: str) -> None:
    out = torch.tensor([[1, 0], [0, 1]]).to(dtype)
    body, _ = encode_response(out, request(Protocol.V2), model_name="m", post=PostProcess())
    o = json.loads(body)["outputs"][0]
    assert o["datatype"] == datatype and o["data"] == out.reshape(-1).tolist()


@pytest.mark.parametrize("labels", [None, ("a", "b", "c")])
def test_v2_topk_outputs(labels: tuple[str, ...] | None) -> None:
    out = torch.tensor([[1.0, 3.0, 2.0], [9.0, 8.0, 7.0]])
    post = PostProcess("topk", k=2, labels=labels)
    body, _ = encode_response(out, request(Protocol.V2), model_name="m", post=post)
    outs = {o["name"]: o for o in json.loads(body)["outputs"]}
    assert outs["topk_indices"] == {
        "name": "topk_indices",
        "shape": [2, 2],
        "datatype": "INT64",
        "data": [1, 2, 0, 1],
    }
    scores = outs["topk_scores"]
    assert scores["datatype"] == "FP32" and scores["shape"] == [2, 2]
    assert scores["data"] == out.softmax(-1).topk(2).values.reshape(-1).tolist()
    if labels:
        assert outs["topk_labels"]["datatype"] == "BYTES" and outs["topk_labels"]["data"] == [
            "b",
            "c",
            "a",
            "b",
        ]
    else:
        assert "topk_labels" not in outs


def test_v2_requested_outputs_are_filtered_and_checked() -> None:
    doc = {**v2(torch.zeros(2, 1, 4, 4)), "outputs": [{"name": "topk_scores"}]}
    req = decode_request(doc, JSON, SPEC)
    body, _ = encode_response(torch.randn(2, 3), req, model_name="m", post=PostProcess("topk", k=2))
    assert [o["name"] for o in json.loads(body)["outputs"]] == ["topk_scores"]
    req.outputs = ("nope",)
    with pytest.raises(RequestError, match="'nope'"):
        encode_response(torch.randn(2, 3), req, model_name="m", post=PostProcess())


@pytest.mark.parametrize("kind", ["raw", "softmax"])
def test_npy_response_round_trips(kind: str) -> None:
    out = torch.randn(2, 4)
    body, ctype = encode_response(out, request(Protocol.NPY), model_name="m", post=PostProcess(kind))  # type: ignore[arg-type]
    expected = out if kind == "raw" else out.softmax(-1)
    assert ctype == "application/x-npy"
    assert np.array_equal(np.load(io.BytesIO(body), allow_pickle=False), expected.numpy())


def test_npy_topk_answers_v1_json() -> None:
    body, ctype = encode_response(
        torch.randn(2, 4), request(Protocol.NPY), model_name="m", post=PostProcess("topk", k=2)
    )
    assert ctype == JSON and len(json.loads(body)["predictions"]) == 2


def test_nonfinite_outputs_stay_strict_json() -> None:
    out = torch.tensor([[1.0, -float("inf"), float("nan"), float("inf")]])
    body, _ = encode_response(out, request(Protocol.V1, n=1), model_name="m", post=PostProcess())

    def refuse(token: str) -> None:
        raise AssertionError(f"non-standard JSON literal {token}")

    preds = json.loads(body, parse_constant=refuse)["predictions"]
    assert preds == [[1.0, "-Infinity", "NaN", "Infinity"]]


def test_output_batch_must_match_the_request() -> None:
    with pytest.raises(CkptServeError, match=r"returned shape \(3, 4\) for 2 instances") as info:
        encode_response(torch.zeros(3, 4), request(Protocol.V1), model_name="m", post=PostProcess())
    assert info.value.http_status == 500


def test_topk_needs_two_dimensional_outputs() -> None:
    with pytest.raises(ConfigError, match=r"needs \(n, classes\) outputs"):
        encode_response(torch.zeros(2, 3, 4), request(Protocol.V1), model_name="m", post=PostProcess("topk"))


@pytest.mark.parametrize("protocol", [None, Protocol.V1, Protocol.V2, Protocol.NPY])
def test_encode_error_body(protocol: Protocol | None) -> None:
    err = RequestError("instance 0 has shape (2,); expected (3,)", hint="reshape it")
    doc = json.loads(encode_error(err, protocol))
    assert doc == {"code": 400, "type": "RequestError", "error": err.message, "hint": "reshape it"}


# --- labels -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "doc",
    [
        {str(i): name for i, name in enumerate("abcdefghijk")},
        list("abcdefghijk"),
        {str(i): [f"n{i:08d}", name] for i, name in enumerate("abcdefghijk")},
    ],
    ids=["dict", "list", "imagenet"],
)
def test_load_labels_orders_by_numeric_index(tmp_path: Path, doc: Any) -> None:
    if isinstance(doc, dict):
        doc = dict(reversed(list(doc.items())))  # "10" before "2" as text: must still sort as numbers
    path = tmp_path / "index_to_name.json"
    path.write_text(json.dumps(doc))
    assert load_labels(path) == tuple("abcdefghijk")
    assert load_labels(str(path)) == tuple("abcdefghijk")


@pytest.mark.parametrize(
    ("content", "match"),
    [
        (None, "cannot read"),
        ("{not json", "not valid JSON"),
        ('{"0": "a", "2": "c"}', "expected 0..1"),
        ('{"0": "a", "x": "c"}', "not an integer index"),
        ('{"0": "a", "1": 5}', "entry 1 is 5"),
        ("{}", "empty"),
        ('"cat"', "expected an object or a list"),
    ],
)
def test_load_labels_errors(tmp_path: Path, content: str | None, match: str) -> None:
    path = tmp_path / "labels.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError, match=match) as info:
        load_labels(path)
    assert str(path) in info.value.message
