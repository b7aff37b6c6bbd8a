"""Package-time checks: what would stop a worker from loading the archive, found before it is built."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import serving
from serving.errors import CkptServeError, ConfigError
from serving.spec import ModelSpec, labels_file, missing_checkpoint_error, parse_spec

log = logging.getLogger(__name__)

_IMPORT_TIMEOUT_S = 300.0  # importing torch and the user's module on a busy machine


def check_package(
    handler: Mapping[str, Any],
    *,
    staging: Path,
    source: str,
    model_file: Path | None,
    extra_files: Sequence[Path],
) -> ModelSpec:
    """Validate the archive as a worker will see it (its files at the top level of ``staging``).

    Every independent problem is reported at once, so fixing one does not reveal the next; then the
    ``handler:`` section is validated, and a relative checkpoint must be in the archive unless a watch
    directory will provide one.
    """
    problems = [
        *(_missing_file(flag, path) for flag, path in _given_files(model_file, extra_files)),
        _architecture_problem(handler, staging, model_file),
        _labels_problem(handler, staging),
    ]
    found = [p for p in problems if p is not None]
    if len(found) == 1:
        raise found[0]
    if found:
        raise ConfigError(
            f"The archive would not load ({len(found)} problems):"
            + "".join(f"\n    - {p.message}" for p in found),
            hint="".join(f"\n    - {p.hint}" for p in found if p.hint) or None,
        )
    spec = parse_spec(handler, model_dir=staging, source=source)
    if spec.checkpoint is not None and spec.reload.watch_dir is None and not spec.checkpoint.exists():
        raise missing_checkpoint_error(spec)
    return spec


def warn_if_no_watch_dir(spec: ModelSpec) -> None:
    """A watch directory that does not exist yet is allowed (training creates it), but worth a word."""
    watch = spec.reload.watch_dir
    if watch is not None and not watch.is_dir():
        log.warning(
            "the watch directory %s does not exist (yet): the server will wait until training creates it "
            "and writes a checkpoint there; check the path if training already runs",
            watch,
        )


def _given_files(model_file: Path | None, extra_files: Sequence[Path]) -> list[tuple[str, Path]]:
    given = [("--model-file", model_file)] if model_file else []
    return given + [("--extra-files", p) for p in extra_files]


def _missing_file(flag: str, path: Path) -> ConfigError | None:
    if path.exists():
        return None
    return ConfigError(f"{flag} {str(path)!r} does not exist.", hint=f"Check the path given to {flag}.")


def _labels_problem(handler: Mapping[str, Any], staging: Path) -> ConfigError | None:
    post = handler.get("postprocess")
    labels = post.get("labels") if isinstance(post, Mapping) else None
    if not isinstance(labels, str) or not labels:
        return None  # none, or a type error parse_spec reports
    try:
        labels_file(labels, staging)
    except ConfigError as err:
        return err
    return None


def _architecture_problem(
    handler: Mapping[str, Any], staging: Path, model_file: Path | None
) -> CkptServeError | None:
    """Import the architecture and build it on the meta device, in a child process.

    A child, because importing the user's module runs its code and caches it under its bare name
    (``model``): the packaging process must stay clean for the next archive.
    """
    architecture = handler.get("architecture")
    if not isinstance(architecture, str) or not architecture:
        return None  # a self-describing checkpoint, or a config error parse_spec reports
    kwargs = handler.get("architecture_kwargs") or {}
    # The child sees what a worker sees: the archive's files (its cwd, first on sys.path with -m), this
    # environment, and ckptserve itself; not the directories this process added to its sys.path.
    serving_root = str(Path(serving.__file__).resolve().parents[1])
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [serving_root, os.environ.get("PYTHONPATH")])),
    }
    try:
        done = subprocess.run(
            [sys.executable, "-m", __name__, str(staging), architecture, json.dumps(kwargs)],
            cwd=staging,
            env=env,
            capture_output=True,
            text=True,
            timeout=_IMPORT_TIMEOUT_S,
        )
    except (OSError, subprocess.TimeoutExpired, TypeError) as exc:
        log.warning("could not check that %s imports (%s); the worker will tell", architecture, exc)
        return None
    if done.returncode == 0:
        return None
    try:
        report = json.loads(done.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return ConfigError(f"Checking the architecture {architecture!r} failed: {done.stderr.strip()[-500:]}")
    module, _, name = architecture.partition(":")
    if report["message"].startswith("Cannot import module"):  # not in the archive, not installed
        return ConfigError(
            f"handler.architecture {architecture!r}: the archive has no module {module!r} and none is "
            "installed" + ("" if model_file is None else f" (--model-file gives {model_file.name!r})") + ".",
            hint=f"Give the file that defines {name} with --model-file (its name without .py is the module).",
        )

    # The worker sees the archive's files where this check saw its staging copy: say "the archive".
    def in_archive(text: str | None) -> str | None:
        return text.replace(str(staging), "<archive>") if text else None

    return ConfigError(
        f"handler.architecture {architecture!r}: {in_archive(report['message'])}",
        hint=in_archive(report.get("hint")),
    )


def _probe(staging: str, architecture: str, kwargs: str) -> int:
    """The child's side: exit 0 if the architecture builds, else print the error as one JSON line."""
    from serving.architecture import build, resolve_architecture

    try:
        build(resolve_architecture(architecture, [staging]), json.loads(kwargs), "meta")
    except CkptServeError as err:
        print(json.dumps({"message": err.message, "hint": err.hint}))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(_probe(*sys.argv[1:4]))
