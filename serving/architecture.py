"""Turn an architecture setting ("pkg.module:Class", "file.py:Class", a class, an instance) into a model."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from serving.errors import ArchitectureError

ArchitectureLike = str | type[nn.Module] | Callable[..., nn.Module] | nn.Module


def resolve_architecture(spec: ArchitectureLike, search_paths: Sequence[str | Path] = ()) -> Any:
    """Import the class (or factory) an architecture string names; pass classes and instances through."""
    if not isinstance(spec, str):
        return spec
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ArchitectureError(
            f"Architecture {spec!r} is not of the form 'module.path:ClassName' or 'file.py:ClassName'.",
            hint="For example 'model:DigitsCNN' for a class DigitsCNN in model.py.",
        )
    module = _import(module_name, search_paths)
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            defined = sorted(
                n for n, v in vars(module).items() if isinstance(v, type) and issubclass(v, nn.Module)
            )
            raise ArchitectureError(
                f"Module {module_name!r} has no {attr!r}.",
                hint=f"nn.Module classes it defines: {defined or 'none'}.",
            )
        obj = getattr(obj, part)
    if not callable(obj):
        raise ArchitectureError(f"{spec!r} is a {type(obj).__name__}, not an nn.Module class or factory.")
    return obj


def _import(module_name: str, search_paths: Sequence[str | Path]) -> Any:
    for path in reversed([str(p) for p in search_paths]):
        if path not in sys.path:
            sys.path.insert(0, path)
    if module_name.endswith(".py"):
        return _import_file(Path(module_name))
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and exc.name != module_name and not module_name.startswith(f"{exc.name}."):
            raise ArchitectureError(  # the module was found; something it imports was not
                f"Importing {module_name!r} failed: it imports {exc.name!r}, which is not installed.",
                hint=f"Install {exc.name!r} where the workers run (and in the image that serves it).",
            ) from None
        raise ArchitectureError(
            f"Cannot import module {module_name!r} for the architecture: {exc}.",
            hint="Ship the model's .py file with the archive (--model-file) or install its package; "
            f"searched: {[str(p) for p in search_paths] or 'sys.path'}.",
        ) from None
    except Exception as exc:  # the user's module failed while importing
        raise ArchitectureError(f"Importing {module_name!r} failed: {type(exc).__name__}: {exc}.") from exc


def _import_file(path: Path) -> Any:
    if not path.is_file():
        raise ArchitectureError(f"Architecture file {str(path)!r} does not exist.")
    name = path.stem
    if name in sys.modules and getattr(sys.modules[name], "__file__", None) == str(path.resolve()):
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path.resolve())
    if spec is None or spec.loader is None:
        raise ArchitectureError(f"Cannot import {str(path)!r} as a Python module.")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # registered so pickles and dataclasses can find the module again
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[name]
        raise ArchitectureError(f"Importing {str(path)!r} failed: {type(exc).__name__}: {exc}.") from exc
    return module


def build(factory: Any, kwargs: Mapping[str, Any] | None, device: torch.device | str) -> nn.Module:
    """Instantiate ``factory(**kwargs)`` with its tensors created on ``device`` (``meta``: no memory)."""
    try:
        with torch.device(device):
            model = factory(**dict(kwargs or {}))
    except TypeError as exc:
        raise ArchitectureError(
            f"Cannot build {_name(factory)} with architecture_kwargs {dict(kwargs or {})}: {exc}.",
            hint=f"Its signature is {_name(factory)}{_signature(factory)}.",
        ) from None
    except Exception as exc:
        raise ArchitectureError(f"Building {_name(factory)} failed: {type(exc).__name__}: {exc}.") from exc
    if not isinstance(model, nn.Module):
        raise ArchitectureError(f"{_name(factory)} returned a {type(model).__name__}, not an nn.Module.")
    return model


def _name(factory: Any) -> str:
    return getattr(factory, "__qualname__", repr(factory))


def _signature(factory: Any) -> str:
    try:
        return str(inspect.signature(factory))
    except (TypeError, ValueError):
        return "(...)"
