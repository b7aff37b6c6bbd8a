"""File helpers every layer shares: open only regular files, write atomically, hash, size, tail a log."""

from __future__ import annotations

import hashlib
import os
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, BinaryIO

from serving.errors import CheckpointError, CheckpointNotFoundError, NotACheckpointError


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


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[bytes]], object]) -> Path:
    """Write through a hidden temp file in the same directory, fsync, then rename into place.

    Readers see either the old file or the complete new one, never a partial write; the temp name
    starts with a dot and ends in ``.tmp`` so watchers skip it.
    """
    path = Path(path)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        # mkstemp creates 0600; give the file the permissions a plain open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_name, 0o666 & ~umask)
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)
    return path


def _fsync_directory(directory: Path) -> None:
    # Makes the rename itself durable; not every filesystem allows opening a directory.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def sha256_of(path: str | Path, chunk: int = 4 << 20) -> str:
    """sha256 of a file, or of a directory's files (names and contents, in sorted order)."""
    path = Path(path)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    digest = hashlib.sha256()
    for file in files:
        if path.is_dir():
            digest.update(str(file.relative_to(path)).encode() + b"\0")
        with open_regular(file) as fh:  # a FIFO swapped in after the scan would block forever
            while block := fh.read(chunk):
                digest.update(block)
    return digest.hexdigest()


def size_of(path: str | Path) -> int:
    """Bytes of a file, or of a directory's files together."""
    path = Path(path)
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


def tail(path: Path, lines: int) -> list[str] | None:
    """The last ``lines`` lines of a log, Java stack frames left out; None when it cannot be read."""
    try:
        content = path.read_text(errors="replace").rstrip().splitlines()
    except OSError:
        return None
    # Java stack frames would push the one line that says what went wrong out of view.
    return [line for line in content if not line.lstrip().startswith("at ")][-lines:]
