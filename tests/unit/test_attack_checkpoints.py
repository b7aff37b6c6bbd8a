"""Attacks through the watch dir and the library: typed rejections, never a hang, a crash or garbage."""

from __future__ import annotations

import builtins
import io
import json
import logging
import os
import pickle
import struct
import threading
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed.checkpoint as dcp
from safetensors.torch import save_file

from serving import checkpoint_info, load_model, save_checkpoint
from serving.app.cli import main
from serving.checkpoints.dcp import read_dcp_metadata
from serving.checkpoints.layout import detect_layout
from serving.checkpoints.pickle_size import MAX_PICKLE_BYTES
from serving.checkpoints.summary import summarize
from serving.errors import (
    ArchitectureMismatchError,
    CheckpointError,
    CkptServeError,
    CorruptCheckpointError,
    NotACheckpointError,
)
from serving.files import sha256_of
from serving.reload import ModelSlot, Reloader, sample_input
from serving.reload.slot import check_forward, check_weights_finite
from serving.spec import parse_spec
from tests.assets.archs import SmallNet
from tests.assets.hostile import Hostile
from tests.conftest import Reference

# A reader that blocks (a FIFO) must be caught by the test, not hang the suite: generous, not a timing.
_HANG_GUARD_S = 120.0
_DEEP_JSON = b"[" * 100_000 + b"]" * 100_000


def _finishes(fn: Callable[[], Any]) -> Any:
    """``fn()``'s result or exception, or fail if it never returns (a reader blocked on a FIFO)."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # handed to the test
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(_HANG_GUARD_S)
    assert not thread.is_alive(), "the reader blocked (it opened a FIFO or a device)"
    if "error" in box:
        raise box["error"]
    return box.get("value")


def _spec(watch: Path, **reload: object) -> Any:
    handler = {"architecture": "tests.assets.archs:SmallNet", "input": {"shape": [1, 8, 8]}}
    return parse_spec(
        {**handler, "watch_dir": str(watch), "poll_interval_s": 0.01, "policy": "highest_epoch", **reload},
        model_dir=watch,
    )


def _start(watch: Path, **reload: object) -> Reloader:
    """A reloader as the handler starts it: the start-up gate included."""
    sample = sample_input((1, 8, 8), torch.float32)
    reloader = Reloader(_spec(watch, **reload), lambda p, sha: load_model(SmallNet, p, sha256=sha))

    def gate(model: torch.nn.Module) -> None:
        check_weights_finite(model.state_dict())
        check_forward(model, model, sample, None)

    model = reloader.initial_model(gate)
    assert model is not None
    reloader.slot = ModelSlot(model, sample)
    return reloader


def _served(reloader: Reloader) -> str:
    assert reloader.slot is not None
    return Path(reloader.slot.info.path).name


def _state(reference: Reference) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone().contiguous() for k, v in reference.model.state_dict().items()}


# --- files whose structure makes a reader raise something untyped --------------------------------


def _deep_safetensors_header(d: Path, sd: dict[str, torch.Tensor]) -> Path:
    header = b'{"x":' + _DEEP_JSON + b"}"
    path = d / "model_epoch_9.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header)
    return path


def _index(d: Path, sd: dict[str, torch.Tensor], index: bytes, name: str = "model_epoch_9") -> Path:
    path = d / name
    path.mkdir()
    save_file(sd, str(path / "shard.safetensors"))
    (path / "model.safetensors.index.json").write_bytes(index)
    return path


def _weight_map_of_lists(d: Path, sd: dict[str, torch.Tensor]) -> Path:
    return _index(d, sd, json.dumps({"weight_map": {k: ["shard.safetensors"] for k in sd}}).encode())


def _metadata_a_list(d: Path, sd: dict[str, torch.Tensor]) -> Path:
    weight_map = {k: "shard.safetensors" for k in sd}
    return _index(d, sd, json.dumps({"weight_map": weight_map, "metadata": [1]}).encode())


def _deep_index(d: Path, sd: dict[str, torch.Tensor]) -> Path:
    return _index(d, sd, b'{"weight_map":' + _DEEP_JSON + b"}")


def _sparse_weight(d: Path, sd: dict[str, torch.Tensor]) -> Path:
    shape = sd["fc.weight"].shape
    indices, values = torch.tensor([[0], [1]]), torch.tensor([1.0])
    sparse = torch.sparse_coo_tensor(indices, values, shape, check_invariants=True)
    path = d / "model_epoch_9.pt"
    torch.save({**sd, "fc.weight": sparse}, path)
    return path


def _meta_weight(d: Path, sd: dict[str, torch.Tensor]) -> Path:
    path = d / "model_epoch_9.pt"
    torch.save({**sd, "fc.weight": torch.empty(sd["fc.weight"].shape, device="meta")}, path)
    return path


def _dcp_storage_not_a_dict(d: Path, sd: dict[str, torch.Tensor]) -> Path:
    path = d / "model_epoch_9"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dcp.save({"model": sd}, checkpoint_id=path, no_dist=True)
    metadata = pickle.loads((path / ".metadata").read_bytes())  # our own file, written just above
    metadata.storage_data = [1]
    (path / ".metadata").write_bytes(pickle.dumps(metadata))
    return path


UNTYPED = {
    "safetensors_header_nested_100k_deep": _deep_safetensors_header,
    "index_weight_map_of_lists": _weight_map_of_lists,
    "index_nested_100k_deep": _deep_index,
    "sparse_weight": _sparse_weight,
    "meta_weight": _meta_weight,
    "dcp_storage_data_a_list": _dcp_storage_not_a_dict,
}


@pytest.mark.parametrize("attack", sorted(UNTYPED))
def test_files_that_make_readers_raise_are_typed_errors(
    reference: Reference, tmp_path: Path, attack: str
) -> None:
    path = UNTYPED[attack](tmp_path, _state(reference))
    for read in (lambda: load_model(SmallNet, path), lambda: summarize(path)):
        with pytest.raises(CheckpointError):
            read()


@pytest.mark.parametrize("attack", sorted(UNTYPED))
def test_such_a_file_never_stops_start_up_or_stalls_the_watcher(
    reference: Reference, tmp_path: Path, attack: str
) -> None:
    # Before: the raw exception escaped initial_model (the worker failed to start, again and again)
    # and every later poll, so no newer checkpoint was ever served.
    save_checkpoint(tmp_path, reference.model, epoch=1)
    hostile = UNTYPED[attack](tmp_path, _state(reference))
    reloader = _start(tmp_path)
    assert _served(reloader) == "model_epoch_1.pth"
    assert [Path(r.path).name for r in reloader.status.recent_rejections] == [hostile.name]
    assert reloader.poll_once() is False
    save_checkpoint(tmp_path, reference.model, epoch=20)
    assert reloader.poll_once() is True
    assert _served(reloader) == "model_epoch_20.pth"
    assert reloader.status.rejected == 1  # rejected once, not at every poll


@pytest.mark.parametrize("key", [1, True, (1, 2)], ids=["int", "bool", "tuple"])
def test_a_state_dict_key_that_is_no_string_is_a_typed_error(
    reference: Reference, tmp_path: Path, key: object
) -> None:
    path = tmp_path / "keys.pt"
    state: dict[Any, Any] = {**reference.model.state_dict(), key: torch.zeros(1)}  # a key of any type
    torch.save(state, path)  # weights_only allows it
    for read in (lambda: load_model(SmallNet, path), lambda: summarize(path)):
        with pytest.raises(CorruptCheckpointError, match="key"):  # before: AttributeError
            read()


def test_an_index_whose_metadata_is_not_an_object_still_loads(reference: Reference, tmp_path: Path) -> None:
    path = _metadata_a_list(tmp_path, _state(reference))  # before: AttributeError from the reader
    assert checkpoint_info(load_model(SmallNet, path)).path == str(path)


def test_a_file_the_server_cannot_open_is_a_rejection(
    reference: Reference, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # EACCES, simulated: the tests may run as root, who reads a chmod 000 file anyway.
    save_checkpoint(tmp_path, reference.model, epoch=1)
    locked = Path(str(save_checkpoint(tmp_path, reference.model, epoch=9)))

    def denying(real: Callable[..., Any]) -> Callable[..., Any]:
        def guarded(path: Any, *args: Any, **kwargs: Any) -> Any:
            if isinstance(path, (str, bytes, os.PathLike)) and Path(os.fsdecode(path)).name == locked.name:
                raise PermissionError(13, "Permission denied")
            return real(path, *args, **kwargs)

        return guarded

    monkeypatch.setattr(os, "open", denying(os.open))
    monkeypatch.setattr(io, "open", denying(io.open))
    monkeypatch.setattr(builtins, "open", denying(builtins.open))
    reloader = _start(tmp_path)
    assert _served(reloader) == "model_epoch_1.pth"
    assert "PermissionError" in reloader.status.recent_rejections[-1].reason
    reloader.poll_once()
    assert reloader.status.rejected == 1


def test_numpy_object_arrays_are_never_unpickled(tmp_path: Path) -> None:
    import numpy as np

    marker = tmp_path / "pwned"
    objects = np.array([Hostile(marker)], dtype=object)
    np.save(tmp_path / "model_epoch_9.npy", objects, allow_pickle=True)
    np.savez(tmp_path / "model_epoch_8.npz", weights=objects)
    for path in (tmp_path / "model_epoch_9.npy", tmp_path / "model_epoch_8.npz"):
        with pytest.raises(NotACheckpointError):
            load_model(SmallNet, path)
        with pytest.raises(NotACheckpointError):
            summarize(path)
    assert not marker.exists()


# --- FIFOs and devices: never opened for reading -----------------------------------------------


def test_a_fifo_is_never_read_by_the_library(tmp_path: Path) -> None:
    fifo = tmp_path / "model_epoch_9.pt"
    os.mkfifo(fifo)
    for read in (
        lambda: detect_layout(fifo),
        lambda: sha256_of(fifo),
        lambda: load_model(SmallNet, fifo),
        lambda: summarize(fifo),
    ):
        with pytest.raises(NotACheckpointError, match="not a regular file"):
            _finishes(read)


def test_a_fifo_index_in_a_checkpoint_directory_never_blocks_the_watcher(
    reference: Reference, tmp_path: Path
) -> None:
    save_checkpoint(tmp_path, reference.model, epoch=1)
    directory = tmp_path / "model_epoch_9"
    directory.mkdir()
    (directory / "shard.safetensors").write_bytes(b"x" * 64)  # makes the directory non-empty
    os.mkfifo(directory / "model.safetensors.index.json")
    reloader = _finishes(lambda: _start(tmp_path))
    assert _served(reloader) == "model_epoch_1.pth"
    _finishes(reloader.poll_once)
    assert _served(reloader) == "model_epoch_1.pth"


def test_a_file_swapped_for_a_fifo_after_the_scan_is_rejected(reference: Reference, tmp_path: Path) -> None:
    save_checkpoint(tmp_path, reference.model, epoch=1)
    reloader = _start(tmp_path)
    later = Path(save_checkpoint(tmp_path, reference.model, epoch=9))
    candidates = reloader._scanner.scan()
    candidates = reloader._scanner.scan()
    swapped = next(c for c in candidates if c.name == later.name)
    later.unlink()
    os.mkfifo(later)
    assert _finishes(lambda: reloader._sha(swapped)) is None
    assert "not a regular file" in reloader.status.recent_rejections[-1].reason


# --- sharded safetensors: every shard inside its directory --------------------------------------


@pytest.mark.parametrize("where", ["dotdot", "absolute"])
def test_an_index_naming_a_shard_outside_its_directory_is_refused(
    reference: Reference, tmp_path: Path, where: str
) -> None:
    watch = tmp_path / "watch"
    watch.mkdir()
    outside = tmp_path / "outside.safetensors"  # a valid checkpoint of this very model
    save_file(_state(reference), str(outside))
    name = "../../outside.safetensors" if where == "dotdot" else str(outside)
    path = _index(watch, _state(reference), json.dumps({"weight_map": {"fc.weight": name}}).encode())
    (path / "shard.safetensors").unlink()
    with pytest.raises(CorruptCheckpointError, match="not a file inside"):
        load_model(SmallNet, path)
    save_checkpoint(watch, reference.model, epoch=1)
    reloader = _start(watch)
    assert _served(reloader) == "model_epoch_1.pth"  # before: the outside file was served


# --- zip archives torch never writes ------------------------------------------------------------


def _rezip(source: Path, target: Path, compression: int) -> None:
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(target, "w", compression) as out:
        for name in src.namelist():
            out.writestr(name, src.read(name))


def test_a_recompressed_torch_save_is_refused_not_read_as_garbage(
    reference: Reference, tmp_path: Path
) -> None:
    plain = tmp_path / "plain.pt"
    torch.save(reference.model.state_dict(), plain)
    deflated = tmp_path / "model_epoch_9.pt"
    _rezip(plain, deflated, zipfile.ZIP_DEFLATED)
    # Before: torch memory-mapped the compressed bytes and served them as weights.
    with pytest.raises(CorruptCheckpointError, match="compressed"):
        load_model(SmallNet, deflated)
    with pytest.raises(CorruptCheckpointError):
        summarize(deflated)


def test_a_zip_bomb_is_refused_before_it_inflates(tmp_path: Path) -> None:
    bomb = tmp_path / "model_epoch_9.pt"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as archive:
        with archive.open("archive/data.pkl", "w", force_zip64=True) as fh:
            fh.write(b"\x80\x02}q\x00.")
            for _ in range(16):
                fh.write(bytes(16 << 20))  # 256 MiB inflated, a few hundred KiB on disk
        archive.writestr("archive/version", "3\n")
    assert bomb.stat().st_size < 2 << 20
    with pytest.raises(CorruptCheckpointError, match="compressed"):
        load_model(SmallNet, bomb)


def _pickle_bomb(n: int) -> bytes:
    return b"\x80\x02(" + b"}" * n + b"l."  # n empty dicts in a list: ~72 bytes of memory per byte


@pytest.mark.parametrize("layout", ["zip", "legacy"])
def test_a_pickle_that_would_amplify_in_memory_is_refused_unread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, layout: str
) -> None:
    monkeypatch.setattr("serving.checkpoints.pickle_size.MAX_PICKLE_BYTES", 1 << 20)  # 1 MiB, for speed
    path = tmp_path / "model_epoch_9.pt"
    bomb = _pickle_bomb(2 << 20)  # ~150 MB once unpickled; with the real cap, 32 MiB -> ~2.4 GB at most
    if layout == "zip":
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("archive/data.pkl", bomb)
            archive.writestr("archive/version", "3\n")
    else:
        header = [0x1950A86A20F9469CFC6C, 1001, {"protocol_version": 1001, "little_endian": True}]
        path.write_bytes(b"".join(pickle.dumps(x, protocol=2) for x in header) + bomb)
    with pytest.raises(CorruptCheckpointError, match="pickle of more than 1 MiB"):
        load_model(SmallNet, path)
    with pytest.raises(CorruptCheckpointError, match="pickle of more than"):
        summarize(path)


def test_real_checkpoints_stay_far_below_the_pickle_cap(reference: Reference, tmp_path: Path) -> None:
    from serving.checkpoints.pickle_size import MAX_PICKLE_BYTES

    legacy = tmp_path / "legacy.pt"
    torch.save(
        {"model_state_dict": reference.model.state_dict(), "epoch": 3},
        legacy,
        _use_new_zipfile_serialization=False,
    )
    assert checkpoint_info(load_model(SmallNet, legacy)).epoch == 3
    # A training checkpoint with optimizer state: a few hundred bytes of pickle per tensor.
    path = save_checkpoint(tmp_path, reference.model, optimizer=reference.optimizer, epoch=1)
    with zipfile.ZipFile(str(path)) as archive:
        pickled = sum(e.file_size for e in archive.infolist() if e.filename.endswith("/data.pkl"))
    tensors = 2 * len(reference.model.state_dict())
    assert pickled / tensors * 100_000 < MAX_PICKLE_BYTES


# --- dtypes: a cast is fine, other values are not the model --------------------------------------


def test_integer_weights_for_a_float_model_are_refused(reference: Reference, tmp_path: Path) -> None:
    state = reference.model.state_dict()
    ints = tmp_path / "ints.pt"
    torch.save({k: (v * 100).long() if v.is_floating_point() else v for k, v in state.items()}, ints)
    with pytest.raises(ArchitectureMismatchError, match="kind of dtype"):
        load_model(SmallNet, ints)
    complex_weights = tmp_path / "complex.pt"  # a cast to float would drop the imaginary part
    torch.save({**state, "fc.weight": state["fc.weight"].to(torch.complex64)}, complex_weights)
    with pytest.raises(ArchitectureMismatchError, match="kind of dtype"):
        load_model(SmallNet, complex_weights)
    counter = tmp_path / "counter.pt"  # an integer buffer given a fractional float
    torch.save({**state, "bn.num_batches_tracked": torch.tensor(2.5)}, counter)
    with pytest.raises(ArchitectureMismatchError, match="kind of dtype"):
        load_model(SmallNet, counter)
    torch.save({**state, "bn.num_batches_tracked": torch.tensor(3.0)}, counter)  # whole: kept
    assert int(load_model(SmallNet, counter).bn.num_batches_tracked) == 3
    halves = tmp_path / "halves.pt"  # a cast, as before
    torch.save({k: v.half() if v.is_floating_point() else v for k, v in state.items()}, halves)
    assert checkpoint_info(load_model(SmallNet, halves)).path == str(halves)


def test_the_inplace_strategy_refuses_integer_weights_too(reference: Reference, tmp_path: Path) -> None:
    save_checkpoint(tmp_path, reference.model, epoch=1)
    reloader = _start(tmp_path, reload_strategy="inplace")
    state = reference.model.state_dict()
    torch.save(
        {k: (v * 100).long() if v.is_floating_point() else v for k, v in state.items()},
        tmp_path / "model_epoch_9.pt",
    )
    reloader._scanner.scan()
    assert reloader.poll_once() is False
    assert "kind of dtype" in reloader.status.recent_rejections[-1].reason
    assert _served(reloader) == "model_epoch_1.pth"


def test_a_file_rewritten_forever_does_not_grow_the_watcher(reference: Reference, tmp_path: Path) -> None:
    save_checkpoint(tmp_path, reference.model, epoch=1)
    reloader = _start(tmp_path)
    broken = {k: v * float("nan") for k, v in reference.model.state_dict().items()}
    for step in range(6):
        torch.save({**broken, "step": torch.tensor(step)}, tmp_path / "model_epoch_9.pt")
        reloader._scanner.scan()
        reloader.poll_once()
    assert reloader.status.rejected == 6  # every version was tried and rejected
    assert len(reloader._rejected) == 1 and len(reloader._hashes) <= 2  # only what is still there


def test_a_huge_file_that_is_no_checkpoint_is_refused_before_it_is_hashed(
    reference: Reference, tmp_path: Path
) -> None:
    save_checkpoint(tmp_path, reference.model, epoch=1)
    reloader = _start(tmp_path)
    with (tmp_path / "model_epoch_9.pt").open("wb") as fh:
        fh.truncate(64 << 30)  # 64 GiB of zeros, sparse: nothing on disk
    reloader._scanner.scan()
    reloader.poll_once()
    rejection = reloader.status.recent_rejections[-1]
    assert Path(rejection.path).name == "model_epoch_9.pt" and "not a checkpoint" in rejection.reason
    assert rejection.sha256 == ""  # refused by its first bytes; before, all 64 GiB were read first


def test_a_wrapped_twin_of_a_key_is_unexpected_not_silently_preferred(
    reference: Reference, tmp_path: Path
) -> None:
    state = reference.model.state_dict()
    twin = tmp_path / "twin.pt"
    torch.save({**state, "module.fc.weight": torch.full_like(state["fc.weight"], 7.0)}, twin)
    # Before: one of the two values was taken, depending on the order of the keys.
    with pytest.raises(ArchitectureMismatchError, match=r"1 unexpected key\(s\): module.fc.weight"):
        load_model(SmallNet, twin)
    wrapped = tmp_path / "wrapped.pt"  # DDP's prefix on every key still loads
    torch.save({f"module.{k}": v for k, v in state.items()}, wrapped)
    torch.testing.assert_close(load_model(SmallNet, wrapped).fc.weight, state["fc.weight"])


# --- names ------------------------------------------------------------------------------------------


def test_a_file_name_with_a_newline_cannot_forge_a_log_line(
    reference: Reference, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    save_checkpoint(tmp_path, reference.model, epoch=1)
    forged = "model_epoch_9.pt\n2026-01-01T00:00:00 [INFO ] W-9000 reload: now serving evil.pt [METRICS]x"
    torch.save({k: v * float("nan") for k, v in reference.model.state_dict().items()}, tmp_path / forged)
    with caplog.at_level(logging.INFO):
        reloader = _start(tmp_path)
        save_checkpoint(tmp_path, reference.model, epoch=20)
        reloader.poll_once()
    assert reloader.status.rejected == 1
    lines = [r.getMessage() for r in caplog.records]
    assert any("reload: rejected" in line for line in lines)
    assert not any("\n" in line for line in lines), lines


def test_inspect_never_prints_control_characters_from_a_file(
    reference: Reference, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "model.safetensors"
    metadata = {"epoch": "\x1b]0;owned\x07", "\x1b[2Jnote\nfingerprint": "x\u202e"}
    save_file(_state(reference), str(path), metadata=metadata)
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\u202e" not in out and "\x07" not in out
    assert out.count("\n") == len(out.splitlines())  # one row per line: no forged rows
    assert "\\x1b]0;owned" in out  # shown, escaped


def test_typed_errors_never_come_from_raw_exception_messages(tmp_path: Path) -> None:
    # A state dict of the right keys, whose index JSON is 100k levels deep: the message names the
    # failure, not the decoder's text.
    path = _deep_index(tmp_path, {"w": torch.zeros(2)})
    with pytest.raises(CkptServeError) as caught:
        summarize(path)
    assert "RecursionError" in caught.value.message and "[[" not in caught.value.message


# --- DCP metadata: read through one regular-file descriptor, size-capped before unpickling ---------


def test_a_dcp_metadata_swapped_for_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    # Layout detection saw a regular file; the reader opens it again and must check again.
    (tmp_path / "__0_0.distcp").write_bytes(b"x" * 64)
    os.mkfifo(tmp_path / ".metadata")
    with pytest.raises(NotACheckpointError, match="not a regular file"):
        _finishes(lambda: read_dcp_metadata(tmp_path))


def test_a_dcp_metadata_over_the_pickle_cap_is_refused_unread(tmp_path: Path) -> None:
    (tmp_path / "__0_0.distcp").write_bytes(b"x" * 64)
    with (tmp_path / ".metadata").open("wb") as fh:
        fh.truncate(MAX_PICKLE_BYTES + 1)  # sparse: the cap is checked on the size, nothing is read
    with pytest.raises(CorruptCheckpointError, match="over the 32 MiB"):
        read_dcp_metadata(tmp_path)
