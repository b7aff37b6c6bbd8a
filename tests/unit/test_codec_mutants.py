"""Request decoding where a changed line would go unnoticed: never unpickling, the max_instances boundary."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from serving.client.common import decode_answer
from serving.codecs import InputSpec, decode_request, load_labels
from serving.codecs.jsontext import dumps
from serving.codecs.kserve_v1 import KServeV1Codec
from serving.codecs.npy import NpyCodec
from serving.codecs.oip_v2 import OipV2Codec
from serving.codecs.registry import BODY_SLACK_BYTES, BYTES_PER_ELEMENT, max_body_bytes
from serving.errors import (
    CkptServeError,
    ConfigError,
    PayloadTooLargeError,
    RequestError,
    UnsupportedMediaTypeError,
)
from serving.torchserve.gateway.oip_gateway import _outputs
from serving.torchserve.gateway.signature import Signature, TensorSpec

SPEC = InputSpec(shape=(1, 2, 2), max_instances=2)


class _Trace:
    """Unpickling this object creates a directory: the trace that code in a request body ran."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return os.mkdir, (str(self.path),)


def _pickled_npy(trace: Path) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.array([_Trace(trace)], dtype=object), allow_pickle=True)
    return buffer.getvalue()


def test_the_pickled_body_is_armed(tmp_path: Path) -> None:
    """The control: with pickles allowed this body runs its code (else the tests below prove nothing)."""
    trace = tmp_path / "ran"
    np.load(io.BytesIO(_pickled_npy(trace)), allow_pickle=True)
    assert trace.is_dir()


@pytest.mark.parametrize(
    "content_type",
    [
        "application/x-npy",
        "application/octet-stream",
        None,
        "multipart/form-data",
        "application/json",  # npy magic is read as npy whatever the JSON type says
    ],
)
def test_a_pickled_request_body_is_never_unpickled(tmp_path: Path, content_type: str | None) -> None:
    trace = tmp_path / "ran"
    with pytest.raises(RequestError) as info:
        decode_request(_pickled_npy(trace), content_type, SPEC)
    assert not trace.exists(), "decoding the request ran code from its body"
    assert type(info.value) is RequestError and info.value.http_status == 400
    assert "cannot be read" in info.value.message and "no object arrays" in (info.value.hint or "")


@pytest.mark.parametrize("as_text", [False, True])
def test_no_decoder_unpickles_the_body_it_is_handed(tmp_path: Path, as_text: bool) -> None:
    """Each codec alone, on the raw bytes or on them as the JSON text a worker may hand over."""
    trace = tmp_path / "ran"
    body = _pickled_npy(trace)
    with pytest.raises(RequestError):
        NpyCodec().decode(body, SPEC)
    text = body.decode("latin-1")
    for doc in ({"instances": [text]}, [text]):
        with pytest.raises(RequestError):
            KServeV1Codec().decode(doc if as_text else json.loads(json.dumps(doc)), SPEC)
    oip = {"inputs": [{"name": "x", "shape": [1, 1, 2, 2], "datatype": "FP32", "data": [text]}]}
    with pytest.raises(RequestError):
        OipV2Codec().decode(oip, SPEC)
    assert not trace.exists()


def test_clients_never_unpickle_an_answer(tmp_path: Path) -> None:
    """A hostile or broken server's pickled npy answer is an error for the client, never code it runs."""
    trace = tmp_path / "ran"
    with pytest.raises(CkptServeError, match="cannot be read"):
        decode_answer(_pickled_npy(trace))
    tensor = TensorSpec("output__0", "FP32", (-1, 10))
    sig = Signature("digits", "1.0", TensorSpec("input__0", "FP32", (-1, 1, 2, 2)), (tensor,))
    with pytest.raises(CkptServeError, match="cannot be read"):
        _outputs(_pickled_npy(trace), sig)
    assert not trace.exists()


# --- max_instances: exactly the limit is served, one more is a 413 --------------------------------


def _bodies(n: int) -> list[tuple[Any, str]]:
    x = torch.arange(n * 4, dtype=torch.float32).reshape(n, 1, 2, 2)
    buffer = io.BytesIO()
    np.save(buffer, x.numpy())
    data = x.reshape(-1).tolist()
    oip = {"inputs": [{"name": "x", "shape": [n, 1, 2, 2], "datatype": "FP32", "data": data}]}
    return [
        (json.dumps({"instances": x.tolist()}).encode(), "application/json"),
        (x.tolist(), "application/json"),
        (json.dumps(oip).encode(), "application/json"),
        (buffer.getvalue(), "application/x-npy"),
    ]


@pytest.mark.parametrize("index", range(4), ids=["v1", "v1-list", "oip-v2", "npy"])
def test_exactly_max_instances_is_served_one_more_is_413(index: int) -> None:
    body, media = _bodies(SPEC.max_instances)[index]
    decoded = decode_request(body, media, SPEC)
    expected = torch.arange(8, dtype=torch.float32).reshape(2, 1, 2, 2)
    assert torch.equal(decoded.instances, expected)
    body, media = _bodies(SPEC.max_instances + 1)[index]
    with pytest.raises(PayloadTooLargeError) as info:
        decode_request(body, media, SPEC)
    assert info.value.http_status == 413
    assert "holds 3 instances" in info.value.message and "at most 2 per request" in info.value.message


def test_the_body_size_limit_is_max_instances_times_elements_plus_slack() -> None:
    spec = InputSpec(shape=(3, 5), max_instances=7)
    limit = 7 * 15 * BYTES_PER_ELEMENT + BODY_SLACK_BYTES
    assert (BYTES_PER_ELEMENT, BODY_SLACK_BYTES) == (64, 64 * 1024)
    assert max_body_bytes(spec) == limit
    assert max_body_bytes(InputSpec(shape=(3, -1))) is None
    at_limit = b"[" + b" " * (limit - 2) + b"]"  # a body of exactly the limit is parsed (and found empty)
    with pytest.raises(RequestError) as info:
        decode_request(at_limit, "application/json", spec)
    assert type(info.value) is RequestError and "zero instances" in info.value.message
    with pytest.raises(PayloadTooLargeError) as too_big:
        decode_request(at_limit + b" ", "application/json", spec)
    assert f"the body has {limit + 1} bytes" in too_big.value.message
    assert f"need at most {limit} bytes" in too_big.value.message


# --- class labels ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, message, hint",
    [
        ("{", "is not valid JSON", "fix the file"),
        ('{"zero": "cat"}', "has a key that is not an integer index: ['zero']", 'use keys "0", "1", ...'),
        (
            '{"0": "cat", "2": "dog"}',
            "has indices [0, 2]; expected 0..1, once each",
            "number the classes from 0",
        ),
        # "1" and "01" name one index twice: refused, whatever the labels are (no comparison of them)
        ('{"1": "a", "01": ["n", "b"], "0": "c"}', "has indices [0, 1, 1]", "number the classes from 0"),
        ("5", "holds a int; expected an object or a list", 'write {"0": "cat"'),
        ("[]", "is empty; expected one label per class", 'write {"0": "cat"'),
        ('["cat", 3]', "entry 1 is 3; expected a string", 'write {"0": "cat"'),
    ],
)
def test_bad_labels_files_say_what_is_wrong_and_what_to_write(
    tmp_path: Path, text: str, message: str, hint: str
) -> None:
    path = tmp_path / "index_to_name.json"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_labels(path)
    assert message in info.value.message and str(path) in info.value.message
    assert hint in (info.value.hint or "")


def test_labels_read_by_index_with_the_readable_name_last(tmp_path: Path) -> None:
    path = tmp_path / "index_to_name.json"
    path.write_text(json.dumps({"1": ["n02", "dog"], "0": ["n01", "tabby", "cat"], "2": "émeu"}))
    assert load_labels(path) == ("cat", "dog", "émeu")
    with pytest.raises(ConfigError) as info:
        load_labels(tmp_path / "absent.json")
    assert "cannot read labels file" in info.value.message and info.value.hint == "check the path"


# --- npy: any byte order and memory layout numpy.save writes -------------------------------------


@pytest.mark.parametrize("layout", ["big-endian", "fortran", "big-endian fortran"])
@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.float64, torch.bool])
def test_npy_in_any_byte_order_or_layout_decodes_to_the_same_values(layout: str, dtype: torch.dtype) -> None:
    values = np.arange(16).reshape(2, 2, 4) % (2 if dtype == torch.bool else 16)
    array = values.astype(str(dtype).removeprefix("torch."))
    if "big-endian" in layout:
        array = array.astype(array.dtype.newbyteorder(">"))
    if "fortran" in layout:
        array = np.asfortranarray(array)
    buffer = io.BytesIO()
    np.save(buffer, array)
    decoded = decode_request(buffer.getvalue(), "application/x-npy", InputSpec(shape=(2, 4), dtype=dtype))
    assert decoded.instances.dtype == dtype and decoded.instances.is_contiguous()
    assert decoded.instances.tolist() == values.astype(bool if dtype == torch.bool else int).tolist()


@pytest.mark.parametrize(
    "array, message, hint",
    [
        (np.array(["ab", "cd"]), "npy array has dtype <U2; expected a numeric one", "cast to float32"),
        (
            np.zeros((2, 3, 2, 2), np.float32),
            "npy array has shape (2, 3, 2, 2); expected one instance (1, 2, 2)",
            "reshape",
        ),
    ],
)
def test_npy_refusals_say_what_to_send(array: np.ndarray, message: str, hint: str) -> None:
    buffer = io.BytesIO()
    np.save(buffer, array)
    with pytest.raises(RequestError) as info:
        decode_request(buffer.getvalue(), "application/x-npy", SPEC)
    assert message in info.value.message and hint in (info.value.hint or "")
    with pytest.raises(RequestError) as info:
        NpyCodec().decode(b"{}", SPEC)
    assert "does not start with the npy magic" in info.value.message
    assert info.value.hint == "send the bytes numpy.save writes"


# --- checks every codec applies: what is refused, at which value, and what the client is told -----


def _refusal(body: Any, spec: InputSpec, media: str | None = "application/json") -> RequestError:
    with pytest.raises(RequestError) as info:
        decode_request(body, media, spec)
    return info.value


@pytest.mark.parametrize(
    "dtype, low, high",
    [(torch.int32, -(2**31), 2**31 - 1), (torch.uint8, 0, 255)],
)
def test_integer_inputs_are_taken_up_to_the_dtype_range_and_refused_past_it(
    dtype: torch.dtype, low: int, high: int
) -> None:
    spec = InputSpec(shape=(2,), dtype=dtype)
    assert decode_request({"instances": [[low, high]]}, None, spec).instances.tolist() == [[low, high]]
    for outside in ([low - 1, 0], [0, high + 1]):
        error = _refusal({"instances": [outside]}, spec)
        assert f"outside {dtype}'s range [{low}, {high}]" in error.message
        assert error.hint in ("send values the model's input dtype can hold", "use a wider datatype") or (
            "integers within 64 bits" in error.message
        )


def test_an_integer_model_refuses_fractions_and_nan_naming_the_instance() -> None:
    spec = InputSpec(shape=(2,), dtype=torch.int64)
    assert decode_request({"instances": [[1.0, -2.0]]}, None, spec).instances.tolist() == [[1, -2]]
    for bad in (0.5, float("nan"), float("inf")):
        error = _refusal({"instances": [[1.0, 2.0], [3.0, bad]]}, spec)
        assert error.message == "instance 1 holds non-integer values; this model expects torch.int64 inputs"
        assert error.hint == "send whole numbers"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_non_finite_inputs_are_refused_naming_the_instance_unless_allowed(dtype: torch.dtype) -> None:
    rows = [[1.0, 2.0], [3.0, 4.0], [5.0, float("nan")]]
    error = _refusal(rows, InputSpec(shape=(2,), dtype=dtype))
    assert error.message.startswith(f"instance 2 holds NaN or Infinity (or a number beyond {dtype}'s range)")
    assert "set allow_nonfinite" in (error.hint or "")
    allowed = decode_request(rows, None, InputSpec(shape=(2,), dtype=dtype, allow_nonfinite=True)).instances
    assert allowed.dtype == dtype and bool(allowed[2, 1].isnan()) and allowed[0].tolist() == [1.0, 2.0]


def test_a_float64_beyond_the_float32_range_is_refused_not_turned_into_infinity() -> None:
    error = _refusal({"instances": [[1.0, 1e300]]}, InputSpec(shape=(2,)))
    assert error.message.startswith("instance 0 holds NaN or Infinity")
    kept = decode_request({"instances": [[1.0, 1e300]]}, None, InputSpec(shape=(2,), dtype=torch.float64))
    assert kept.instances.tolist() == [[1.0, 1e300]]


@pytest.mark.parametrize(
    "instances, message, hint",
    [
        (
            [[[1, 2], [3]]],
            "instance 0 is ragged (nested lists of unequal length); expected (-1, 2) (-1 = any size)",
            "send {",
        ),
        (
            [[[1, 2]], [[1, 2, 3]]],
            "instance 1 has shape (1, 3); expected (-1, 2) (-1 = any size)",
            "each entry of",
        ),
        ([[[1, 2]], [[1, "x"]]], "instance 1 holds 'x' (str); expected numbers", "send JSON numbers"),
        ([[[1, 2]], [[1, None]]], "instance 1 holds None (NoneType); expected numbers", "send JSON numbers"),
        (
            [[[1, 2]], [[1, 2**64]]],
            f"instance 1 holds {2**64} (int); expected numbers (integers within 64 bits)",
            "send JSON",
        ),
        (
            [[[1, 2]], [[1, 2], [3, 4]]],
            "the instances differ in shape; expected all of one shape (-1, 2) (-1 = any size)",
            "-1 axes may vary",
        ),
        ([], "the request holds zero instances; expected at least one", "send {"),
    ],
)
def test_v1_refusals_name_the_first_bad_instance(instances: list[Any], message: str, hint: str) -> None:
    error = _refusal({"instances": instances}, InputSpec(shape=(-1, 2)))
    assert type(error) is RequestError and error.message == message and (error.hint or "").startswith(hint)


def test_the_largest_and_smallest_64_bit_integers_are_numbers() -> None:
    spec = InputSpec(shape=(2,), dtype=torch.int64)
    assert decode_request([[-(2**63), 5]], None, spec).instances.tolist() == [[-(2**63), 5]]
    for beyond in (2**64 - 1, 2**63, 1e19, 2.0**63, -(2.0**64)):  # numbers, but no int64 holds them
        error = _refusal([[1, 2], [beyond, 0]], spec)
        assert "outside torch.int64's range" in error.message, beyond
    assert decode_request([[1.0, 2.0**62]], None, spec).instances.tolist() == [[1, 2**62]]
    error = _refusal([[1, 2], [-(2**63) - 1, 0]], spec)
    assert "instance 1 holds" in error.message and "integers within 64 bits" in error.message


def test_the_413_says_to_split_the_request() -> None:
    with pytest.raises(PayloadTooLargeError) as info:
        decode_request([[1.0]] * 3, None, InputSpec(shape=(1,), max_instances=2))
    assert info.value.hint == "split the instances over several requests"


# --- the registry and JSON text: which bodies each type may carry, and what a bad one is told -------


@pytest.mark.parametrize(
    "media", ["application/json; charset=utf-8", "APPLICATION/JSON", "text/plain", "a/b+json"]
)
def test_json_media_types_with_parameters_or_in_capitals_are_json(media: str) -> None:
    decoded = decode_request(b'{"instances": [[1.0]]}', media, InputSpec(shape=(1,)))
    assert decoded.instances.tolist() == [[1.0]]


def test_a_foreign_media_type_is_a_415_that_lists_what_is_accepted() -> None:
    with pytest.raises(UnsupportedMediaTypeError) as info:
        decode_request(b'{"instances": [[1.0]]}', "image/png", InputSpec(shape=(1,)))
    assert info.value.http_status == 415
    assert info.value.message == (
        "content type 'image/png' is not supported; expected application/json (KServe v1 or OIP v2), "
        "application/x-npy or application/octet-stream"
    )
    assert info.value.hint == "send the tensor as JSON or as numpy.save bytes, with its content type"


@pytest.mark.parametrize(
    "body, media, message, hint",
    [
        (
            b'{"b": 1, "a": 2}',
            None,
            "the JSON object lacks 'instances' (KServe v1) or 'inputs' (OIP v2); found ['a', 'b']",
            "send {",
        ),
        (b"42", None, "the JSON body is a int; expected an object or a list of instances", "send {"),
        (None, None, "the request body is empty; expected JSON or npy", "send {"),
        (b"  ", "application/json", "the request body is empty; expected JSON or npy", "send {"),
        (b'{"a": }', None, "malformed JSON at line 1 column 7 (char 6): Expecting value", "send valid JSON"),
        (b"\xff\xfe{", None, "the body is neither npy nor JSON text", "send UTF-8 JSON"),
        (
            b"[" * 100_000,
            None,
            "the JSON nests too deeply; expected lists as deep as the instance shape",
            "send {",
        ),
    ],
)
def test_bodies_that_are_no_request_say_what_to_send(
    body: Any, media: str | None, message: str, hint: str
) -> None:
    error = _refusal(body, InputSpec(shape=(-1,)), media)  # any size: no byte limit before parsing
    assert type(error) is RequestError and error.message.startswith(message)
    assert (error.hint or "").startswith(hint)


def test_json_sent_as_a_form_is_a_415_that_names_the_content_type_to_use() -> None:
    with pytest.raises(UnsupportedMediaTypeError) as info:
        decode_request(b"", "application/x-www-form-urlencoded", InputSpec(shape=(1,)))
    assert "reads as form fields: no JSON or npy reached the model" in info.value.message
    assert info.value.hint == "send it with Content-Type: application/json (or application/x-npy)"


def test_non_finite_outputs_are_spelled_as_strings_in_json() -> None:
    assert json.loads(dumps({"x": [float("nan"), float("inf"), float("-inf"), 0.0, 2.5]})) == {
        "x": ["NaN", "Infinity", "-Infinity", 0.0, 2.5]
    }
    assert dumps([1.5, {"a": 1}]) == b'[1.5,{"a":1}]'  # compact: no spaces


def test_the_first_leaf_that_is_no_number_is_named_past_booleans_and_64_bit_integers() -> None:
    error = _refusal({"instances": [[True, -(2**63), 2**64 - 1, "x"]]}, InputSpec(shape=(4,)))
    assert error.message == "instance 0 holds 'x' (str); expected numbers"
