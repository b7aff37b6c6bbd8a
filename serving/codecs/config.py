"""What a model's codecs are configured with: its input, its post-processing, and its class labels."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from serving.errors import ConfigError

_HINT_LABELS = 'write {"0": "cat", "1": "dog", ...} or ["cat", "dog", ...]'


@dataclass(frozen=True)
class InputSpec:
    shape: tuple[int, ...]  # per-instance shape, no batch dim; -1 on an axis = any size
    dtype: torch.dtype = torch.float32
    name: str = "input__0"  # the OIP v2 input name the model expects
    allow_nonfinite: bool = False
    max_instances: int = 64


@dataclass(frozen=True)
class PostProcess:
    kind: Literal["raw", "softmax", "topk"] = "raw"
    k: int = 5
    labels: tuple[str, ...] | None = None  # index -> name, from an index_to_name.json
    output_name: str = "output__0"


def load_labels(path: str | Path) -> tuple[str, ...]:
    """Read an index_to_name.json ({"0": "cat", ...}, {"0": ["n0", "cat"]} or a list) ordered by index."""
    p = Path(path)
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read labels file {p}: {exc.strerror}", hint="check the path") from None
    except ValueError as exc:
        raise ConfigError(f"labels file {p} is not valid JSON: {exc}", hint="fix the file") from None
    if isinstance(doc, list):
        items = list(enumerate(doc))
    elif isinstance(doc, dict):
        try:
            items = sorted(((int(key), value) for key, value in doc.items()), key=lambda kv: kv[0])
        except ValueError:
            raise ConfigError(
                f"labels file {p} has a key that is not an integer index: {list(doc)[:5]}",
                hint='use keys "0", "1", ...',
            ) from None
        indices = [i for i, _ in items]
        if indices != list(range(len(items))):
            raise ConfigError(
                f"labels file {p} has indices {indices[:10]}; expected 0..{len(items) - 1}, once each",
                hint="number the classes from 0 without gaps",
            )
    else:
        raise ConfigError(
            f"labels file {p} holds a {type(doc).__name__}; expected an object or a list", hint=_HINT_LABELS
        )
    if not items:
        raise ConfigError(f"labels file {p} is empty; expected one label per class", hint=_HINT_LABELS)
    labels = []
    for i, value in items:
        # TorchServe's ImageNet files map to [wordnet id, name]: the readable name is last
        if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
            value = value[-1]
        if not isinstance(value, str):
            raise ConfigError(
                f"labels file {p}: entry {i} is {value!r}; expected a string", hint=_HINT_LABELS
            )
        labels.append(value)
    return tuple(labels)
