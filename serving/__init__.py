"""ckptserve: serve PyTorch models straight from what training writes."""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# The public surface, imported on first use: `python -m serving.torchserve.gateway` and the CLI's light
# commands start without paying for torch.
_EXPORTS = {
    "CheckpointInfo": "serving.loader",
    "checkpoint_info": "serving.loader",
    "load_model": "serving.loader",
    "save_checkpoint": "serving.checkpoints",
    "CkptServeError": "serving.errors",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'serving' has no attribute {name!r}")
