"""A safetensors file: an 8-byte header length, a JSON header, then the tensors' bytes (no pickle)."""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from serving.checkpoints.layouts.base import CheckpointContents, Layout, Probe, ReadOptions, corrupt_error
from serving.errors import CorruptCheckpointError
from serving.files import open_regular

MAX_HEADER_BYTES = 100 * 1024 * 1024  # the safetensors library's own bound


class Safetensors(Layout):
    name = "safetensors"

    def claims(self, head: bytes) -> bool:
        return len(head) >= 9 and head[8:9] == b"{"

    def detect(self, probe: Probe) -> bool:
        if probe.archive is not None or not self.claims(probe.head):
            return False
        header_len = _header_len(probe.head)
        if header_len > min(probe.size - 8, MAX_HEADER_BYTES):
            if header_len < MAX_HEADER_BYTES:
                raise CorruptCheckpointError(
                    f"{str(probe.path)!r} is a safetensors file whose header claims {header_len} bytes, "
                    f"but the file has only {probe.size}: it is truncated or still being written.",
                    hint="Wait for the writer to finish, or save it again.",
                )
            return False
        return True

    def is_complete(self, path: Path) -> bool:
        # Whole when the header accounts for every byte of the file.
        try:
            with open_regular(path) as fh:
                head = fh.read(8)
                size = os.fstat(fh.fileno()).st_size
                header_len = _header_len(head) if len(head) == 8 else 0
                if not 0 < header_len < min(size, MAX_HEADER_BYTES):
                    return False
                header = json.loads(fh.read(header_len))
                ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"]
                return bool(8 + header_len + max(ends, default=0) == size)
        except Exception:  # any surprise (deep JSON nesting, a FIFO) means "not whole"
            return False

    def read(self, path: Path, options: ReadOptions) -> CheckpointContents:
        tensors, meta = read_safetensors_file(path)
        return CheckpointContents(path, self, "state_dict", state_dict=tensors, metadata=meta)

    def metadata(self, path: Path, *, safe_globals: Iterable[str] = ()) -> dict[str, Any]:
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="pt") as handle:
                return {k: _number_or_text(v) for k, v in (handle.metadata() or {}).items()}
        except (SafetensorError, OSError, RuntimeError, ValueError) as exc:
            raise corrupt_error(path, exc) from None


def read_safetensors_file(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Every tensor of one safetensors file (on the CPU) and its string metadata."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            meta = dict(handle.metadata() or {})
            return {name: handle.get_tensor(name) for name in handle.keys()}, meta  # noqa: SIM118
    except (SafetensorError, OSError, RuntimeError, ValueError) as exc:
        raise corrupt_error(path, exc) from None


def _header_len(head: bytes) -> int:
    return int(struct.unpack("<Q", head[:8])[0])


def _number_or_text(text: str) -> Any:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text
