"""The data plane hands a large batch's freed memory back to the kernel, and leaves small batches alone."""

from __future__ import annotations

import gc
import json
import sys
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


def test_a_refused_body_is_freed_with_its_batch_not_at_the_next_garbage_collection() -> None:
    # An error's traceback holds the decoder's frames, and they the body: a reply that kept it would
    # keep megabytes alive in a reference cycle (measured: ~145 MB in one worker after 144 bodies).
    service = InferenceService(
        lambda: nullcontext(nn.Flatten()),
        input_spec=InputSpec(shape=(4,)),
        postprocess=PostProcess(),
        model_name="m",
    )
    body = bytearray(b" " * LARGE_BATCH_BYTES)
    gc.disable()
    try:
        before = sys.getrefcount(body)
        replies, _ = service.infer([(body, "application/json")])
        assert replies[0].status == 413
        assert sys.getrefcount(body) == before
    finally:
        gc.enable()
