"""What a checkpoint holds, without building a model: the data behind ``ckptserve inspect``."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from serving.checkpoints.keys import fingerprint, shape_map, strip_wrappers
from serving.checkpoints.reader import read_checkpoint
from serving.files import sha256_of, size_of


def summarize(
    path: str | Path,
    *,
    trust_pickle: bool = False,
    state_dict_key: str | None = None,
    safe_globals: Iterable[str] = (),
    with_sha256: bool = True,
) -> dict[str, Any]:
    """Layout, tensor and parameter counts, bytes, dtypes, saved devices, metadata and fingerprint."""
    contents = read_checkpoint(
        path, state_dict_key=state_dict_key, trust_pickle=trust_pickle, safe_globals=safe_globals
    )
    weights = contents.state_dict if contents.state_dict is not None else contents.module.state_dict()  # type: ignore[union-attr]
    tensors = [t for t in weights.values() if torch.is_tensor(t)]
    metadata = dict(contents.metadata)
    saved_devices = metadata.pop("saved_devices", [])
    return {
        "path": str(Path(path).resolve()),
        "layout": contents.layout.name,
        "kind": contents.kind,
        "state_dict_key": contents.source_key,
        "size_bytes": size_of(path),
        "sha256": sha256_of(path) if with_sha256 else None,
        "tensors": len(tensors),
        "parameters": sum(t.numel() for t in tensors),
        "tensor_bytes": sum(t.numel() * t.element_size() for t in tensors),
        "dtypes": dict(Counter(str(t.dtype).removeprefix("torch.") for t in tensors).most_common()),
        "saved_devices": saved_devices,
        "fingerprint": fingerprint({strip_wrappers(k): s for k, s in shape_map(weights).items()}),
        "epoch": metadata.get("epoch"),
        "loss": metadata.get("loss"),
        "metadata": metadata,
    }
