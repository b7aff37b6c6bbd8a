"""Device selection: "auto" means the worker's GPU when there is one, else Apple MPS, else the CPU."""

from __future__ import annotations

import torch

from serving.errors import ConfigError

DeviceLike = str | torch.device | None


def resolve_device(device: DeviceLike = "auto", gpu_id: int | None = None) -> torch.device:
    """Turn a device setting into a concrete ``torch.device``.

    ``gpu_id`` is the GPU the runtime assigned to this worker (TorchServe hands one to each worker);
    it picks the CUDA index for "auto" and for a bare "cuda".
    """
    if device is None or (isinstance(device, str) and device.strip().lower() == "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda", _cuda_index(gpu_id))
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(
            f"Unknown device {device!r}.", hint="Use 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'."
        ) from exc
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(
                f"Device {device!r} was asked for, but this machine has no usable CUDA GPU.",
                hint="Use device 'auto' to fall back to the CPU, or run on a GPU machine.",
            )
        index = resolved.index if resolved.index is not None else _cuda_index(gpu_id)
        return torch.device("cuda", index)
    if resolved.type == "mps" and not _mps_available():
        raise ConfigError(
            f"Device {device!r} was asked for, but MPS is not available here.", hint="Use 'auto'."
        )
    return resolved


def placement(model: torch.nn.Module) -> tuple[torch.device, torch.dtype]:
    """The device and floating dtype of a model's first floating tensor: where its inputs must go."""
    for tensor in (*model.parameters(), *model.buffers()):
        if tensor.is_floating_point():
            return tensor.device, tensor.dtype
    return torch.device("cpu"), torch.float32


def _cuda_index(gpu_id: int | None) -> int:
    count = torch.cuda.device_count()
    index = gpu_id or 0
    if index >= count:
        raise ConfigError(
            f"GPU {index} was assigned, but only {count} CUDA device(s) are visible.",
            hint="Check CUDA_VISIBLE_DEVICES and the number of GPUs given to the server.",
        )
    return index


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())
