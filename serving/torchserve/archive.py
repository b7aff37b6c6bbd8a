"""Build TorchServe model archives (.mar files or folders) through torch-model-archiver's Python API."""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Literal

from model_archiver.model_archiver_config import ModelArchiverConfig
from model_archiver.model_archiver_error import ModelArchiverError
from model_archiver.model_packaging_utils import ModelExportUtils

from serving.errors import ConfigError

log = logging.getLogger(__name__)

_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-.]*$")
_MANIFEST_DIR = "MAR-INF"

ArchiveFormat = Literal["default", "no-archive"]


def build_archive(
    name: str,
    *,
    handler: Path,
    export_dir: Path,
    model_file: Path | None = None,
    serialized_file: Path | None = None,
    extra_files: list[Path] | tuple[Path, ...] = (),
    config_file: Path | None = None,
    version: str = "1.0",
    archive_format: ArchiveFormat = "default",
    force: bool = True,
) -> Path:
    """Package a handler and its files as ``export_dir/NAME.mar`` (or the folder ``NAME`` for no-archive).

    Every file lands at the archive's top level under its own name, where the worker finds it in
    ``model_dir``; an extra *folder* keeps its name and contents (a Python package, say). The result
    replaces any earlier archive of the same name in one rename, so a server never reads half a file.
    """
    if not _MODEL_NAME.match(name):
        raise ConfigError(
            f"Archive name: expected letters, digits, '_', '-' or '.', starting with a letter or digit; "
            f"found {name!r}.",
            hint="TorchServe uses the name in URLs (/predictions/NAME); pick a plain one.",
        )
    if archive_format not in ("default", "no-archive"):
        raise ConfigError(f"archive_format: expected 'default' or 'no-archive', found {archive_format!r}.")
    handler = _existing_file("handler", handler)
    if handler.suffix != ".py":
        raise ConfigError(
            f"handler: expected a Python file (.py), found {handler}.",
            hint="Point it at the module that defines the handler class.",
        )
    files: dict[str, Path | None] = {
        "handler": handler,
        "model_file": _existing_file("model_file", model_file) if model_file else None,
        "serialized_file": _existing_file("serialized_file", serialized_file) if serialized_file else None,
        "config_file": _existing_file("config_file", config_file) if config_file else None,
    }
    extras = [_existing("extra_files", Path(p)) for p in extra_files]
    _refuse_name_clashes([p for p in files.values() if p is not None] + extras)

    export_dir = Path(export_dir).expanduser().resolve()
    export_dir.mkdir(parents=True, exist_ok=True)
    target = export_dir / (name if archive_format == "no-archive" else f"{name}.mar")
    if target.exists() and not force:
        raise ConfigError(
            f"An archive already exists at {target}.",
            hint="Pass force=True to replace it, or choose another name.",
        )
    if target.is_dir() and not (target / _MANIFEST_DIR).is_dir():
        raise ConfigError(
            f"{target} is a folder but no model archive (no {_MANIFEST_DIR}/ inside); not replacing it.",
            hint="Move it away or choose another archive name.",
        )

    config = ModelArchiverConfig(
        model_name=name,
        handler=str(handler),
        version=version,
        serialized_file=str(files["serialized_file"]) if files["serialized_file"] else None,
        model_file=str(files["model_file"]) if files["model_file"] else None,
        config_file=str(files["config_file"]) if files["config_file"] else None,
        export_path=str(export_dir),
        archive_format=archive_format,
        force=True,
    )
    # Staging and output both live in export_dir: torch-model-archiver's own staging folder is
    # $TMPDIR/NAME, shared by every build of that name on the machine (it deletes it first).
    with (
        tempfile.TemporaryDirectory(prefix=f".{name}-files-", dir=export_dir) as staging,
        tempfile.TemporaryDirectory(prefix=f".{name}-out-", dir=export_dir) as out_dir,
    ):
        for path in [p for p in files.values() if p is not None] + extras:
            _copy_into(path, Path(staging))
        try:
            manifest = ModelExportUtils.generate_manifest_json(config)
            ModelExportUtils.archive(out_dir, name, staging, manifest, archive_format)
        except (ModelArchiverError, OSError, ValueError) as exc:
            raise ConfigError(f"torch-model-archiver could not build {target.name}: {exc}") from exc
        built = Path(out_dir) / target.name
        _replace(built, target)
    log.info("built model archive %s", target)
    return target


def _existing(what: str, path: Path) -> Path:
    path = Path(path).expanduser()
    if not path.exists():
        raise ConfigError(
            f"{what}: expected a file, found nothing at {path}.",
            hint="Check the path (relative paths count from the current directory).",
        )
    return path.resolve()


def _existing_file(what: str, path: Path) -> Path:
    path = _existing(what, path)
    if not path.is_file():
        raise ConfigError(f"{what}: expected a file, found a folder at {path}.")
    return path


def _refuse_name_clashes(paths: list[Path]) -> None:
    # The archive is flat: two files of one name would silently overwrite each other.
    seen: dict[str, Path] = {}
    for path in paths:
        if path.name in seen and seen[path.name] != path:
            raise ConfigError(
                f"Two archive files share the name {path.name!r}: {seen[path.name]} and {path}.",
                hint="Rename one; every file lands at the top level of the archive.",
            )
        seen[path.name] = path


def _copy_into(path: Path, staging: Path) -> None:
    if path.is_dir():
        shutil.copytree(path, staging / path.name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    else:
        shutil.copy2(path, staging / path.name)


def _replace(built: Path, target: Path) -> None:
    if target.is_file() and built.is_dir():
        target.unlink()
    if built.is_file() or not target.exists():
        os.replace(built, target)  # one rename: readers see the old archive or the new one
        return
    # A folder cannot be swapped over another in one rename: move the old one aside first.
    old = target.with_name(f".{target.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    os.replace(target, old)
    os.replace(built, target)
    shutil.rmtree(old, ignore_errors=True)
