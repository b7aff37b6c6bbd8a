"""The shared file helpers: log tails for error messages, atomic writes for state files."""

from __future__ import annotations

from pathlib import Path

from serving.files import atomic_write, tail


def test_tail_keeps_the_last_lines_without_java_stack_frames(tmp_path: Path) -> None:
    log = tmp_path / "ts.log"
    log.write_text(
        "starting\nModelException: no such file\n\tat org.pytorch.Foo.bar(Foo.java:1)\n"
        "    at org.pytorch.Foo.baz(Foo.java:2)\nstopped\n\n\n"
    )
    assert tail(log, 2) == ["ModelException: no such file", "stopped"]
    assert tail(log, 10) == ["starting", "ModelException: no such file", "stopped"]


def test_tail_of_an_unreadable_log_is_none_and_of_an_empty_one_nothing(tmp_path: Path) -> None:
    assert tail(tmp_path / "missing.log", 5) is None
    (tmp_path / "empty.log").write_text("")
    assert tail(tmp_path / "empty.log", 5) == []


def test_atomic_write_replaces_the_file_and_leaves_no_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "server.json"
    target.write_text("old")
    atomic_write(target, lambda fh: fh.write(b'{"pid": 1}'))
    assert target.read_text() == '{"pid": 1}'
    assert [p.name for p in tmp_path.iterdir()] == ["server.json"]
