"""Read torch.distributed.checkpoint directories without handing their bytes to a plain unpickler.

DCP's own ``FileSystemReader.read_metadata`` unpickles ``.metadata`` with ``pickle.load``: a hostile
file runs code. Here ``.metadata`` goes through an unpickler that resolves only DCP's metadata
classes and the few torch values they hold; every data file it names must lie inside the
directory; and only tensors are read (DCP reads non-tensor entries with ``torch.load(weights_only=False)``).
"""

from __future__ import annotations

import importlib
import io
import os
import pickle
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from serving.checkpoints.pickle_size import MAX_PICKLE_BYTES
from serving.checkpoints.selection import MODEL_KEYS, is_optimizer_like, select_state_dict
from serving.errors import CorruptCheckpointError, UnsafeCheckpointError
from serving.files import open_regular

if TYPE_CHECKING:  # torch.distributed is imported only when a DCP checkpoint is read
    from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
    from torch.distributed.checkpoint.filesystem import FileSystemReader
    from torch.distributed.checkpoint.metadata import Metadata

_METADATA_NAMES = frozenset(
    {
        "Metadata",
        "TensorStorageMetadata",
        "TensorProperties",
        "ChunkStorageMetadata",
        "BytesStorageMetadata",
        "MetadataIndex",
        "StorageMeta",
        "_MEM_FORMAT_ENCODING",
    }
)
# module -> names the unpickler may resolve; torch's dtypes, layouts and memory formats are
# checked by type below instead of listed.
_ALLOWED: dict[str, frozenset[str]] = {
    "torch.distributed.checkpoint.metadata": _METADATA_NAMES,
    "torch.distributed.checkpoint.filesystem": frozenset({"_StorageInfo"}),
    "torch.serialization": frozenset({"_get_layout"}),
    "torch": frozenset({"Size"}),
    # StorageMeta.checkpoint_id is the path DCP saved to: building a path object touches no file.
    "pathlib": frozenset({"PosixPath", "PurePosixPath", "WindowsPath", "PureWindowsPath"}),
    "collections": frozenset({"OrderedDict"}),
}
_TORCH_VALUES = (torch.dtype, torch.layout, torch.memory_format)
# The allow-listed unpickler still builds what the pickle describes (tens of bytes of memory per
# byte of pickle): the same cap as a torch.save file's pickle. A DCP metadata entry is a few hundred
# bytes per tensor chunk, so real files are kilobytes to a few MB.
_MAX_METADATA_BYTES = MAX_PICKLE_BYTES


class _MetadataUnpickler(pickle.Unpickler):
    """Resolves DCP's metadata classes and nothing else: any other global is refused unread."""

    def find_class(self, module: str, name: str) -> Any:
        if name in _ALLOWED.get(module, ()):
            return getattr(importlib.import_module(module), name)
        if module == "torch" and isinstance(getattr(torch, name, None), _TORCH_VALUES):
            return getattr(torch, name)
        raise pickle.UnpicklingError("global outside the DCP metadata allowlist")


def read_dcp_metadata(directory: Path) -> Metadata:
    """The ``Metadata`` of a DCP directory, read with the allow-listed unpickler."""
    from torch.distributed.checkpoint.metadata import Metadata, StorageMeta

    path = directory / ".metadata"
    # Opened once and checked on the descriptor: a FIFO swapped in after layout detection never blocks.
    with open_regular(path) as fh:
        size = os.fstat(fh.fileno()).st_size
        if size > _MAX_METADATA_BYTES:
            raise CorruptCheckpointError(
                f"{str(path)!r} has {size} bytes, over the {_MAX_METADATA_BYTES >> 20} MiB that "
                "ckptserve unpickles; a DCP .metadata file of a model is kilobytes to a few MB.",
                hint="Point ckptserve at a DCP checkpoint directory written by torch.distributed.checkpoint.",
            )
        data = fh.read()
    try:
        metadata = _MetadataUnpickler(io.BytesIO(data)).load()
    except pickle.UnpicklingError as exc:
        if "allowlist" in str(exc):
            raise UnsafeCheckpointError(
                f"{str(path)!r} ({size} bytes) is not the metadata of a torch.distributed.checkpoint: "
                "it references Python objects outside DCP's metadata classes; loading it would run code.",
                hint="Write DCP checkpoints with torch.distributed.checkpoint.save; never copy "
                "untrusted .metadata files into the watched directory.",
            ) from None
        raise _unreadable(path, size, exc) from None
    except Exception as exc:  # damaged pickles raise assorted types
        raise _unreadable(path, size, exc) from None
    if not isinstance(metadata, Metadata) or not isinstance(metadata.state_dict_metadata, dict):
        raise CorruptCheckpointError(
            f"{str(path)!r} ({size} bytes) holds a {type(metadata).__name__}, not DCP metadata.",
            hint="Point ckptserve at a directory written by torch.distributed.checkpoint.save.",
        )
    if getattr(metadata, "storage_meta", None) is None:
        metadata.storage_meta = StorageMeta()
    _check_data_files(directory, metadata)
    return metadata


def _unreadable(path: Path, size: int, exc: BaseException) -> CorruptCheckpointError:
    # The exception text may quote bytes of the file: name its type only.
    return CorruptCheckpointError(
        f"{str(path)!r} ({size} bytes) cannot be read as DCP metadata ({type(exc).__name__}); "
        "it is truncated, still being written, or damaged.",
        hint="Wait for the writer to finish, or save it again with torch.distributed.checkpoint.save.",
    )


def _check_data_files(directory: Path, metadata: Any) -> None:
    # DCP opens directory / relative_path: a crafted "../" would read a file elsewhere.
    root = directory.resolve()
    storage = metadata.storage_data if isinstance(metadata.storage_data, dict) else {}
    for info in storage.values():
        relative = getattr(info, "relative_path", None)
        target = (directory / str(relative)).resolve() if isinstance(relative, str) else None
        if target is None or not target.is_relative_to(root) or not target.is_file():
            raise CorruptCheckpointError(
                f"The DCP metadata of {str(directory)!r} names a data file that is not a file inside "
                "that directory.",
                hint="Copy the whole DCP directory, as torch.distributed.checkpoint.save wrote it.",
            )


def _reader(directory: Path) -> FileSystemReader:
    from torch.distributed.checkpoint.filesystem import FileSystemReader

    class SafeReader(FileSystemReader):
        def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
            metadata = read_dcp_metadata(directory)
            assert metadata.storage_meta is not None  # read_dcp_metadata fills in a missing one
            metadata.storage_meta.load_id = self.load_id
            return metadata

    return SafeReader(str(directory))


def _planner() -> DefaultLoadPlanner:
    from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner

    class TensorsOnly(DefaultLoadPlanner):
        def load_bytes(self, read_item: Any, value: io.BytesIO) -> None:
            # DCP would torch.load(weights_only=False) these bytes; we never ask for them.
            raise UnsafeCheckpointError("ckptserve reads only tensors from a DCP checkpoint.")

    return TensorsOnly()


def read_dcp(
    path: Path, *, expected: Any, state_dict_key: str | None
) -> tuple[dict[str, torch.Tensor], str | None, int]:
    """(state dict, the top-level entry that held it or None, number of DCP entries)."""
    from torch.distributed.checkpoint.api import CheckpointException
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata
    from torch.distributed.checkpoint.state_dict_loader import load

    entries = read_dcp_metadata(path).state_dict_metadata
    tensors = {k: v for k, v in entries.items() if isinstance(v, TensorStorageMetadata)}
    shapes = {k: torch.Size(v.size) for k, v in tensors.items()}
    dtypes = {k: v.properties.dtype for k, v in tensors.items()}
    # DCP flattens {"model": sd, "optim": ...} into "model.<param>" keys: regroup by first segment.
    groups: dict[str, dict[str, torch.Size]] = {}
    for name, shape in shapes.items():
        head, _, rest = name.partition(".")
        groups.setdefault(head, {})[rest] = shape
    nested = {k: v for k, v in groups.items() if not is_optimizer_like(k, v)}
    # Saved as {"model": sd, ...} only if a model-like key (or the user's key) is at the top; else flat.
    key = None
    if state_dict_key or any(k in MODEL_KEYS for k in nested):
        key = select_state_dict(nested, expected=expected, state_dict_key=state_dict_key, where=str(path))
    if key is not None:
        wanted = {f"{key}.{n}": s for n, s in groups[key].items()}
    else:
        wanted = {n: s for n, s in shapes.items() if not is_optimizer_like(n.partition(".")[0], None)}
    prefix = f"{key}." if key else ""
    try:
        buffers = {n: torch.empty(s, dtype=dtypes[n]) for n, s in wanted.items()}
        with warnings.catch_warnings():  # "no process group, assuming one process": exactly our case
            warnings.simplefilter("ignore", UserWarning)
            load(buffers, storage_reader=_reader(path), planner=_planner(), no_dist=True)
    except UnsafeCheckpointError:
        raise
    except (Exception, CheckpointException) as exc:  # DCP's own failure is a BaseException
        raise CorruptCheckpointError(
            f"Cannot read the tensors of the DCP checkpoint {str(path)!r} ({type(exc).__name__}); "
            "a data file is truncated, still being written, or damaged.",
            hint="Wait for the writer to finish, or save it again with torch.distributed.checkpoint.save.",
        ) from None
    return {n[len(prefix) :]: t for n, t in buffers.items()}, key, len(entries)
