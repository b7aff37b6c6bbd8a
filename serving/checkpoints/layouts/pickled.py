"""torch.save's pickled layouts: read with weights_only (unless trusted), every storage onto the CPU."""

from __future__ import annotations

import importlib
import pickle
import re
import sys
from abc import abstractmethod
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.types import Storage

from serving.checkpoints.layouts.base import CheckpointContents, Layout, ReadOptions, ShapeMap, corrupt_error
from serving.checkpoints.pickle_size import check_pickle_size
from serving.checkpoints.selection import jsonable_metadata, select_state_dict
from serving.errors import ArchitectureError, NotACheckpointError, UnsafeCheckpointError

_QUALIFIED_NAME = re.compile(r"[A-Za-z_][\w.]{0,200}")
PICKLED_MODULE = "pickled_module"  # the kind of a trusted whole-model pickle: its file brings the code


class PickledLayout(Layout):
    """A torch.save file: a pickle (weights_only unless trusted) beside the tensors' bytes."""

    @abstractmethod
    def pickle_bytes(self, path: Path) -> int:
        """How many bytes of pickle ``path`` holds, counted without unpickling."""

    def read(self, path: Path, options: ReadOptions) -> CheckpointContents:
        saved_on: set[str] = set()
        obj = self.load(path, saved_on, trust_pickle=options.trust_pickle, safe_globals=options.safe_globals)
        contents = self._interpret(
            path, obj, expected=options.expected, state_dict_key=options.state_dict_key
        )
        contents.metadata["saved_devices"] = sorted(saved_on)
        return contents

    def load(self, path: Path, saved_on: set[str], *, trust_pickle: bool, safe_globals: Iterable[str]) -> Any:
        """``torch.load`` of ``path`` with every storage on the CPU; ``saved_on`` collects where they were."""
        check_pickle_size(path, self.pickle_bytes(path))
        allowed = [_import_global(name) for name in safe_globals]

        def to_cpu(storage: Storage, location: str) -> Storage:
            # Every storage lands on the CPU whatever device wrote it (seed 9.6); note where it came from.
            saved_on.add(location)
            return storage

        try:
            with torch.serialization.safe_globals(allowed):
                return torch.load(
                    path, map_location=to_cpu, mmap=self.maps_file, weights_only=not trust_pickle
                )
        except pickle.UnpicklingError as exc:
            # weights_only words every failure of its unpickler "Weights only load failed", damaged or
            # truncated bytes included: only a refused GLOBAL (a name the file would import) is unsafe.
            if "GLOBAL" in str(exc):
                raise _unsafe_error(path) from None
            raise corrupt_error(path, exc) from None
        except (AttributeError, ImportError) as exc:
            if not trust_pickle:
                raise corrupt_error(path, exc) from None
            # With trust_pickle: the pickled class is not importable here.
            raise ArchitectureError(
                f"{str(path)!r} holds a pickled object whose class cannot be imported "
                f"({type(exc).__name__}).",
                hint="A whole-model pickle needs its class importable under the same module path it was "
                "saved from; put that module on the path, or save model.state_dict() instead.",
            ) from None
        except Exception as exc:  # damaged bytes make the unpickler raise assorted types (IndexError, ...)
            raise corrupt_error(path, exc) from None

    def _interpret(
        self, path: Path, obj: Any, *, expected: ShapeMap | None, state_dict_key: str | None
    ) -> CheckpointContents:
        if isinstance(obj, nn.Module):
            return CheckpointContents(path, self, PICKLED_MODULE, module=obj)
        if not isinstance(obj, Mapping):
            raise NotACheckpointError(
                f"{str(path)!r} holds a {type(obj).__name__}, not a state dict, a checkpoint dict or "
                "a model.",
                hint="Save model.state_dict() or a dict with a 'model_state_dict' entry.",
            )
        key = select_state_dict(obj, expected=expected, state_dict_key=state_dict_key, where=str(path))
        if key is None:  # the dict itself is the state dict
            return CheckpointContents(path, self, "state_dict", state_dict=dict(obj))
        kind = "lightning" if _is_lightning(obj) else "training_checkpoint"
        meta = jsonable_metadata({k: v for k, v in obj.items() if k != key})
        return CheckpointContents(path, self, kind, state_dict=dict(obj[key]), metadata=meta, source_key=key)


def _is_lightning(obj: Mapping[str, Any]) -> bool:
    return any("lightning_version" in str(k) for k in obj)


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
