"""save_checkpoint: atomic, tutorial-compatible, rank-0-only, prunable."""

from __future__ import annotations

import os
import stat
import sys
import textwrap
from pathlib import Path
from typing import cast

import pytest
import torch

from serving import checkpoint_info, load_model, save_checkpoint
from serving.checkpoints import atomic_write, prune_checkpoints, unwrap_model
from tests.assets.archs import SmallNet
from tests.conftest import Reference


def test_a_directory_gets_epoch_names_and_a_plain_torch_load_reads_it(
    reference: Reference, tmp_path: Path
) -> None:
    path = save_checkpoint(
        tmp_path, reference.model, optimizer=reference.optimizer, epoch=7, loss=torch.tensor(0.3)
    )
    assert path == tmp_path / "model_epoch_7.pth"
    plain = torch.load(path, weights_only=True)  # the tutorial's own loading code works (seed 9.3)
    assert set(plain) >= {"model_state_dict", "optimizer_state_dict", "epoch", "loss"}
    fresh = torch.optim.Adam(SmallNet().parameters())
    fresh.load_state_dict(plain["optimizer_state_dict"])  # seed 9.4: training can resume
    assert plain["ckptserve"]["architecture"] == "tests.assets.archs:SmallNet"
    assert save_checkpoint(tmp_path, reference.model) == tmp_path / "model_final.pth"


def test_files_get_normal_permissions_and_no_temp_file_is_left(reference: Reference, tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        path = save_checkpoint(tmp_path / "ckpt.pth", reference.model, epoch=1)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pth"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "model.pth"
    target.write_bytes(b"old")

    def explode(fh: object) -> None:
        fh.write(b"partial")  # type: ignore[attr-defined]
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, explode)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["model.pth"]


def test_wrappers_are_unwrapped(reference: Reference, tmp_path: Path) -> None:
    compiled = cast(torch.nn.Module, torch.compile(reference.model))  # an OptimizedModule
    assert unwrap_model(compiled) is reference.model
    path = save_checkpoint(tmp_path, compiled, epoch=1)
    assert not any(
        k.startswith("_orig_mod.") for k in torch.load(path, weights_only=True)["model_state_dict"]
    )


def test_keep_last_prunes_the_oldest_epochs(reference: Reference, tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("kept")
    for epoch in (1, 2, 10, 3):
        save_checkpoint(tmp_path, reference.model, epoch=epoch, keep_last=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "model_epoch_10.pth",
        "model_epoch_3.pth",
        "notes.txt",
    ]
    with pytest.raises(ValueError):
        prune_checkpoints(tmp_path, 0)


def test_extra_entries_are_saved_but_cannot_clobber(reference: Reference, tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path, reference.model, epoch=1, extra={"val_accuracy": 0.9})
    assert torch.load(path, weights_only=True)["val_accuracy"] == 0.9
    with pytest.raises(ValueError, match="epoch"):
        save_checkpoint(tmp_path, reference.model, extra={"epoch": 3})


def test_metrics_reach_the_loaded_models_metadata(reference: Reference, tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path, reference.model, epoch=2, loss=0.4, metrics={"accuracy": 0.75})
    info = checkpoint_info(load_model(SmallNet, path))
    assert (info.epoch, info.loss, info.metadata["metrics"]) == (2, 0.4, {"accuracy": 0.75})


DISTRIBUTED_SCRIPT = textwrap.dedent(
    """
    import sys, torch, torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel
    from serving import save_checkpoint
    from tests.assets.archs import SmallNet

    rank, world, store, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    torch.manual_seed(0)
    model = DistributedDataParallel(SmallNet())
    path = save_checkpoint(out, model, epoch=1)
    print(f"rank {rank} -> {path}")
    dist.barrier()
    dist.destroy_process_group()
    """
)


@pytest.mark.slow
def test_only_rank_zero_writes_in_a_real_two_process_job(tmp_path: Path) -> None:  # seed 9.7
    import subprocess

    script = tmp_path / "job.py"
    script.write_text(DISTRIBUTED_SCRIPT)
    out = tmp_path / "ckpts"
    # The ranks meet through a file only this test knows: no port that another process can take first
    # (gloo's own connections bind port 0).
    store = str(tmp_path / "rendezvous")
    root = Path(__file__).resolve().parents[2]
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(rank), "2", store, str(out)],
            cwd=root,
            env={**os.environ, "PYTHONPATH": str(root)},
            stdout=subprocess.PIPE,
            text=True,
        )
        for rank in range(2)
    ]
    outputs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert "rank 1 -> None" in outputs[1]
    assert [p.name for p in out.iterdir()] == ["model_epoch_1.pth"]
    keys = torch.load(out / "model_epoch_1.pth", weights_only=True)["model_state_dict"]
    assert not any(k.startswith("module.") for k in keys)  # DDP wrapper stripped
