"""The typed model spec: the ``handler:`` section of TorchServe's model-config.yaml, validated once."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal

from serving.codecs import InputSpec, PostProcess, load_labels
from serving.codecs.torch_dtypes import TORCH_DTYPES
from serving.errors import CheckpointNotFoundError, ConfigError

# The input dtypes a config may name; the codecs cast every request to one of them.
_INPUT_DTYPES = {
    name: TORCH_DTYPES[name]
    for name in ("float32", "float16", "bfloat16", "float64", "int64", "int32", "uint8", "bool")
}


@dataclass(frozen=True)
class ReloadSpec:
    """Hot reload: where training writes checkpoints and which one to serve."""

    watch_dir: Path | None = None
    poll_interval_s: float = 2.0
    policy: str = "latest"  # a name in serving.reload.policy.POLICIES
    metric: str = "loss"  # for policy "best": a metadata entry (loss, metrics.<name>, ...)
    mode: Literal["min", "max"] = "min"
    pinned: str | None = None  # for policy "pinned": a file name inside watch_dir
    strategy: str = "shadow"  # a name in serving.reload.strategy.STRATEGIES
    follow_symlinks: bool = False  # serve watched files that resolve outside watch_dir


@dataclass(frozen=True)
class ModelSpec:
    """Everything the handler needs to build and serve one model."""

    architecture: str | None
    checkpoint: Path | None
    architecture_kwargs: dict[str, Any] = field(default_factory=dict)
    device: str = "auto"
    dtype: str = "auto"
    strict: bool = True
    trust_pickle: bool = False
    state_dict_key: str | None = None
    safe_globals: tuple[str, ...] = ()
    input: InputSpec = field(default_factory=lambda: InputSpec(shape=()))
    postprocess: PostProcess = field(default_factory=PostProcess)
    threads: int | None = None  # intra-op threads per worker; None: serving.threads decides
    reload: ReloadSpec = field(default_factory=ReloadSpec)
    json_logs: bool = False
    metrics: bool = True  # handler metrics (serving.metrics); off only to measure what they cost
    checkpoint_setting: str | None = None  # handler.checkpoint as written (errors show it, not a temp path)


_TOP_KEYS = {f.name for f in fields(ModelSpec)} - {"reload"} | {
    "input",
    "output",
    "postprocess",
    "watch_dir",
    "poll_interval_s",
    "policy",
    "metric",
    "mode",
    "pinned",
    "reload_strategy",
    "follow_symlinks",
}


def parse_spec(
    handler: Mapping[str, Any] | None, *, model_dir: str | Path, source: str = "model-config.yaml"
) -> ModelSpec:
    """Validate the ``handler:`` mapping; relative paths resolve against ``model_dir``.

    Every error names ``source`` and the key, so a typo is found at start-up, not at the first request.
    """
    cfg = dict(handler or {})
    where = f"{source}, handler."
    unknown = sorted(set(cfg) - _TOP_KEYS)
    if unknown:
        raise ConfigError(
            f"Unknown key(s) in {source} under handler: {unknown}.", hint=f"Known keys: {sorted(_TOP_KEYS)}."
        )
    base = Path(model_dir)
    architecture = _opt_str(cfg, "architecture", where)
    checkpoint = _opt_path(cfg, "checkpoint", where, base)
    reload = _reload(cfg, where, base)
    if checkpoint is None and reload.watch_dir is None:
        raise ConfigError(
            f"{where}checkpoint is missing.", hint="Name the checkpoint file, or set watch_dir."
        )
    kwargs = cfg.get("architecture_kwargs") or {}
    if not isinstance(kwargs, Mapping):
        raise ConfigError(f"{where}architecture_kwargs must be a mapping, got {type(kwargs).__name__}.")
    threads = cfg.get("threads", "auto")
    if threads != "auto" and (not isinstance(threads, int) or threads < 1):
        raise ConfigError(f"{where}threads must be 'auto' or a positive integer, got {threads!r}.")
    return ModelSpec(
        architecture=architecture,
        checkpoint=checkpoint,
        architecture_kwargs=dict(kwargs),
        device=str(cfg.get("device", "auto")),
        dtype=str(cfg.get("dtype", "auto")),
        strict=_bool(cfg, "strict", where, True),
        trust_pickle=_bool(cfg, "trust_pickle", where, False),
        state_dict_key=_opt_str(cfg, "state_dict_key", where),
        safe_globals=tuple(_str_list(cfg, "safe_globals", where)),
        input=_input(cfg.get("input"), f"{where}input."),
        postprocess=_postprocess(cfg.get("postprocess"), cfg.get("output"), f"{where}postprocess.", base),
        threads=None if threads == "auto" else threads,
        reload=reload,
        json_logs=_bool(cfg, "json_logs", where, False),
        metrics=_bool(cfg, "metrics", where, True),
        checkpoint_setting=_opt_str(cfg, "checkpoint", where),
    )


def missing_checkpoint_error(spec: ModelSpec) -> CheckpointNotFoundError:
    """The error for a configured checkpoint that does not exist, naming it as the user wrote it."""
    written = spec.checkpoint_setting or str(spec.checkpoint)
    if Path(os.path.expandvars(os.path.expanduser(written))).is_absolute():
        return CheckpointNotFoundError(
            f"handler.checkpoint {written!r} does not exist.",
            hint="Check the path, and that the server can see that volume.",
        )
    return CheckpointNotFoundError(
        f"handler.checkpoint {written!r} is a relative path, so it is read from inside the model archive, "
        "and the archive holds no such file.",
        hint="Bundle the file (`ckptserve package ... --checkpoint PATH`), give an absolute path, or serve "
        "what training writes with watch_dir (`ckptserve package ... --watch-dir DIR`).",
    )


def _input(cfg: Any, where: str) -> InputSpec:
    if not isinstance(cfg, Mapping) or "shape" not in cfg:
        raise ConfigError(
            f"{where}shape is missing: the per-instance input shape (no batch dimension).",
            hint="For 8x8 grayscale images: input: {shape: [1, 8, 8], dtype: float32}.",
        )
    shape = cfg["shape"]
    if not isinstance(shape, list) or not all(isinstance(d, int) and (d > 0 or d == -1) for d in shape):
        raise ConfigError(
            f"{where}shape must be a list of positive integers (-1 for any size), got {shape!r}."
        )
    dtype = str(cfg.get("dtype", "float32"))
    if dtype not in _INPUT_DTYPES:
        raise ConfigError(
            f"{where}dtype {dtype!r} is not supported.", hint=f"Use one of {sorted(_INPUT_DTYPES)}."
        )
    max_instances = cfg.get("max_instances", 64)
    if not isinstance(max_instances, int) or max_instances < 1:
        raise ConfigError(f"{where}max_instances must be a positive integer, got {max_instances!r}.")
    return InputSpec(
        shape=tuple(shape),
        dtype=_INPUT_DTYPES[dtype],
        name=str(cfg.get("name", "input__0")),
        allow_nonfinite=_bool(cfg, "allow_nonfinite", where, False),
        max_instances=max_instances,
    )


def _postprocess(cfg: Any, output: Any, where: str, base: Path) -> PostProcess:
    cfg = dict(cfg or {})
    kind = cfg.get("kind", "raw")
    if kind not in ("raw", "softmax", "topk"):
        raise ConfigError(f"{where}kind must be raw, softmax or topk, got {kind!r}.")
    k = cfg.get("k", 5)
    if not isinstance(k, int) or k < 1:
        raise ConfigError(f"{where}k must be a positive integer, got {k!r}.")
    labels = None
    if cfg.get("labels"):
        labels = load_labels(labels_file(str(cfg["labels"]), base, where))
    output_name = str((output or {}).get("name", "output__0")) if isinstance(output, Mapping) else "output__0"
    return PostProcess(kind=kind, k=k, labels=labels, output_name=output_name)


def _reload(cfg: Mapping[str, Any], where: str, base: Path) -> ReloadSpec:
    interval = cfg.get("poll_interval_s", 2.0)
    if not isinstance(interval, (int, float)) or not math.isfinite(interval) or interval <= 0:
        raise ConfigError(f"{where}poll_interval_s must be a positive number of seconds, got {interval!r}.")
    # The registries' modules import this one (for ReloadSpec): look them up when a spec is parsed.
    from serving.reload.policy import POLICIES
    from serving.reload.strategy import STRATEGIES

    defaults = ReloadSpec()
    choices = {
        "policy": (tuple(POLICIES), defaults.policy),
        "mode": (("min", "max"), defaults.mode),
        "reload_strategy": (tuple(STRATEGIES), defaults.strategy),
    }
    picked = {}
    for key, (allowed, default) in choices.items():
        value = cfg.get(key, default)
        if value not in allowed:
            raise ConfigError(f"{where}{key} must be one of {list(allowed)}, got {value!r}.")
        picked[key] = value
    chosen = ReloadSpec(
        policy=picked["policy"],
        metric=str(cfg.get("metric", "loss")),
        mode=picked["mode"],
        pinned=_opt_str(cfg, "pinned", where),
        strategy=picked["reload_strategy"],
    )
    POLICIES[chosen.policy].check(chosen, where)  # the settings the policy cannot rank without
    return replace(
        chosen,
        watch_dir=_opt_path(cfg, "watch_dir", where, base),
        poll_interval_s=float(interval),
        follow_symlinks=_bool(cfg, "follow_symlinks", where, False),
    )


def labels_file(value: str, base: Path, where: str = "handler.postprocess.") -> Path:
    """The labels file ``value`` names (relative: inside the archive at ``base``), or why it is not there."""
    path = _resolve(value, base)
    if path.exists():
        return path
    if path == base / value and not Path(value).is_absolute():  # base / an absolute path is that path
        raise ConfigError(
            f"{where}labels {value!r} is not in the archive (a relative path is read from inside it).",
            hint=f"Add the file with `--extra-files path/to/{Path(value).name}` (extra files land at the "
            "archive's top level), or give an absolute path.",
        )
    raise ConfigError(f"{where}labels {value!r} does not exist.", hint="Check the path.")


def _resolve(value: str, base: Path) -> Path:
    path = Path(os.path.expandvars(os.path.expanduser(value)))
    return path if path.is_absolute() else base / path


def _opt_path(cfg: Mapping[str, Any], key: str, where: str, base: Path) -> Path | None:
    value = _opt_str(cfg, key, where)
    return _resolve(value, base) if value else None


def _opt_str(cfg: Mapping[str, Any], key: str, where: str) -> str | None:
    value = cfg.get(key)
    if value is not None and not isinstance(value, str):
        raise ConfigError(f"{where}{key} must be a string, got {type(value).__name__} {value!r}.")
    return value or None


def _bool(cfg: Mapping[str, Any], key: str, where: str, default: bool) -> bool:
    value = cfg.get(key, default)
    if not isinstance(value, bool):
        raise ConfigError(f"{where}{key} must be true or false, got {value!r}.")
    return value


def _str_list(cfg: Mapping[str, Any], key: str, where: str) -> list[str]:
    value = cfg.get(key) or []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where}{key} must be a list of strings, got {value!r}.")
    return value
