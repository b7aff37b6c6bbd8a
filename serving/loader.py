"""Architecture + checkpoint -> an eval-mode model on the right device, built without a wasted copy."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from serving.architecture import ArchitectureLike, build, resolve_architecture
from serving.checkpoints.keys import KeyAlignment, align_keys, check_dtype_kinds, fingerprint, shape_map
from serving.checkpoints.layout import detect_layout, layout_named
from serving.checkpoints.layouts.pickled import PICKLED_MODULE
from serving.checkpoints.memory import materialize, privatize
from serving.checkpoints.reader import CheckpointContents, read_checkpoint
from serving.codecs.torch_dtypes import TORCH_DTYPES, torch_name
from serving.devices import DeviceLike, resolve_device
from serving.errors import ArchitectureError, ArchitectureMismatchError, ConfigError
from serving.files import sha256_of, size_of

log = logging.getLogger(__name__)

INFO_ATTRIBUTE = "ckptserve_info"
# The dtypes weights may be cast to (floating ones only: integer buffers keep theirs).
_DTYPES = {name: TORCH_DTYPES[name] for name in ("float32", "float16", "bfloat16", "float64")}


@dataclass(frozen=True)
class CheckpointInfo:
    """What was loaded, from where, and how it went: shown by describe, logs and ``ckptserve inspect``."""

    path: str
    layout: str
    kind: str
    sha256: str
    size_bytes: int
    fingerprint: str  # hash of parameter names and shapes (see serving.checkpoints.keys.fingerprint)
    device: str
    dtype: str
    load_seconds: float
    epoch: int | None = None
    loss: float | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    missing_keys: tuple[str, ...] = ()
    unexpected_keys: tuple[str, ...] = ()

    @property
    def carries_code(self) -> bool:
        """Whether the file brought the model's code: a self-describing layout, or a trusted pickled model."""
        layout = layout_named(self.layout)
        return self.kind == PICKLED_MODULE or (layout is not None and layout.self_describing)

    def to_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}

    @property
    def epoch_label(self) -> str:
        """The epoch as headers, logs and metric labels spell it: the number, or "none"."""
        return str(self.epoch) if self.epoch is not None else "none"

    @property
    def label(self) -> str:
        """``epoch=N@<sha256 prefix>``: which checkpoint answered (response header, JSON logs)."""
        return f"epoch={self.epoch_label}@{self.sha256[:12]}"


def checkpoint_info(model: nn.Module) -> CheckpointInfo:
    """The ``CheckpointInfo`` that ``load_model`` attached to ``model``."""
    info = getattr(model, INFO_ATTRIBUTE, None)
    if not isinstance(info, CheckpointInfo):
        raise ValueError("This model was not loaded by serving.load_model.")
    return info


def parse_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    """None / "auto" keep the architecture's dtypes; otherwise a floating dtype to cast weights to."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return None
    if dtype not in _DTYPES:
        raise ConfigError(f"Unknown dtype {dtype!r}.", hint=f"Use one of: auto, {', '.join(_DTYPES)}.")
    return _DTYPES[dtype]


def load_model(
    architecture: ArchitectureLike | None,
    checkpoint: str | Path,
    *,
    architecture_kwargs: Mapping[str, Any] | None = None,
    device: DeviceLike = "auto",
    gpu_id: int | None = None,
    dtype: str | torch.dtype | None = None,
    strict: bool = True,
    trust_pickle: bool = False,
    state_dict_key: str | None = None,
    safe_globals: Iterable[str] = (),
    search_paths: Sequence[str | Path] = (),
    sha256: str | None = None,
) -> nn.Module:
    """Load ``checkpoint`` into ``architecture`` and return the model in eval mode, gradients off.

    ``checkpoint`` may be any layout ``serving.checkpoints`` reads; ``architecture`` may be None
    for self-describing ones (TorchScript, torch.export, a trusted pickled model). The result
    carries a ``CheckpointInfo`` (see ``checkpoint_info``). Pass ``sha256`` when the caller already
    hashed the file (a watcher does) to skip reading it twice.
    """
    started = time.perf_counter()
    path = Path(checkpoint)
    target = resolve_device(device, gpu_id)
    cast = parse_dtype(dtype)
    with ThreadPoolExecutor(max_workers=1) as pool:
        # Hashing reads the whole file; it runs beside the load (hashlib releases the GIL).
        digest = pool.submit(sha256_of, path) if path.exists() and sha256 is None else None
        factory = resolve_architecture(architecture, search_paths) if architecture is not None else None
        skeleton = _skeleton(factory, architecture_kwargs)
        expected = shape_map(skeleton.state_dict()) if skeleton is not None else None
        if factory is not None:
            refuse_own_code(path, architecture)
        contents = read_checkpoint(
            path,
            expected=expected,
            state_dict_key=state_dict_key,
            trust_pickle=trust_pickle,
            safe_globals=safe_globals,
            map_location=target,
        )
        if contents.module is not None and factory is not None:
            # A trusted whole-model pickle: with an architecture configured only its weights are used.
            contents = replace(contents, state_dict=contents.module.state_dict(), module=None)
        if contents.module is not None:
            model, alignment = _self_described(contents, target, cast), None
        else:
            model, alignment = _from_state_dict(
                contents, factory, architecture_kwargs, skeleton, target, cast, strict
            )
        if not contents.layout.keeps_mode:
            model.eval()
        for param in model.parameters():
            param.requires_grad_(False)
        info = make_info(
            contents, model, alignment, target, cast, sha256 or _result(digest), time.perf_counter() - started
        )
    setattr(model, INFO_ATTRIBUTE, info)
    log.info(
        "loaded %r (%s, epoch=%s) onto %s in %.2fs",
        path,
        contents.kind,
        info.epoch,
        target,
        info.load_seconds,
    )
    return model


def refuse_own_code(path: Path, architecture: Any) -> None:
    """A model served from an architecture takes weights only: a file that carries code is refused unread."""
    layout = detect_layout(path)
    if layout.self_describing:
        raise ArchitectureMismatchError(
            f"{str(path)!r} is a {layout.name} archive: it carries its own code, and this model is "
            f"served from the architecture {_arch_name(architecture)}, whose code alone runs.",
            hint="Save the architecture's weights (serving.save_checkpoint, model.state_dict(), "
            "safetensors or DCP); to serve self-describing files, configure the model without "
            "an architecture.",
        )


def _arch_name(architecture: Any) -> str:
    if isinstance(architecture, str):
        return repr(architecture)
    cls = architecture if isinstance(architecture, type) else type(architecture)
    return f"'{cls.__module__}.{cls.__qualname__}'"


def _skeleton(factory: Any, kwargs: Mapping[str, Any] | None) -> nn.Module | None:
    # The architecture on the meta device: its key -> shape map costs no memory.
    if factory is None:
        return None
    if isinstance(factory, nn.Module):
        return factory
    return build(factory, kwargs, "meta")


def _from_state_dict(
    contents: CheckpointContents,
    factory: Any,
    kwargs: Mapping[str, Any] | None,
    skeleton: nn.Module | None,
    target: torch.device,
    cast: torch.dtype | None,
    strict: bool,
) -> tuple[nn.Module, KeyAlignment]:
    if skeleton is None:
        raise ArchitectureError(
            f"{str(contents.path)!r} holds only weights ({contents.kind}); "
            "an architecture is needed to serve it.",
            hint="Give the model class as 'module:ClassName' (handler: architecture, CLI: --architecture).",
        )
    state_dict = contents.state_dict or {}
    expected = shape_map(skeleton.state_dict())
    alignment = align_keys(shape_map(state_dict), expected)
    twins = _tied_twins(alignment, skeleton)
    if strict:
        alignment.raise_if_inexact(repr(str(contents.path)))
    elif not alignment.exact:
        log.warning("strict=False: %s; those weights keep their initial values", alignment.describe())
    mismatched = {k for k, _, _ in alignment.mismatched}
    renamed = {new: state_dict[old] for old, new in alignment.rename.items() if new not in mismatched}
    renamed.update({name: renamed[twin] for name, twin in twins.items()})
    own = {k: v.dtype for k, v in skeleton.state_dict().items() if torch.is_tensor(v)}
    check_dtype_kinds(repr(str(contents.path)), renamed, own)
    dtypes = {k: _target_dtype(v, cast) for k, v in own.items()}
    weights = materialize(renamed, dtypes, target, release_source=contents.layout.maps_file)
    # Build on the meta device and adopt the tensors (no init, no copy) when every key is there;
    # otherwise a real build supplies the values the checkpoint lacks.
    if isinstance(skeleton, nn.Module) and not isinstance(factory, nn.Module) and alignment.exact:
        model = skeleton
    elif isinstance(factory, nn.Module):
        model = factory
    else:
        model = build(factory, kwargs, "cpu")
    _adopt(model, weights)
    if _has_meta_tensors(model):  # e.g. a non-persistent buffer computed in __init__
        model = build(factory, kwargs, "cpu")
        _adopt(model, weights)
    return model.to(target), alignment


def _adopt(model: nn.Module, weights: Mapping[str, torch.Tensor]) -> None:
    try:
        model.load_state_dict(weights, strict=False, assign=True)
    except RuntimeError as exc:  # shapes were checked; this is the architecture's own hook failing
        raise ArchitectureError(f"Loading the weights into {type(model).__name__} failed: {exc}.") from None


def _tied_twins(alignment: KeyAlignment, skeleton: nn.Module) -> dict[str, str]:
    """Missing keys whose tied twin (same Parameter object) the checkpoint has: missing -> twin.

    Tied weights (an embedding shared with an output layer) are saved once by safetensors and some
    trainers, so such a key is not really missing.
    """
    groups: dict[int, list[str]] = {}
    for name, param in skeleton.named_parameters(remove_duplicate=False):
        groups.setdefault(id(param), []).append(name)
    present = set(alignment.rename.values())
    twins = {}
    for names in groups.values():
        source = next((n for n in names if n in present), None)
        for name in names:
            if source is not None and name in alignment.missing:
                twins[name] = source
    alignment.missing = [k for k in alignment.missing if k not in twins]
    return twins


def _target_dtype(model_dtype: torch.dtype, cast: torch.dtype | None) -> torch.dtype:
    return cast if cast is not None and model_dtype.is_floating_point else model_dtype


def _has_meta_tensors(model: nn.Module) -> bool:
    return any(t.is_meta for t in (*model.parameters(), *model.buffers()))


def _self_described(
    contents: CheckpointContents, target: torch.device, cast: torch.dtype | None
) -> nn.Module:
    model = contents.module
    assert model is not None
    if contents.kind == PICKLED_MODULE:
        privatize(model)  # its tensors came memory-mapped from a file that training may overwrite
    if target.type != "cpu" and not contents.layout.places_module:
        model = model.to(target)
    if cast is not None:
        model = model.to(cast)
    return model


def make_info(
    contents: CheckpointContents,
    model: nn.Module,
    alignment: KeyAlignment | None,
    target: torch.device,
    cast: torch.dtype | None,
    sha256: str,
    seconds: float,
) -> CheckpointInfo:
    """The CheckpointInfo of ``model`` after loading ``contents`` (also used by in-place reloads)."""
    meta = contents.metadata
    tensors = list(model.state_dict().values())
    dtype = cast or next(
        (t.dtype for t in tensors if torch.is_tensor(t) and t.is_floating_point()), torch.float32
    )
    loss = meta.get("loss")
    return CheckpointInfo(
        path=str(contents.path),
        layout=contents.layout.name,
        kind=contents.kind,
        sha256=sha256,
        size_bytes=size_of(contents.path),
        fingerprint=fingerprint(shape_map(model.state_dict())),
        device=str(target),
        dtype=torch_name(dtype),
        load_seconds=round(seconds, 4),
        epoch=meta.get("epoch") if isinstance(meta.get("epoch"), int) else None,
        loss=float(loss) if isinstance(loss, (int, float)) else None,
        metadata=meta,
        missing_keys=tuple(alignment.missing) if alignment else (),
        unexpected_keys=tuple(alignment.unexpected) if alignment else (),
    )


def _result(future: Future[str] | None) -> str:
    return future.result() if future is not None else ""
