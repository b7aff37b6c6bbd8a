"""Bad checkpoints and architectures get a typed error that says what to do, never a torch traceback."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch

from serving import load_model
from serving.errors import (
    AmbiguousCheckpointError,
    ArchitectureError,
    ArchitectureMismatchError,
    CheckpointNotFoundError,
    CkptServeError,
    CorruptCheckpointError,
    EmptyCheckpointError,
    NotACheckpointError,
    UnsafeCheckpointError,
)
from tests.assets.archs import SmallNet
from tests.assets.hostile import Hostile
from tests.conftest import Reference, train_reference


def _load_error(arch: object, path: Path, **kwargs: object) -> CkptServeError:
    with pytest.raises(CkptServeError) as caught:
        load_model(arch, path, **kwargs)
    assert "Traceback" not in str(caught.value)
    return caught.value


def test_missing_file(tmp_path: Path) -> None:
    err = _load_error(SmallNet, tmp_path / "nope.pth")
    assert isinstance(err, CheckpointNotFoundError)
    assert "nope.pth" in err.message


def test_empty_file(tmp_path: Path) -> None:
    (tmp_path / "empty.pth").touch()
    err = _load_error(SmallNet, tmp_path / "empty.pth")
    assert isinstance(err, EmptyCheckpointError)
    assert "0 bytes" in err.message and err.hint


@pytest.mark.parametrize("fraction", [0.3, 0.9])
def test_truncated_file(reference: Reference, tmp_path: Path, fraction: float) -> None:
    torch.save(
        {
            "model_state_dict": reference.model.state_dict(),
            "optimizer_state_dict": reference.optimizer.state_dict(),
        },
        tmp_path / "full.pth",
    )
    data = (tmp_path / "full.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: int(len(data) * fraction)])
    err = _load_error(SmallNet, tmp_path / "cut.pth")
    assert isinstance(err, CorruptCheckpointError)
    assert "truncated" in err.message


def test_truncated_safetensors(reference: Reference, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    save_file(reference.model.state_dict(), tmp_path / "full.safetensors")
    data = (tmp_path / "full.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    err = _load_error(SmallNet, tmp_path / "cut.safetensors")
    assert isinstance(err, CorruptCheckpointError)
    # What was expected (a whole safetensors file), what is wrong, and what to do.
    assert "cut.safetensors" in err.message and "detected as safetensors" in err.message
    assert "truncated" in err.message
    assert "save it again" in (err.hint or "")


def test_truncated_safetensors_header(reference: Reference, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    save_file(reference.model.state_dict(), tmp_path / "full.safetensors")
    data = (tmp_path / "full.safetensors").read_bytes()
    header_len = int.from_bytes(data[:8], "little")
    (tmp_path / "cut.safetensors").write_bytes(data[: 8 + header_len - 1])  # one byte of header short
    err = _load_error(SmallNet, tmp_path / "cut.safetensors")
    assert isinstance(err, CorruptCheckpointError)
    assert f"header claims {header_len} bytes" in err.message
    assert f"only {8 + header_len - 1}" in err.message
    assert "Wait for the writer" in (err.hint or "")


@pytest.mark.parametrize("content", [b"hello, not a checkpoint\n", os.urandom(4096), b'{"json": true}'])
def test_not_a_checkpoint(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "x.pth").write_bytes(content)
    err = _load_error(SmallNet, tmp_path / "x.pth")
    assert isinstance(err, NotACheckpointError)
    assert "safetensors" in (err.hint or "")


def test_a_tensor_is_not_a_checkpoint(tmp_path: Path) -> None:
    torch.save(torch.ones(3), tmp_path / "t.pth")
    assert isinstance(_load_error(SmallNet, tmp_path / "t.pth"), NotACheckpointError)


def test_a_dict_without_tensors(tmp_path: Path) -> None:
    torch.save({"epoch": 3, "loss": 0.1}, tmp_path / "meta.pth")
    err = _load_error(SmallNet, tmp_path / "meta.pth")
    assert isinstance(err, NotACheckpointError)
    assert "epoch" in err.message


def test_empty_directory(tmp_path: Path) -> None:
    assert isinstance(_load_error(SmallNet, tmp_path), NotACheckpointError)


def test_wrong_architecture_lists_the_differences(tmp_path: Path) -> None:
    wide = train_reference(hidden=32)
    torch.save(wide.model.state_dict(), tmp_path / "wide.pth")
    err = _load_error(SmallNet, tmp_path / "wide.pth")  # SmallNet defaults to hidden=16
    assert isinstance(err, ArchitectureMismatchError)
    assert "3 shape mismatch(es)" in err.message
    assert "fc.weight (checkpoint [32, 256] vs model [16, 256])" in err.message

    torch.save(torch.nn.Linear(4, 2).state_dict(), tmp_path / "linear.pth")
    err = _load_error(SmallNet, tmp_path / "linear.pth")
    assert isinstance(err, ArchitectureMismatchError)
    assert "missing key(s)" in err.message and "unexpected key(s)" in err.message


def test_ambiguous_checkpoint_dict(reference: Reference, tmp_path: Path) -> None:
    weights = reference.model.state_dict()
    torch.save({"ema_model": weights, "student": weights}, tmp_path / "two.pth")
    err = _load_error(SmallNet, tmp_path / "two.pth")
    assert isinstance(err, AmbiguousCheckpointError)
    assert "'ema_model'" in err.message and "'student'" in err.message
    assert "state_dict_key" in (err.hint or "")
    err = _load_error(SmallNet, tmp_path / "two.pth", state_dict_key="teacher")
    assert isinstance(err, AmbiguousCheckpointError)


def test_untrusted_pickle_names_the_class_and_the_opt_in(reference: Reference, tmp_path: Path) -> None:
    torch.save(reference.model, tmp_path / "entire_model.pth")
    err = _load_error(None, tmp_path / "entire_model.pth")
    assert isinstance(err, UnsafeCheckpointError)
    assert "tests.assets.archs.SmallNet" in err.message
    assert "whole pickled model" in err.message
    assert "trust_pickle" in (err.hint or "")


def test_a_hostile_pickle_never_executes(reference: Reference, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    torch.save(
        {"model_state_dict": reference.model.state_dict(), "x": Hostile(marker)}, tmp_path / "evil.pth"
    )
    with open(tmp_path / "evil.pkl", "wb") as fh:  # a bare pickle, not even a torch zip
        pickle.dump(Hostile(marker), fh, protocol=2)
    for name in ("evil.pth", "evil.pkl"):
        err = _load_error(SmallNet, tmp_path / name)
        # Refused before unpickling, as unsafe (not as damaged): the fix is the user's trust, not a re-save.
        assert isinstance(err, UnsafeCheckpointError), name
        assert "trust_pickle" in (err.hint or ""), name
    assert not marker.exists()
    assert "system" in _load_error(SmallNet, tmp_path / "evil.pth").message


def test_safe_globals_allow_named_classes_only(reference: Reference, tmp_path: Path) -> None:
    import argparse

    torch.save(
        {"model_state_dict": reference.model.state_dict(), "args": argparse.Namespace(lr=0.1)},
        tmp_path / "ns.pth",
    )
    assert isinstance(_load_error(SmallNet, tmp_path / "ns.pth"), UnsafeCheckpointError)
    model = load_model(SmallNet, tmp_path / "ns.pth", safe_globals=["argparse.Namespace"])
    with torch.no_grad():
        assert torch.equal(model(reference.inputs), reference.outputs)


@pytest.mark.parametrize(
    "arch, fragment",
    [
        ("no_such_module_xyz:Net", "Cannot import module 'no_such_module_xyz'"),
        ("tests.assets.archs:Nope", "has no 'Nope'"),
        ("SmallNet", "not of the form"),
        ("/nowhere/model.py:Net", "does not exist"),
    ],
)
def test_unknown_architecture_strings(reference: Reference, tmp_path: Path, arch: str, fragment: str) -> None:
    torch.save(reference.model.state_dict(), tmp_path / "w.pth")
    err = _load_error(arch, tmp_path / "w.pth")
    assert isinstance(err, ArchitectureError)
    assert fragment in err.message


def test_bad_architecture_kwargs_show_the_signature(reference: Reference, tmp_path: Path) -> None:
    torch.save(reference.model.state_dict(), tmp_path / "w.pth")
    err = _load_error(SmallNet, tmp_path / "w.pth", architecture_kwargs={"width": 3})
    assert isinstance(err, ArchitectureError)
    assert "hidden" in (err.hint or "") and "16" in (err.hint or "")


def test_weights_without_an_architecture(reference: Reference, tmp_path: Path) -> None:
    torch.save(reference.model.state_dict(), tmp_path / "w.pth")
    err = _load_error(None, tmp_path / "w.pth")
    assert isinstance(err, ArchitectureError)
    assert "architecture is needed" in err.message
