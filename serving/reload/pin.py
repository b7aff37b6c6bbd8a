"""The pin file: the checkpoint policy ``pinned`` serves; a bad pin is reported, never fatal."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from serving.reload.candidates import PIN_FILE, resolves_inside

_MAX_PIN_BYTES = 4096  # one file name and a newline
_IGNORED = "it is ignored, the configured pinned: applies (`ckptserve pin DIR NAME` writes a valid pin)."


@dataclass(frozen=True)
class Pin:
    """What ``<watch_dir>/.pin`` says: a checkpoint name, or why it cannot be used (never both)."""

    name: str | None = None
    problem: str | None = None
    signature: tuple[int, int, int] | None = None  # (size, mtime_ns, inode): a new pin is a new report


def read_pin_file(directory: Path) -> Pin:
    """The pin in ``directory``; a missing pin is ``Pin()``, an unusable one carries its problem.

    The messages describe the pin (size, what is wrong) and quote a name only once it is a valid
    file name: the pin may be a link to a secret, and its bytes must not reach describe or logs.
    """
    path = directory / PIN_FILE
    try:
        st = path.stat()
    except OSError:
        return Pin()
    signature = (st.st_size, st.st_mtime_ns, st.st_ino)
    where = f"{str(path)!r} ({st.st_size} bytes)"

    def bad(what: str) -> Pin:
        return Pin(problem=f"{where} {what}; {_IGNORED}", signature=signature)

    if not resolves_inside(path, directory.resolve()) or not path.is_file():
        return bad("is not a regular file inside the watch dir")
    if st.st_size > _MAX_PIN_BYTES:
        return bad("is too large for a pin (one file name)")
    try:
        name = path.read_bytes().decode("utf-8").strip()
    except OSError:
        return bad("cannot be read")
    except UnicodeDecodeError:
        return bad("is not UTF-8 text")
    if not name:
        return Pin()
    if not is_plain_name(name):
        return bad("does not hold one file name of the watch dir (one line, no '/')")
    return Pin(name=name, signature=signature)


def is_plain_name(name: str) -> bool:
    """One entry of the watch dir: one line, no path separators, no control characters."""
    return (
        name not in (".", "..")
        and len(name) <= 255
        and not any(c in name for c in "/\\")
        and all(c.isprintable() for c in name)
    )


def read_pin(directory: Path) -> str | None:
    """The checkpoint name ``ckptserve pin`` wrote into ``directory/.pin``; None if none is usable."""
    return read_pin_file(directory).name
