"""`--models` entries: NAME, NAME=FILE.mar and ALL, resolved against the model store."""

from __future__ import annotations

from pathlib import Path

import pytest

from serving.errors import ConfigError
from serving.torchserve import ServerSettings
from serving.torchserve.config import archive_entries


def test_a_bare_name_means_its_archive_or_its_no_archive_folder(tmp_path: Path) -> None:
    (tmp_path / "digits.mar").write_bytes(b"")
    (tmp_path / "text").mkdir()  # `ckptserve package --archive-format no-archive` builds a folder
    entries = ["digits", "text", "other=digits.mar", "ALL"]
    assert archive_entries(entries, tmp_path) == ["digits=digits.mar", "text=text", "other=digits.mar", "ALL"]
    ServerSettings(model_store=tmp_path, runtime_dir=tmp_path / "rt", models=entries).validate()


def test_a_bare_name_without_an_archive_names_what_the_store_holds(tmp_path: Path) -> None:
    (tmp_path / "digits.mar").write_bytes(b"")
    settings = ServerSettings(model_store=tmp_path, runtime_dir=tmp_path / "rt", models=["digit"])
    with pytest.raises(ConfigError, match=r"expected digit\.mar .* found digits\.mar") as caught:
        settings.validate()
    assert caught.value.hint and "ckptserve package digit" in caught.value.hint
