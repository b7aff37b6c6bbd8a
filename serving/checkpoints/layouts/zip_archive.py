"""The zip container torch.save, TorchScript and torch.export write: its checks, shared by those layouts."""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import BinaryIO

from serving.checkpoints.files import describe_file
from serving.checkpoints.layouts.base import Layout
from serving.errors import CorruptCheckpointError
from serving.files import open_regular

ZIP_MAGIC = b"PK\x03\x04"
_MAX_CODE_FILE_BYTES = 64 << 20  # one inflated TorchScript code/ file; real ones are kilobytes


class TorchArchive(Layout):
    """A layout stored in torch's zip archive; subclasses tell theirs apart by the entries inside."""

    def claims(self, head: bytes) -> bool:
        return head.startswith(ZIP_MAGIC)

    def is_complete(self, path: Path) -> bool:
        # A zip ends with its central directory: a partial write has none.
        try:
            with open_regular(path) as fh, zipfile.ZipFile(fh) as archive:
                return bool(archive.namelist())
        except Exception:  # any surprise (a FIFO, damaged bytes) means "not whole"
            return False


def archive_names(path: Path, fh: BinaryIO, size: int) -> frozenset[str]:
    """The entry names below torch's top folder ("<name>/data.pkl" -> "data.pkl"), checked before any read."""
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
    return frozenset(e.filename.split("/", 1)[1] for e in entries if "/" in e.filename)


def _odd_entry(entry: zipfile.ZipInfo, size: int) -> bool:
    if entry.header_offset + entry.compress_size > size:
        return True
    if entry.compress_type == zipfile.ZIP_STORED:
        return entry.file_size != entry.compress_size
    code = entry.filename.split("/", 1)[-1].startswith("code/")
    return not code or entry.file_size > _MAX_CODE_FILE_BYTES
