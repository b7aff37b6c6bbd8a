"""Find complete checkpoints in a watched directory: skip temp names, wait for writers to finish."""

from __future__ import annotations

import contextlib
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from serving.checkpoints.layout import detect_layout, directory_layout, is_complete
from serving.checkpoints.saver import METADATA_KEY

log = logging.getLogger(__name__)

# Names writers use while a file is incomplete (torch.save to a temp name, rsync, browsers, editors).
_TEMP_SUFFIXES = (".tmp", ".temp", ".part", ".partial", ".incomplete", ".crdownload", ".lock", ".swp", "~")
_NUMBER_IN_NAME = re.compile(r"(?:epoch|ep|step|iter)[_=\-]?(\d+)", re.IGNORECASE)
_LAST_NUMBER = re.compile(r"(\d+)(?!.*\d)")
PIN_FILE = ".pin"  # hidden, so never a candidate itself: holds the pinned checkpoint's name
NO_INDEX = "a directory without a DCP .metadata or a *.index.json: not a checkpoint, or still being written"
OUTSIDE = "resolves outside the watch dir (a symlink); set follow_symlinks: true to serve such files"


def is_temporary(name: str) -> bool:
    """Hidden and temp names are never candidates: writers use them for unfinished files."""
    return name.startswith((".", "~", "#")) or name.endswith(_TEMP_SUFFIXES)


@dataclass(frozen=True)
class Signature:
    """What changes when a file (or any file of a checkpoint directory) is written."""

    parts: tuple[tuple[str, int, int, int], ...]  # (relative name, size, mtime_ns, inode)

    @property
    def mtime_ns(self) -> int:
        return max((p[2] for p in self.parts), default=0)


@dataclass
class Candidate:
    """A complete checkpoint in the watched directory, with what the policies need to rank it."""

    path: Path
    signature: Signature
    epoch: int | None = None  # from the checkpoint's metadata, else from its file name
    metadata: dict[str, Any] = field(default_factory=dict)
    sha256: str | None = None  # filled in lazily, when the candidate is about to be loaded

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def written_at(self) -> float:
        """When training wrote it: save_checkpoint's ``saved_at``, else the file's modification time."""
        saved_at = (self.metadata.get(METADATA_KEY) or {}).get("saved_at")
        if isinstance(saved_at, (int, float)) and not isinstance(saved_at, bool) and math.isfinite(saved_at):
            return float(saved_at)
        return self.signature.mtime_ns / 1e9


def _file_signature(path: Path, relative: str) -> tuple[tuple[str, int, int, int], int]:
    st = path.stat()
    return (relative, st.st_size, st.st_mtime_ns, st.st_ino), st.st_ctime_ns


class Scanner:
    """Lists the complete checkpoints of one directory, poll after poll.

    A file counts once its own structure says it is whole (a torch.save zip with its central
    directory, a safetensors file whose header accounts for every byte), once it arrived by rename
    after its last write (ctime later than mtime: ``mv``, rsync), or once it is unchanged across two
    polls (anything else written in place). Directories (DCP, sharded safetensors) count once their
    index is present and nothing in them changed across two polls.
    """

    def __init__(self, directory: Path, *, follow_symlinks: bool = False) -> None:
        self.directory = directory
        self.follow_symlinks = follow_symlinks
        self.skipped: dict[str, str] = {}  # name -> why the last scan did not count it
        self._previous: dict[str, Signature] = {}
        self._metadata: dict[tuple[str, Signature], tuple[int | None, dict[str, Any]]] = {}

    def scan(self) -> list[Candidate]:
        current: dict[str, Signature] = {}
        complete: list[Candidate] = []
        self.skipped = {}
        try:
            entries = sorted(self.directory.iterdir())
            root = self.directory.resolve()
        except OSError as exc:
            log.warning("cannot list %s: %s", self.directory, exc)
            return []
        for entry in entries:
            if is_temporary(entry.name):
                continue
            if not self.follow_symlinks and not resolves_inside(entry, root):
                # Checked before any byte is read: a link to /etc/shadow is never opened.
                self.skipped[entry.name] = OUTSIDE
                continue
            try:
                signature, atomic = self._signature(entry)
            except OSError:
                continue  # deleted or renamed while we looked
            if signature is None:
                if entry.is_dir():
                    self.skipped[entry.name] = NO_INDEX
                continue
            current[entry.name] = signature
            if not any(size for _, size, _, _ in signature.parts):
                self.skipped[entry.name] = "empty (0 bytes): a save may be starting"
                continue
            stable = self._previous.get(entry.name) == signature
            # A file's structure is read only at first sight of a signature: next poll it is stable.
            if not (atomic or stable or (entry.is_file() and is_complete(entry))):
                self.skipped[entry.name] = "still being written (waiting for it to be whole or unchanged)"
                continue
            epoch, metadata = self._describe(entry, signature)
            complete.append(Candidate(entry, signature, epoch, metadata))
        self._previous = current
        self._metadata = {k: v for k, v in self._metadata.items() if current.get(k[0]) == k[1]}
        return complete

    def _signature(self, entry: Path) -> tuple[Signature | None, bool]:
        if entry.is_file():
            part, ctime_ns = _file_signature(entry, entry.name)
            return Signature((part,)), ctime_ns > part[2]
        if entry.is_dir() and directory_layout(entry) is not None:
            parts = tuple(
                _file_signature(p, str(p.relative_to(entry)))[0]
                for p in sorted(entry.rglob("*"))
                if p.is_file()
            )
            return Signature(parts), False
        return None, False

    def _describe(self, entry: Path, signature: Signature) -> tuple[int | None, dict[str, Any]]:
        key = (entry.name, signature)
        if key not in self._metadata:
            metadata: dict[str, Any] = {}
            with contextlib.suppress(Exception):  # optional; the validation gate gives the real reason
                metadata = detect_layout(entry).metadata(entry)
            epoch = metadata.get("epoch")
            if not isinstance(epoch, int) or isinstance(epoch, bool):
                epoch = number_in_name(entry.name)
            self._metadata[key] = (epoch, metadata)
        return self._metadata[key]


def resolves_inside(entry: Path, root: Path) -> bool:
    """True when ``entry`` (and, for a directory, every file in it) resolves inside ``root``."""
    try:
        if not entry.resolve().is_relative_to(root):
            return False
        return not entry.is_dir() or all(p.resolve().is_relative_to(root) for p in entry.rglob("*"))
    except (OSError, RuntimeError):  # a symlink loop, or deleted while we looked
        return False


def number_in_name(name: str) -> int | None:
    """The epoch/step number a file name carries: model_epoch_12.pth -> 12, ckpt-300.pt -> 300."""
    match = _NUMBER_IN_NAME.search(name) or _LAST_NUMBER.search(name)
    return int(match.group(1)) if match else None
