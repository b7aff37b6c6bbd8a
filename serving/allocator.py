"""Give a worker's freed heap back to the kernel after large request bodies (glibc; a no-op elsewhere)."""

from __future__ import annotations

import ctypes
import sys

# TorchServe's worker reads each body through a growing bytearray (ts.protocol.otf_message_handler):
# megabyte bodies leave the glibc heap fragmented, and without a trim it keeps those pages for good.
LARGE_BATCH_BYTES = 1 << 20
_libc = ctypes.CDLL(None) if sys.platform.startswith("linux") else None
_malloc_trim = getattr(_libc, "malloc_trim", None)


def trim() -> None:
    """Return the heap's free pages to the kernel (costs about a millisecond per 100 MB of heap)."""
    if _malloc_trim is not None:
        _malloc_trim(0)
