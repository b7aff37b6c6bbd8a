"""Policies and pins: `latest` is the last written, every skip has a reason, a bad pin is reported."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from serving import checkpoint_info, load_model, save_checkpoint
from serving.reload import ModelSlot, Reloader, Scanner, rank, sample_input
from serving.reload.pin import read_pin_file
from serving.spec import ReloadSpec, parse_spec
from tests.assets.archs import SmallNet
from tests.conftest import Reference, train_reference


def _spec(watch: Path, **reload: object) -> Any:
    handler = {"architecture": "tests.assets.archs:SmallNet", "input": {"shape": [1, 8, 8]}}
    return parse_spec(
        {**handler, "watch_dir": str(watch), "poll_interval_s": 0.01, **reload}, model_dir=watch
    )


def _set_mtime(path: Path, seconds: float) -> None:
    os.utime(path, ns=(int(seconds * 1e9), int(seconds * 1e9)))


def _scan(directory: Path) -> list:
    scanner = Scanner(directory)
    scanner.scan()
    return scanner.scan()


def _names(ranked: list) -> list[str]:
    return [c.name for c in ranked]


class _Started:
    """A reloader with its slot, as the handler sets them up; events recorded."""

    def __init__(self, spec: Any) -> None:
        self.events: list[str] = []
        self.reloader = Reloader(
            spec, lambda p, sha: load_model(SmallNet, p, sha256=sha), lambda r, s: self.events.append(r)
        )
        model = self.reloader.initial_model(lambda m: None)
        assert model is not None
        self.reloader.slot = ModelSlot(model, sample_input((1, 8, 8), torch.float32))

    @property
    def served(self) -> str:
        assert self.reloader.slot is not None
        return Path(self.reloader.slot.info.path).name


# --- latest = the checkpoint written last ---------------------------------------------------------


def test_latest_serves_a_file_without_epoch_written_after_epoch_named_ones(
    reference: Reference, tmp_path: Path
) -> None:
    now = time.time()
    for epoch in (5, 10):
        path = tmp_path / f"model_epoch_{epoch}.pth"
        torch.save({"model_state_dict": reference.model.state_dict(), "epoch": epoch}, path)
        _set_mtime(path, now - 100 + epoch)
    torch.save(reference.model.state_dict(), tmp_path / "model_new.pt")  # no epoch anywhere
    ddp = {f"module.{k}": v for k, v in reference.model.state_dict().items()}
    torch.save(ddp, tmp_path / "c_ddp.pt")
    _set_mtime(tmp_path / "model_new.pt", now - 50)
    _set_mtime(tmp_path / "c_ddp.pt", now - 40)
    found = _scan(tmp_path)
    assert _names(rank(found, ReloadSpec(tmp_path, policy="latest"))) == [
        "c_ddp.pt",
        "model_new.pt",
        "model_epoch_10.pth",
        "model_epoch_5.pth",
    ]
    highest = _names(rank(found, ReloadSpec(tmp_path, policy="highest_epoch")))
    assert highest[:2] == ["model_epoch_10.pth", "model_epoch_5.pth"]


def test_saved_at_beats_the_modification_time_and_ties_go_to_the_higher_epoch(
    reference: Reference, tmp_path: Path
) -> None:
    saved = save_checkpoint(tmp_path, reference.model, epoch=3)  # records saved_at
    assert saved is not None
    bare = tmp_path / "bare.pt"
    torch.save(reference.model.state_dict(), bare)
    _set_mtime(saved, time.time() + 1000)  # a copy that touched the mtime: saved_at still rules
    _set_mtime(bare, time.time() - 1000)
    assert _names(rank(_scan(tmp_path), ReloadSpec(tmp_path)))[0] == "model_epoch_3.pth"
    _set_mtime(bare, time.time() + 2000)
    assert _names(rank(_scan(tmp_path), ReloadSpec(tmp_path)))[0] == "bare.pt"
    tie = time.time() + 3000
    for name in ("step_7.pt", "step_9.pt"):
        torch.save(reference.model.state_dict(), tmp_path / name)
        _set_mtime(tmp_path / name, tie)
    assert _names(rank(_scan(tmp_path), ReloadSpec(tmp_path)))[:2] == ["step_9.pt", "step_7.pt"]


def test_every_skipped_candidate_is_reported_with_its_reason(reference: Reference, tmp_path: Path) -> None:
    save_checkpoint(tmp_path, reference.model, epoch=1, metrics={"acc": 0.5})
    started = _Started(_spec(tmp_path, policy="best", metric="metrics.acc", mode="max"))
    save_checkpoint(tmp_path, train_reference(seed=3).model, epoch=2, metrics={"acc": 0.9})
    torch.save(reference.model.state_dict(), tmp_path / "model_new.pt")
    save_checkpoint(tmp_path, train_reference(seed=4).model, epoch=3, metrics={"acc": 0.7})
    assert started.reloader.poll_once() and started.served == "model_epoch_2.pth"
    skipped = started.reloader.status.skipped
    assert set(skipped) == {"model_epoch_1.pth", "model_new.pt", "model_epoch_3.pth"}
    assert "no 'metrics.acc'" in skipped["model_new.pt"]
    assert "prefers model_epoch_2.pth" in skipped["model_epoch_3.pth"]
    assert started.reloader.status.candidates == 4


def test_highest_epoch_stays_available_and_says_why_it_skips(reference: Reference, tmp_path: Path) -> None:
    save_checkpoint(tmp_path, reference.model, epoch=7)
    started = _Started(_spec(tmp_path, policy="highest_epoch"))
    torch.save(train_reference(seed=2).model.state_dict(), tmp_path / "model_new.pt")
    assert not started.reloader.poll_once() and started.served == "model_epoch_7.pth"
    assert "epoch none" in started.reloader.status.skipped["model_new.pt"]
    (tmp_path / "model_epoch_8.pth").touch()
    (tmp_path / "model_epoch_9").mkdir()
    started.reloader.poll_once()
    assert "empty" in started.reloader.status.skipped["model_epoch_8.pth"]
    assert "without a DCP .metadata" in started.reloader.status.skipped["model_epoch_9"]


# --- pins ------------------------------------------------------------------------------------------


def _two_checkpoints(reference: Reference, directory: Path) -> None:
    save_checkpoint(directory, reference.model, epoch=1)
    save_checkpoint(directory, train_reference(seed=8).model, epoch=2)


def test_a_pin_that_is_not_utf8_is_reported_once_and_never_stops_start_up(
    reference: Reference, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _two_checkpoints(reference, tmp_path)
    (tmp_path / ".pin").write_bytes(b"\xff\xfe\x00model_epoch_2.pth")
    with caplog.at_level(logging.WARNING, logger="serving.reload.watcher"):
        started = _Started(_spec(tmp_path, policy="pinned", pinned="model_epoch_1.pth"))
        for _ in range(5):
            started.reloader.poll_once()
    assert started.served == "model_epoch_1.pth"  # the configured pin applies
    (rejection,) = started.reloader.status.recent_rejections
    assert rejection.path.endswith(".pin") and "not UTF-8" in rejection.reason
    assert [r.levelno for r in caplog.records] == [logging.WARNING]  # one line, no traceback
    assert started.events == ["rejected"]
    (tmp_path / ".pin").write_text("model_epoch_2.pth\n")  # a good pin is a reload
    assert started.reloader.poll_once() and started.served == "model_epoch_2.pth"


def test_a_pin_naming_a_link_out_of_the_watch_dir_is_refused(reference: Reference, tmp_path: Path) -> None:
    watch, outside = tmp_path / "watch", tmp_path / "outside"
    watch.mkdir()
    outside.mkdir()
    save_checkpoint(watch, reference.model, epoch=1)
    foreign = save_checkpoint(outside, train_reference(seed=9).model, epoch=99)
    (watch / "model_epoch_99.pth").symlink_to(foreign)
    (watch / ".pin").write_text("model_epoch_99.pth\n")
    started = _Started(_spec(watch, policy="pinned", pinned="model_epoch_1.pth"))
    started.reloader.poll_once()
    assert started.served == "model_epoch_1.pth"
    reasons = [r.reason for r in started.reloader.status.recent_rejections]
    assert any("model_epoch_99.pth" in r and "outside the watch dir" in r for r in reasons)
    assert "outside the watch dir" in started.reloader.status.skipped["model_epoch_99.pth"]
    # Opting in serves it.
    opted = _Started(_spec(watch, policy="pinned", pinned="model_epoch_1.pth", follow_symlinks=True))
    assert opted.served == "model_epoch_99.pth"


def test_a_pin_naming_no_file_is_reported(reference: Reference, tmp_path: Path) -> None:
    _two_checkpoints(reference, tmp_path)
    started = _Started(_spec(tmp_path, policy="pinned", pinned="model_epoch_2.pth"))
    (tmp_path / ".pin").write_text("model_epoch_77.pth\n")
    for _ in range(3):
        started.reloader.poll_once()
    (rejection,) = started.reloader.status.recent_rejections
    assert "'model_epoch_77.pth'" in rejection.reason and "no complete checkpoint" in rejection.reason
    assert started.events == ["rejected"]
    assert checkpoint_info(started.reloader.slot.model).epoch == 2  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "content, problem",
    [
        (b"../elsewhere.pth\n", "one file name"),
        (b"a.pth\nb.pth\n", "one file name"),
        (b"x" * 5000, "too large"),
    ],
)
def test_pin_contents_are_checked(tmp_path: Path, content: bytes, problem: str) -> None:
    (tmp_path / ".pin").write_bytes(content)
    pin = read_pin_file(tmp_path)
    assert pin.name is None and pin.problem is not None and problem in pin.problem
    assert content.decode()[:12] not in pin.problem  # described, not quoted


def test_follow_symlinks_is_a_validated_opt_in(tmp_path: Path) -> None:
    from serving.errors import ConfigError

    assert _spec(tmp_path).reload.follow_symlinks is False
    assert _spec(tmp_path, follow_symlinks=True).reload.follow_symlinks is True
    with pytest.raises(ConfigError, match="follow_symlinks must be true or false"):
        _spec(tmp_path, follow_symlinks="yes")
