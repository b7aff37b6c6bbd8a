"""Read a checkpoint of any layout into CPU tensors (mmap, weights_only) plus the metadata it carries."""

from __future__ import annotations

import importlib
import logging
import pickle
import re
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from serving.checkpoints.dcp import read_dcp
from serving.checkpoints.layout import Layout, describe_file, detect_layout, index_files, read_json
from serving.checkpoints.pickle_size import check_pickle_size
from serving.checkpoints.selection import jsonable_metadata, select_state_dict
from serving.errors import (
    ArchitectureError,
    CheckpointError,
    CkptServeError,
    CorruptCheckpointError,
    NotACheckpointError,
    UnsafeCheckpointError,
)

log = logging.getLogger(__name__)
_QUALIFIED_NAME = re.compile(r"[A-Za-z_][\w.]{0,200}")

ShapeMap = Mapping[str, tuple[int, ...]]


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


def read_checkpoint(
    path: str | Path,
    *,
    expected: ShapeMap | None = None,
    state_dict_key: str | None = None,
    trust_pickle: bool = False,
    safe_globals: Iterable[str] = (),
    map_location: torch.device | str = "cpu",
) -> CheckpointContents:
    """Read ``path`` without touching what the model does not need.

    ``expected`` (the architecture's key -> shape map) decides between several state dicts in one
    checkpoint. Tensors of torch.save files stay memory-mapped: optimizer state is never read.
    ``map_location`` only matters for self-describing layouts; weights are read onto the CPU and
    moved by the loader.
    """
    path = Path(path)
    try:
        contents = _read(path, expected, state_dict_key, trust_pickle, safe_globals, map_location)
    except CkptServeError:
        raise
    except Exception as exc:  # hostile structure makes readers raise anything: a typed error, never bytes
        raise _corrupt(path, exc) from None
    _check_dense(contents)
    return contents


def _read(
    path: Path,
    expected: ShapeMap | None,
    state_dict_key: str | None,
    trust_pickle: bool,
    safe_globals: Iterable[str],
    map_location: torch.device | str,
) -> CheckpointContents:
    layout = detect_layout(path)
    if layout is Layout.TORCHSCRIPT:
        return _read_torchscript(path, map_location)
    if layout is Layout.EXPORTED_PROGRAM:
        if not trust_pickle:  # torch.export.load unpickles constants and weights with plain pickle
            raise UnsafeCheckpointError(
                f"{str(path)!r} is a torch.export archive; torch.export.load unpickles parts of it "
                "with plain pickle, which runs code from the file.",
                hint="If you trust the file, set trust_pickle: true (CLI: --trust-pickle); otherwise "
                "serve the architecture with a state dict, or a TorchScript file.",
            )
        return _read_exported_program(path, map_location)
    if layout is Layout.SAFETENSORS:
        tensors, meta = _read_safetensors_file(path)
        return CheckpointContents(path, layout, "state_dict", state_dict=tensors, metadata=meta)
    if layout is Layout.SHARDED_SAFETENSORS:
        return _read_sharded_safetensors(path)
    if layout is Layout.DCP:
        return _read_dcp(path, expected=expected, state_dict_key=state_dict_key)
    saved_on: set[str] = set()
    obj = _torch_load(path, layout, saved_on, trust_pickle=trust_pickle, safe_globals=safe_globals)
    contents = _interpret(path, layout, obj, expected=expected, state_dict_key=state_dict_key)
    contents.metadata["saved_devices"] = sorted(saved_on)
    return contents


def _check_dense(contents: CheckpointContents) -> None:
    # Sparse, meta and nested tensors unpickle fine but have no plain data to copy into a model;
    # a key that is not a string (weights_only allows ints and tuples) names no weight.
    for name, value in (contents.state_dict or {}).items():
        if not isinstance(name, str):
            raise CorruptCheckpointError(
                f"{str(contents.path)!r}: its state dict has a key of type {type(name).__name__}; "
                "a state dict's keys are weight names (strings).",
                hint="Save model.state_dict().",
            )
        if torch.is_tensor(value) and (value.layout is not torch.strided or value.is_meta or value.is_nested):
            kind = "a meta tensor (no data)" if value.is_meta else f"a {value.layout} tensor"
            raise CorruptCheckpointError(
                f"{str(contents.path)!r}: the entry {name[:100]!r} is {kind}; weights must be "
                "dense tensors with their data.",
                hint="Save model.state_dict() of a materialized model (to_dense() sparse weights).",
            )


def read_metadata(path: str | Path, *, safe_globals: Iterable[str] = ()) -> dict[str, Any]:
    """Epoch, loss, metrics and other scalars of a torch.save or safetensors file, without its weights.

    Cheap: the file is memory-mapped and no tensor is touched. Other layouts carry none: {}.
    """
    path = Path(path)
    layout = detect_layout(path)
    if layout is Layout.SAFETENSORS:
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="pt") as handle:
                return {k: _number_or_text(v) for k, v in (handle.metadata() or {}).items()}
        except (SafetensorError, OSError, RuntimeError, ValueError) as exc:
            raise _corrupt(path, exc) from None
    if layout is not Layout.TORCH_SAVE:
        return {}
    obj = _torch_load(path, layout, set(), trust_pickle=False, safe_globals=safe_globals)
    return jsonable_metadata(obj) if isinstance(obj, Mapping) else {}


def _number_or_text(text: str) -> Any:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


# --- torch.save files ---------------------------------------------------------------------------


def _torch_load(
    path: Path, layout: Layout, saved_on: set[str], *, trust_pickle: bool, safe_globals: Iterable[str]
) -> Any:
    check_pickle_size(path, layout)
    allowed = [_import_global(name) for name in safe_globals]

    def to_cpu(storage: torch.UntypedStorage, location: str) -> torch.UntypedStorage:
        # Every storage lands on the CPU whatever device wrote it (seed 9.6); note where it came from.
        saved_on.add(location)
        return storage

    try:
        with torch.serialization.safe_globals(allowed):
            return torch.load(
                path,
                map_location=to_cpu,
                mmap=layout is Layout.TORCH_SAVE,  # legacy files cannot be mapped
                weights_only=not trust_pickle,
            )
    except pickle.UnpicklingError as exc:
        if "weights only" in str(exc).lower() or "weights_only" in str(exc).lower():
            raise _unsafe_error(path) from None
        raise _corrupt(path, exc) from None
    except (AttributeError, ImportError) as exc:
        if not trust_pickle:
            raise _corrupt(path, exc) from None
        # With trust_pickle: the pickled class is not importable here.
        raise ArchitectureError(
            f"{str(path)!r} holds a pickled object whose class cannot be imported ({type(exc).__name__}).",
            hint="A whole-model pickle needs its class importable under the same module path it was "
            "saved from; put that module on the path, or save model.state_dict() instead.",
        ) from None
    except Exception as exc:  # damaged bytes make the unpickler raise assorted types (IndexError, ...)
        raise _corrupt(path, exc) from None


def _unsafe_error(path: Path) -> UnsafeCheckpointError:
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # the listing is best effort; the refusal stands regardless
        names = []
    # Global names come from the file: show only ones shaped like dotted Python names.
    names = [n for n in names if _QUALIFIED_NAME.fullmatch(n)]
    shown = ", ".join(names[:5]) + (f" (+{len(names) - 5} more)" if len(names) > 5 else "")
    whole_model = any(_is_module_class(name) for name in names)
    what = "a whole pickled model (torch.save(model))" if whole_model else "pickled Python objects"
    return UnsafeCheckpointError(
        f"{str(path)!r} holds {what}; loading it would run code from the file. "
        f"Globals outside the weights-only allowlist: {shown or 'unknown'}.",
        hint="If you trust the file, set trust_pickle: true (CLI: --trust-pickle); to allow only some "
        "classes, list them in safe_globals; best of all, save model.state_dict() instead.",
    )


def _is_module_class(qualified: str) -> bool:
    # Only modules already imported: importing one a file names would run that module's code.
    module_name, _, attr = qualified.rpartition(".")
    obj = getattr(sys.modules.get(module_name), attr, None)
    return isinstance(obj, type) and issubclass(obj, nn.Module)


def _import_global(qualified: str) -> Any:
    module_name, _, attr = qualified.rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ArchitectureError(f"Cannot import {qualified!r} for safe_globals: {exc}.") from None


def _corrupt(path: Path, exc: BaseException) -> CorruptCheckpointError:
    # Readers' messages may quote bytes of the file ("invalid load key, 'x'"), and the file may be a
    # link to a secret: describe the file and the failure, never its content.
    return CorruptCheckpointError(
        f"Cannot read {str(path)!r} ({describe_file(path)}, {_layout_name(path)}): the reader failed "
        f"({type(exc).__name__}). The file is truncated, still being written, or damaged.",
        hint="Wait for the writer to finish, or save it again (atomically: serving.save_checkpoint).",
    )


def _layout_name(path: Path) -> str:
    try:
        return f"detected as {detect_layout(path).value}"
    except Exception:  # only a description: whatever the second look fails with
        return "of no known layout"


def _interpret(
    path: Path, layout: Layout, obj: Any, *, expected: ShapeMap | None, state_dict_key: str | None
) -> CheckpointContents:
    if isinstance(obj, nn.Module):
        return CheckpointContents(path, layout, "pickled_module", module=obj)
    if not isinstance(obj, Mapping):
        raise NotACheckpointError(
            f"{str(path)!r} holds a {type(obj).__name__}, not a state dict, a checkpoint dict or a model.",
            hint="Save model.state_dict() or a dict with a 'model_state_dict' entry.",
        )
    key = select_state_dict(obj, expected=expected, state_dict_key=state_dict_key, where=str(path))
    if key is None:  # the dict itself is the state dict
        return CheckpointContents(path, layout, "state_dict", state_dict=dict(obj))
    kind = "lightning" if _is_lightning(obj) else "training_checkpoint"
    meta = jsonable_metadata({k: v for k, v in obj.items() if k != key})
    return CheckpointContents(path, layout, kind, state_dict=dict(obj[key]), metadata=meta, source_key=key)


def _is_lightning(obj: Mapping[str, Any]) -> bool:
    return any("lightning_version" in str(k) for k in obj)


# --- safetensors --------------------------------------------------------------------------------


def _read_safetensors_file(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as handle:
            meta = dict(handle.metadata() or {})
            return {name: handle.get_tensor(name) for name in handle.keys()}, meta  # noqa: SIM118
    except (SafetensorError, OSError, RuntimeError, ValueError) as exc:
        raise _corrupt(path, exc) from None


def _read_sharded_safetensors(path: Path) -> CheckpointContents:
    index_file = index_files(path)[0]
    index = read_json(index_file)
    weight_map = index.get("weight_map")
    shards = weight_map.values() if isinstance(weight_map, dict) else ()
    if not weight_map or not shards or not all(isinstance(v, str) for v in shards):
        raise CorruptCheckpointError(
            f"{str(index_file)!r} has no 'weight_map' of tensor name -> shard file name."
        )
    root = path.resolve()
    tensors: dict[str, torch.Tensor] = {}
    for shard in sorted(set(weight_map.values())):
        shard_path = path / shard
        # The index comes from the file: "../x" or "/abs/x" would read (and serve) a file elsewhere.
        if not shard_path.resolve().is_relative_to(root) or not shard_path.is_file():
            raise CorruptCheckpointError(
                f"The index {index_file.name!r} names a shard that is not a file inside {str(path)!r}.",
                hint="Copy every shard into the checkpoint directory, or wait for the writer to finish.",
            )
        shard_tensors, _ = _read_safetensors_file(shard_path)
        tensors.update(shard_tensors)
    missing = sorted(set(weight_map) - set(tensors))
    if missing:
        raise CorruptCheckpointError(
            f"The shards of {str(path)!r} lack {len(missing)} indexed tensors: "
            f"{[str(m)[:100] for m in missing[:5]]}."
        )
    metadata = index.get("metadata")
    metadata = metadata if isinstance(metadata, dict) else {}
    meta = {k: v for k, v in metadata.items() if isinstance(v, (str, int, float, bool))}
    return CheckpointContents(
        path, Layout.SHARDED_SAFETENSORS, "state_dict", state_dict=tensors, metadata=meta
    )


# --- torch.distributed.checkpoint ---------------------------------------------------------------


def _read_dcp(path: Path, *, expected: ShapeMap | None, state_dict_key: str | None) -> CheckpointContents:
    state_dict, key, entries = read_dcp(path, expected=expected, state_dict_key=state_dict_key)
    meta = {"dcp_entries": entries}
    return CheckpointContents(path, Layout.DCP, "dcp", state_dict=state_dict, metadata=meta, source_key=key)


# --- self-describing archives -------------------------------------------------------------------


def _read_torchscript(path: Path, map_location: torch.device | str) -> CheckpointContents:
    try:
        module = torch.jit.load(str(path), map_location=map_location)
    except (RuntimeError, ValueError) as exc:
        raise _corrupt(path, exc) from None
    return CheckpointContents(path, Layout.TORCHSCRIPT, "torchscript", module=module)


def _read_exported_program(path: Path, map_location: torch.device | str) -> CheckpointContents:
    try:
        program = torch.export.load(str(path))
    except Exception as exc:  # torch.export raises assorted types for damaged archives
        raise _corrupt(path, exc) from None
    module = program.module()
    if torch.device(map_location).type != "cpu":
        module = module.to(map_location)
    return CheckpointContents(path, Layout.EXPORTED_PROGRAM, "exported_program", module=module)


__all__ = ["CheckpointContents", "CheckpointError", "read_checkpoint", "read_metadata"]
