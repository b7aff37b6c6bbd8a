"""Checkpoint files: detect the layout, read the weights safely, align keys, save atomically."""

from serving.checkpoints.keys import KeyAlignment, align_keys, fingerprint, shape_map
from serving.checkpoints.layout import Layout, detect_layout
from serving.checkpoints.reader import CheckpointContents, read_checkpoint
from serving.checkpoints.saver import prune_checkpoints, save_checkpoint, unwrap_model
from serving.files import atomic_write

__all__ = [
    "CheckpointContents",
    "KeyAlignment",
    "Layout",
    "align_keys",
    "atomic_write",
    "detect_layout",
    "fingerprint",
    "prune_checkpoints",
    "read_checkpoint",
    "save_checkpoint",
    "shape_map",
    "unwrap_model",
]
