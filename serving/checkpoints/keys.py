"""Match a checkpoint's keys to an architecture's: strip wrapper prefixes, report every mismatch."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from serving.errors import ArchitectureMismatchError

# Prefixes that wrappers add to every key: DistributedDataParallel / DataParallel and torch.compile.
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
_SHOWN = 5  # how many keys of each kind an error lists


def shape_of(value: Any) -> tuple[int, ...] | None:
    """The shape of a tensor (or of a torch.Size, as read from DCP metadata); None for other entries."""
    if isinstance(value, torch.Tensor):
        return tuple(value.shape)
    if isinstance(value, torch.Size):
        return tuple(value)
    return None


def shape_map(entries: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """Key -> shape for the tensor entries of a state dict (extra_state objects are skipped)."""
    return {k: s for k, v in entries.items() if (s := shape_of(v)) is not None}


def fingerprint(shapes: Mapping[str, tuple[int, ...]]) -> str:
    """A short hash of parameter names and shapes: equal fingerprints mean the weights fit."""
    text = "\n".join(f"{name}:{','.join(map(str, shape))}" for name, shape in sorted(shapes.items()))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class KeyAlignment:
    """How checkpoint keys map onto architecture keys, and what does not fit."""

    rename: dict[str, str]  # checkpoint key -> architecture key, for every key that is used
    stripped_prefix: str = ""
    missing: list[str] = field(default_factory=list)  # architecture keys the checkpoint lacks
    unexpected: list[str] = field(default_factory=list)  # checkpoint keys the architecture lacks
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = field(default_factory=list)

    @property
    def exact(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def describe(self) -> str:
        parts = []
        for label, items in (("missing", self.missing), ("unexpected", self.unexpected)):
            if items:
                parts.append(f"{len(items)} {label} key(s): {', '.join(items[:_SHOWN])}{_more(items)}")
        if self.mismatched:
            shown = ", ".join(
                f"{k} (checkpoint {list(a)} vs model {list(b)})" for k, a, b in self.mismatched[:_SHOWN]
            )
            parts.append(f"{len(self.mismatched)} shape mismatch(es): {shown}{_more(self.mismatched)}")
        return "; ".join(parts)

    def raise_if_inexact(self, what: str) -> None:
        if not self.exact:
            raise ArchitectureMismatchError(
                f"The weights in {what} do not fit the architecture: {self.describe()}.",
                hint="Check that the checkpoint was trained with this architecture and architecture_kwargs; "
                "set strict: false only if the differences are intended (they are then left at init values).",
            )


def check_dtype_kinds(what: str, weights: Mapping[str, Any], targets: Mapping[str, torch.dtype]) -> None:
    """Refuse values that a cast to the model's dtype would change into another tensor.

    A float16 checkpoint for a float32 model is a cast. Integer values for a floating-point weight
    are not the trained weights, and a fractional (or NaN) value for an integer buffer (a counter,
    position ids) would be truncated: both would serve a model nobody trained. Whole-valued floats
    for an integer buffer (a counter saved by a converter) are kept.
    """
    wrong = [
        (k, v.dtype, targets[k])
        for k, v in weights.items()
        if torch.is_tensor(v) and k in targets and not _casts_cleanly(v, targets[k])
    ]
    if wrong:
        name, found, wanted = wrong[0]
        raise ArchitectureMismatchError(
            f"The weights in {what} do not fit the architecture: {len(wrong)} of another kind of dtype "
            f"(e.g. {name[:100]!r} is {found}, the model's is {wanted}).",
            hint="Save the model's own state_dict(); a dtype cast (float16 <-> float32) is fine, "
            "integer values for floating-point weights are not.",
        )


def _casts_cleanly(value: torch.Tensor, target: torch.dtype) -> bool:
    if target.is_complex:
        return value.dtype.is_floating_point or value.dtype.is_complex
    if target.is_floating_point:  # complex -> real would drop the imaginary part
        return value.dtype.is_floating_point
    if value.dtype.is_floating_point:
        return bool(torch.all(value == value.trunc()))
    return not value.dtype.is_complex


def _more(items: list[Any]) -> str:
    return f" (+{len(items) - _SHOWN} more)" if len(items) > _SHOWN else ""


def align_keys(found: Mapping[str, tuple[int, ...]], expected: Mapping[str, tuple[int, ...]]) -> KeyAlignment:
    """Map checkpoint keys onto the architecture's, stripping prefixes only when that makes more fit.

    Wrapper prefixes (``module.``, ``_orig_mod.``) go first; then the best common prefix (for example
    Lightning's ``model.`` attribute), chosen by how many keys it makes match. Nothing is dropped
    silently: keys outside the chosen prefix are reported as unexpected.
    """
    unwrapped: dict[str, str] = {}
    twins: list[str] = []  # "module.fc.weight" beside "fc.weight": two values for one weight
    for key in sorted(found, key=lambda k: (strip_wrappers(k) != k, k)):  # unwrapped keys first
        unwrapped.setdefault(strip_wrappers(key), key)
        if unwrapped[strip_wrappers(key)] != key:
            twins.append(key)
    best_prefix, best_score = "", _score(unwrapped, found, expected, "")
    for prefix in _candidate_prefixes(unwrapped):
        score = _score(unwrapped, found, expected, prefix)
        if score > best_score:
            best_prefix, best_score = prefix, score
    rename: dict[str, str] = {}
    unexpected: list[str] = list(twins)
    for new, old in unwrapped.items():
        target = new[len(best_prefix) :] if new.startswith(best_prefix) else None
        if target is not None and target in expected:
            rename[old] = target
        else:
            unexpected.append(old)
    used = set(rename.values())
    mismatched = [
        (target, found[old], expected[target])
        for old, target in rename.items()
        if found[old] != expected[target]
    ]
    return KeyAlignment(
        rename=rename,
        stripped_prefix=best_prefix,
        missing=sorted(k for k in expected if k not in used),
        unexpected=sorted(unexpected),
        mismatched=sorted(mismatched),
    )


def strip_wrappers(key: str) -> str:
    """The key without DDP / torch.compile wrapper prefixes."""
    stripped = True
    while stripped:
        stripped = False
        for prefix in WRAPPER_PREFIXES:
            if key.startswith(prefix):
                key, stripped = key[len(prefix) :], True
    return key


def _candidate_prefixes(keys: Mapping[str, str]) -> set[str]:
    # Every dotted prefix of up to three segments that some key carries.
    prefixes: set[str] = set()
    for key in keys:
        parts = key.split(".")
        for depth in range(1, min(4, len(parts))):
            prefixes.add(".".join(parts[:depth]) + ".")
    return prefixes


def _score(
    unwrapped: Mapping[str, str],
    found: Mapping[str, tuple[int, ...]],
    expected: Mapping[str, tuple[int, ...]],
    prefix: str,
) -> tuple[int, int]:
    # Keys that land on an architecture key with the right shape, then those that land at all.
    exact = landed = 0
    for new, old in unwrapped.items():
        if new.startswith(prefix) and (target := new[len(prefix) :]) in expected:
            landed += 1
            exact += found[old] == expected[target]
    return exact, landed
