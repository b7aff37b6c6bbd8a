"""Package a model for TorchServe with ckptserve's handler: merge and validate its config, then archive it."""

from __future__ import annotations

import importlib.util
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from serving.errors import ConfigError
from serving.torchserve.archive import ArchiveFormat, build_archive
from serving.torchserve.precheck import check_package, warn_if_no_watch_dir

HANDLER_MODULE = "handlers.checkpoint_handler"

# TorchServe keys the archive's model-config.yaml gets when the user's yaml leaves them out: the
# fastest configuration measured (docs/performance.md). No minWorkers: TorchServe then starts one
# worker per CPU the JVM may use (quota-aware), and the handler gives each worker its share of threads.
MODEL_DEFAULTS: dict[str, Any] = {"batchSize": 8, "maxBatchDelay": 1}


def handler_path() -> Path:
    """The handler module that every archive carries (installed with the package).

    Found, not imported: importing it would pull in torch and TorchServe's ``ts`` for a file name.
    """
    spec = importlib.util.find_spec(HANDLER_MODULE)
    if spec is None or spec.origin is None:
        raise ConfigError(
            f"Cannot find ckptserve's handler module {HANDLER_MODULE}.",
            hint="Reinstall ckptserve (pip install ckptserve): its wheel ships the handlers package.",
        )
    return Path(spec.origin)


def read_model_config(path: str | Path | None) -> dict[str, Any]:
    """A model-config.yaml as a dict ({} for None), with a typed error for unreadable files."""
    if path is None:
        return {}
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"Cannot read the model config {str(path)!r}: {exc}.") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{str(path)!r} should hold a YAML mapping, found {type(data).__name__}.")
    return data


def _refuse_zero_delay(data: Mapping[str, Any], config: str | Path | None) -> None:
    # TorchServe 0.12.0 takes a yaml maxBatchDelay of 0 for "unset" and waits its default 100 ms.
    if "maxBatchDelay" in data and data["maxBatchDelay"] == 0:
        raise ConfigError(
            f"{config or 'model-config.yaml'}: maxBatchDelay 0 is read by TorchServe 0.12.0 as unset, "
            "which makes every batch wait its default of 100 ms.",
            hint="Use maxBatchDelay: 1 (the shortest wait it honours), or batchSize: 1 for no batching.",
        )


def package_model(
    name: str,
    *,
    model_store: str | Path,
    model_file: str | Path | None,
    config: str | Path | None = None,
    architecture: str | None = None,
    checkpoint: str | Path | None = None,
    watch_dir: str | Path | None = None,
    extra_files: Sequence[str | Path] = (),
    handler_overrides: Mapping[str, Any] | None = None,
    version: str = "1.0",
    archive_format: ArchiveFormat = "default",
) -> Path:
    """Build ``model_store/NAME.mar`` with ckptserve's handler.

    ``checkpoint`` is bundled into the archive (handler.checkpoint names it); ``watch_dir`` is not:
    the worker reads checkpoints from there at start-up and on every poll (hot reload). The merged
    ``handler:`` section is validated here, so a typo fails now, not when a worker starts.
    """
    data = read_model_config(config)
    handler = dict(data.get("handler") or {})
    if architecture:
        handler["architecture"] = architecture
    bundled: list[Path] = [Path(p) for p in extra_files]
    if checkpoint is not None:
        ckpt = Path(checkpoint)
        if not ckpt.exists():
            raise ConfigError(f"--checkpoint {str(ckpt)!r} does not exist.")
        bundled.append(ckpt)
        handler["checkpoint"] = ckpt.name
    if watch_dir is not None:
        handler["watch_dir"] = str(Path(watch_dir).resolve())
    handler.update(handler_overrides or {})
    _refuse_zero_delay(data, config)
    data = {**MODEL_DEFAULTS, **data, "handler": handler}  # the user's keys win
    store = Path(model_store)
    store.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="ckptserve-package-") as tmp:
        staging = Path(tmp)
        for path in [*bundled, *([Path(model_file)] if model_file else [])]:
            if path.exists():
                (staging / path.name).symlink_to(path.resolve())
        # Validate as the worker will see it: files at the archive's top level.
        spec = check_package(
            handler,
            staging=staging,
            source=f"{config or 'model-config.yaml'}",
            model_file=Path(model_file) if model_file else None,
            extra_files=[Path(p) for p in extra_files],
        )
        warn_if_no_watch_dir(spec)
        merged = staging / "model-config.yaml"
        merged.write_text(yaml.safe_dump(data, sort_keys=False))
        return build_archive(
            name,
            handler=handler_path(),
            export_dir=store,
            model_file=Path(model_file) if model_file else None,
            extra_files=bundled,
            config_file=merged,
            version=version,
            archive_format=archive_format,
        )
