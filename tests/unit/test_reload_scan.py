"""The scanner: what it skips never hides what follows it, and a file written in place counts once whole."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from serving import save_checkpoint
from serving.reload import Scanner
from serving.reload.candidates import NO_INDEX, OUTSIDE, is_temporary, resolves_inside
from tests.conftest import Reference

STILL_WRITING = "still being written (waiting for it to be whole or unchanged)"


@pytest.fixture
def outside(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A file outside the watch dir that a link in it points to."""
    path = tmp_path_factory.mktemp("outside") / "secret.pth"
    path.write_bytes(b"not to be read")
    return path


def _written_in_place(path: Path) -> None:
    """Make ``path`` look written in place, not renamed: a change time no later than its modification
    time (utime itself sets the change time to now, so the modification time goes a minute ahead)."""
    ahead = time.time_ns() + 60 * 10**9
    os.utime(path, ns=(ahead, ahead))
    st = path.stat()
    assert st.st_ctime_ns <= st.st_mtime_ns


def test_whatever_sorts_first_and_is_skipped_never_hides_the_checkpoints_after_it(
    reference: Reference, tmp_path: Path, outside: Path
) -> None:
    # Sorted names: every kind of skip comes before the one real checkpoint, "z.pth".
    (tmp_path / "a.pth.tmp").write_bytes(b"half a save")  # a temporary name
    (tmp_path / "b_link.pth").symlink_to(outside)  # resolves outside the watch dir
    (tmp_path / "c_dir").mkdir()  # a directory without an index
    (tmp_path / "d_empty.pth").touch()  # 0 bytes: a save starting
    (tmp_path / "e_growing.pt").write_bytes(b"\x80\x02 legacy pickle, no structure")
    _written_in_place(tmp_path / "e_growing.pt")
    saved = save_checkpoint(tmp_path / "z.pth", reference.model, epoch=4)
    assert saved is not None
    scanner = Scanner(tmp_path)
    assert [c.name for c in scanner.scan()] == ["z.pth"]
    assert scanner.skipped == {
        "b_link.pth": OUTSIDE,
        "c_dir": NO_INDEX,
        "d_empty.pth": "empty (0 bytes): a save may be starting",
        "e_growing.pt": STILL_WRITING,
    }


def test_a_file_deleted_while_scanning_is_passed_over(reference: Reference, tmp_path: Path) -> None:
    save_checkpoint(tmp_path / "z.pth", reference.model, epoch=1)
    (tmp_path / "a_gone.pth").write_bytes(b"x")
    scanner = Scanner(tmp_path)
    real = scanner._signature

    def vanishing(entry: Path) -> object:
        if entry.name == "a_gone.pth":
            raise FileNotFoundError(entry)
        return real(entry)

    scanner._signature = vanishing  # type: ignore[method-assign,assignment]
    assert [c.name for c in scanner.scan()] == ["z.pth"]
    assert "a_gone.pth" not in scanner.skipped


def test_a_safetensors_file_written_in_place_counts_once_its_header_accounts_for_every_byte(
    tmp_path: Path,
) -> None:
    whole = tmp_path / "whole.safetensors"
    save_file({"w": torch.ones(4, 4)}, str(whole), metadata={"epoch": "3"})
    data = whole.read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[:-5])  # a writer still appending its last bytes
    longer = tmp_path / "longer.safetensors"
    longer.write_bytes(data + b"\0" * 5)  # more bytes than the header accounts for
    for path in (whole, cut, longer):
        _written_in_place(path)
    scanner = Scanner(tmp_path)
    assert [c.name for c in scanner.scan()] == ["whole.safetensors"]  # no second poll needed
    assert scanner.skipped == {"cut.safetensors": STILL_WRITING, "longer.safetensors": STILL_WRITING}


def test_a_renamed_file_counts_at_once_without_a_structure_check(tmp_path: Path) -> None:
    legacy = tmp_path / "legacy.pt.tmp"
    legacy.write_bytes(b"\x80\x02 a legacy pickle: nothing in it says it is whole")
    os.utime(legacy, ns=(time.time_ns() - 10**9, time.time_ns() - 10**9))  # written a second ago
    legacy.rename(tmp_path / "legacy.pt")  # mv: the change time moves past the modification time
    assert [c.name for c in Scanner(tmp_path).scan()] == ["legacy.pt"]


def test_is_temporary_covers_hidden_editor_and_download_names() -> None:
    for name in (".hidden.pth", "~model.pth", "#model.pth#", "m.pth.tmp", "m.pth.crdownload", "m.pth~"):
        assert is_temporary(name), name
    for name in ("model.pth", "model_tmp.pth", "step~1.pt"):
        assert not is_temporary(name), name


def test_a_directory_with_a_link_out_does_not_resolve_inside(tmp_path: Path, outside: Path) -> None:
    watch = tmp_path / "watch"
    (watch / "sharded").mkdir(parents=True)
    (watch / "sharded" / "model.safetensors.index.json").write_text("{}")
    root = watch.resolve()
    assert resolves_inside(watch / "sharded", root)
    (watch / "sharded" / "shard.safetensors").symlink_to(outside)
    assert not resolves_inside(watch / "sharded", root)
    (watch / "loop").symlink_to(watch / "loop")
    assert not resolves_inside(watch / "loop", root)  # a symlink loop is not inside


def test_metadata_is_read_once_per_content_not_at_every_poll(
    reference: Reference, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import serving.reload.candidates as candidates
    from serving.checkpoints.layout import detect_layout

    reads: list[str] = []

    def counting(path: Path) -> object:
        reads.append(path.name)
        return detect_layout(path)

    monkeypatch.setattr(candidates, "detect_layout", counting)
    scanner = Scanner(tmp_path)
    assert scanner.skipped == {}  # nothing skipped before the first scan
    save_checkpoint(tmp_path, reference.model, epoch=1)
    for _ in range(3):
        (found,) = scanner.scan()
        assert found.epoch == 1
    assert reads == ["model_epoch_1.pth"]  # unchanged: its metadata is not read again
    save_checkpoint(tmp_path, reference.model, epoch=1)  # rewritten: new content, read again
    scanner.scan()
    scanner.scan()
    assert reads == ["model_epoch_1.pth", "model_epoch_1.pth"]


def test_a_file_renamed_inside_a_checkpoint_directory_is_a_change(
    reference: Reference, tmp_path: Path
) -> None:
    import torch.distributed.checkpoint as dcp

    dcp.save({"model": reference.model.state_dict()}, checkpoint_id=tmp_path / "step_5")
    scanner = Scanner(tmp_path)
    scanner.scan()
    assert [c.name for c in scanner.scan()] == ["step_5"]  # stable across two polls
    (shard,) = (tmp_path / "step_5").glob("*.distcp")
    shard.rename(shard.with_name("renamed.distcp"))  # same size, mtime and inode; another name
    assert scanner.scan() == []
    assert scanner.skipped["step_5"] == STILL_WRITING
