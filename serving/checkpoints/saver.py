"""The training side: save checkpoints that a watcher can never see half-written."""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from serving.checkpoints.keys import fingerprint, shape_map
from serving.files import atomic_write

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
METADATA_KEY = "ckptserve"
EPOCH_FILE = re.compile(r"^model_epoch_(\d+)\.(pth|pt)$")


def unwrap_model(model: nn.Module) -> nn.Module:
    """Strip DistributedDataParallel / DataParallel and torch.compile wrappers."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model


def architecture_path(model: nn.Module) -> str:
    """The ``module:Class`` string that imports this model's class."""
    cls = type(unwrap_model(model))
    return f"{cls.__module__}:{cls.__qualname__}"


def is_main_process() -> bool:
    """True unless torch.distributed runs and this process is not rank 0 (seed 9.7)."""
    dist = torch.distributed
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def save_checkpoint(
    directory_or_path: str | os.PathLike[str],
    model: nn.Module,
    *,
    optimizer: torch.optim.Optimizer | None = None,
    epoch: int | None = None,
    loss: float | torch.Tensor | None = None,
    metrics: Mapping[str, float] | None = None,
    extra: Mapping[str, Any] | None = None,
    keep_last: int | None = None,
) -> Path | None:
    """Write a training checkpoint atomically; return its path (None on ranks other than 0).

    A directory gets ``model_epoch_<N>.pth`` (or ``model_final.pth`` without an epoch); a file path is
    used as given. The dict follows the PyTorch tutorial's layout (``model_state_dict``,
    ``optimizer_state_dict``, ``epoch``, ``loss``) plus a ``ckptserve`` entry with the architecture's
    class path and fingerprint, so any plain ``torch.load`` reads it too.
    """
    if not is_main_process():
        return None
    target = Path(directory_or_path)
    if target.is_dir() or (not target.suffix and not target.exists()):
        target.mkdir(parents=True, exist_ok=True)
        target = target / (f"model_epoch_{epoch}.pth" if epoch is not None else "model_final.pth")
    inner = unwrap_model(model)
    state_dict = inner.state_dict()
    payload: dict[str, Any] = {
        "model_state_dict": state_dict,
        "epoch": epoch,
        "loss": float(loss.detach().item()) if isinstance(loss, torch.Tensor) else loss,
        "metrics": {k: float(v) for k, v in (metrics or {}).items()},
        METADATA_KEY: {
            "format_version": FORMAT_VERSION,
            "architecture": architecture_path(inner),
            "fingerprint": fingerprint(shape_map(state_dict)),
            "saved_at": time.time(),
            "torch_version": str(torch.__version__),
        },
    }
    if optimizer is not None:
        payload["optimizer_state_dict"] = optimizer.state_dict()
    if extra:
        clash = set(extra) & set(payload)
        if clash:
            raise ValueError(f"extra must not override the checkpoint's own entries: {sorted(clash)}")
        payload.update(extra)
    atomic_write(target, lambda fh: torch.save(payload, fh))
    log.info("saved checkpoint %s (epoch=%s, loss=%s)", target, epoch, payload["loss"])
    if keep_last is not None:
        prune_checkpoints(target.parent, keep_last)
    return target


def prune_checkpoints(directory: str | os.PathLike[str], keep_last: int) -> list[Path]:
    """Delete all but the ``keep_last`` highest-epoch ``model_epoch_<N>.pth`` files; return the deleted."""
    if keep_last < 1:
        raise ValueError(f"keep_last must be at least 1, got {keep_last}")
    numbered = sorted(
        ((int(m.group(1)), p) for p in Path(directory).iterdir() if (m := EPOCH_FILE.match(p.name))),
        reverse=True,
    )
    doomed = [p for _, p in numbered[keep_last:]]
    for path in doomed:
        path.unlink(missing_ok=True)
    return doomed
