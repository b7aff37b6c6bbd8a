"""Hostile files in a checkpoint path or watch dir: no code runs, no foreign code served, no bytes quoted."""

from __future__ import annotations

import json
import pickle
import struct
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed.checkpoint as dcp

from serving import load_model, save_checkpoint
from serving.app.cli import main
from serving.checkpoints.summary import summarize
from serving.errors import (
    ArchitectureMismatchError,
    CandidateRejected,
    CheckpointError,
    CkptServeError,
    CorruptCheckpointError,
    UnsafeCheckpointError,
)
from serving.reload import ModelSlot, Reloader, sample_input
from serving.reload.slot import check_same_model
from serving.spec import parse_spec
from tests.assets.archs import SmallNet
from tests.assets.hostile import SECRET, Hostile
from tests.conftest import Reference, train_reference


def hostile_dcp(directory: Path, marker: Path) -> Path:
    """The attack of issue 9.1: a checkpoint-named directory whose .metadata runs a command."""
    directory.mkdir(parents=True)
    (directory / ".metadata").write_bytes(pickle.dumps(Hostile(marker)))
    (directory / "__0_0.distcp").write_bytes(b"\0" * 64)
    return directory


def _error(fn: Callable[..., object], *args: Any, **kwargs: Any) -> CkptServeError:
    with pytest.raises(CkptServeError) as caught:
        fn(*args, **kwargs)
    return caught.value


# --- 9.1: nothing from the file reaches an unpickler that runs code ------------------------------


def test_a_hostile_dcp_metadata_never_runs_through_the_loader_or_inspect(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    marker = tmp_path / "pwned"
    path = hostile_dcp(tmp_path / "model_epoch_3000", marker)
    err = _error(load_model, SmallNet, path)
    assert isinstance(err, UnsafeCheckpointError) and "DCP" in err.message
    _error(summarize, path)
    assert main(["inspect", str(path)]) == 2
    assert "would run code" in capsys.readouterr().err
    assert not marker.exists()


def test_dcp_metadata_that_names_a_file_outside_its_directory_is_refused(
    reference: Reference, tmp_path: Path
) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.save({"model": reference.model.state_dict()}, checkpoint_id=tmp_path / "ckpt", no_dist=True)
    metadata_path = tmp_path / "ckpt" / ".metadata"
    with metadata_path.open("rb") as fh:
        metadata = pickle.load(fh)  # the test's own, trusted file
    for info in metadata.storage_data.values():
        info.relative_path = "../elsewhere.distcp"
    (tmp_path / "elsewhere.distcp").write_bytes((tmp_path / "ckpt" / "__0_0.distcp").read_bytes())
    metadata_path.write_bytes(pickle.dumps(metadata))
    err = _error(load_model, SmallNet, tmp_path / "ckpt")
    assert isinstance(err, CorruptCheckpointError) and "inside that directory" in err.message


def test_a_genuine_dcp_checkpoint_still_loads(reference: Reference, tmp_path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.save(
            {"model": reference.model.state_dict(), "step": 7, "optim": reference.optimizer.state_dict()},
            checkpoint_id=tmp_path / "ckpt",
            no_dist=True,
        )
    model = load_model(SmallNet, tmp_path / "ckpt")
    with torch.no_grad():
        assert torch.equal(model(reference.inputs), reference.outputs)


@pytest.mark.parametrize("where", ["legacy", "lightning_hparams"])
def test_other_pickled_payloads_never_run(reference: Reference, tmp_path: Path, where: str) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "model_epoch_9.ckpt"
    if where == "legacy":  # torch.save's pre-1.6 (non-zip) format
        torch.save(
            {"model_state_dict": reference.model.state_dict(), "x": Hostile(marker)},
            path,
            _use_new_zipfile_serialization=False,
        )
    else:
        state = {f"model.{k}": v for k, v in reference.model.state_dict().items()}
        torch.save(
            {"state_dict": state, "pytorch-lightning_version": "2.4.0", "hyper_parameters": Hostile(marker)},
            path,
        )
    assert isinstance(_error(load_model, SmallNet, path), UnsafeCheckpointError)
    _error(summarize, path)
    assert not marker.exists()


def test_a_torch_export_archive_needs_trust_because_its_loader_unpickles(
    reference: Reference, tmp_path: Path
) -> None:
    path = tmp_path / "model.pt2"
    torch.export.save(torch.export.export(reference.model, (reference.inputs,)), path)
    err = _error(load_model, None, path)
    assert isinstance(err, UnsafeCheckpointError) and "trust_pickle" in (err.hint or "")
    assert isinstance(_error(summarize, path), UnsafeCheckpointError)


# --- 9.2: a model served from an architecture only takes its weights -----------------------------


class _Foreign(torch.nn.Module):
    """Another model's code: its own forward, none of SmallNet's weights."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros(x.shape[0], 10) + self.w


def test_a_self_describing_file_never_replaces_the_architecture(reference: Reference, tmp_path: Path) -> None:
    torch.jit.save(torch.jit.script(_Foreign()), tmp_path / "model_epoch_4000.pt")
    err = _error(load_model, SmallNet, tmp_path / "model_epoch_4000.pt")
    assert isinstance(err, ArchitectureMismatchError) and "its own code" in err.message
    torch.jit.save(torch.jit.script(reference.model), tmp_path / "same_weights.pt")
    assert isinstance(_error(load_model, SmallNet, tmp_path / "same_weights.pt"), ArchitectureMismatchError)


class _Impostor(SmallNet):
    """SmallNet's weights with other code: what a whole-model pickle can bring along."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros(x.shape[0], 10)


def test_a_trusted_whole_pickle_lends_only_its_weights_to_the_architecture(
    reference: Reference, tmp_path: Path
) -> None:
    impostor = _Impostor()
    impostor.load_state_dict(reference.model.state_dict())
    torch.save(impostor.eval(), tmp_path / "whole.pth")
    model = load_model(SmallNet, tmp_path / "whole.pth", trust_pickle=True)
    assert type(model) is SmallNet  # the architecture's code, the file's weights
    with torch.no_grad():
        assert torch.equal(model(reference.inputs), reference.outputs)


def test_the_gate_checks_code_source_keys_shapes_and_dtypes(reference: Reference, tmp_path: Path) -> None:
    save_checkpoint(tmp_path / "a.pth", reference.model, epoch=1)
    live = load_model(SmallNet, tmp_path / "a.pth")
    torch.jit.save(torch.jit.script(reference.model), tmp_path / "scripted.pt")
    scripted = load_model(None, tmp_path / "scripted.pt")
    with pytest.raises(CandidateRejected, match="never its code"):
        check_same_model(live, scripted)  # an architecture model never takes a self-describing one
    with pytest.raises(CandidateRejected, match="never its code"):
        check_same_model(scripted, live)
    check_same_model(scripted, load_model(None, tmp_path / "scripted.pt"))  # same layout: fine
    wide_path = save_checkpoint(tmp_path / "w.pth", train_reference(hidden=32).model, epoch=2)
    wide = load_model(SmallNet, wide_path, architecture_kwargs={"hidden": 32})
    with pytest.raises(CandidateRejected, match="of another shape"):
        check_same_model(live, wide)
    half = load_model(SmallNet, tmp_path / "a.pth", dtype="float16")
    with pytest.raises(CandidateRejected, match="dtype"):
        check_same_model(live, half)


# --- 9.3: messages describe a file, never quote it ------------------------------------------------


def _secret_files(directory: Path) -> list[Path]:
    """Files whose bytes hold SECRET, dressed as every layout the detector knows."""
    secret = SECRET.encode()
    header = json.dumps({SECRET: {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}).encode()
    files = {
        "plain.pth": secret * 4,
        "legacy.pth": b"\x80\x02" + secret * 4,
        "zip.pth": b"PK\x03\x04" + secret * 4,
        "pickle.pth": b"\x80\x04" + secret,
        "safetensors.safetensors": struct.pack("<Q", len(header)) + header + b"\0" * 3,
    }
    paths = []
    for name, data in files.items():
        (directory / name).write_bytes(data)
        paths.append(directory / name)
    index_dir = directory / "sharded"
    index_dir.mkdir()
    (index_dir / "model.index.json").write_bytes(b"\xff" + secret)
    dcp_dir = directory / "dcp"
    dcp_dir.mkdir()
    (dcp_dir / ".metadata").write_bytes(b"\x80\x04" + secret)
    (dcp_dir / "__0_0.distcp").write_bytes(secret)
    return [*paths, index_dir, dcp_dir]


def test_no_error_quotes_the_bytes_of_a_file(tmp_path: Path) -> None:
    for path in _secret_files(tmp_path):
        for fn in (lambda p: load_model(SmallNet, p), summarize):
            err = _error(fn, path)
            assert isinstance(err, CheckpointError), path
            assert SECRET[:8] not in f"{err.message} {err.hint}", (path, err.message)


def test_rejections_in_a_watch_dir_never_quote_the_file(reference: Reference, tmp_path: Path) -> None:
    watch = tmp_path / "watch"
    watch.mkdir()
    save_checkpoint(watch, reference.model, epoch=1)
    outside = tmp_path / "outside"
    outside.mkdir()
    for path in _secret_files(outside):
        (watch / f"model_epoch_{len(list(watch.iterdir())) + 1}_{path.name}").symlink_to(path)
    (watch / ".pin").write_bytes(b"\xff" + SECRET.encode())
    for follow in (False, True):
        spec = parse_spec(
            {
                "architecture": "tests.assets.archs:SmallNet",
                "input": {"shape": [1, 8, 8]},
                "watch_dir": str(watch),
                "poll_interval_s": 0.01,
                "follow_symlinks": follow,
            },
            model_dir=tmp_path,
        )
        reloader = Reloader(spec, lambda p, sha: load_model(SmallNet, p, sha256=sha))
        model = reloader.initial_model(lambda m: None)
        assert model is not None
        reloader.slot = ModelSlot(model, sample_input((1, 8, 8), torch.float32))
        for _ in range(3):
            reloader.poll_once()
        status = json.dumps(reloader.status.to_dict())
        assert SECRET[:8] not in status
        assert reloader.slot.info.path.endswith("model_epoch_1.pth")
        links = {p.name for p in watch.iterdir() if p.is_symlink()}
        if follow:  # read, rejected with a description
            assert {Path(r.path).name for r in reloader.status.recent_rejections} >= links
        else:  # never opened
            assert reloader.status.rejected == 0
            assert all("outside the watch dir" in reloader.status.skipped[name] for name in links)
