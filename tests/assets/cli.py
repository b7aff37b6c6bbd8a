"""Run the ``ckptserve`` command as a user does: a child process, its exit code, stdout and stderr."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def ckptserve(
    *args: str | Path, tmpdir: Path | None = None, cwd: Path | None = None, timeout_s: float = 600
) -> subprocess.CompletedProcess[str]:
    """``python -m serving ARGS`` (the ``ckptserve`` entry point); ``tmpdir`` becomes its TMPDIR and TEMP."""
    env = dict(os.environ)
    if tmpdir is not None:
        env.update(TMPDIR=str(tmpdir), TEMP=str(tmpdir))
    return subprocess.run(
        [sys.executable, "-m", "serving", *map(str, args)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
