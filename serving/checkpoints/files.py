"""File helpers of the checkpoint readers: open only regular files, describe without quoting, small JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from serving.errors import (
    CorruptCheckpointError,
)
from serving.files import open_regular

_MAX_JSON_BYTES = 64 << 20  # a sharded index of the largest models is a few MB


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
