"""The other layouts' readers and the zip container's bounds: self-describing files, DCP, safetensors."""

from __future__ import annotations

import struct
import zipfile
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp
from safetensors.torch import save_file

from serving.checkpoints import shape_map
from serving.checkpoints.layout import detect_layout, is_complete
from serving.checkpoints.layouts.base import CheckpointContents, ReadOptions, corrupt_error
from serving.checkpoints.layouts.safetensors import Safetensors
from serving.errors import (
    AmbiguousCheckpointError,
    CorruptCheckpointError,
    NotACheckpointError,
    UnsafeCheckpointError,
)
from tests.assets.archs import SmallNet
from tests.conftest import Reference, train_reference

_MAX_CODE_FILE_BYTES = 64 << 20  # zip_archive's bound on one inflated TorchScript code/ file


def _read(path: Path, **options: object) -> CheckpointContents:
    return detect_layout(path).read(path, ReadOptions(**options))  # type: ignore[arg-type]


def _reader_failure(path: Path, **options: object) -> CorruptCheckpointError:
    with pytest.raises(CorruptCheckpointError) as caught:
        _read(path, **options)
    return caught.value


def _stored_zip(path: Path, entries: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return path


@pytest.fixture(scope="module")
def self_describing(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    ref = train_reference()
    d = tmp_path_factory.mktemp("self_describing")
    torch.jit.save(torch.jit.script(ref.model), d / "scripted.pt")
    torch.export.save(torch.export.export(ref.model, (ref.inputs,)), d / "exported.pt2")
    return {"torchscript": d / "scripted.pt", "exported_program": d / "exported.pt2"}


# --- TorchScript and torch.export --------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["torchscript", "exported_program"])
def test_a_self_describing_file_is_read_as_its_kind(self_describing: dict[str, Path], layout: str) -> None:
    contents = _read(self_describing[layout], trust_pickle=True)
    assert contents.kind == layout and contents.layout.name == layout
    assert contents.module is not None and contents.state_dict is None


@pytest.mark.parametrize("layout", ["torchscript", "exported_program"])
def test_a_self_describing_module_lands_on_map_location(
    self_describing: dict[str, Path], layout: str
) -> None:
    # places_module: the loader does not move these modules; the read must have put them there.
    module = _read(self_describing[layout], trust_pickle=True, map_location="meta").module
    assert module is not None
    devices = {t.device.type for t in [*module.parameters(), *module.buffers()]}
    assert devices == {"meta"}


def test_an_untrusted_export_archive_is_refused_by_name(self_describing: dict[str, Path]) -> None:
    path = self_describing["exported_program"]
    with pytest.raises(UnsafeCheckpointError) as caught:
        _read(path)
    assert caught.value.message.startswith(f"{str(path)!r} is a torch.export archive;")


def test_a_damaged_export_archive_names_the_file_and_the_failure(tmp_path: Path) -> None:
    path = _stored_zip(tmp_path / "bad.pt2", {"bad/archive_format": b"pt2", "bad/models/model.json": b"{}"})
    with pytest.raises(Exception) as raw:  # what torch.export itself raises for this archive
        torch.export.load(str(path))
    err = _reader_failure(path, trust_pickle=True)
    assert repr(str(path)) in err.message and f"({type(raw.value).__name__})" in err.message
    assert "detected as exported_program" in err.message


def test_a_damaged_torchscript_archive_names_the_file_and_the_failure(tmp_path: Path) -> None:
    path = _stored_zip(
        tmp_path / "bad.pt", {"bad/code/__torch__.py": b"garbage", "bad/data.pkl": b"\x80\x02}."}
    )
    with pytest.raises(RuntimeError) as raw:
        torch.jit.load(str(path))
    err = _reader_failure(path)
    assert repr(str(path)) in err.message and f"({type(raw.value).__name__})" in err.message
    assert "detected as torchscript" in err.message


# --- DCP ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def two_model_dcp(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.Tensor]]:
    """A DCP checkpoint with two conventional model entries of different shapes: "model" and "net"."""
    torch.manual_seed(0)
    model, net = SmallNet().state_dict(), SmallNet(hidden=8).state_dict()
    path = tmp_path_factory.mktemp("dcp") / "two"
    dcp.save({"model": model, "net": net}, checkpoint_id=path)
    return path, {**{f"model.{k}": v for k, v in model.items()}, **{f"net.{k}": v for k, v in net.items()}}


def test_dcp_lets_the_architecture_pick_among_model_entries(two_model_dcp: tuple[Path, dict]) -> None:
    path, saved = two_model_dcp
    with pytest.raises(AmbiguousCheckpointError):
        _read(path)
    contents = _read(path, expected=shape_map(SmallNet().state_dict()))
    assert (contents.kind, contents.source_key) == ("dcp", "model")
    assert torch.equal(contents.state_dict["fc.weight"], saved["model.fc.weight"])  # type: ignore[index]
    assert contents.metadata == {"dcp_entries": len(saved)}


def test_dcp_state_dict_key_wins_over_the_architecture(two_model_dcp: tuple[Path, dict]) -> None:
    path, saved = two_model_dcp
    contents = _read(path, expected=shape_map(SmallNet().state_dict()), state_dict_key="net")
    assert contents.source_key == "net"
    assert torch.equal(contents.state_dict["fc.weight"], saved["net.fc.weight"])  # type: ignore[index]


# --- safetensors -------------------------------------------------------------------------------------


def test_a_truncated_safetensors_read_names_the_file_and_the_failure(tmp_path: Path) -> None:
    save_file({"w": torch.randn(64, 64)}, tmp_path / "full.safetensors")
    data = (tmp_path / "full.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    err = _reader_failure(tmp_path / "cut.safetensors")
    assert repr(str(tmp_path / "cut.safetensors")) in err.message and "(SafetensorError)" in err.message


def test_a_header_length_with_the_top_bit_set_is_no_safetensors(tmp_path: Path) -> None:
    # Read as unsigned it is far past any file; read as signed it would be negative and "fit".
    path = tmp_path / "x.bin"
    path.write_bytes(struct.pack("<Q", (1 << 63) + 16) + b"{" + b"\0" * 64)
    with pytest.raises(NotACheckpointError, match="starts like none of the layouts"):
        detect_layout(path)


def test_a_header_that_claims_the_whole_file_is_never_whole(tmp_path: Path) -> None:
    # Its length counts the 8 bytes of the length itself: the header cannot fit, whatever it says.
    body = b'{"w":{"dtype":"F32","shape":[0],"data_offsets":[0,-8]}}'.ljust(56)
    path = tmp_path / "x.safetensors"
    path.write_bytes(struct.pack("<Q", 8 + len(body)) + body)
    assert Safetensors().is_complete(path) is False
    assert is_complete(path) is False


# --- the zip container's bounds ----------------------------------------------------------------------


def _patch_central_sizes(
    path: Path, name: str, *, compressed: int | None = None, size: int | None = None
) -> None:
    """Rewrite the sizes the central directory gives ``name`` (what zipfile lists), nothing else."""
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        at = archive.start_dir
    while data[at : at + 4] == b"PK\x01\x02":
        name_len, extra_len, comment_len = struct.unpack("<HHH", data[at + 28 : at + 34])
        if data[at + 46 : at + 46 + name_len].decode() == name:
            if compressed is not None:
                data[at + 20 : at + 24] = struct.pack("<I", compressed)
            if size is not None:
                data[at + 24 : at + 28] = struct.pack("<I", size)
            path.write_bytes(bytes(data))
            return
        at += 46 + name_len + extra_len + comment_len
    raise AssertionError(f"{name} not in the central directory")


@pytest.mark.parametrize("past_the_end", [0, 1])
def test_a_stored_entry_may_reach_the_end_of_the_file_but_not_pass_it(
    reference: Reference, tmp_path: Path, past_the_end: int
) -> None:
    path = tmp_path / "w.pt"
    torch.save(reference.model.state_dict(), path)
    with zipfile.ZipFile(path) as archive:
        last = max(archive.infolist(), key=lambda e: e.header_offset)
    claimed = path.stat().st_size - last.header_offset + past_the_end
    _patch_central_sizes(path, last.filename, compressed=claimed, size=claimed)
    if past_the_end:
        with pytest.raises(CorruptCheckpointError, match="entry sizes the file cannot hold"):
            detect_layout(path)
    else:
        assert detect_layout(path).name == "torch_save"


@pytest.mark.parametrize("over", [0, 1])
def test_a_code_file_may_inflate_to_the_bound_but_not_past_it(tmp_path: Path, over: int) -> None:
    path = tmp_path / "s.pt"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("s/data.pkl", b"\x80\x02}.")
        archive.writestr("s/code/__torch__.py", b"# code\n", compress_type=zipfile.ZIP_DEFLATED)
    _patch_central_sizes(path, "s/code/__torch__.py", size=_MAX_CODE_FILE_BYTES + over)
    if over:
        with pytest.raises(CorruptCheckpointError, match="compressed weights"):
            detect_layout(path)
    else:
        assert detect_layout(path).name == "torchscript"


def test_a_compressed_entry_at_the_top_of_the_zip_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "z.pt"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("z/data.pkl", b"\x80\x02}.")
        archive.writestr("notes.txt", b"x" * 64, compress_type=zipfile.ZIP_DEFLATED)
    with pytest.raises(CorruptCheckpointError, match="compressed weights"):
        detect_layout(path)


# --- descriptions ------------------------------------------------------------------------------------


def test_a_failure_on_a_file_of_no_known_layout_says_so(tmp_path: Path) -> None:
    path = tmp_path / "x.bin"
    path.write_bytes(b"no layout starts like this")
    err = corrupt_error(path, ValueError())
    assert f"({path.stat().st_size} bytes, of no known layout)" in err.message
