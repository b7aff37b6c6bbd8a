"""Integration fixtures: real checkpoints of the demo model, real archives, real TorchServe servers."""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from serving.torchserve import ServerSettings, TorchServeProcess, free_ports
from serving.torchserve.package import package_model

DIGITS = Path(__file__).resolve().parents[2] / "model_store" / "digits"
sys.path.insert(0, str(DIGITS))

from model import DigitsCNN  # noqa: E402  (the demo model's own module, as the archive ships it)
from train import load_digits_split, train  # noqa: E402


@dataclass
class Trained:
    """Two epochs of the demo model: checkpoints on disk and the in-process models they hold."""

    directory: Path
    epochs: dict[int, Path]
    models: dict[int, DigitsCNN]  # eval mode
    images: torch.Tensor  # held-out images, (n, 1, 8, 8)
    labels: torch.Tensor

    def reference(self, epoch: int, images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.models[epoch](images)


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    directory = tmp_path_factory.mktemp("trained")
    epochs: dict[int, Path] = {}
    models: dict[int, DigitsCNN] = {}

    def keep(epoch: int, path: Path, _accuracy: float) -> None:
        epochs[epoch] = path
        model = DigitsCNN()
        model.load_state_dict(torch.load(path, weights_only=True)["model_state_dict"])
        models[epoch] = model.eval()

    train(directory, epochs=2, on_epoch=keep)
    _, (images, labels) = load_digits_split()
    return Trained(directory, epochs, models, images, labels)


def package(
    store: Path, name: str, *, handler: dict[str, Any], top: dict[str, Any] | None = None, **kwargs: Any
) -> Path:
    """An archive of the demo model with the given handler section and TorchServe keys."""
    config: dict[str, Any] = {
        "minWorkers": 1,
        "maxWorkers": 1,
        "batchSize": 8,
        "maxBatchDelay": 20,
        "responseTimeout": 30,
    }
    config.update(top or {})
    config["handler"] = {"architecture": "model:DigitsCNN", "input": {"shape": [1, 8, 8]}, **handler}
    config_path = store / f"{name}-config.yaml"
    config_path.write_text(json.dumps(config))  # JSON is YAML
    return package_model(
        name,
        model_store=store,
        model_file=DIGITS / "model.py",
        config=config_path,
        extra_files=[DIGITS / "index_to_name.json"],
        **kwargs,
    )


@pytest.fixture(scope="session")
def start_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """Factory: start a TorchServe on free loopback ports for a store; every server stops at the end."""
    started: list[TorchServeProcess] = []

    def start(store: Path, models: list[str], timeout_s: float = 120) -> TorchServeProcess:
        ports = free_ports()
        settings = ServerSettings(
            model_store=store,
            runtime_dir=tmp_path_factory.mktemp("rt"),
            models=[f"{m}={m}.mar" for m in models],
            **ports,
        )
        server = TorchServeProcess(settings).start()
        started.append(server)
        server.wait_ready(models, timeout_s=timeout_s)
        return server

    yield start
    for server in started:
        server.stop()


def http(
    url: str, body: bytes | None = None, content_type: str = "application/json", timeout: float = 30
) -> tuple[int, dict[str, str], bytes]:
    """One HTTP request: (status, lower-cased headers, body); error statuses are returned, not raised."""
    request = urllib.request.Request(url, data=body, headers={"Content-Type": content_type} if body else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, {k.lower(): v for k, v in response.headers.items()}, response.read()
    except urllib.error.HTTPError as err:
        return err.code, {k.lower(): v for k, v in err.headers.items()}, err.read()


def describe(server: TorchServeProcess, model: str) -> dict[str, Any]:
    status, _, body = http(f"{server.urls.management}/models/{model}?customized=true")
    assert status == 200, body
    return json.loads(body)[0]["customizedMetadata"]
