"""Read a checkpoint of any layout into CPU tensors (mmap, weights_only) plus the metadata it carries."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from serving.checkpoints.layout import detect_layout
from serving.checkpoints.layouts.base import CheckpointContents, ReadOptions, ShapeMap, corrupt_error
from serving.errors import CheckpointError, CkptServeError, CorruptCheckpointError


def read_checkpoint(
    path: str | Path,
    *,
    expected: ShapeMap | None = None,
    state_dict_key: str | None = None,
    trust_pickle: bool = False,
    safe_globals: Iterable[str] = (),
    map_location: torch.device | str = "cpu",
) -> CheckpointContents:
    """Read ``path`` without touching what the model does not need.

    ``expected`` (the architecture's key -> shape map) decides between several state dicts in one
    checkpoint. Tensors of torch.save files stay memory-mapped: optimizer state is never read.
    ``map_location`` only matters for self-describing layouts; weights are read onto the CPU and
    moved by the loader.
    """
    path = Path(path)
    options = ReadOptions(expected, state_dict_key, trust_pickle, tuple(safe_globals), map_location)
    try:
        contents = detect_layout(path).read(path, options)
    except CkptServeError:
        raise
    except Exception as exc:  # hostile structure makes readers raise anything: a typed error, never bytes
        raise corrupt_error(path, exc) from None
    _check_dense(contents)
    return contents


def _check_dense(contents: CheckpointContents) -> None:
    # Sparse, meta and nested tensors unpickle fine but have no plain data to copy into a model;
    # a key that is not a string (weights_only allows ints and tuples) names no weight.
    for name, value in (contents.state_dict or {}).items():
        if not isinstance(name, str):
            raise CorruptCheckpointError(
                f"{str(contents.path)!r}: its state dict has a key of type {type(name).__name__}; "
                "a state dict's keys are weight names (strings).",
                hint="Save model.state_dict().",
            )
        if torch.is_tensor(value) and (value.layout is not torch.strided or value.is_meta or value.is_nested):
            kind = "a meta tensor (no data)" if value.is_meta else f"a {value.layout} tensor"
            raise CorruptCheckpointError(
                f"{str(contents.path)!r}: the entry {name[:100]!r} is {kind}; weights must be "
                "dense tensors with their data.",
                hint="Save model.state_dict() of a materialized model (to_dense() sparse weights).",
            )


def read_metadata(path: str | Path, *, safe_globals: Iterable[str] = ()) -> dict[str, Any]:
    """Epoch, loss, metrics and other scalars of a checkpoint, without its weights.

    Cheap: the file is memory-mapped and no tensor is touched. Layouts that carry none give {}.
    """
    path = Path(path)
    return detect_layout(path).metadata(path, safe_globals=safe_globals)


__all__ = ["CheckpointContents", "CheckpointError", "read_checkpoint", "read_metadata"]
