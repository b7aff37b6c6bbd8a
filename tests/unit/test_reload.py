"""Hot reload without a server: completeness rules, policies, the validation gate, both swap strategies."""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from serving import checkpoint_info, load_model, save_checkpoint
from serving.errors import CandidateRejected
from serving.reload import ModelSlot, Reloader, Scanner, number_in_name, rank, sample_input
from serving.reload.pin import read_pin
from serving.spec import ModelSpec, ReloadSpec, parse_spec
from tests.assets.archs import SmallNet
from tests.conftest import Reference, train_reference


def _spec(watch: Path, **reload: object) -> ModelSpec:
    handler = {
        "architecture": "tests.assets.archs:SmallNet",
        "input": {"shape": [1, 8, 8]},
        "watch_dir": str(watch),
    }
    return parse_spec({**handler, "poll_interval_s": 0.01, **reload}, model_dir=watch)


def _loader(path: Path, sha: str) -> torch.nn.Module:
    return load_model(SmallNet, path, sha256=sha)


# --- which files count ---------------------------------------------------------------------------


def test_temp_and_hidden_names_never_count(reference: Reference, tmp_path: Path) -> None:
    torch.save(reference.model.state_dict(), tmp_path / "source.pth")
    data = (tmp_path / "source.pth").read_bytes()
    (tmp_path / "source.pth").unlink()
    for name in (".model_epoch_3.pth.x1y2.tmp", "model.pth.part", "~model.pth", ".pin", "model.pth.tmp"):
        (tmp_path / name).write_bytes(data)
    scanner = Scanner(tmp_path)
    assert scanner.scan() == [] and scanner.scan() == []


def test_whole_files_count_at_once_others_after_one_stable_poll(reference: Reference, tmp_path: Path) -> None:
    save_checkpoint(tmp_path, reference.model, epoch=1)  # a complete zip: counts at once
    torch.save(reference.model.state_dict(), tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    legacy = tmp_path / "legacy.pt"
    # Written in place, not renamed: the change time must not be after the modification time. utime
    # itself sets ctime to now, so the modification time goes a minute ahead of it.
    ahead = time.time_ns() + 60 * 10**9
    os.utime(legacy, ns=(ahead, ahead))
    st = legacy.stat()
    assert st.st_ctime_ns <= st.st_mtime_ns  # the precondition: nothing says this file is whole yet
    scanner = Scanner(tmp_path)
    assert {c.name for c in scanner.scan()} == {"model_epoch_1.pth"}  # legacy: no structure to check
    assert scanner.skipped["legacy.pt"].startswith("still being written")
    assert {c.name for c in scanner.scan()} == {"model_epoch_1.pth", "legacy.pt"}  # unchanged: counts


def test_a_file_that_keeps_growing_never_counts(tmp_path: Path) -> None:
    scanner = Scanner(tmp_path)
    path = tmp_path / "model_epoch_9.pth"
    with path.open("wb") as fh:
        for _ in range(4):
            fh.write(b"x" * 1000)
            fh.flush()
            assert scanner.scan() == []


def test_a_directory_counts_once_its_index_exists_and_it_is_stable(
    reference: Reference, tmp_path: Path
) -> None:
    import torch.distributed.checkpoint as dcp

    scanner = Scanner(tmp_path)
    (tmp_path / "step_100").mkdir()
    (tmp_path / "step_100" / "__0_0.distcp").write_bytes(b"partial")
    assert scanner.scan() == []  # no .metadata yet: still being written
    dcp.save({"model": reference.model.state_dict()}, checkpoint_id=tmp_path / "step_200")
    assert scanner.scan() == []  # first sight of a directory: not proven stable
    (found,) = scanner.scan()
    assert found.name == "step_200" and found.epoch == 200


def test_epoch_comes_from_metadata_then_the_name(reference: Reference, tmp_path: Path) -> None:
    save_checkpoint(tmp_path / "renamed.pth", reference.model, epoch=7)
    torch.save(reference.model.state_dict(), tmp_path / "ckpt-step=300.pt")
    scanner = Scanner(tmp_path)
    scanner.scan()
    found = {c.name: c.epoch for c in scanner.scan()}
    assert found == {"renamed.pth": 7, "ckpt-step=300.pt": 300}
    assert number_in_name("model_epoch_12.pth") == 12
    assert number_in_name("model_final.pth") is None


# --- policies ------------------------------------------------------------------------------------


def _candidates(reference: Reference, d: Path, entries: dict[str, dict]) -> list:
    for name, meta in entries.items():
        torch.save({"model_state_dict": reference.model.state_dict(), **meta}, d / name)
    scanner = Scanner(d)
    scanner.scan()
    return scanner.scan()


def test_latest_best_and_pinned(reference: Reference, tmp_path: Path) -> None:
    found = _candidates(
        reference,
        tmp_path,
        {
            "a.pth": {"epoch": 3, "loss": 0.2, "metrics": {"acc": 0.9}},
            "b.pth": {"epoch": 10, "loss": 0.5, "metrics": {"acc": 0.7}},
            "c.pth": {"epoch": 5, "loss": 0.1},
        },
    )
    names = lambda ranked: [c.name for c in ranked]  # noqa: E731
    assert names(rank(found, ReloadSpec(tmp_path, policy="highest_epoch"))) == ["b.pth", "c.pth", "a.pth"]
    assert names(rank(found, ReloadSpec(tmp_path, policy="best", metric="loss"))) == [
        "c.pth",
        "a.pth",
        "b.pth",
    ]
    best_acc = ReloadSpec(tmp_path, policy="best", metric="metrics.acc", mode="max")
    assert names(rank(found, best_acc)) == ["a.pth", "b.pth"]  # c has no accuracy: not eligible
    assert names(rank(found, ReloadSpec(tmp_path, policy="pinned", pinned="a.pth"))) == ["a.pth"]
    (tmp_path / ".pin").write_text("c.pth\n")  # `ckptserve pin` writes this; it overrides the config
    assert read_pin(tmp_path) == "c.pth"
    assert names(rank(found, ReloadSpec(tmp_path, policy="pinned", pinned="a.pth"))) == ["c.pth"]


# --- the gate and the swap -----------------------------------------------------------------------


def _slot(reference: Reference, path: Path) -> ModelSlot:
    return ModelSlot(load_model(SmallNet, path), sample_input((1, 8, 8), torch.float32))


def test_reloader_serves_the_newest_valid_and_rejects_the_rest(reference: Reference, tmp_path: Path) -> None:
    spec = _spec(tmp_path)
    save_checkpoint(tmp_path, reference.model, epoch=1)
    reloader = Reloader(spec, _loader)
    model = reloader.initial_model(lambda m: None)
    assert model is not None
    slot = ModelSlot(model, sample_input((1, 8, 8), torch.float32))
    reloader.slot = slot
    assert checkpoint_info(slot.model).epoch == 1

    newer = train_reference(seed=5)
    save_checkpoint(tmp_path, newer.model, epoch=2)
    assert reloader.poll_once()
    with slot.use() as model, torch.no_grad():
        assert torch.equal(model(newer.inputs), newer.outputs)

    nan = train_reference(seed=6).model
    with torch.no_grad():
        nan.fc.weight[0, 0] = float("nan")
    save_checkpoint(tmp_path, nan, epoch=3)
    wide = train_reference(hidden=32).model
    save_checkpoint(tmp_path, wide, epoch=4)
    data = (tmp_path / "model_epoch_2.pth").read_bytes()
    (tmp_path / "model_epoch_5.pth").write_bytes(data[: len(data) // 2])
    for _ in range(6):
        assert not reloader.poll_once()
    assert checkpoint_info(slot.model).epoch == 2  # still the last good one
    reasons = {Path(r.path).name: r.reason for r in reloader.status.recent_rejections}
    assert "non-finite" in reasons["model_epoch_3.pth"]
    assert "do not fit the architecture" in reasons["model_epoch_4.pth"]
    assert "truncated" in reasons["model_epoch_5.pth"]
    assert reloader.status.rejected == 3  # each once: not retried until its content changes
    assert reloader.status.reloads == 1

    save_checkpoint(tmp_path, train_reference(seed=7).model, epoch=5)  # same name, new content
    assert reloader.poll_once() and checkpoint_info(slot.model).epoch == 5


def test_start_up_skips_a_broken_newest_checkpoint(reference: Reference, tmp_path: Path) -> None:
    save_checkpoint(tmp_path, reference.model, epoch=1)
    (tmp_path / "model_epoch_2.pth").write_bytes(b"PK\x03\x04 not really a zip")
    spec = _spec(tmp_path)
    reloader = Reloader(spec, _loader)
    model = reloader.initial_model(lambda m: None)
    assert checkpoint_info(model).epoch == 1
    assert reloader.status.last_rejected is not None and "model_epoch_2" in reloader.status.last_rejected.path


def test_inplace_copies_into_the_live_tensors(reference: Reference, tmp_path: Path) -> None:
    spec = _spec(tmp_path, reload_strategy="inplace")
    save_checkpoint(tmp_path, reference.model, epoch=1)
    reloader = Reloader(spec, _loader)
    model = reloader.initial_model(lambda m: None)
    assert model is not None
    slot = ModelSlot(model, sample_input((1, 8, 8), torch.float32))
    reloader.slot = slot
    live = slot.model
    assert isinstance(live, SmallNet)
    weight = live.fc.weight
    newer = train_reference(seed=11)
    save_checkpoint(tmp_path, newer.model, epoch=2)
    assert reloader.poll_once()
    assert slot.model is live and live.fc.weight is weight  # same tensors, new values
    assert checkpoint_info(live).epoch == 2
    with torch.no_grad():
        assert torch.equal(live(newer.inputs), newer.outputs)
    bad = train_reference(seed=12).model
    with torch.no_grad():
        bad.head.bias[0] = float("inf")
    save_checkpoint(tmp_path, bad, epoch=3)
    assert not reloader.poll_once()
    with torch.no_grad():
        assert torch.equal(live(newer.inputs), newer.outputs)  # nothing of the bad one was copied


def _wait_until(condition: Callable[[], bool], what: str, deadline_s: float = 60.0) -> None:
    deadline = time.monotonic() + deadline_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.005)


def _inside(thread: threading.Thread, function: str) -> bool:
    """True while ``thread`` runs ``function`` (anywhere on its stack; under mutmut its code is named
    ``xǁModelSlotǁswap__mutmut_orig`` or ``..._<n>``)."""
    frame = sys._current_frames().get(thread.ident or -1)
    while frame is not None:
        name = frame.f_code.co_name
        if name == function or f"ǁ{function}__mutmut_" in name:
            return True
        frame = frame.f_back
    return False


def test_a_batch_finishes_on_the_model_it_started_with(reference: Reference, tmp_path: Path) -> None:
    save_checkpoint(tmp_path, reference.model, epoch=1)
    slot = _slot(reference, tmp_path / "model_epoch_1.pth")
    newer = train_reference(seed=3)
    candidate = load_model(SmallNet, save_checkpoint(tmp_path, newer.model, epoch=2))
    slot.validate(candidate)
    started, finish = threading.Event(), threading.Event()
    in_flight: dict[str, Any] = {}

    def batch() -> None:
        with slot.use() as model, torch.no_grad():
            in_flight["model"] = model
            started.set()
            finish.wait()
            in_flight["outputs"] = model(reference.inputs)

    batch_thread = threading.Thread(target=batch, daemon=True)  # a failed assertion must not hang pytest
    batch_thread.start()
    assert started.wait(60)
    swap_thread = threading.Thread(target=slot.swap, args=(candidate,), daemon=True)
    swap_thread.start()
    # The swap is under way (waiting for the batch, or done) while the batch still has its model.
    _wait_until(lambda: _inside(swap_thread, "swap") or not swap_thread.is_alive(), "the swap runs")
    finish.set()
    batch_thread.join(60)
    swap_thread.join(60)
    assert not batch_thread.is_alive() and not swap_thread.is_alive()
    old = in_flight["model"]
    assert isinstance(old, torch.nn.Module) and checkpoint_info(old).epoch == 1
    assert torch.equal(in_flight["outputs"], reference.outputs)  # computed by the model it started with
    with slot.use() as model, torch.no_grad():  # the next batch gets the new model
        assert model is candidate and torch.equal(model(newer.inputs), newer.outputs)
    with pytest.raises(CandidateRejected, match="the served model"):
        slot.validate(torch.nn.Linear(64, 3))  # another model (other class, weights, output) is refused


def test_ckptserve_pin_writes_the_pin_atomically(reference: Reference, tmp_path: Path) -> None:
    from serving.app.cli import main

    save_checkpoint(tmp_path, reference.model, epoch=1)
    assert main(["pin", str(tmp_path), "model_epoch_1.pth"]) == 0
    assert read_pin(tmp_path) == "model_epoch_1.pth"
    assert main(["pin", str(tmp_path), "nope.pth"]) == 2  # a typed error, nothing written
    assert read_pin(tmp_path) == "model_epoch_1.pth"
    assert main(["pin", str(tmp_path), "--clear"]) == 0
    assert read_pin(tmp_path) is None
