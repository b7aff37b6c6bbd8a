"""The layout registry: tell a checkpoint's layout from its content (never from its file name).

Every caller (the loader, ``ckptserve inspect``, the watcher's scanner) asks these functions, and they
ask the descriptors in ``LAYOUTS``. A new layout is one file in ``serving/checkpoints/layouts/``
plus its line below.
"""

from __future__ import annotations

import os
from pathlib import Path

from serving.checkpoints.layouts.base import HEAD_BYTES, Layout, Probe
from serving.checkpoints.layouts.dcp import Dcp
from serving.checkpoints.layouts.exported_program import ExportedProgram
from serving.checkpoints.layouts.safetensors import Safetensors
from serving.checkpoints.layouts.sharded_safetensors import ShardedSafetensors
from serving.checkpoints.layouts.torch_save import TorchSave
from serving.checkpoints.layouts.torch_save_legacy import TorchSaveLegacy
from serving.checkpoints.layouts.torchscript import TorchScript
from serving.checkpoints.layouts.zip_archive import ZIP_MAGIC, archive_names
from serving.errors import CheckpointError, CheckpointNotFoundError, EmptyCheckpointError, NotACheckpointError
from serving.files import open_regular

# Asked in this order; the first that detects a path wins. torch's archives are told apart by their
# entries: an exported program or a TorchScript file also holds a data.pkl, so torch_save comes after.
LAYOUTS: tuple[Layout, ...] = (
    ExportedProgram(),
    TorchScript(),
    TorchSave(),
    Safetensors(),
    TorchSaveLegacy(),
    Dcp(),
    ShardedSafetensors(),
)
_BY_NAME = {layout.name: layout for layout in LAYOUTS}


def layout_named(name: str) -> Layout | None:
    """The registered layout called ``name`` (as CheckpointInfo.layout spells it), or None."""
    return _BY_NAME.get(name)


def detect_layout(path: str | Path) -> Layout:
    """Return the layout of the checkpoint at ``path`` or raise a typed error saying why it is none."""
    found = probe(Path(path))
    layout = next((layout for layout in LAYOUTS if layout.detect(found)), None)
    if layout is not None:
        return layout
    if found.is_dir:
        names = sorted(p.name for p in found.path.iterdir())[:8]
        raise NotACheckpointError(
            f"The directory {str(found.path)!r} is no checkpoint ckptserve knows (found: {names}).",
            hint="A directory checkpoint needs a DCP '.metadata' file or a safetensors '*.index.json'; "
            "for a single file, pass the file's path.",
        )
    if found.archive is not None:
        raise NotACheckpointError(
            f"{str(found.path)!r} is a zip archive but not one torch wrote (no data.pkl, code/ or "
            "model.json inside).",
            hint="Point ckptserve at the checkpoint itself, not at an archive that contains it.",
        )
    # Never quote the bytes: the file may be a link to a secret (only its size is shown).
    raise NotACheckpointError(
        f"{str(found.path)!r} ({found.size} bytes) is not a checkpoint ckptserve can read: it starts like "
        "none of the layouts it knows.",
        hint="Expected a torch.save file, safetensors, TorchScript, torch.export .pt2, "
        "or a DCP / sharded-safetensors directory.",
    )


def probe(path: Path) -> Probe:
    """What detection needs of ``path``, read once; a typed error if it is missing, empty or irregular."""
    if not path.exists():
        raise CheckpointNotFoundError(
            f"No checkpoint at {str(path)!r}.",
            hint="Check the path, and that the server can see that volume.",
        )
    if path.is_dir():
        return Probe(path, is_dir=True)
    with open_regular(path) as fh:
        size = os.fstat(fh.fileno()).st_size
        if size == 0:
            raise EmptyCheckpointError(
                f"The checkpoint {str(path)!r} is empty (0 bytes).",
                hint="A save may still be in progress; write checkpoints atomically "
                "(serving.save_checkpoint).",
            )
        head = fh.read(HEAD_BYTES)
        # The zip's directory is read from the descriptor already open: a file swapped since is not.
        archive = archive_names(path, fh, size) if head.startswith(ZIP_MAGIC) else None
    return Probe(path, is_dir=False, size=size, head=head, archive=archive)


def directory_layout(path: Path) -> Layout | None:
    """The layout of a checkpoint directory whose index is present, or None (never raises)."""
    found = Probe(path, is_dir=True)
    return next((layout for layout in LAYOUTS if layout.directory and layout.detect(found)), None)


def is_complete(path: Path) -> bool:
    """True when a file's own structure says it is whole, asked of the layout its first bytes claim.

    A zip (torch.save, TorchScript, torch.export) ends with its central directory; a safetensors
    header accounts for every byte. Layouts without such structure (legacy pickles) never say so.
    """
    try:
        with open_regular(path) as fh:
            head = fh.read(HEAD_BYTES)
    except (CheckpointError, OSError):
        return False
    claimant = next((layout for layout in LAYOUTS if layout.claims(head)), None)
    return claimant is not None and claimant.is_complete(path)


__all__ = ["LAYOUTS", "Layout", "detect_layout", "directory_layout", "is_complete", "layout_named", "probe"]
