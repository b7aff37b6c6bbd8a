"""Property-based tests: whatever bytes a client or a file holds, the decoders and the layout detector
answer with a typed error that carries a message, never another exception, and never allocate the
gigabytes a hostile header asks for."""

from __future__ import annotations

import io
import json
import math
import resource
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from serving.checkpoints.layout import Layout, detect_layout
from serving.codecs import InputSpec, decode_request, max_body_bytes
from serving.codecs.datatypes import DATATYPES
from serving.codecs.oip_grpc import to_numpy
from serving.errors import CheckpointError, RequestError
from serving.protos import grpc_predict_v2_pb2 as pb

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SPECS = [
    InputSpec(shape=(1, 4, 4)),
    InputSpec(shape=(3,), dtype=torch.int64, max_instances=4),
    InputSpec(shape=(-1, 2)),
]
MEDIA = [None, "application/json", "application/x-npy", "application/octet-stream", "text/plain", "image/png"]
V2_DATATYPES = ["FP32", "FP64", "FP16", "BF16", "INT8", "INT64", "UINT8", "BOOL", "BYTES", "fp32", ""]
HUGE = [2**31, 2**32 + 1, 2**40, 2**62, 2**63 - 1]

# JSON-like values: numbers (with NaN/Inf and huge integers), strings, and nested lists/objects.
_leaves = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=8)
)
json_values = st.recursive(
    _leaves,
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=40,
)
shapes = st.lists(st.integers(min_value=-3, max_value=6) | st.sampled_from(HUGE), max_size=5)


def _rss_peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def decodes_or_refuses(body: Any, media: str | None, spec: InputSpec) -> None:
    """The decoder's contract: a checked batch, or a RequestError (4xx) with a message."""
    try:
        req = decode_request(body, media, spec)
    except RequestError as err:
        assert 400 <= err.http_status < 500 and err.message
        return
    assert req.instances.dtype == spec.dtype and 1 <= len(req.instances) <= spec.max_instances
    if spec.dtype.is_floating_point and not spec.allow_nonfinite:
        assert bool(torch.isfinite(req.instances).all())


@FAST
@given(body=st.binary(max_size=512), media=st.sampled_from(MEDIA), spec=st.sampled_from(SPECS))
def test_random_bytes(body: bytes, media: str | None, spec: InputSpec) -> None:
    decodes_or_refuses(body, media, spec)


@FAST
@given(body=st.binary(max_size=256), spec=st.sampled_from(SPECS))
def test_random_bytes_behind_the_npy_magic(body: bytes, spec: InputSpec) -> None:
    decodes_or_refuses(b"\x93NUMPY" + body, "application/x-npy", spec)


@FAST
@given(doc=json_values, spec=st.sampled_from(SPECS), wrap=st.sampled_from(["instances", "bare", "raw"]))
def test_any_json_document(doc: Any, spec: InputSpec, wrap: str) -> None:
    body = {"instances": doc} if wrap == "instances" else doc
    if wrap == "raw":
        body = json.dumps(doc).encode()  # NaN and Infinity as the bare literals Python writes
    decodes_or_refuses(body, "application/json", spec)


@FAST
@given(
    shape=shapes,
    datatype=st.sampled_from(V2_DATATYPES),
    data=json_values,
    spec=st.sampled_from(SPECS),
)
def test_any_oip_v2_input(shape: list[int], datatype: str, data: Any, spec: InputSpec) -> None:
    doc = {"inputs": [{"name": "input__0", "shape": shape, "datatype": datatype, "data": data}]}
    decodes_or_refuses(json.dumps(doc).encode(), "application/json", spec)


@FAST
@example(n=1, value=2**63, flat=False)  # found: numpy's ulonglong made torch.from_numpy raise TypeError
@given(
    n=st.integers(min_value=0, max_value=70),
    value=st.floats(allow_nan=True, allow_infinity=True) | st.integers(-(2**65), 2**65),
    flat=st.booleans(),
)
def test_v2_data_matching_its_shape(n: int, value: float, flat: bool) -> None:
    spec = SPECS[0]
    data = [value] * (n * 16) if flat else [[[[value] * 4] * 4]] * n
    doc = {"inputs": [{"name": "x", "shape": [n, 1, 4, 4], "datatype": "FP32", "data": data}]}
    decodes_or_refuses(doc, "application/json", spec)


@pytest.mark.parametrize("depth", [50, 1_000, 100_000])
def test_deep_nesting(depth: int) -> None:
    for body in (b"[" * depth + b"]" * depth, b'{"instances": ' + b"[" * depth + b"1" + b"]" * depth + b"}"):
        decodes_or_refuses(body, "application/json", InputSpec(shape=(-1,) * 3))


@FAST
@given(shape=st.lists(st.sampled_from([*HUGE, 0, 1, 3]), min_size=1, max_size=4))
def test_npy_headers_asking_for_gigabytes_are_refused_before_allocating(shape: list[int]) -> None:
    assume(math.prod(shape) * 4 > 1 << 30)
    header = repr({"descr": "<f4", "fortran_order": False, "shape": tuple(shape)}).encode()
    header += b" " * (-(len(header) + 11) % 64) + b"\n"
    body = b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header + b"\x00" * 64
    before = _rss_peak_mib()
    decodes_or_refuses(body, "application/x-npy", InputSpec(shape=(-1,) * (len(shape) - 1)))
    assert _rss_peak_mib() - before < 256


def test_a_body_beyond_the_byte_bound_is_never_parsed(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = SPECS[0]
    limit = max_body_bytes(spec)
    assert limit == spec.max_instances * 16 * 64 + 64 * 1024

    def never(*_: Any, **__: Any) -> Any:
        raise AssertionError("the decoder ran on an oversized body")

    monkeypatch.setattr("serving.codecs.jsontext.json.loads", never)
    monkeypatch.setattr("serving.codecs.npy.np.load", never)
    for body in (b"[" + b"0," * limit + b"0]", b"\x93NUMPY" + b"\x00" * limit):
        with pytest.raises(RequestError) as info:
            decode_request(body, None, spec)
        assert info.value.http_status == 413 and f"at most {limit} bytes" in info.value.message


def test_the_byte_bound_admits_max_instances_of_wordy_json() -> None:
    # The longest float reprs, indented: the most bytes an honest client can need for max_instances.
    spec = SPECS[0]
    instance = np.full((1, 4, 4), -2.2250738585072014e-308).tolist()
    body = json.dumps({"instances": [instance] * spec.max_instances}, indent=4).encode()
    bound = max_body_bytes(spec)
    assert bound is not None and len(body) <= bound
    assert decode_request(body, "application/json", spec).instances.shape == (64, 1, 4, 4)


@pytest.mark.parametrize("media", ["image/png", "application/xml", "text/html", "multipart/mixed"])
def test_a_foreign_media_type_is_refused_before_parsing(media: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("serving.codecs.jsontext.json.loads", lambda *_: pytest.fail("parsed"))
    with pytest.raises(RequestError) as info:
        decode_request(b'{"instances": [[[[0]]]]}', media, SPECS[0])
    assert info.value.http_status == 415 and "application/json" in info.value.message


def test_json_sent_as_a_form_says_which_content_type_to_send() -> None:
    # TorchServe turns such a body into a form field named after the JSON, with an empty value.
    with pytest.raises(RequestError) as info:
        decode_request(b"", "application/x-www-form-urlencoded", SPECS[0])
    assert info.value.http_status == 415 and "Content-Type: application/json" in str(info.value)


# --- gRPC (OIP v2) tensors -------------------------------------------------------------------------


@FAST
@example(shape=[0, 2, 2**62], datatype="BOOL", raw=None, count=0)  # found: numpy "array is too big"
@example(shape=[], datatype="BYTES", raw=b"", count=0)  # found: no element for a scalar, reshape raised
@given(
    shape=st.lists(st.integers(min_value=0, max_value=8) | st.sampled_from(HUGE), max_size=4),
    datatype=st.sampled_from([*DATATYPES, "FP8", "", "fp32"]),
    raw=st.none() | st.binary(max_size=256),
    count=st.integers(min_value=0, max_value=20),
)
def test_grpc_tensors(shape: list[int], datatype: str, raw: bytes | None, count: int) -> None:
    tensor = pb.ModelInferRequest.InferInputTensor(name="x", datatype=datatype, shape=shape)
    if raw is None and datatype in ("FP32", "INT32", "BOOL", "BYTES"):
        field = {"FP32": "fp32_contents", "INT32": "int_contents", "BOOL": "bool_contents"}
        values: list[Any] = [b"a"] * count if datatype == "BYTES" else [1] * count
        getattr(tensor.contents, field.get(datatype, "bytes_contents")).extend(values)
    before = _rss_peak_mib()
    try:
        array = to_numpy(tensor, raw)
    except RequestError as err:
        assert err.message
    else:
        assert list(array.shape) == shape
    assert _rss_peak_mib() - before < 256


@FAST
@given(shape=st.lists(st.integers(min_value=-(2**63), max_value=2**63 - 1), min_size=1, max_size=4))
def test_grpc_tensor_shapes_of_any_int64(shape: list[int]) -> None:
    tensor = pb.ModelInferRequest.InferInputTensor(name="x", datatype="FP32", shape=shape)
    try:
        to_numpy(tensor, b"\x00" * 16)
    except RequestError as err:
        assert err.message


# --- the checkpoint layout detector (read-only) ------------------------------------------------

_PREFIXES = [b"", b"PK\x03\x04", b"\x80\x02", b"\x10\x00\x00\x00\x00\x00\x00\x00{", b"\xff" * 8 + b"{"]


@FAST
@given(prefix=st.sampled_from(_PREFIXES), tail=st.binary(max_size=512))
def test_layout_detection_from_random_bytes(prefix: bytes, tail: bytes, tmp_path_factory: Any) -> None:
    path = Path(tmp_path_factory.mktemp("layout")) / "model_epoch_1.pt"
    path.write_bytes(prefix + tail)
    try:
        layout = detect_layout(path)
    except CheckpointError as err:
        assert err.message
    else:
        assert isinstance(layout, Layout)
    assert path.read_bytes() == prefix + tail  # detection only reads


_ZIP_NAMES = ["m/data.pkl", "m/code/f.py", "m/constants.pkl", "m/archive_format", "m/models/model.json", "x"]


@FAST
@example(names=["m/archive_format", "m/data.pkl", "m/models/model.json", "m/code/f.py"], cut=474, flip=336)
@given(
    names=st.lists(st.sampled_from(_ZIP_NAMES), unique=True, max_size=4),
    cut=st.integers(min_value=4, max_value=600),
    flip=st.integers(min_value=0, max_value=600),
)
def test_layout_detection_of_damaged_torch_archives(
    names: list[str], cut: int, flip: int, tmp_path_factory: Any
) -> None:
    # A zip laid out like torch's archives, then truncated and with one byte flipped.
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        for name in names:
            archive.writestr(name, b"\x80\x02payload")
    data = bytearray(buf.getvalue()[:cut])
    if flip < len(data):
        data[flip] ^= 0xFF
    path = Path(tmp_path_factory.mktemp("layout")) / "model.pt"
    path.write_bytes(bytes(data))
    try:
        assert isinstance(detect_layout(path), Layout)
    except CheckpointError as err:
        assert err.message


def test_an_integer_model_refuses_values_beyond_its_dtype() -> None:
    spec = InputSpec(shape=(3,), dtype=torch.int32)
    with pytest.raises(RequestError, match=r"outside torch\.int32's range"):
        decode_request({"instances": [[1, 2, 2**40]]}, "application/json", spec)
