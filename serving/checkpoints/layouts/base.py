"""What every layout descriptor answers: is this path mine, is it whole, its weights, its metadata."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from serving.checkpoints.files import describe_file
from serving.errors import CorruptCheckpointError

ShapeMap = Mapping[str, tuple[int, ...]]
HEAD_BYTES = 16  # enough for every layout's magic: zip, pickle protocol 2, safetensors' length + "{"


@dataclass(frozen=True)
class Probe:
    """What detection reads of a path once, for every layout to look at."""

    path: Path
    is_dir: bool
    size: int = 0
    head: bytes = b""
    archive: frozenset[str] | None = None  # a zip's entry names below torch's top folder


@dataclass(frozen=True)
class ReadOptions:
    """How to read: what the architecture expects and what the user allowed."""

    expected: ShapeMap | None = None  # the architecture's key -> shape map: picks among state dicts
    state_dict_key: str | None = None
    trust_pickle: bool = False
    safe_globals: tuple[str, ...] = ()
    map_location: torch.device | str = "cpu"  # only self-describing layouts place their module


@dataclass
class CheckpointContents:
    """What a checkpoint holds, before it meets an architecture."""

    path: Path
    layout: Layout
    kind: str  # "state_dict", "training_checkpoint", "lightning", "pickled_module", "torchscript", ...
    state_dict: dict[str, Any] | None = None  # CPU tensors, possibly backed by an mmap of the file
    module: nn.Module | None = None  # for self-describing layouts and trusted pickles
    metadata: dict[str, Any] = field(default_factory=dict)
    source_key: str | None = None  # the dict entry that held the weights, for training checkpoints


class Layout(ABC):
    """One way weights are stored on disk. Register an instance in ``serving.checkpoints.layout``."""

    name: ClassVar[str]  # as describe, inspect and CheckpointInfo spell it
    directory: ClassVar[bool] = False  # a directory of files, not one file
    self_describing: ClassVar[bool] = False  # carries its own architecture (code): no Python class needed
    copyable: ClassVar[bool] = True  # reload_strategy inplace can copy its weights into the live tensors
    maps_file: ClassVar[bool] = False  # read tensors stay mapped on the file: drop their pages once copied
    places_module: ClassVar[bool] = False  # read() already put its module on map_location
    keeps_mode: ClassVar[bool] = False  # its module fixed its train/eval mode and refuses .eval()

    def claims(self, head: bytes) -> bool:
        """Whether a file starting with ``head`` is in this layout's container (magic bytes only)."""
        return False

    @abstractmethod
    def detect(self, probe: Probe) -> bool:
        """Whether ``probe`` is this layout (the registry asks in order; the first yes wins)."""

    def is_complete(self, path: Path) -> bool:
        """True when the file's own structure says it is whole; False when nothing can tell."""
        return False

    @abstractmethod
    def read(self, path: Path, options: ReadOptions) -> CheckpointContents:
        """The weights (CPU tensors, mmap where possible) or the module, with the metadata it carries."""

    def metadata(self, path: Path, *, safe_globals: Iterable[str] = ()) -> dict[str, Any]:
        """Epoch, loss, metrics... read cheaply, without the weights; {} when the layout carries none."""
        return {}

    def __repr__(self) -> str:
        return f"<layout {self.name}>"


def corrupt_error(path: Path, exc: BaseException) -> CorruptCheckpointError:
    """A reader failed on ``path``: describe the file and the failure, never its content."""
    # Readers' messages may quote bytes of the file ("invalid load key, 'x'"), and the file may be a
    # link to a secret.
    return CorruptCheckpointError(
        f"Cannot read {str(path)!r} ({describe_file(path)}, {_layout_name(path)}): the reader failed "
        f"({type(exc).__name__}). The file is truncated, still being written, or damaged.",
        hint="Wait for the writer to finish, or save it again (atomically: serving.save_checkpoint).",
    )


def _layout_name(path: Path) -> str:
    from serving.checkpoints.layout import detect_layout  # the registry imports every layout module

    try:
        return f"detected as {detect_layout(path).name}"
    except Exception:  # only a description: whatever the second look fails with
        return "of no known layout"
