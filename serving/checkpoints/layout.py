"""Tell a checkpoint's layout from its content (never from its file name)."""

from __future__ import annotations

import enum
import json
import os
import struct
import zipfile
from pathlib import Path
from typing import BinaryIO

from serving.errors import (
    CheckpointNotFoundError,
    CorruptCheckpointError,
    EmptyCheckpointError,
    NotACheckpointError,
)
from serving.files import open_regular

# The first bytes of a pickle written by torch.save's legacy (pre-1.6, non-zip) format: protocol 2.
_LEGACY_PICKLE_MAGIC = b"\x80\x02"
_ZIP_MAGIC = b"PK\x03\x04"
_SAFETENSORS_MAX_HEADER = 100 * 1024 * 1024
_MAX_JSON_BYTES = 64 << 20  # a sharded index of the largest models is a few MB
_MAX_CODE_FILE_BYTES = 64 << 20  # one inflated TorchScript code/ file; real ones are kilobytes


class Layout(str, enum.Enum):
    """How the weights are stored on disk."""

    TORCH_SAVE = "torch_save"  # torch.save zip: state dict, training checkpoint, Lightning or whole module
    TORCH_SAVE_LEGACY = "torch_save_legacy"  # torch.save(..., _use_new_zipfile_serialization=False)
    SAFETENSORS = "safetensors"
    SHARDED_SAFETENSORS = "sharded_safetensors"  # a directory with *.index.json and shards
    DCP = "dcp"  # torch.distributed.checkpoint directory (.metadata + *.distcp)
    TORCHSCRIPT = "torchscript"
    EXPORTED_PROGRAM = "exported_program"  # torch.export.save archive (.pt2)

    @property
    def self_describing(self) -> bool:
        """Whether the file carries its own architecture (no Python class needed)."""
        return self in (Layout.TORCHSCRIPT, Layout.EXPORTED_PROGRAM)


def detect_layout(path: str | Path) -> Layout:
    """Return the layout of the checkpoint at ``path`` or raise a typed error saying why it is none."""
    path = Path(path)
    if not path.exists():
        raise CheckpointNotFoundError(
            f"No checkpoint at {str(path)!r}.",
            hint="Check the path, and that the server can see that volume.",
        )
    if path.is_dir():
        return _detect_directory(path)
    with open_regular(path) as fh:
        size = os.fstat(fh.fileno()).st_size
        if size == 0:
            raise EmptyCheckpointError(
                f"The checkpoint {str(path)!r} is empty (0 bytes).",
                hint="A save may still be in progress; write checkpoints atomically "
                "(serving.save_checkpoint).",
            )
        head = fh.read(16)
        if head.startswith(_ZIP_MAGIC):
            return _detect_zip(path, fh, size)
    if _looks_like_safetensors(path, head, size):
        return Layout.SAFETENSORS
    if head.startswith(_LEGACY_PICKLE_MAGIC):
        return Layout.TORCH_SAVE_LEGACY
    # Never quote the bytes: the file may be a link to a secret (only its size is shown).
    raise NotACheckpointError(
        f"{str(path)!r} ({size} bytes) is not a checkpoint ckptserve can read: it starts like none "
        "of the layouts it knows.",
        hint="Expected a torch.save file, safetensors, TorchScript, torch.export .pt2, "
        "or a DCP / sharded-safetensors directory.",
    )


def _detect_zip(path: Path, fh: BinaryIO, size: int) -> Layout:
    try:
        with zipfile.ZipFile(fh) as archive:
            entries = archive.infolist()
    except Exception as exc:  # untrusted bytes: zipfile also raises NotImplementedError, ValueError, ...
        raise CorruptCheckpointError(
            f"{str(path)!r} ({describe_file(path)}) starts like a torch.save/TorchScript archive but "
            f"cannot be read as a zip ({type(exc).__name__}); it is truncated, still being written, "
            "or damaged.",
            hint="Wait for the writer to finish, or save again (atomically: serving.save_checkpoint).",
        ) from exc
    # torch writes weights and pickles stored (uncompressed) and reads tensors by their offset in the
    # file: a compressed one would be read as garbage weights (mmap) or inflate without bound (a zip
    # bomb). Only TorchScript's code/ files are deflated, and they are small. A size the file cannot
    # hold is a lie. Checked before torch reads a byte.
    if any(_odd_entry(e, size) for e in entries):
        raise CorruptCheckpointError(
            f"{str(path)!r} ({size} bytes) is a zip archive with compressed weights, or entry sizes "
            "the file cannot hold; torch.save and torch.jit.save write neither.",
            hint="Save the checkpoint again with torch.save (do not re-zip it).",
        )
    # torch archives hold everything under one top folder: "<name>/data.pkl", "<name>/code/...".
    inner = {e.filename.split("/", 1)[1] for e in entries if "/" in e.filename}
    if "archive_format" in inner or "models/model.json" in inner:
        return Layout.EXPORTED_PROGRAM
    if any(name.startswith("code/") for name in inner) or "constants.pkl" in inner:
        return Layout.TORCHSCRIPT
    if "data.pkl" in inner:
        return Layout.TORCH_SAVE
    raise NotACheckpointError(
        f"{str(path)!r} is a zip archive but not one torch wrote (no data.pkl, code/ or model.json inside).",
        hint="Point ckptserve at the checkpoint itself, not at an archive that contains it.",
    )


def _odd_entry(entry: zipfile.ZipInfo, size: int) -> bool:
    if entry.header_offset + entry.compress_size > size:
        return True
    if entry.compress_type == zipfile.ZIP_STORED:
        return entry.file_size != entry.compress_size
    code = entry.filename.split("/", 1)[-1].startswith("code/")
    return not code or entry.file_size > _MAX_CODE_FILE_BYTES


def _looks_like_safetensors(path: Path, head: bytes, size: int) -> bool:
    # safetensors: an 8-byte little-endian header length, then a JSON object of that length.
    if len(head) < 9 or head[8:9] != b"{":
        return False
    (header_len,) = struct.unpack("<Q", head[:8])
    if header_len > min(size - 8, _SAFETENSORS_MAX_HEADER):
        if header_len < _SAFETENSORS_MAX_HEADER:
            raise CorruptCheckpointError(
                f"{str(path)!r} is a safetensors file whose header claims {header_len} bytes, "
                f"but the file has only {size}: it is truncated or still being written.",
                hint="Wait for the writer to finish, or save it again.",
            )
        return False
    return True


def _detect_directory(path: Path) -> Layout:
    if (path / ".metadata").is_file():
        return Layout.DCP
    if index_files(path):
        return Layout.SHARDED_SAFETENSORS
    found = sorted(p.name for p in path.iterdir())[:8]
    raise NotACheckpointError(
        f"The directory {str(path)!r} is no checkpoint ckptserve knows (found: {found}).",
        hint="A directory checkpoint needs a DCP '.metadata' file or a safetensors '*.index.json'; "
        "for a single file, pass the file's path.",
    )


def index_files(directory: Path) -> list[Path]:
    """The ``*.index.json`` regular files of a sharded-safetensors directory, sorted."""
    return sorted(p for p in directory.glob("*.index.json") if p.is_file())


def describe_file(path: Path) -> str:
    """Size and kind of ``path`` for messages: never its content (it may be a link to a secret)."""
    try:
        return "a directory" if path.is_dir() else f"{path.stat().st_size} bytes"
    except OSError:
        return "unreadable"


def read_json(path: Path) -> dict:
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
