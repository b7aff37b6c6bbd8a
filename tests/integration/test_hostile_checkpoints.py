"""Hostile and surprising files in a real TorchServe's watch dir: no code runs, the architecture's answers
stay, bad pins are reported (never fatal), and `latest` serves what was written last."""

from __future__ import annotations

import hashlib
import json
import pickle
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from serving import save_checkpoint
from serving.torchserve import TorchServeProcess
from tests.assets.hostile import SECRET, Hostile
from tests.integration.conftest import Trained, describe, http, package

pytestmark = pytest.mark.integration

POLL_S = 0.25
DEADLINE_S = 60.0  # polls + loads + a describe on a shared 2-core machine


class _Foreign(torch.nn.Module):
    """Foreign code with its own forward and none of DigitsCNN's weights: answers class 7, always."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.one_hot(torch.full((x.shape[0],), 7), 10).float() * 100


def sha12(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


def renamed_into(path: Path, write: Callable[[Path], Any]) -> Path:
    """Write under a temp name, then rename: the watcher sees the file whole at once."""
    temp = path.with_name(f".{path.name}.tmp")
    write(temp)
    temp.rename(path)
    return path


@pytest.fixture(scope="module")
def dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return {
        name: tmp_path_factory.mktemp(f"hostile-{name}")
        for name in ("guarded", "newest", "pinned", "outside")
    }


@pytest.fixture(scope="module")
def server(trained: Trained, dirs: dict[str, Path], start_server, tmp_path_factory) -> TorchServeProcess:
    save_checkpoint(dirs["guarded"], trained.models[1], epoch=1)
    for epoch in (1, 2):
        save_checkpoint(dirs["newest"], trained.models[epoch], epoch=epoch)
        save_checkpoint(dirs["pinned"], trained.models[epoch], epoch=epoch)
    (dirs["pinned"] / ".pin").write_bytes(b"\xff\xfe model_epoch_2.pth\n")  # not UTF-8: reported, not fatal
    store = tmp_path_factory.mktemp("hostile-store")
    common = {"postprocess": {"kind": "raw"}, "poll_interval_s": POLL_S}
    package(store, "guarded", handler={**common, "watch_dir": str(dirs["guarded"])})
    package(store, "newest", handler={**common, "watch_dir": str(dirs["newest"])})
    pinned = {"watch_dir": str(dirs["pinned"]), "policy": "pinned", "pinned": "model_epoch_1.pth"}
    package(store, "pinned", handler={**common, **pinned})
    return start_server(store, ["guarded", "newest", "pinned"])


def predict(server: TorchServeProcess, model: str, images: torch.Tensor) -> tuple[str, torch.Tensor]:
    status, headers, body = http(
        f"{server.urls.inference}/predictions/{model}", json.dumps({"instances": images.tolist()}).encode()
    )
    assert status == 200, body
    return headers.get("x-ckptserve-checkpoint", ""), torch.tensor(json.loads(body)["predictions"])


def wait_for(condition: Callable[[], Any], what: str) -> Any:
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        if result := condition():
            return result
        time.sleep(POLL_S)
    raise AssertionError(f"not within {DEADLINE_S}s: {what}")


def reload_status(server: TorchServeProcess, model: str) -> dict[str, Any]:
    return describe(server, model)["reload"]


def rejected_with(server: TorchServeProcess, model: str, text: str) -> bool:
    """Whether a recent rejection of ``model`` gives a reason containing ``text``."""
    return any(text in r["reason"] for r in reload_status(server, model)["recent_rejections"])


def accounted(status: dict[str, Any]) -> dict[str, str]:
    """name -> why it is not served (rejections and skips), once the watcher has decided."""
    out = {Path(r["path"]).name: r["reason"] for r in status["recent_rejections"]}
    out.update(status.get("skipped", {}))
    return {name: why for name, why in out.items() if not why.startswith("still being written")}


def decided(server: TorchServeProcess, names: set[str]) -> dict[str, str] | None:
    reasons = accounted(reload_status(server, "guarded"))
    return reasons if names <= set(reasons) else None


def test_a_hostile_dcp_directory_never_runs(
    server: TorchServeProcess, trained: Trained, dirs: dict[str, Path], tmp_path: Path
) -> None:
    watch = dirs["guarded"]
    marker = tmp_path / "pwned"
    # 9.1: a directory named like a checkpoint, taken for DCP, whose .metadata runs a command.
    staging = watch / ".model_epoch_3000.tmp"
    staging.mkdir()
    (staging / ".metadata").write_bytes(pickle.dumps(Hostile(marker)))
    (staging / "__0_0.distcp").write_bytes(b"\0" * 64)
    staging.rename(watch / "model_epoch_3000")
    reasons = wait_for(lambda: decided(server, {"model_epoch_3000"}), "the DCP directory rejected")
    assert not marker.exists()  # the payload never ran, in the worker
    assert "would run code" in reasons["model_epoch_3000"]


def test_foreign_code_is_never_served_and_secrets_never_quoted(
    server: TorchServeProcess, trained: Trained, dirs: dict[str, Path]
) -> None:
    watch, images = dirs["guarded"], trained.images[:4]
    label, _ = predict(server, "guarded", images)
    # 9.2: TorchScript with its own forward and none of the architecture's weights.
    renamed_into(watch / "model_epoch_4000.pt", lambda p: torch.jit.save(torch.jit.script(_Foreign()), p))
    # 9.3/9.5: a link to a secret outside the watch dir, and a file whose bytes are a secret.
    secret = dirs["outside"] / "secret.txt"
    secret.write_text(SECRET * 8)
    (watch / "model_epoch_5000.pth").symlink_to(secret)
    renamed_into(watch / "model_epoch_6000.pth", lambda p: p.write_text(SECRET * 8))

    names = {"model_epoch_4000.pt", "model_epoch_5000.pth", "model_epoch_6000.pth"}
    reasons = wait_for(lambda: decided(server, names), f"every hostile file rejected or skipped: {names}")
    assert "its own code" in reasons["model_epoch_4000.pt"]
    assert "outside the watch dir" in reasons["model_epoch_5000.pth"]
    assert "not a checkpoint" in reasons["model_epoch_6000.pth"]
    assert SECRET[:8] not in json.dumps(describe(server, "guarded"))
    served, outputs = predict(server, "guarded", images)
    assert served == label  # still the architecture with its epoch-1 weights
    torch.testing.assert_close(outputs, trained.reference(1, images))


def test_latest_serves_a_checkpoint_written_last_without_an_epoch(
    server: TorchServeProcess, trained: Trained, dirs: dict[str, Path]
) -> None:
    watch, images = dirs["newest"], trained.images[:4]
    label, _ = predict(server, "newest", images)
    assert label.endswith(sha12(watch / "model_epoch_2.pth"))
    torch.manual_seed(123)
    resumed = type(trained.models[1])().eval()  # training resumed from scratch: no epoch recorded
    new = renamed_into(watch / "model_new.pt", lambda p: torch.save(resumed.state_dict(), p))
    wait_for(lambda: predict(server, "newest", images)[0].endswith(sha12(new)), "model_new.pt served")
    _, outputs = predict(server, "newest", images)
    with torch.no_grad():
        torch.testing.assert_close(outputs, resumed(images))
    skipped = wait_for(lambda: reload_status(server, "newest")["skipped"] or None, "skipped candidates")
    assert {"model_epoch_1.pth", "model_epoch_2.pth"} <= set(skipped)
    assert "prefers model_new.pt" in skipped["model_epoch_2.pth"]


def test_bad_pins_are_reported_and_never_stop_the_server(
    server: TorchServeProcess, trained: Trained, dirs: dict[str, Path]
) -> None:
    watch, images = dirs["pinned"], trained.images[:4]
    label, outputs = predict(server, "pinned", images)  # it started: the undecodable pin did not stop it
    assert label.endswith(sha12(watch / "model_epoch_1.pth"))  # the configured pin applies
    torch.testing.assert_close(outputs, trained.reference(1, images))
    reasons = [r["reason"] for r in reload_status(server, "pinned")["recent_rejections"]]
    assert any("not UTF-8" in r for r in reasons), reasons

    # A pin naming a link inside the watch dir to a checkpoint outside it.
    torch.manual_seed(321)
    foreign = save_checkpoint(dirs["outside"], type(trained.models[1])().eval(), epoch=99)
    (watch / "model_epoch_99.pth").symlink_to(foreign)
    renamed_into(watch / ".pin", lambda p: p.write_text("model_epoch_99.pth\n"))
    wait_for(
        lambda: rejected_with(server, "pinned", "outside the watch dir"),
        "the pin to a link out of the watch dir reported",
    )
    # A pin naming no file.
    renamed_into(watch / ".pin", lambda p: p.write_text("model_epoch_77.pth\n"))
    wait_for(
        lambda: rejected_with(server, "pinned", "'model_epoch_77.pth'"), "the pin to a missing file reported"
    )
    assert predict(server, "pinned", images)[0] == label  # never the outside file
