"""Files that made readers raise, block or read elsewhere, in a real TorchServe's watch dir at start-up.

Before: a safetensors header nested 100k deep (RecursionError) or a sparse weight made the worker's
start-up fail again and again; a sharded index naming ``../outside.safetensors`` was served; a FIFO
swapped in would block the watcher. Now each is one rejection, the worker starts on the good file
and keeps watching.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from serving import save_checkpoint
from serving.torchserve import TorchServeProcess
from tests.integration.conftest import Trained, http, package
from tests.integration.test_hostile_checkpoints import POLL_S, predict, reload_status, wait_for

pytestmark = pytest.mark.integration

HOSTILE = {
    "model_epoch_90.safetensors",  # header nested 100k deep: RecursionError in the completeness check
    "model_epoch_92",  # sharded: the index names a valid checkpoint outside the watch dir
    "model_epoch_93.pt",  # a sparse weight: NotImplementedError when loaded
}


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def watch(trained: Trained, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("attack")
    watch = root / "watch"
    watch.mkdir()
    save_checkpoint(watch, trained.models[1], epoch=1)
    header = b'{"x":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    (watch / "model_epoch_90.safetensors").write_bytes(struct.pack("<Q", len(header)) + header)
    os.mkfifo(watch / "model_epoch_91.pt")
    save_file(_state(trained.models[2]), str(root / "outside.safetensors"))
    sharded = watch / "model_epoch_92"
    sharded.mkdir()
    weight_map = {k: "../../outside.safetensors" for k in trained.models[2].state_dict()}
    (sharded / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    sparse = _state(trained.models[2])
    name = next(k for k, v in sparse.items() if v.dim() == 2)
    sparse[name] = sparse[name].to_sparse()
    torch.save(sparse, watch / "model_epoch_93.pt")
    return watch


@pytest.fixture(scope="module")
def server(watch: Path, start_server: Any, tmp_path_factory: pytest.TempPathFactory) -> TorchServeProcess:
    store = tmp_path_factory.mktemp("attack-store")
    handler = {"watch_dir": str(watch), "poll_interval_s": POLL_S, "policy": "highest_epoch"}
    package(store, "attacked", handler={"postprocess": {"kind": "raw"}, **handler})
    return start_server(store, ["attacked"])


def _worker_pids(server: TorchServeProcess) -> list[int]:
    status, _, body = http(f"{server.urls.management}/models/attacked")
    assert status == 200, body
    return [w["pid"] for w in json.loads(body)[0]["workers"]]


def test_the_worker_starts_on_the_good_file_and_keeps_watching(
    server: TorchServeProcess, trained: Trained, watch: Path
) -> None:
    pids = _worker_pids(server)
    images = trained.images[:4]
    label, outputs = predict(server, "attacked", images)
    assert label.startswith("epoch=1@")
    torch.testing.assert_close(outputs, trained.reference(1, images))
    status = reload_status(server, "attacked")
    assert {Path(r["path"]).name for r in status["recent_rejections"]} == HOSTILE
    rejected = status["rejected"]

    save_checkpoint(watch, trained.models[2], epoch=100)  # atomic: model_epoch_100.pth
    wait_for(lambda: predict(server, "attacked", images)[0].startswith("epoch=100@"), "epoch 100 served")
    torch.testing.assert_close(predict(server, "attacked", images)[1], trained.reference(2, images))
    assert reload_status(server, "attacked")["rejected"] == rejected  # each hostile file once
    assert _worker_pids(server) == pids  # no worker died on the way
