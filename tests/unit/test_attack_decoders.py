"""Attack on the request decoders: any JSON value in any field of an OIP v2 or KServe v1 document is a
typed 4xx with a message, never another exception (which the server answers with a 500)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from serving.codecs import InputSpec, decode_request
from serving.errors import CkptServeError
from tests.unit.test_properties import SPECS, json_values

FIELDS = ("name", "shape", "datatype", "data")
VALID = {"name": "input__0", "shape": [1, 1, 4, 4], "datatype": "FP32", "data": [0.0] * 16}


def answers_4xx(doc: Any, spec: InputSpec) -> None:
    try:
        decode_request(doc, "application/json", spec)
    except CkptServeError as err:
        assert 400 <= err.http_status < 500, err
        assert err.message and err.hint


@pytest.mark.parametrize("datatype", [["FP32"], {"FP32": 1}, [], {}])
def test_a_v2_datatype_that_is_not_a_string_is_a_request_error(datatype: Any) -> None:
    doc = {"inputs": [{**VALID, "datatype": datatype}]}
    with pytest.raises(CkptServeError) as info:
        decode_request(doc, "application/json", InputSpec(shape=(1, 4, 4)))
    assert info.value.http_status == 400 and "datatype" in info.value.message


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(field=st.sampled_from(FIELDS), value=json_values, spec=st.sampled_from(SPECS))
@example(field="datatype", value=["FP32"], spec=SPECS[0])
def test_any_json_value_in_any_v2_field(field: str, value: Any, spec: InputSpec) -> None:
    answers_4xx({"inputs": [{**VALID, field: value}]}, spec)


TOP_KEYS = st.sampled_from(["id", "outputs", "inputs", "instances"])


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(key=TOP_KEYS, value=json_values, spec=st.sampled_from(SPECS))
def test_any_json_value_in_any_top_level_key(key: str, value: Any, spec: InputSpec) -> None:
    doc: dict[str, Any] = {"inputs": [dict(VALID)]} if key in ("id", "outputs") else {}
    answers_4xx({**doc, key: value}, spec)


@pytest.mark.parametrize(
    "doc",
    [
        {"instances": [[[[10**30] * 4] * 4]]},
        {"inputs": [{**VALID, "datatype": "INT64", "data": [10**30] * 16}]},
        {"inputs": [{**VALID, "data": [-(2**64)] * 16}]},
    ],
    ids=["v1", "v2-int64", "v2-fp32"],
)
def test_an_integer_beyond_64_bits_is_named_not_called_a_shape_error(doc: Any) -> None:
    with pytest.raises(CkptServeError) as info:
        decode_request(doc, "application/json", InputSpec(shape=(1, 4, 4)))
    assert info.value.http_status == 400
    assert "(int)" in info.value.message and "shape" not in info.value.message, info.value.message
