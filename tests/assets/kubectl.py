"""`kubectl kustomize` for the tests that render k8s/: a skip with the reason where kubectl is missing."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

MISSING = (
    "kubectl is not on PATH: these tests render k8s/ with `kubectl kustomize`. "
    "Install kubectl (it bundles kustomize) to run them."
)


def kustomize(path: Path) -> list[dict[str, Any]]:
    """The documents `kubectl kustomize PATH` renders (a failure names the command and its stderr)."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        if os.environ.get("CI"):  # CI's machine has kubectl: a skip there would hide broken manifests
            pytest.fail(f"{MISSING} CI must run them, so here this is a failure, not a skip.")
        pytest.skip(MISSING)
    proc = subprocess.run(
        [kubectl, "kustomize", str(path)], capture_output=True, text=True, timeout=120, check=False
    )
    if proc.returncode != 0:
        pytest.fail(f"`kubectl kustomize {path}` failed:\n{proc.stderr}")
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]
