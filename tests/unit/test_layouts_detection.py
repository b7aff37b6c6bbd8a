"""Layout detection at its edges: safetensors header bounds, whole-file checks, and what each refusal says."""

from __future__ import annotations

import struct
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from serving.checkpoints.layout import detect_layout, is_complete, probe
from serving.checkpoints.layouts.base import ReadOptions
from serving.checkpoints.layouts.safetensors import MAX_HEADER_BYTES, Safetensors
from serving.errors import (
    CheckpointNotFoundError,
    CorruptCheckpointError,
    EmptyCheckpointError,
    NotACheckpointError,
)


def _header(length: int, rest: bytes = b"{") -> bytes:
    return struct.pack("<Q", length) + rest


def test_a_nine_byte_file_claiming_a_header_is_a_truncated_safetensors(tmp_path: Path) -> None:
    path = tmp_path / "x.bin"
    path.write_bytes(_header(16))  # the length, then "{", and nothing more
    with pytest.raises(CorruptCheckpointError, match="header claims 16 bytes, but the file has only 9"):
        detect_layout(path)


def test_a_header_with_no_tensor_bytes_after_it_is_safetensors(tmp_path: Path) -> None:
    full = tmp_path / "full.safetensors"
    save_file({"w": torch.ones(3)}, full)
    data = full.read_bytes()
    header_len = struct.unpack("<Q", data[:8])[0]
    exact = tmp_path / "header_only.safetensors"
    exact.write_bytes(data[: 8 + header_len])  # the header whole, the tensor bytes gone
    assert detect_layout(exact) is detect_layout(full)
    assert is_complete(exact) is False
    assert is_complete(full) is True


def test_a_header_length_at_the_library_bound_is_no_safetensors(tmp_path: Path) -> None:
    path = tmp_path / "x.bin"
    path.write_bytes(_header(MAX_HEADER_BYTES) + b"\0" * 64)
    with pytest.raises(NotACheckpointError, match="starts like none of the layouts"):
        detect_layout(path)
    path.write_bytes(_header(MAX_HEADER_BYTES - 1) + b"\0" * 64)
    with pytest.raises(CorruptCheckpointError, match="truncated or still being written"):
        detect_layout(path)


def test_a_file_without_tensors_is_whole_when_its_header_ends_it(tmp_path: Path) -> None:
    path = tmp_path / "empty.safetensors"
    save_file({}, path, metadata={"epoch": "1"})
    assert Safetensors().is_complete(path) is True
    contents = Safetensors().read(path, ReadOptions())
    assert contents.kind == "state_dict" and contents.state_dict == {}
    assert contents.metadata == {"epoch": "1"}
    assert Safetensors().metadata(path) == {"epoch": 1}


@pytest.mark.parametrize(
    "content",
    [_header(4096) + b"{}" + b" " * 30, _header(24) + b'{"w": nonsense}' + b" " * 40],
    ids=["header-past-the-end", "header-not-json"],
)
def test_a_damaged_safetensors_is_never_whole(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "x.safetensors"
    path.write_bytes(content)
    assert Safetensors().is_complete(path) is False
    assert is_complete(path) is False


def test_metadata_of_a_damaged_safetensors_is_a_typed_error(tmp_path: Path) -> None:
    path = tmp_path / "x.safetensors"
    path.write_bytes(_header(24) + b'{"w": nonsense}' + b" " * 40)
    with pytest.raises(CorruptCheckpointError) as caught:
        Safetensors().metadata(path)
    assert "x.safetensors" in caught.value.message and "SafetensorError" in caught.value.message


def test_a_missing_path_is_never_complete(tmp_path: Path) -> None:
    assert is_complete(tmp_path / "absent.pt") is False
    assert is_complete(tmp_path) is False  # a directory is no file


def test_an_unknown_directory_lists_eight_names_and_says_what_a_checkpoint_directory_holds(
    tmp_path: Path,
) -> None:
    for i in range(9):
        (tmp_path / f"f{i}.txt").write_text("x")
    with pytest.raises(NotACheckpointError) as caught:
        detect_layout(tmp_path)
    assert str(tmp_path) in caught.value.message
    assert "'f7.txt'" in caught.value.message and "f8.txt" not in caught.value.message
    assert "'.metadata'" in (caught.value.hint or "") and "index.json" in (caught.value.hint or "")


def test_a_zip_torch_did_not_write_is_named_as_such(tmp_path: Path) -> None:
    path = tmp_path / "bundle.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("bundle/readme.txt", "hello")
    with pytest.raises(NotACheckpointError) as caught:
        detect_layout(path)
    assert f"{str(path)!r} is a zip archive but not one torch wrote" in caught.value.message
    assert "not at an archive" in (caught.value.hint or "")


def test_unknown_bytes_name_the_path_and_size_never_the_content(tmp_path: Path) -> None:
    path = tmp_path / "notes.pt"
    path.write_bytes(b"QZX secret text that is no checkpoint\n")
    with pytest.raises(NotACheckpointError) as caught:
        detect_layout(path)
    assert f"{str(path)!r} (38 bytes)" in caught.value.message
    assert "QZX" not in caught.value.message
    assert "torch.save" in (caught.value.hint or "")


def test_an_empty_file_says_so_and_how_to_avoid_it(tmp_path: Path) -> None:
    path = tmp_path / "empty.pt"
    path.write_bytes(b"")
    with pytest.raises(EmptyCheckpointError) as caught:
        detect_layout(path)
    assert f"{str(path)!r} is empty" in caught.value.message
    assert "atomically" in (caught.value.hint or "")


@pytest.mark.parametrize(
    "entries, layout",
    [
        ({"code/__torch__.py", "data.pkl"}, "torchscript"),
        ({"constants.pkl", "data.pkl"}, "torchscript"),
        ({"archive_format", "data.pkl"}, "exported_program"),
        ({"models/model.json", "data.pkl"}, "exported_program"),
        ({"data.pkl", "version"}, "torch_save"),
    ],
)
def test_torch_archives_are_told_apart_by_any_one_of_their_entries(
    tmp_path: Path, entries: set[str], layout: str
) -> None:
    path = tmp_path / "archive.pt"
    with zipfile.ZipFile(path, "w") as archive:  # stored, as torch writes them
        for name in sorted(entries):
            archive.writestr(f"top/{name}", "x")
    assert probe(path).archive == frozenset(entries)  # below the top folder only, nested names kept
    assert detect_layout(path).name == layout


def test_a_missing_path_says_where_it_looked_and_what_to_check(tmp_path: Path) -> None:
    with pytest.raises(CheckpointNotFoundError) as caught:
        detect_layout(tmp_path / "absent.pt")
    assert f"No checkpoint at {str(tmp_path / 'absent.pt')!r}." == caught.value.message
    assert "Check the path" in (caught.value.hint or "")


def test_a_damaged_zip_says_it_is_not_readable_and_to_wait_or_save_again(tmp_path: Path) -> None:
    path = tmp_path / "cut.pt"
    path.write_bytes(b"PK\x03\x04" + b"\0" * 60)
    with pytest.raises(CorruptCheckpointError) as caught:
        detect_layout(path)
    assert caught.value.message.startswith(f"{str(path)!r} (")
    assert "cannot be read as a zip (BadZipFile)" in caught.value.message
    assert "Wait for the writer" in (caught.value.hint or "")


def test_compressed_weights_are_refused_before_torch_reads_them(tmp_path: Path) -> None:
    path = tmp_path / "zipped.pt"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("top/data.pkl", b"\0" * 256)
    with pytest.raises(CorruptCheckpointError) as caught:
        detect_layout(path)
    size = path.stat().st_size
    assert caught.value.message.startswith(f"{str(path)!r} ({size} bytes) is a zip archive with compressed")
    assert "Save the checkpoint again with torch.save" in (caught.value.hint or "")


def test_a_truncated_safetensors_header_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "x.bin"
    path.write_bytes(_header(16))
    with pytest.raises(CorruptCheckpointError) as caught:
        detect_layout(path)
    assert caught.value.message.startswith(f"{str(path)!r} is a safetensors file")
