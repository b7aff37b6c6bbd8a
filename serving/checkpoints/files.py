"""File helpers of the checkpoint readers: open only regular files, describe without quoting, small JSON."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any, BinaryIO

from serving.errors import (
    CheckpointError,
    CheckpointNotFoundError,
    CorruptCheckpointError,
    NotACheckpointError,
)

_MAX_JSON_BYTES = 64 << 20  # a sharded index of the largest models is a few MB


def open_regular(path: Path) -> BinaryIO:
    """``path`` opened for reading if it is a regular file; a typed error otherwise.

    A FIFO would block the reader until someone writes to it (``open`` itself waits for a writer),
    a device never ends: neither is a checkpoint, and the check happens on the opened descriptor,
    so a file swapped for a FIFO after a directory scan is refused too.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except FileNotFoundError:
        raise CheckpointNotFoundError(f"No checkpoint at {str(path)!r}.") from None
    except OSError as exc:
        raise CheckpointError(
            f"Cannot open {str(path)!r} ({type(exc).__name__}).",
            hint="Check that the server's user may read it.",
        ) from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise NotACheckpointError(
            f"{str(path)!r} is not a regular file (a FIFO, socket or device): it is never read.",
            hint="Write checkpoints as regular files.",
        )
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def index_files(directory: Path) -> list[Path]:
    """The ``*.index.json`` regular files of a sharded-safetensors directory, sorted."""
    return sorted(p for p in directory.glob("*.index.json") if p.is_file())


def describe_file(path: Path) -> str:
    """Size and kind of ``path`` for messages: never its content (it may be a link to a secret)."""
    try:
        return "a directory" if path.is_dir() else f"{path.stat().st_size} bytes"
    except OSError:
        return "unreadable"


def read_json(path: Path) -> dict[str, Any]:
    """Read a small JSON side file (index, config) with a typed error on bad content."""
    try:
        with open_regular(path) as fh:
            data = json.loads(fh.read(_MAX_JSON_BYTES + 1)[:_MAX_JSON_BYTES].decode())
    except (OSError, ValueError, RecursionError) as exc:  # RecursionError: deeply nested arrays
        # The decoder's message may quote a byte of the file: name the failure only.
        raise CorruptCheckpointError(
            f"Cannot read {str(path)!r} ({describe_file(path)}) as a UTF-8 JSON object "
            f"({type(exc).__name__})."
        ) from None
    if not isinstance(data, dict):
        raise CorruptCheckpointError(f"{str(path)!r} should hold a JSON object, found {type(data).__name__}.")
    return data
