"""Torch dtypes by the names config files and describe() use, and their OIP datatypes."""

from __future__ import annotations

import torch

from serving.codecs.datatypes import TYPES

# "float32" -> torch.float32, for every dtype the OIP table names; config keys choose their subsets.
TORCH_DTYPES: dict[str, torch.dtype] = {t.torch: getattr(torch, t.torch) for t in TYPES.values() if t.torch}
OIP_OF_TORCH: dict[torch.dtype, str] = {TORCH_DTYPES[t.torch]: t.name for t in TYPES.values() if t.torch}


def torch_name(dtype: torch.dtype) -> str:
    """``torch.float32`` -> ``"float32"``: the name config files and describe() use."""
    return str(dtype).removeprefix("torch.")
