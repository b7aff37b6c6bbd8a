"""`ckptserve inspect`: what a checkpoint holds, for people and for machines."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest
import torch

from serving.app.cli import main
from tests.conftest import Reference


def test_inspect_json_describes_a_gpu_written_training_checkpoint(
    reference: Reference, tmp_path: Path, capsys
) -> None:
    path = tmp_path / "ckpt.pth"
    with mock.patch("torch.serialization.location_tag", lambda storage: "cuda:0"):
        torch.save(
            {
                "epoch": 4,
                "loss": 0.25,
                "model_state_dict": {f"module.{k}": v for k, v in reference.model.state_dict().items()},
                "optimizer_state_dict": reference.optimizer.state_dict(),
            },
            path,
        )
    assert main(["inspect", str(path), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    weights = reference.model.state_dict()
    assert summary["layout"] == "torch_save" and summary["kind"] == "training_checkpoint"
    assert summary["state_dict_key"] == "model_state_dict"
    assert summary["tensors"] == len(weights)
    assert summary["parameters"] == sum(t.numel() for t in weights.values())
    assert summary["tensor_bytes"] == sum(t.numel() * t.element_size() for t in weights.values())
    assert summary["dtypes"] == {"float32": len(weights) - 1, "int64": 1}
    assert summary["saved_devices"] == ["cuda:0"]
    assert (summary["epoch"], summary["loss"]) == (4, 0.25)
    from serving.checkpoints import fingerprint, shape_map

    assert summary["fingerprint"] == fingerprint(shape_map(weights))  # DDP prefix stripped


@pytest.mark.slow
def test_inspect_prints_a_table_and_errors_go_to_stderr(reference: Reference, tmp_path: Path) -> None:
    torch.save(reference.model.state_dict(), tmp_path / "w.pth")
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run(
        [sys.executable, "-m", "serving", "inspect", str(tmp_path / "w.pth")],
        capture_output=True,
        text=True,
        cwd=root,
    )
    assert out.returncode == 0
    assert "layout" in out.stdout and "torch_save (state_dict)" in out.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "serving", "inspect", str(tmp_path / "missing.pth")],
        capture_output=True,
        text=True,
        cwd=root,
    )
    assert bad.returncode == 2
    assert "error: No checkpoint at" in bad.stderr and "what to do:" in bad.stderr
    assert "Traceback" not in bad.stderr
