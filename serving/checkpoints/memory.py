"""Copy memory-mapped weights into private memory on the target device, one tensor at a time.

Why copy at all: weights left memory-mapped would crash the worker (SIGBUS) or change under it the
moment training overwrites the file in place, as a plain ``torch.save`` to the same name does. Why
one tensor at a time, handing each source page back to the kernel after its copy: so peak memory
stays near one copy of the weights instead of two.
"""

from __future__ import annotations

import ctypes
import logging
import mmap
import sys
from collections.abc import Mapping

import torch
from torch import nn

log = logging.getLogger(__name__)

_MADV_DONTNEED = 4  # Linux: drop the pages; an unmodified private file mapping re-reads them on access
_libc = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


def materialize(
    tensors: Mapping[str, torch.Tensor],
    dtypes: Mapping[str, torch.dtype],
    device: torch.device,
    *,
    release_source: bool,
) -> dict[str, torch.Tensor]:
    """Private, contiguous copies of ``tensors`` on ``device``, cast to ``dtypes[name]`` where given.

    Tensors that share storage in the checkpoint (tied weights) share it in the result too.
    ``release_source`` says the sources are pages of a private file mapping (``torch.load(mmap=True)``)
    that may be dropped after copying; never set it for anonymous memory.
    """
    copies: dict[tuple[object, ...], torch.Tensor] = {}
    out: dict[str, torch.Tensor] = {}
    for name, source in tensors.items():
        if not torch.is_tensor(source):  # extra_state objects pass through
            out[name] = source
            continue
        key = (source.untyped_storage().data_ptr(), source.storage_offset(), source.shape, source.stride())
        if key not in copies:
            copy = torch.empty(source.shape, dtype=dtypes.get(name, source.dtype), device=device)
            copy.copy_(source)
            if release_source and source.device.type == "cpu":
                release_pages(source)
            copies[key] = copy
        out[name] = copies[key]
    return out


def privatize(module: nn.Module) -> None:
    """Give every parameter and buffer of ``module`` its own memory (after a memory-mapped load)."""
    copies: dict[int, torch.Tensor] = {}
    for tensor in (*module.parameters(), *module.buffers()):
        ptr = tensor.data_ptr()
        if ptr not in copies:
            copies[ptr] = tensor.data.clone()
        tensor.data = copies[ptr]


def release_pages(tensor: torch.Tensor) -> None:
    """Tell the kernel the whole pages under ``tensor`` (a private file mapping) are not needed now."""
    if _libc is None or tensor.numel() == 0:
        return
    start = tensor.data_ptr()
    end = start + tensor.numel() * tensor.element_size()
    first = -(-start // mmap.PAGESIZE) * mmap.PAGESIZE  # only pages wholly inside this tensor
    last = end // mmap.PAGESIZE * mmap.PAGESIZE
    if last > first and _libc.madvise(ctypes.c_void_p(first), ctypes.c_size_t(last - first), _MADV_DONTNEED):
        log.debug(
            "madvise failed with errno %d; memory is released when the file is closed", ctypes.get_errno()
        )
