"""What a user sees when something is wrong, through `ckptserve` and HTTP against real servers.

One server (a token classifier: int64 ids through an nn.Embedding) is started with `ckptserve serve`
and shared; two more starts are meant to fail, each with a message that names the fix.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from serving.client.http import HttpClient
from serving.errors import ModelNotFoundError
from serving.torchserve import free_port
from tests.assets.cli import ckptserve
from tests.assets.token_model import VOCAB, TokenClassifier
from tests.integration.conftest import http

TOKEN_MODEL = Path(__file__).resolve().parents[1] / "assets" / "token_model.py"
IDS = [[1, 2, 3, 4, 5, 6], [7, 8, 9, 10, 11, 12], [0, 0, 0, 0, 0, 49]]


@dataclass
class Served:
    """A server started with `ckptserve serve`: its ports and runtime directory."""

    store: Path
    runtime_dir: Path
    tmpdir: Path
    http_port: int
    metrics_port: int
    checkpoint_sha: str

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"


def package_tokens(directory: Path, *, dtype: str, archive_format: str = "default") -> tuple[Path, Path]:
    """An archive of the token model with a bundled bare state dict (it records no epoch)."""
    directory.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    checkpoint = directory / "tokens.pt"
    torch.save(TokenClassifier().state_dict(), checkpoint)
    config = directory / "tokens-config.yaml"
    config.write_text(
        json.dumps(
            {
                "minWorkers": 1,
                "maxWorkers": 1,
                "batchSize": 4,
                "maxBatchDelay": 20,
                "handler": {
                    "architecture": "token_model:TokenClassifier",
                    "checkpoint": "tokens.pt",
                    "input": {"shape": [len(IDS[0])], "dtype": dtype},
                },
            }
        )
    )
    store = directory / "store"
    done = ckptserve(
        "package", "tokens", "--model-file", TOKEN_MODEL, "--config", config, "--checkpoint", checkpoint,
        "--model-store", store, "--archive-format", archive_format,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return store, checkpoint


def serve(
    store: Path,
    runtime_dir: Path,
    tmpdir: Path,
    http_port: int | None = None,
    metrics_port: int | None = None,
) -> subprocess.CompletedProcess[str]:
    """`ckptserve serve` on free loopback ports (detaches once READY, or exits 2 with the reason)."""
    ports = {
        "--http-port": http_port or free_port(),
        "--management-port": free_port(),
        "--metrics-port": metrics_port or free_port(),
        "--grpc-port": free_port(),
        "--grpc-management-port": free_port(),
        "--oip-grpc-port": free_port(),
    }
    flags = [str(x) for pair in ports.items() for x in pair]
    args: list[str | Path] = ["serve", "--model-store", store, "--runtime-dir", runtime_dir]
    args += ["--timeout", "300", *flags]
    return ckptserve(*args, tmpdir=tmpdir)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    work = tmp_path_factory.mktemp("tokens")
    store, checkpoint = package_tokens(work, dtype="int64")
    tmpdir, runtime_dir = work / "tmp", work / "runtime"
    tmpdir.mkdir()
    http_port, metrics_port = free_port(), free_port()
    done = serve(store, runtime_dir, tmpdir, http_port, metrics_port)
    try:
        assert done.returncode == 0, done.stderr
        sha = hashlib.sha256(checkpoint.read_bytes()).hexdigest()
        yield Served(store, runtime_dir, tmpdir, http_port, metrics_port, sha)
    finally:
        ckptserve("stop", "--runtime-dir", runtime_dir, tmpdir=tmpdir)


def test_unknown_model_gets_our_error_body_with_a_hint(served: Served) -> None:
    done = ckptserve(
        "predict", "NOPE", "--port", str(served.http_port), "--json", json.dumps({"instances": IDS})
    )
    assert done.returncode == 1, done.stderr
    body = json.loads(done.stdout)
    assert body["code"] == 404 and body["type"] == "ModelNotFoundError", body
    assert "NOPE" in body["error"] and "GET /models" in body["hint"], body

    with HttpClient(served.url) as client, pytest.raises(ModelNotFoundError) as caught:
        client.predict("NOPE", IDS)
    assert caught.value.hint and "GET /models" in caught.value.hint


def test_token_id_out_of_range_names_the_vocabulary(served: Served) -> None:
    ids = [[1, 2, 3, 4, 5, 500]]
    done = ckptserve(
        "predict", "tokens", "--port", str(served.http_port), "--json", json.dumps({"instances": ids})
    )
    assert done.returncode == 1, done.stdout
    body = json.loads(done.stdout)
    assert body["code"] == 422, body
    assert f"embed has {VOCAB}" in body["hint"] and "from 1 to 500" in body["hint"], body
    assert f"shape ({len(ids[0])},)" in body["hint"], body


def test_headers_count_instances_and_spell_a_missing_epoch_like_the_metrics(served: Served) -> None:
    status, headers, body = http(f"{served.url}/predictions/tokens", json.dumps({"instances": IDS}).encode())
    assert status == 200, body
    assert headers["x-ckptserve-batch-size"] == str(len(IDS))  # instances, as ckptserve_batch_size counts
    assert headers["x-ckptserve-batch-requests"] == "1"
    label = f"epoch=none@{served.checkpoint_sha[:12]}"
    assert headers["x-ckptserve-checkpoint"] == label

    # The metrics spell the same checkpoint the same way (epoch="none"); they arrive within ~0.1 s.
    pattern = re.compile(
        r'ckptserve_checkpoint_info\{[^}]*epoch="([^"]*)"[^}]*sha256="([0-9a-f]+)"[^}]*\} 1\.0'
    )
    deadline, found = time.monotonic() + 60, None
    while found is None and time.monotonic() < deadline:
        _, _, text = http(f"http://127.0.0.1:{served.metrics_port}/metrics")
        found = pattern.search(text.decode())
        if found is None:
            time.sleep(0.2)
    assert found is not None, "no live ckptserve_checkpoint_info series"
    assert f"epoch={found.group(1)}@{found.group(2)}" == label


def test_second_server_on_the_same_runtime_dir_names_the_flag(served: Served) -> None:
    done = serve(served.store, served.runtime_dir, served.tmpdir)
    assert done.returncode == 2
    assert f"already runs from {served.runtime_dir}" in done.stderr
    assert (
        f"ckptserve stop --runtime-dir {served.runtime_dir}" in done.stderr
        and "serve --runtime-dir" in done.stderr
    )


def test_float_input_to_an_embedding_says_which_input_dtype_to_set(tmp_path: Path) -> None:
    store, _ = package_tokens(tmp_path, dtype="float32")
    (tmp_path / "tmp").mkdir()
    done = serve(store, tmp_path / "runtime", tmp_path / "tmp")
    assert done.returncode == 2, done.stdout
    assert "set handler.input.dtype: int64" in done.stderr, done.stderr


def test_relative_checkpoint_missing_from_the_archive_shows_what_the_user_wrote(tmp_path: Path) -> None:
    # An archive without its checkpoint (package refuses to build one; a hand-built archive can be).
    store, _ = package_tokens(tmp_path, dtype="int64", archive_format="no-archive")
    (store / "tokens" / "tokens.pt").unlink()
    (tmp_path / "tmp").mkdir()
    done = serve(store, tmp_path / "runtime", tmp_path / "tmp")
    assert done.returncode == 2, done.stdout
    assert "handler.checkpoint 'tokens.pt' is a relative path" in done.stderr, done.stderr
    assert "No checkpoint at" not in done.stderr  # the unpacked archive's internal path is not the news
