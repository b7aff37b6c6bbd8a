"""Post-processing: a model's (n, ...) outputs for one request -> its named outputs (raw, softmax, top-k)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from serving.codecs.base import NamedOutputs
from serving.codecs.config import PostProcess
from serving.errors import CkptServeError, ConfigError

TOPK_INDICES = "topk_indices"
TOPK_SCORES = "topk_scores"
TOPK_LABELS = "topk_labels"  # only with labels configured


def postprocess(
    outputs: torch.Tensor,
    n: int,
    post: PostProcess,
    ranked: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> NamedOutputs:
    """The outputs of a request of ``n`` instances, named: ``post.output_name``, or the top-k three.

    ``ranked``: this request's (scores, indices) for top-k, when the caller ranked a whole batch at once.
    """
    outputs = outputs.detach().cpu()
    if outputs.ndim == 0 or outputs.shape[0] != n:
        raise CkptServeError(
            f"the model returned shape {tuple(outputs.shape)} for {n} instances; expected ({n}, ...)",
            hint="the model's forward must keep the batch dimension first",
        )
    if post.kind != "raw" and outputs.ndim != 2:
        raise ConfigError(
            f"post-processing {post.kind!r} needs (n, classes) outputs; the model gave {list(outputs.shape)}",
            hint="set the handler's post-processing to 'raw' for this model",
        )
    values = outputs if post.kind == "raw" or ranked is not None else outputs.float().softmax(dim=-1)
    if post.kind != "topk":
        return {post.output_name: values}
    # sorted, highest first
    scores, indices = ranked if ranked is not None else values.topk(min(post.k, values.shape[-1]), dim=-1)
    named: NamedOutputs = {TOPK_INDICES: indices, TOPK_SCORES: scores}
    if post.labels:
        labels = post.labels
        flat = [labels[i] if i < len(labels) else str(i) for i in indices.reshape(-1).tolist()]
        named[TOPK_LABELS] = np.array(flat, dtype=object).reshape(tuple(indices.shape))
    return named


def rank_batch(outputs: torch.Tensor, post: PostProcess) -> tuple[torch.Tensor, torch.Tensor] | None:
    """A whole batch's top-k (scores, indices), for ``postprocess``'s ``ranked``; None unless top-k applies.

    One softmax and top-k for the batch, not one per request (a fixed cost per call).
    """
    if post.kind != "topk" or outputs.ndim != 2 or not outputs.is_floating_point():
        return None
    scores, indices = outputs.softmax(dim=-1).topk(min(post.k, outputs.shape[-1]), dim=-1)
    return scores, indices


def ranking_rows(outputs: NamedOutputs) -> list[list[dict[str, Any]]] | None:
    """A top-k ranking as rows of {"index", "label", "score"}, as row formats answer it; None otherwise."""
    if TOPK_INDICES not in outputs:
        return None
    indices = outputs[TOPK_INDICES].tolist()
    labels = outputs.get(TOPK_LABELS)
    names = labels.tolist() if labels is not None else [[str(i) for i in row] for row in indices]
    return [
        [{"index": i, "label": label, "score": s} for i, label, s in zip(row_i, row_l, row_s, strict=True)]
        for row_i, row_l, row_s in zip(indices, names, outputs[TOPK_SCORES].tolist(), strict=True)
    ]


def single(outputs: NamedOutputs) -> torch.Tensor:
    """The one output of raw or softmax post-processing."""
    (value,) = outputs.values()
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"expected one tensor output, got {type(value).__name__}")
    return value
