"""JSON and npy codecs, post-processing and labels where a changed line went unnoticed."""

from __future__ import annotations

import importlib
import io
import json
import locale
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import serving.codecs
from serving.codecs import InputSpec, PostProcess, decode_request, encode_response, load_labels
from serving.codecs.base import DecodedRequest, ModelRef, NamedOutputs
from serving.codecs.npy import NpyCodec
from serving.codecs.oip_v2 import OipV2Codec
from serving.codecs.postprocess import (
    TOPK_INDICES,
    TOPK_LABELS,
    TOPK_SCORES,
    postprocess,
    rank_batch,
    ranking_rows,
    single,
)
from serving.errors import CkptServeError, ConfigError, PayloadTooLargeError, RequestError


def _refusal(body: Any, spec: InputSpec) -> RequestError:
    with pytest.raises(RequestError) as info:
        decode_request(body, "application/json", spec)
    return info.value


# --- what a bad request is told: the part of the body it quotes, and how much of it -------------------


def _v2(**inp: Any) -> dict[str, Any]:
    return {"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [1.0, 2.0], **inp}]}


@pytest.mark.parametrize(
    "body, message",
    [
        (
            {"inputs": "a" * 100},  # quoted up to 80 characters
            "'inputs' must be a non-empty list of OIP v2 input objects; found " + "a" * 80,
        ),
        ({"inputs": [{"name": "pixels", "shape": [1, 2]}]}, "input 'pixels' lacks ['datatype', 'data']"),
        (_v2(data="1.0, 2.0"), "input 'x' has 'data' of type str; expected a list"),
        ({"instances": "1.0, 2.0"}, "'instances' is a str; expected a list"),
        ({"instances": [[1.0, 2.0, 3.0]]}, "instance 0 has shape (3,); expected (2,)"),  # no "-1 = any size"
        ({"instances": [[]]}, "instance 0 has shape (0,); expected (2,)"),
    ],
    ids=["inputs", "lacks", "data", "instances", "shape", "empty instance"],
)
def test_refusals_quote_what_the_request_held(body: dict[str, Any], message: str) -> None:
    assert _refusal(body, InputSpec(shape=(2,))).message == message


def test_an_unknown_datatype_is_quoted_up_to_80_characters() -> None:
    error = _refusal(_v2(datatype="Z" * 100), InputSpec(shape=(2,)))
    assert error.message.startswith(f"input 'x' has datatype '{'Z' * 80}'; this numeric model accepts BOOL")


def test_the_413_for_a_large_body_states_the_limit_formula_and_what_to_do() -> None:
    spec = InputSpec(shape=(3, 5), max_instances=7)
    with pytest.raises(PayloadTooLargeError) as info:
        decode_request(b" " * 200_000, "application/json", spec)
    assert info.value.message.endswith("(max_instances x elements x 64 + 64 KiB)")
    assert info.value.hint == "send fewer instances per request, as compact JSON or npy"


# --- OIP v2 answers: requested outputs, dtypes OIP cannot name -------------------------------------


def _v2_request(outputs: tuple[str, ...] | None = None) -> DecodedRequest:
    return DecodedRequest(torch.zeros(1, 2), "v2", outputs=outputs)


def test_asking_for_an_output_the_model_lacks_says_which_exist() -> None:
    with pytest.raises(RequestError) as info:
        OipV2Codec().encode({"output__0": torch.zeros(1, 2)}, _v2_request(("probs",)), ModelRef("m"))
    assert info.value.message == "requested outputs ['probs'] do not exist; this model has ['output__0']"
    assert info.value.hint == "ask for existing outputs, or leave 'outputs' out to get all"


def test_an_output_dtype_oip_cannot_name_is_answered_as_fp32() -> None:
    value = torch.tensor([[0.5, -2.0]]).to(torch.float8_e4m3fn)
    body, _ = OipV2Codec().encode({"output__0": value}, _v2_request(), ModelRef("m"))
    (output,) = json.loads(body)["outputs"]
    assert output == {"name": "output__0", "shape": [1, 2], "datatype": "FP32", "data": [0.5, -2.0]}


# --- npy answers keep the output's dtype; only bfloat16 (which npy lacks) widens to float32 ----------


@pytest.mark.parametrize(
    "dtype, saved", [(torch.bfloat16, np.float32), (torch.float64, np.float64), (torch.int64, np.int64)]
)
def test_npy_answers_keep_the_output_dtype_except_bfloat16(dtype: torch.dtype, saved: type) -> None:
    value = torch.tensor([[1.5, -2.0]]).to(dtype) if dtype.is_floating_point else torch.tensor([[3, -4]])
    body, _ = NpyCodec().encode({"output__0": value}, DecodedRequest(value, "npy"), ModelRef("m"))
    array = np.load(io.BytesIO(body), allow_pickle=False)
    assert array.dtype == saved and array.tolist() == value.tolist()


# --- post-processing -----------------------------------------------------------------------------------


def test_raw_outputs_of_any_rank_but_zero_are_passed_through() -> None:
    raw = PostProcess()
    for value in (torch.tensor([1.0, 2.0]), torch.arange(12.0).reshape(2, 2, 3)):
        out = postprocess(value, 2, raw)["output__0"]
        assert isinstance(out, torch.Tensor) and torch.equal(out, value)
    with pytest.raises(CkptServeError) as info:
        postprocess(torch.tensor(1.0), 1, raw)
    assert info.value.message == "the model returned shape () for 1 instances; expected (1, ...)"
    assert info.value.hint == "the model's forward must keep the batch dimension first"


def test_softmax_of_outputs_that_are_not_n_by_classes_says_to_use_raw() -> None:
    with pytest.raises(ConfigError) as info:
        postprocess(torch.zeros(2, 2, 3), 2, PostProcess(kind="softmax"))
    assert info.value.message == (
        "post-processing 'softmax' needs (n, classes) outputs; the model gave [2, 2, 3]"
    )
    assert info.value.hint == "set the handler's post-processing to 'raw' for this model"


def test_topk_labels_are_text_objects_kept_exactly_and_indices_past_the_labels_are_numbers() -> None:
    post = PostProcess(kind="topk", k=3, labels=("cat\x00", "dog"))
    named = postprocess(torch.tensor([[3.0, 2.0, 1.0]]), 1, post)
    labels = named[TOPK_LABELS]
    assert isinstance(labels, np.ndarray) and labels.dtype == object  # OIP BYTES: object arrays of str
    assert labels.tolist() == [["cat\x00", "dog", "2"]]


def test_a_batch_is_ranked_over_its_classes_with_k_capped_by_the_class_count() -> None:
    logits = torch.tensor([[0.0, 1.0, 2.0, 3.0, 4.0], [4.0, 3.0, 2.0, 1.0, 0.0]])
    ranked = rank_batch(logits, PostProcess(kind="topk", k=3))
    assert ranked is not None and ranked[1].tolist() == [[4, 3, 2], [0, 1, 2]]
    ranked = rank_batch(logits[:, :2], PostProcess(kind="topk", k=3))
    assert ranked is not None and ranked[1].tolist() == [[1, 0], [0, 1]]


def test_the_reply_answers_the_ranking_the_caller_computed_for_the_batch() -> None:
    request = DecodedRequest(torch.zeros(1, 4), "v1")
    ranked = (torch.tensor([[0.75, 0.25]]), torch.tensor([[2, 0]]))
    body, _ = encode_response(
        torch.zeros(1, 4), request, model_name="m", post=PostProcess(kind="topk", k=2), ranked=ranked
    )
    first, second = {"index": 2, "label": "2", "score": 0.75}, {"index": 0, "label": "0", "score": 0.25}
    assert json.loads(body) == {"predictions": [[first, second]]}


@pytest.mark.parametrize(
    "indices, scores",
    [([[1, 0]], [[0.5]]), ([[1, 0], [0, 1]], [[0.5, 0.25]])],
    ids=["a row shorter", "a row missing"],
)
def test_a_ranking_whose_parts_disagree_is_refused_not_cut_short(
    indices: list[list[int]], scores: list[list[float]]
) -> None:
    outputs: NamedOutputs = {TOPK_INDICES: torch.tensor(indices), TOPK_SCORES: torch.tensor(scores)}
    with pytest.raises(ValueError, match="zip"):
        ranking_rows(outputs)


def test_a_text_output_where_one_tensor_is_expected_is_a_type_error() -> None:
    with pytest.raises(TypeError) as info:
        single({"output__0": np.array(["cat"], dtype=object)})
    assert str(info.value) == "expected one tensor output, got ndarray"


# --- labels files ----------------------------------------------------------------------------------


@pytest.fixture
def ascii_locale() -> Iterator[None]:
    """The C locale, whose text encoding is ASCII: what a bare container without LANG gives."""
    before = locale.setlocale(locale.LC_CTYPE)
    locale.setlocale(locale.LC_CTYPE, "C")
    try:
        yield
    finally:
        locale.setlocale(locale.LC_CTYPE, before)


@pytest.mark.usefixtures("ascii_locale")
def test_labels_files_are_read_as_utf8_whatever_the_locale(tmp_path: Path) -> None:
    path = tmp_path / "index_to_name.json"
    path.write_bytes(json.dumps(["émeu", "Küken"], ensure_ascii=False).encode("utf-8"))
    assert load_labels(path) == ("émeu", "Küken")


@pytest.mark.parametrize(
    "doc, message",
    [
        ({k: k for k in "abcdefg"}, "has a key that is not an integer index: ['a', 'b', 'c', 'd', 'e']"),
        (
            {str(i): str(i) for i in range(13) if i != 5},
            "has indices [0, 1, 2, 3, 4, 6, 7, 8, 9, 10]; expected 0..11, once each",
        ),
    ],
    ids=["first 5 keys", "first 10 indices"],
)
def test_bad_labels_are_quoted_in_part(tmp_path: Path, doc: dict[str, str], message: str) -> None:
    path = tmp_path / "index_to_name.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(ConfigError) as info:
        load_labels(path)
    assert info.value.message == f"labels file {path} {message}"


# --- the package's lazy names ------------------------------------------------------------------------


def test_every_exported_name_is_its_module_s_object_and_others_are_attribute_errors() -> None:
    for name in serving.codecs.__all__:
        module = importlib.import_module(serving.codecs._EXPORTS[name])
        assert getattr(serving.codecs, name) is getattr(module, name)
    with pytest.raises(AttributeError) as info:
        _ = serving.codecs.nope
    assert str(info.value) == "module 'serving.codecs' has no attribute 'nope'"


# --- found by the mutation run: booleans for a 64-bit integer model were a 500 ---------------------


@pytest.mark.parametrize("dtype", [torch.int64, torch.uint64, torch.int8])
def test_booleans_for_an_integer_model_are_zeros_and_ones(dtype: torch.dtype) -> None:
    """numpy raised OverflowError comparing a bool array with 2**63 (the int64 range check): a 500."""
    spec = InputSpec(shape=(3,), dtype=dtype)
    buffer = io.BytesIO()
    np.save(buffer, np.array([[True, False, True]]))
    bodies = (({"instances": [[True, False, True]]}, None), (buffer.getvalue(), "application/x-npy"))
    for body, media in bodies:
        decoded = decode_request(body, media, spec).instances
        assert decoded.dtype == dtype and decoded.tolist() == [[1, 0, 1]]


# --- the cast to the model's dtype -------------------------------------------------------------------


def test_the_largest_uint64_reaches_a_uint64_model() -> None:
    """numpy holds 2**64 - 1 from JSON as ulonglong, a type torch.from_numpy refuses: it is re-viewed."""
    spec = InputSpec(shape=(2,), dtype=torch.uint64)
    decoded = decode_request({"instances": [[2**64 - 1, 2**63]]}, None, spec)
    assert decoded.instances.dtype == torch.uint64 and decoded.instances.tolist() == [[2**64 - 1, 2**63]]


def test_a_float16_model_gets_each_value_rounded_once_to_the_nearest() -> None:
    """Just above the midpoint of 1 and the next float16: numpy rounds up; float64 -> float32 -> float16
    (torch's cast) lands on the midpoint first, then ties to even, down to 1."""
    above_midpoint = 1 + 2**-11 + 2**-40
    for allow_nonfinite in (False, True):
        spec = InputSpec(shape=(1,), dtype=torch.float16, allow_nonfinite=allow_nonfinite)
        assert decode_request([[above_midpoint]], None, spec).instances.tolist() == [[1 + 2**-10]]


def test_a_float_beyond_the_model_dtype_is_refused_without_a_numpy_warning() -> None:
    """A per-request RuntimeWarning ("overflow encountered in cast") would fill the worker's log."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        error = _refusal({"instances": [[1e300]]}, InputSpec(shape=(1,)))
    assert error.message.startswith("instance 0 holds NaN or Infinity")


# --- second pass: survivors the first full run had counted killed --------------------------------------


def test_integers_numpy_can_only_hold_as_floats_are_named_by_their_numpy_kind() -> None:
    """1 and 2**64 - 1 are each an integer, but no numpy integer type holds both: numpy makes them float64."""
    error = _refusal(_v2(datatype="INT64", data=[1, 2**64 - 1]), InputSpec(shape=(2,), dtype=torch.int64))
    assert error.message == "input 'x' holds values of numpy kind 'f'; expected INT64 elements"


def test_a_json_type_with_several_parameters_is_json() -> None:
    decoded = decode_request(b"[[1.0]]", "application/json; charset=utf-8; q=1", InputSpec(shape=(1,)))
    assert decoded.instances.tolist() == [[1.0]]


def test_an_object_without_inputs_or_instances_lists_its_first_10_keys() -> None:
    keys = [f"k{i:02d}" for i in range(12)]
    error = _refusal(dict.fromkeys(keys, 0), InputSpec(shape=(1,)))
    assert error.message.endswith(f"found {keys[:10]}")


def test_the_v2_codec_refuses_a_body_it_did_not_match() -> None:
    with pytest.raises(TypeError) as info:
        OipV2Codec().decode([[1.0]], InputSpec(shape=(1,)))
    assert str(info.value) == "OipV2Codec decodes only what it matched: a JSON object"
