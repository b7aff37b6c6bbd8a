"""Hot reload on a real TorchServe with two workers and clients sending all the time."""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
import torch

from serving import save_checkpoint
from serving.torchserve import TorchServeProcess
from tests.integration.conftest import DigitsCNN, Trained, describe, http, package
from tests.polling import wait_until

pytestmark = pytest.mark.integration

POLL_S = 0.25
DEADLINE_S = 15.0  # two polls + hashing + loading, with room for this shared 2-core machine


def variant(seed: int) -> DigitsCNN:
    torch.manual_seed(seed)
    return DigitsCNN().eval()


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


@pytest.fixture(scope="module")
def dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return {name: tmp_path_factory.mktemp(f"watch-{name}") for name in ("live", "best", "inplace")}


@pytest.fixture(scope="module")
def server(trained: Trained, dirs: dict[str, Path], start_server, tmp_path_factory) -> TorchServeProcess:
    for name in dirs:
        save_checkpoint(dirs[name], trained.models[1], epoch=1, metrics={"val_accuracy": 0.5})
    store = tmp_path_factory.mktemp("reload-store")
    common = {"postprocess": {"kind": "raw"}, "poll_interval_s": POLL_S}
    package(
        store,
        "live",
        handler={**common, "watch_dir": str(dirs["live"])},
        top={"minWorkers": 2, "maxWorkers": 2},
    )
    package(
        store,
        "best",
        handler={
            **common,
            "watch_dir": str(dirs["best"]),
            "policy": "best",
            "metric": "metrics.val_accuracy",
            "mode": "max",
        },
    )
    package(
        store, "inplace", handler={**common, "watch_dir": str(dirs["inplace"]), "reload_strategy": "inplace"}
    )
    return start_server(store, ["live", "best", "inplace"])


class Traffic:
    """Clients that send requests until stopped, recording every status and checkpoint label."""

    def __init__(self, server: TorchServeProcess, model: str, images: torch.Tensor, clients: int = 4) -> None:
        self.url = f"{server.urls.inference}/predictions/{model}"
        self.body = json.dumps({"instances": images.tolist()}).encode()
        self.statuses: Counter[int] = Counter()
        self.labels: Counter[str] = Counter()
        self.outputs: dict[str, list] = {}
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(clients)]
        self._lock = threading.Lock()

    def _run(self) -> None:
        while not self._stop.is_set():
            status, headers, body = http(self.url, self.body)
            label = headers.get("x-ckptserve-checkpoint", "")
            with self._lock:
                self.statuses[status] += 1
                self.labels[label] += 1
                if status == 200:
                    self.outputs.setdefault(label, json.loads(body)["predictions"])

    def __enter__(self) -> Traffic:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)

    def recent_labels(self, n: int = 16) -> set[str]:
        """Labels of the next ``n`` answers (fresh traffic, both workers)."""
        before = sum(self.labels.values())
        deadline = time.monotonic() + 10
        snapshot = Counter(self.labels)
        while sum(self.labels.values()) < before + n and time.monotonic() < deadline:
            time.sleep(0.02)
        return {k for k, v in (self.labels - snapshot).items() if v}


def wait_until_served(traffic: Traffic, label: str) -> float:
    started = time.monotonic()
    while time.monotonic() - started < DEADLINE_S:
        if traffic.recent_labels() == {label}:
            return time.monotonic() - started
    raise AssertionError(f"{label} was not served by every worker within {DEADLINE_S}s: {traffic.labels}")


_REJECTED = re.compile(r"\] (W-\d+-(?P<model>.+?)_[^_ ]+)-std(?:out|err) .*reload: rejected '[^']*/([^'/]+)'")


def rejections_by_worker(server: TorchServeProcess, model: str) -> dict[str, set[str]]:
    """File names each of ``model``'s workers logged a rejection of (the watcher's "reload: rejected")."""
    seen: dict[str, set[str]] = {}
    for match in _REJECTED.finditer(server.worker_log.read_text()):
        if match["model"] == model:
            seen.setdefault(match[1], set()).add(match[3])
    return seen


def workers_of(server: TorchServeProcess, model: str) -> set[str]:
    """The ids (``W-<port>-<model>_<version>``) of ``model``'s workers, from the worker log."""
    pattern = rf"\] (W-\d+-{re.escape(model)}_[^_ ]+)-std(?:out|err) "
    return set(re.findall(pattern, server.worker_log.read_text()))


def write_slowly(path: Path, data: bytes, pieces: int = 20, pause_s: float = 0.05) -> None:
    """A writer that takes longer than a poll: the file is incomplete across several polls."""
    step = len(data) // pieces + 1
    with path.open("wb") as fh:
        for i in range(0, len(data), step):
            fh.write(data[i : i + step])
            fh.flush()
            time.sleep(pause_s)


def test_live_reloads_with_traffic_flowing(
    server: TorchServeProcess, trained: Trained, dirs: dict[str, Path]
) -> None:
    watch = dirs["live"]
    images = trained.images[:2]
    good: dict[str, torch.Tensor] = {}  # label -> expected outputs
    with Traffic(server, "live", images) as traffic:
        first = f"epoch=1@{sha(watch / 'model_epoch_1.pth')}"
        wait_until_served(traffic, first)
        good[first] = trained.reference(1, images)

        # 1. A valid new checkpoint, written atomically by save_checkpoint.
        path = save_checkpoint(watch, trained.models[2], epoch=2)
        took = wait_until_served(traffic, f"epoch=2@{sha(path)}")
        good[f"epoch=2@{sha(path)}"] = trained.reference(2, images)

        # 2. A truncated file (a crashed writer), 3. a checkpoint of another architecture,
        # 4. one with NaN weights: each rejected, never served.
        data = path.read_bytes()
        (watch / "model_epoch_3.pth").write_bytes(data[: len(data) // 2])
        from tests.conftest import train_reference

        save_checkpoint(watch, train_reference().model, epoch=5)
        broken = variant(6)
        with torch.no_grad():
            broken.classifier[2].weight[0, 0] = float("nan")
        save_checkpoint(watch, broken, epoch=6)
        rejected = {sha(watch / f"model_epoch_{n}.pth") for n in (3, 5, 6)}
        names = {f"model_epoch_{n}.pth" for n in (3, 5, 6)}
        # Each worker watches on its own: wait until both have rejected all three, then look at traffic.
        workers = workers_of(server, "live")
        assert len(workers) == 2, workers
        wait_until(
            lambda: rejections_by_worker(server, "live") == dict.fromkeys(workers, names),
            lambda: f"both workers rejecting {sorted(names)}: {rejections_by_worker(server, 'live')}",
            timeout_s=120,
            poll_s=POLL_S,
        )
        assert traffic.recent_labels() == {f"epoch=2@{sha(path)}"}

        # 5. A file written slowly in pieces, named to win the policy (epoch 9): served only when whole.
        slow = variant(9)
        save_checkpoint(watch / "staging.pth.tmp", slow, epoch=9)  # a temp name: ignored by the watcher
        payload = (watch / "staging.pth.tmp").read_bytes()
        (watch / "staging.pth.tmp").unlink()
        write_slowly(watch / "model_epoch_9.pth", payload)
        label9 = f"epoch=9@{sha(watch / 'model_epoch_9.pth')}"
        wait_until_served(traffic, label9)
        with torch.no_grad():
            good[label9] = slow(images)

    assert set(traffic.statuses) == {200}, traffic.statuses  # no request failed, ever
    served = {label for label in traffic.labels if label}
    assert served <= set(good), served - set(good)
    assert not {label.split("@")[1] for label in served} & rejected  # the rejected ones never answered
    for label, expected in good.items():
        torch.testing.assert_close(torch.tensor(traffic.outputs[label]), expected)
    assert took < DEADLINE_S

    status = describe(server, "live")["reload"]
    reasons = {Path(r["path"]).name: r["reason"] for r in status["recent_rejections"]}
    assert "truncated" in reasons["model_epoch_3.pth"]
    assert "do not fit the architecture" in reasons["model_epoch_5.pth"]
    assert "non-finite" in reasons["model_epoch_6.pth"]
    assert "model_epoch_9.pth" not in reasons  # the slow writer was never caught half-way
    assert status["reloads"] >= 2 and status["last_reload"]["epoch"] == 9
    assert status["last_reload"]["landed_to_serving_s"] < DEADLINE_S
    assert describe(server, "live")["checkpoint"]["epoch"] == 9


def test_best_policy_follows_the_metric(
    server: TorchServeProcess, trained: Trained, dirs: dict[str, Path]
) -> None:
    watch = dirs["best"]
    images = trained.images[:1]
    candidates = {2: (variant(20), 0.9), 3: (variant(30), 0.7), 4: (variant(40), 0.95)}
    for epoch in (2, 3):
        model, accuracy = candidates[epoch]
        save_checkpoint(watch, model, epoch=epoch, metrics={"val_accuracy": accuracy})
    with Traffic(server, "best", images, clients=2) as traffic:
        wait_until_served(traffic, f"epoch=2@{sha(watch / 'model_epoch_2.pth')}")  # 0.9 beats 0.7 and 0.5
        save_checkpoint(watch, candidates[4][0], epoch=4, metrics={"val_accuracy": 0.95})
        wait_until_served(traffic, f"epoch=4@{sha(watch / 'model_epoch_4.pth')}")
    assert set(traffic.statuses) == {200}
    assert not any(label.startswith("epoch=3@") for label in traffic.labels)  # never the best


def test_inplace_strategy_switches_weights(
    server: TorchServeProcess, trained: Trained, dirs: dict[str, Path]
) -> None:
    watch = dirs["inplace"]
    images = trained.images[:2]
    with Traffic(server, "inplace", images, clients=2) as traffic:
        path = save_checkpoint(watch, trained.models[2], epoch=2)
        wait_until_served(traffic, f"epoch=2@{sha(path)}")
    assert set(traffic.statuses) == {200}
    torch.testing.assert_close(
        torch.tensor(traffic.outputs[f"epoch=2@{sha(path)}"]), trained.reference(2, images)
    )
    assert describe(server, "inplace")["reload"]["strategy"] == "inplace"


def test_a_server_started_before_training_wrote_anything_waits_for_it(
    trained: Trained, tmp_path: Path
) -> None:
    from serving.torchserve import ServerSettings, TorchServeProcess, free_ports

    watch, store = tmp_path / "watch", tmp_path / "store"
    watch.mkdir()
    store.mkdir()
    package(
        store,
        "early",
        handler={"postprocess": {"kind": "raw"}, "watch_dir": str(watch), "poll_interval_s": POLL_S},
    )
    settings = ServerSettings(
        model_store=store,
        runtime_dir=tmp_path / "rt",
        models=["early=early.mar"],
        **free_ports(),
    )
    with TorchServeProcess(settings) as server:
        deadline = time.monotonic() + 60
        waiting = "waiting for the first checkpoint"
        while waiting not in (server.worker_log.read_text() if server.worker_log.exists() else ""):
            assert time.monotonic() < deadline, "the worker never started waiting"
            time.sleep(0.1)  # the worker is up and waiting: an empty directory is not a load failure
        server.wait_ready(["early"], timeout_s=60)  # READY to TorchServe; the handler answers 503
        url, body = (
            f"{server.urls.inference}/predictions/early",
            json.dumps({"instances": trained.images[:1].tolist()}).encode(),
        )
        assert http(url, body)[0] == 503
        path = save_checkpoint(watch, trained.models[1], epoch=1)
        while (answer := http(url, body))[0] == 503:
            assert time.monotonic() < deadline + 60, "the first checkpoint was never served"
            time.sleep(0.1)
        status, headers, body = answer
        assert status == 200 and headers["x-ckptserve-checkpoint"] == f"epoch=1@{sha(path)}"
        torch.testing.assert_close(
            torch.tensor(json.loads(body)["predictions"]), trained.reference(1, trained.images[:1])
        )
