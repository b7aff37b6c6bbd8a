"""ModelSession without a runtime: open on real torch.save files, infer, describe, reload, wait, close."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from serving.errors import CheckpointError, CkptServeError
from serving.metrics import Observation
from serving.session import ModelSession
from serving.spec import ModelSpec, parse_spec
from serving.threads import ThreadPlan
from tests.assets.archs import SmallNet
from tests.conftest import Reference, train_reference

ARCH = "tests.assets.archs:SmallNet"
JSON = "application/json"
# Leave this process's torch threads as they are: other tests in the process run after these.
KEEP_THREADS = ThreadPlan(
    intra_op=torch.get_num_threads(),
    inter_op=torch.get_num_interop_threads(),
    workers=1,
    workers_from="test",
    cpus=1,
)
DEADLINE_S = 60.0  # generous: the machine is shared; the conditions below hold within a poll or two


def write_checkpoint(path: Path, model: nn.Module, epoch: int) -> Path:
    """What a training loop writes: torch.save of a dict with the weights and the epoch."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model_state_dict": model.state_dict(), "epoch": epoch}, path)
    return path


def spec_for(model_dir: Path, **handler: Any) -> ModelSpec:
    return parse_spec({"architecture": ARCH, "input": {"shape": [1, 8, 8]}, **handler}, model_dir=model_dir)


def wait_until(what: str, condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def request(inputs: torch.Tensor) -> tuple[bytes, str]:
    return json.dumps({"instances": inputs.tolist()}).encode(), JSON


def predictions(body: bytes) -> torch.Tensor:
    return torch.tensor(json.loads(body)["predictions"])


def session_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name.startswith("ckptserve-")}


@pytest.fixture
def opened() -> Iterator[list[ModelSession]]:
    """Sessions a test opens; closed after it, whatever happened."""
    sessions: list[ModelSession] = []
    yield sessions
    for session in sessions:
        session.close()


def _open(opened: list[ModelSession], spec: ModelSpec, **kwargs: Any) -> ModelSession:
    session = ModelSession.open(spec, model_dir=spec_dir(spec), threads=KEEP_THREADS, **kwargs)
    opened.append(session)
    return session


def spec_dir(spec: ModelSpec) -> Path:
    return (spec.checkpoint or spec.reload.watch_dir or Path(".")).parent


class CountingForward:
    """Counts SmallNet forwards (their batch sizes) while installed."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.batches: list[int] = []
        original = SmallNet.forward

        def forward(model: SmallNet, x: torch.Tensor) -> torch.Tensor:
            self.batches.append(x.shape[0])
            return original(model, x)

        monkeypatch.setattr(SmallNet, "forward", forward)


# --- serving a configured checkpoint --------------------------------------------------------------


def test_infer_serves_the_configured_checkpoint_and_answers_bad_requests_alone(
    reference: Reference, tmp_path: Path, opened: list[ModelSession]
) -> None:
    path = write_checkpoint(tmp_path / "model.pth", reference.model, epoch=3)
    session = _open(opened, spec_for(tmp_path, checkpoint=str(path)), model_name="digits", model_version="7")
    assert session.ready
    replies, report = session.infer(
        [request(reference.inputs[:2]), (b"{not json", JSON), request(reference.inputs[2:5])]
    )
    assert [r.status for r in replies] == [200, 400, 200]
    torch.testing.assert_close(predictions(replies[0].body), reference.outputs[:2])
    torch.testing.assert_close(predictions(replies[2].body), reference.outputs[2:5])
    error = json.loads(replies[1].body)
    assert error["type"] == "RequestError" and "malformed JSON" in error["error"], error
    assert report.batch_size == 5 and report.errors == ["RequestError"]
    assert session.slot is not None and report.model is session.slot.model
    assert session.served is not None and session.served_label() == f"epoch=3@{session.served.sha256[:12]}"


def test_describe_shows_checkpoint_input_oip_outputs_and_threads(
    reference: Reference, tmp_path: Path, opened: list[ModelSession]
) -> None:
    path = write_checkpoint(tmp_path / "model.pth", reference.model, epoch=3)
    spec = spec_for(tmp_path, checkpoint=str(path), postprocess={"kind": "topk", "k": 3})
    shown = _open(opened, spec).describe()
    assert set(shown) == {
        "state",
        "checkpoint",
        "checkpoint_metadata",
        "reload",
        "input",
        "outputs",
        "postprocess",
        "threads",
        "pid",
    }
    assert shown["state"] == "serving" and shown["reload"] is None and shown["postprocess"] == "topk"
    assert shown["checkpoint"]["path"] == str(path) and shown["checkpoint"]["epoch"] == 3
    assert "metadata" not in shown["checkpoint"]
    assert shown["input"] == {"name": "input__0", "shape": [1, 8, 8], "dtype": "float32"}
    assert shown["outputs"] == [
        {"name": "topk_indices", "datatype": "INT64", "shape": [-1, 3]},
        {"name": "topk_scores", "datatype": "FP32", "shape": [-1, 3]},
    ]
    assert shown["threads"] == KEEP_THREADS.intra_op


def test_the_start_up_model_runs_one_gate_forward_and_one_warm_up_request(
    reference: Reference, tmp_path: Path, opened: list[ModelSession], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Before the session, a watched start-up model ran three forwards: the gate, the slot, the warm-up.
    write_checkpoint(tmp_path / "watch" / "model_epoch_1.pth", reference.model, epoch=1)
    counting = CountingForward(monkeypatch)
    _open(opened, spec_for(tmp_path, watch_dir=str(tmp_path / "watch"), poll_interval_s=3600))
    assert counting.batches == [2, 1]  # the gate's seeded sample of 2, the warm-up's one request


def test_a_model_that_cannot_serve_its_post_processing_fails_at_the_warm_up(
    tmp_path: Path, opened: list[ModelSession]
) -> None:
    # The gate checks the model alone (finite outputs); only the warm-up request meets the
    # post-processing, and softmax needs (n, classes) outputs, which an identity model does not give.
    path = tmp_path / "identity.pt"
    torch.jit.save(torch.jit.script(nn.Identity()), path)
    spec = parse_spec(
        {"checkpoint": str(path), "input": {"shape": [1, 8, 8]}, "postprocess": {"kind": "softmax"}},
        model_dir=tmp_path,
    )
    with pytest.raises(CkptServeError, match=r"warm-up forward on input shape \[1, 1, 8, 8\] failed"):
        _open(opened, spec)


# --- hot reload ------------------------------------------------------------------------------------


def test_a_new_checkpoint_is_served_after_a_reloader_poll(
    reference: Reference, tmp_path: Path, opened: list[ModelSession]
) -> None:
    watch = tmp_path / "watch"
    write_checkpoint(watch / "model_epoch_1.pth", reference.model, epoch=1)
    observed: list[Observation] = []
    session = _open(
        opened, spec_for(tmp_path, watch_dir=str(watch), poll_interval_s=3600), emit=observed.extend
    )
    assert session.served is not None and session.served.epoch == 1
    newer = train_reference(seed=1)
    write_checkpoint(watch / "model_epoch_2.pth", newer.model, epoch=2)
    assert session.reloader is not None and session.reloader.poll_once()
    replies, report = session.infer([request(newer.inputs)])
    torch.testing.assert_close(predictions(replies[0].body), newer.outputs)
    assert session.slot is not None and report.model is session.slot.model
    assert session.served is not None and session.served.epoch == 2
    assert session.describe()["reload"]["reloads"] == 1
    session.metrics.flush()
    assert ("ckptserve_reloads_total", 1.0, ("model", "Model", "success")) in [
        (m.name, value, dims) for m, value, dims in observed
    ]


def test_a_session_started_before_training_waits_then_serves_the_first_checkpoint(
    reference: Reference, tmp_path: Path, opened: list[ModelSession]
) -> None:
    watch = tmp_path / "training" / "checkpoints"  # not even created yet
    session = _open(opened, spec_for(tmp_path, watch_dir=str(watch), poll_interval_s=0.05))
    assert not session.ready
    replies, report = session.infer([request(reference.inputs[:1]), request(reference.inputs[1:2])])
    assert [r.status for r in replies] == [503, 503] and report.model is None
    error = json.loads(replies[0].body)
    assert error["type"] == "ModelNotReadyError" and str(watch) in error["error"], error
    shown = session.describe()
    assert shown["state"] == "waiting" and shown["waiting_for"] == str(watch) and shown["checkpoint"] is None

    write_checkpoint(watch / "model_epoch_1.pth", reference.model, epoch=1)
    wait_until("the first checkpoint to be served", lambda: session.ready)
    replies, report = session.infer([request(reference.inputs)])
    torch.testing.assert_close(predictions(replies[0].body), reference.outputs)
    assert session.describe()["state"] == "serving" and report.model is not None


def test_a_watched_start_up_never_waits_for_settling_files_past_its_budget(
    reference: Reference, tmp_path: Path, opened: list[ModelSession]
) -> None:
    watch = tmp_path / "watch"
    write_checkpoint(watch / "model_epoch_1.pth", reference.model, epoch=1)
    (watch / "model_epoch_2.pth").write_bytes(b"PK\x03\x04 still being written")
    spec = spec_for(tmp_path, watch_dir=str(watch), poll_interval_s=3600)  # an hour between polls
    opening = threading.Thread(target=lambda: opened.append(_open([], spec, startup_budget_s=0.2)))
    opening.start()
    opening.join(DEADLINE_S)  # without the budget, open() would sleep a whole poll interval
    assert not opening.is_alive() and opened and opened[0].served is not None
    assert opened[0].served.epoch == 1


# --- failures and close ----------------------------------------------------------------------------


def test_close_stops_the_reloader_and_metrics_threads(
    reference: Reference, tmp_path: Path, opened: list[ModelSession]
) -> None:
    watch = tmp_path / "watch"
    write_checkpoint(watch / "model_epoch_1.pth", reference.model, epoch=1)
    before = session_threads()
    observed: list[Observation] = []
    session = ModelSession.open(
        spec_for(tmp_path, watch_dir=str(watch), poll_interval_s=0.05),
        model_dir=tmp_path,
        threads=KEEP_THREADS,
        emit=observed.extend,
    )
    started = session_threads() - before
    assert {t.name for t in started} == {"ckptserve-reloader", "ckptserve-metrics"}
    session.close()
    wait_until("the session's threads to end", lambda: not any(t.is_alive() for t in started))
    assert "ckptserve_worker_starts_total" in {m.name for m, _, _ in observed}  # flushed on close


def test_a_start_up_without_a_valid_checkpoint_raises_and_leaves_no_thread(
    reference: Reference, tmp_path: Path, opened: list[ModelSession]
) -> None:
    watch = tmp_path / "watch"
    broken = train_reference(seed=2).model
    with torch.no_grad():
        broken.fc.weight[0, 0] = float("nan")
    write_checkpoint(watch / "model_epoch_1.pth", broken, epoch=1)
    before = session_threads()
    with pytest.raises(CheckpointError, match=r"No valid checkpoint in .*model_epoch_1.pth: .*non-finite"):
        _open(opened, spec_for(tmp_path, watch_dir=str(watch), poll_interval_s=0.05), emit=lambda _: None)
    wait_until("no session thread left", lambda: not any(t.is_alive() for t in session_threads() - before))
