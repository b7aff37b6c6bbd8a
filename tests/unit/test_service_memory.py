"""The data plane hands a large batch's freed memory back to the kernel, and leaves small batches alone."""

from __future__ import annotations

import json
from contextlib import nullcontext

import pytest
from torch import nn

from serving import allocator
from serving.allocator import LARGE_BATCH_BYTES
from serving.codecs import InputSpec, PostProcess
from serving.service import InferenceService


def test_a_large_batch_is_trimmed_and_a_small_one_is_not(monkeypatch: pytest.MonkeyPatch) -> None:
    trims: list[int] = []
    monkeypatch.setattr("serving.service.trim", lambda: trims.append(1))
    model = nn.Flatten()
    service = InferenceService(
        lambda: nullcontext(model),
        input_spec=InputSpec(shape=(4,)),
        postprocess=PostProcess(),
        model_name="m",
    )
    small = (json.dumps({"instances": [[0.0] * 4]}).encode(), "application/json")
    large = (b" " * LARGE_BATCH_BYTES, "application/json")  # refused (413), yet read into memory
    for batch, expected in (([small], 0), ([large], 1), ([small], 1), ([small, large], 2)):
        replies, _ = service.infer(batch)
        assert len(trims) == expected
    assert replies[0].status == 200


def test_glibc_malloc_trim_is_found() -> None:  # the server runs on Linux (glibc)
    assert allocator._malloc_trim is not None
    allocator.trim()
