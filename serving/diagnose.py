"""Why a forward pass failed, in config terms: the input dtype the model wants, the ids it can take."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def input_dtype_hint(forward: Callable[[torch.Tensor], object], sample: torch.Tensor) -> str | None:
    """The ``handler.input.dtype`` to set when the model runs on the other kind of input, else None.

    Called after a forward on ``sample`` failed: one more forward, on zeros of the other kind (integer
    ids for float input, float32 for integer input), tells a dtype mismatch from any other failure.
    """
    wanted = torch.float32 if not sample.is_floating_point() else torch.int64
    try:
        with torch.inference_mode():
            forward(torch.zeros(sample.shape, dtype=wanted, device=sample.device))
    except Exception:
        return None
    kind = "integer ids (an nn.Embedding takes int64)" if wanted == torch.int64 else "floating-point values"
    return (
        f"The model takes {kind}, not {_dtype_name(sample.dtype)}: set handler.input.dtype: "
        f"{_dtype_name(wanted)} in model-config.yaml."
    )


def index_range_hint(model: nn.Module, inputs: torch.Tensor, exc: Exception) -> str | None:
    """For an id past an embedding's vocabulary: the vocabulary size(s) and the largest id sent."""
    if not isinstance(exc, IndexError) or inputs.is_floating_point() or inputs.numel() == 0:
        return None
    sizes = {
        name or "embedding": m.num_embeddings
        for name, m in model.named_modules()
        if isinstance(m, nn.Embedding)
    }
    if not sizes:
        return None
    vocab = ", ".join(f"{name} has {size}" for name, size in sizes.items())
    return (
        f"Ids must be at least 0 and below the vocabulary size ({vocab}); this input holds ids from "
        f"{int(inputs.min())} to {int(inputs.max())}. Check that the tokenizer matches the model, and "
        f"that each instance is one sequence of ids of shape {tuple(inputs.shape[1:])}."
    )
