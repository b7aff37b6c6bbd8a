"""The model slot: the model being served, a validation gate, and an atomic swap between batches."""

from __future__ import annotations

import contextlib
import gc
import logging
import threading
from collections.abc import Callable, Iterator, Mapping

import torch
from torch import nn

from serving.checkpoints.keys import align_keys, check_dtype_kinds, shape_map
from serving.checkpoints.memory import release_pages
from serving.checkpoints.reader import CheckpointContents
from serving.devices import placement
from serving.diagnose import input_dtype_hint
from serving.errors import CandidateRejected, CkptServeError
from serving.loader import INFO_ATTRIBUTE, CheckpointInfo, checkpoint_info

log = logging.getLogger(__name__)


def sample_input(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """A fixed, seeded input of the model's declared shape (batch of 2) for the warm-up forward."""
    concrete = [2, *(d if d > 0 else 1 for d in shape)]
    if dtype.is_floating_point:
        return torch.randn(concrete, generator=torch.Generator().manual_seed(0)).to(dtype)
    return torch.zeros(concrete, dtype=dtype)  # token ids, masks: 0 is valid for any vocabulary


def check_weights_finite(tensors: Mapping[str, object]) -> None:
    for name, tensor in tensors.items():
        if torch.is_tensor(tensor) and tensor.is_floating_point():
            finite = torch.isfinite(tensor)
            if not bool(finite.all()):
                bad = int((~finite).sum())
                raise CandidateRejected(f"{bad} non-finite value(s) (NaN/Inf) in weight {name!r}.")


def check_forward(
    forward: Callable[[torch.Tensor], object],
    model: nn.Module,
    sample: torch.Tensor,
    expected_shape: tuple[int, ...] | None,
) -> tuple[int, ...]:
    """Run ``forward`` on ``sample`` placed like ``model``; reject failures, NaN/Inf, a changed shape."""
    device, dtype = placement(model)
    inputs = sample.to(device=device, dtype=dtype if sample.is_floating_point() else sample.dtype)
    try:
        with torch.inference_mode():
            out = forward(inputs)
    except Exception as exc:
        raise CandidateRejected(
            f"The warm-up forward failed: {type(exc).__name__}: {str(exc)[:200]}.",
            hint=input_dtype_hint(forward, inputs),
        ) from None
    out = out[0] if isinstance(out, (tuple, list)) else out
    if not torch.is_tensor(out):
        raise CandidateRejected(f"The warm-up forward returned {type(out).__name__}, not a tensor.")
    if expected_shape is not None and tuple(out.shape) != expected_shape:
        raise CandidateRejected(
            f"The warm-up output has shape {tuple(out.shape)}; the served model gives {expected_shape}."
        )
    if out.is_floating_point() and not bool(torch.isfinite(out).all()):
        raise CandidateRejected("The warm-up forward gave non-finite outputs (NaN/Inf).")
    return tuple(out.shape)


def check_same_model(live: nn.Module, candidate: nn.Module) -> None:
    """The candidate is the live model's kind: same code source, same keys, shapes and dtypes.

    A model served from an architecture only takes weights loaded into it; a self-describing model
    (TorchScript, torch.export, a trusted pickle) only takes a file of its own layout.
    """
    old, new = _info(live), _info(candidate)
    if (old.carries_code or new.carries_code) and (old.layout, old.kind) != (new.layout, new.kind):
        raise CandidateRejected(
            f"The candidate is a {new.layout} file ({new.kind}); the served model is {old.layout} "
            f"({old.kind}). "
            "A reload swaps weights of the same model, never its code."
        )
    if _qualname(live) != _qualname(candidate):
        raise CandidateRejected(
            f"The candidate is a {_qualname(candidate)}; the served model a {_qualname(live)}."
        )
    want, got = _signature(live), _signature(candidate)
    if want != got:
        missing, extra = sorted(set(want) - set(got)), sorted(set(got) - set(want))
        changed = sorted(k for k in set(want) & set(got) if want[k] != got[k])
        raise CandidateRejected(
            "The candidate's weights differ from the served model's: "
            f"{len(missing)} missing, {len(extra)} unexpected, {len(changed)} of another shape or dtype"
            f" (first: {(missing + extra + changed)[0]!r})."
        )


def _info(model: nn.Module) -> CheckpointInfo:
    info = getattr(model, INFO_ATTRIBUTE, None)
    if isinstance(info, CheckpointInfo):
        return info
    # A model built in-process (tests, a library caller): its own code, like an architecture's.
    return CheckpointInfo("", "in_process", "in_process", "", 0, "", "", "", 0.0)


def _qualname(model: nn.Module) -> str:
    return f"{type(model).__module__}.{type(model).__qualname__}"


def _signature(model: nn.Module) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    return {k: (tuple(v.shape), v.dtype) for k, v in model.state_dict().items() if torch.is_tensor(v)}


class ModelSlot:
    """Holds the served model. Batches take it with ``use()``; reloads replace it with ``swap`` or
    ``copy_in``. A batch always finishes on the model it started with.
    """

    def __init__(
        self, model: nn.Module, sample: torch.Tensor, output_shape: tuple[int, ...] | None = None
    ) -> None:
        """``output_shape``: what the caller's gate measured on ``sample`` (None: measured here)."""
        self._model = model
        self._sample = sample
        self._lock = threading.Lock()  # only an in-place copy needs batches to wait
        self.output_shape = (
            check_forward(model, model, sample, None) if output_shape is None else output_shape
        )

    @property
    def model(self) -> nn.Module:
        return self._model

    @property
    def info(self) -> CheckpointInfo:
        return checkpoint_info(self._model)

    @contextlib.contextmanager
    def use(self) -> Iterator[nn.Module]:
        with self._lock:
            yield self._model

    # --- shadow: a second model is loaded beside the live one, validated, then swapped in ----------

    def validate(self, candidate: nn.Module) -> None:
        check_same_model(self._model, candidate)
        check_weights_finite(candidate.state_dict())
        check_forward(candidate, candidate, self._sample, self.output_shape)

    def swap(self, candidate: nn.Module) -> None:
        """Make ``candidate`` the served model; the old one is freed once its last batch ends."""
        with self._lock:
            old, self._model = self._model, candidate
        del old
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    # --- inplace: weights are copied into the live tensors; no second model exists --------------

    def copy_in(self, contents: CheckpointContents, info: CheckpointInfo) -> None:
        """Validate ``contents`` against the live model, then copy it in under the lock."""
        live = self._model
        if contents.state_dict is None:
            raise CandidateRejected(
                f"{contents.kind} checkpoints carry a whole model; use reload_strategy: shadow."
            )
        live_state = live.state_dict()
        alignment = align_keys(shape_map(contents.state_dict), shape_map(live_state))
        source = {new: contents.state_dict[old] for old, new in alignment.rename.items()}
        try:
            alignment.raise_if_inexact(repr(str(contents.path)))
            check_dtype_kinds(repr(str(contents.path)), source, {k: v.dtype for k, v in live_state.items()})
        except CkptServeError as err:
            raise CandidateRejected(err.message) from None
        check_weights_finite(source)
        # The candidate runs through the live module's code without being copied in (functional_call).
        placed = {k: v.to(device=live_state[k].device, dtype=live_state[k].dtype) for k, v in source.items()}
        with self._lock:
            check_forward(
                lambda x: torch.func.functional_call(live, placed, (x,), strict=False),
                live,
                self._sample,
                self.output_shape,
            )
            with torch.no_grad():
                for name, tensor in source.items():
                    live_state[name].copy_(tensor)
                    if contents.layout.maps_file and tensor.device.type == "cpu":
                        release_pages(tensor)
            setattr(live, INFO_ATTRIBUTE, info)
