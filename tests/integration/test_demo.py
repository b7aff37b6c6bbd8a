"""`ckptserve demo` as `make demo` runs it: its files in TMPDIR and gone at the end, the OIP gateway up,
and only commands that work against what is left running."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np

from serving.client.grpc import GrpcClient
from serving.torchserve.server import stop_server
from tests.assets.cli import ckptserve


def demo(tmp_path: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "tmp").mkdir()
    args: list[str | Path] = ["demo", "--epochs", "1", "--workdir", tmp_path / "work", *flags]
    return ckptserve(*args, tmpdir=tmp_path / "tmp", cwd=tmp_path)


def test_demo_cleans_up_and_offers_no_command_for_a_stopped_server(tmp_path: Path) -> None:
    done = demo(tmp_path)
    assert done.returncode == 0, done.stderr
    assert re.search(r"gRPC \(OIP v2\)\s+127\.0\.0\.1:\d+", done.stdout), done.stdout  # the gateway ran
    assert "ckptserve stop" not in done.stdout and "--keep-running" in done.stdout
    # Its runtime directory (in TMPDIR: see the next test) is gone; torch may leave caches there.
    assert list((tmp_path / "tmp").glob("ckptserve*")) == []


def test_demo_keep_running_prints_commands_that_work(tmp_path: Path) -> None:
    done = demo(tmp_path, "--keep-running")
    runtime_dirs = list((tmp_path / "tmp").glob("ckptserve-demo-*"))
    printed_dirs = re.findall(r"ckptserve stop --runtime-dir (\S+)", done.stdout)
    try:
        assert done.returncode == 0, done.stderr
        assert len(runtime_dirs) == 1  # in TMPDIR, not a fixed /tmp
        oip = re.search(r"OIP v2 gRPC \(GRPCInferenceService\): (\S+)", done.stdout)
        assert oip, done.stdout
        with GrpcClient(oip_target=oip.group(1), timeout_s=60) as client:  # the README's OIP example
            answer = client.infer("digits", {"input__0": np.zeros((1, 1, 8, 8), dtype=np.float32)})
        assert answer.outputs["topk_indices"].shape == (1, 3)

        printed = [line.strip() for line in done.stdout.splitlines() if line.strip().startswith("ckptserve ")]
        env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
        for command in printed:  # predict over HTTP, over gRPC, then stop: in the order printed
            ran = subprocess.run(
                ["bash", "-c", command], env=env, capture_output=True, text=True, timeout=300
            )
            assert ran.returncode == 0, (command, ran.stdout, ran.stderr)
        assert printed[-1] == f"ckptserve stop --runtime-dir {runtime_dirs[0]}" and "stopped" in ran.stdout
    finally:
        for runtime_dir in {*map(str, runtime_dirs), *printed_dirs}:  # whatever the demo left running
            stop_server(runtime_dir)
