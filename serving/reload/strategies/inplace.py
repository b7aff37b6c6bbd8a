"""Strategy "inplace": copy the new weights into the live tensors; no second model is ever built."""

from __future__ import annotations

import logging
import time

import torch

from serving.checkpoints.keys import shape_map
from serving.checkpoints.layout import detect_layout
from serving.checkpoints.reader import read_checkpoint
from serving.loader import checkpoint_info, make_info
from serving.reload.strategies.base import Replacement, Strategy
from serving.reload.strategies.shadow import Shadow

log = logging.getLogger(__name__)


class InPlace(Strategy):
    name = "inplace"

    def apply(self, replacement: Replacement) -> None:
        if not detect_layout(replacement.path).copyable:  # a file that brings its module: swap it whole
            Shadow().apply(replacement)
            return
        started = time.perf_counter()
        slot, spec = replacement.slot, replacement.spec
        live = slot.model
        contents = read_checkpoint(
            replacement.path,
            expected=shape_map(live.state_dict()),
            state_dict_key=spec.state_dict_key,
            safe_globals=spec.safe_globals,
        )
        old = checkpoint_info(live)
        info = make_info(contents, live, None, torch.device(old.device), None, replacement.sha256, 0.0)
        slot.copy_in(contents, info)
        log.debug("in-place copy of %s took %.2fs", replacement.path, time.perf_counter() - started)
