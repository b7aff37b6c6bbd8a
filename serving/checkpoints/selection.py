"""Find the model's weights inside a training checkpoint dict, and keep its metadata."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

from serving.checkpoints.keys import align_keys, shape_map, shape_of
from serving.errors import AmbiguousCheckpointError, NotACheckpointError

# Entries that by convention hold the model's state dict, most common first.
MODEL_KEYS = ("model_state_dict", "state_dict", "model", "model_state", "net", "network", "module", "weights")
_OPTIMIZER_WORDS = ("optim", "scheduler", "scaler")
_MAX_METADATA_ITEMS = 64


def is_weights(value: Any) -> bool:
    """A mapping of names to tensors (or, from DCP metadata, to shapes) with at least one tensor."""
    if not isinstance(value, Mapping) or not value:
        return False
    shaped = sum(shape_of(v) is not None for v in value.values())
    return shaped > 0 and shaped >= len(value) // 2 and all(isinstance(k, str) for k in value)


def is_optimizer_like(key: str, value: Any) -> bool:
    """Optimizer, scheduler and grad-scaler state: never the model's weights."""
    if any(word in str(key).lower() for word in _OPTIMIZER_WORDS):
        return True
    return isinstance(value, Mapping) and "state" in value and "param_groups" in value


def select_state_dict(
    checkpoint: Mapping[str, Any],
    *,
    expected: Mapping[str, tuple[int, ...]] | None,
    state_dict_key: str | None,
    where: str,
) -> str | None:
    """Return the key of the entry that holds the model's weights, or None if ``checkpoint`` is one.

    A single conventional key wins; otherwise the architecture (``expected``) breaks the tie; if it
    cannot, the checkpoint is ambiguous and the user names the entry with ``state_dict_key``.
    """
    if state_dict_key is not None:
        if state_dict_key not in checkpoint or not is_weights(checkpoint[state_dict_key]):
            raise AmbiguousCheckpointError(
                f"state_dict_key {state_dict_key!r} names no state dict in {where!r}; "
                f"entries holding tensors: {_weight_entries(checkpoint) or 'none'}.",
                hint="Set state_dict_key to one of those entries.",
            )
        return state_dict_key
    candidates = [k for k, v in checkpoint.items() if is_weights(v) and not is_optimizer_like(k, v)]
    if not candidates:
        if any(shape_of(v) is not None for v in checkpoint.values()):
            return None
        raise NotACheckpointError(
            f"{where!r} holds a dict without tensors (keys: {sorted(map(str, checkpoint))[:10]}).",
            hint="Save model.state_dict(), or a dict with the state dict under 'model_state_dict'.",
        )
    known = [k for k in MODEL_KEYS if k in candidates]
    if len(known) == 1:
        return known[0]
    pool = known or candidates
    if len(pool) == 1:
        return pool[0]
    if expected is not None:
        fitting = [k for k in pool if align_keys(shape_map(checkpoint[k]), expected).exact]
        if len(fitting) == 1:
            return fitting[0]
    sizes = ", ".join(f"{k!r} ({len(checkpoint[k])} tensors)" for k in pool)
    raise AmbiguousCheckpointError(
        f"{where!r} holds several state dicts: {sizes}, and nothing says which one is the model.",
        hint="Set state_dict_key (CLI: --state-dict-key) to the entry to serve.",
    )


def _weight_entries(checkpoint: Mapping[str, Any]) -> list[str]:
    return [str(k) for k, v in checkpoint.items() if is_weights(v)]


def jsonable_metadata(entries: Mapping[str, Any]) -> dict[str, Any]:
    """The JSON-friendly scalars and small dicts of a checkpoint: epoch, loss, metrics, versions...

    Tensors of one element become numbers; weights, optimizer state and other objects are left out.
    """
    out: dict[str, Any] = {}
    for key, value in entries.items():
        if is_weights(value) or is_optimizer_like(str(key), value):
            continue
        converted = _jsonable(value, depth=2)
        if converted is not None:
            out[str(key)] = converted
    return out


def _jsonable(value: Any, depth: int) -> Any:
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value if not isinstance(value, str) or len(value) <= 1000 else None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, torch.Tensor):
        return _jsonable(value.item(), depth) if value.numel() == 1 else None
    if depth > 0 and isinstance(value, Mapping) and len(value) <= _MAX_METADATA_ITEMS:
        entries = {str(k): _jsonable(v, depth - 1) for k, v in value.items()}
        return {k: v for k, v in entries.items() if v is not None} or None
    if depth > 0 and isinstance(value, (list, tuple)) and len(value) <= _MAX_METADATA_ITEMS:
        items = [_jsonable(v, depth - 1) for v in value]
        return items if all(v is not None for v in items) else None
    return None
