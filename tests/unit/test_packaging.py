"""The installed package (what the Docker image gets) carries every runtime file, not only .py files."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RUNTIME_FILES = {
    "handlers/checkpoint_handler.py",  # copied into every archive
    # the demo model, which `ckptserve demo` trains and serves from the installed package
    "model_store/digits/model.py",
    "model_store/digits/train.py",
    "model_store/digits/model-config.yaml",
    "model_store/digits/index_to_name.json",
    "serving/torchserve/log4j2.xml",  # the quiet logging config
    "serving/torchserve/metrics.yaml",  # declares the handler's metrics to TorchServe
    "serving/protos/grpc_predict_v2.proto",
    "serving/py.typed",  # users' type checkers read our annotations ...
    "serving/protos/grpc_predict_v2_pb2.pyi",  # ... and the generated modules' stubs
}


@pytest.mark.slow
def test_the_wheel_holds_the_runtime_files(tmp_path: Path) -> None:
    # Build from a clean copy of the tracked files: a build/ folder left in the checkout would hide
    # a missing package-data rule.
    source = tmp_path / "src"
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    for name in tracked.splitlines():
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    pip = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"]
    subprocess.run([*pip, "-w", str(tmp_path), str(source)], check=True, capture_output=True)
    (wheel,) = tmp_path.glob("ckptserve-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert names >= RUNTIME_FILES, RUNTIME_FILES - names
