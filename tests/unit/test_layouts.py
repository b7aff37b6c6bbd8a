"""Every registered layout descriptor: detects its own file and no other, knows when a file is whole,
reads what the loader serves, and its flags say what the loader, the gate and the inplace strategy do."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from serving import checkpoint_info, load_model
from serving.checkpoints.layout import (
    LAYOUTS,
    detect_layout,
    directory_layout,
    is_complete,
    layout_named,
    probe,
)
from serving.checkpoints.layouts.base import Layout
from serving.checkpoints.reader import read_metadata
from serving.errors import CorruptCheckpointError
from tests.assets.archs import SmallNet
from tests.conftest import Reference, train_reference
from tests.unit.test_loader import (
    ckptserve_checkpoint,
    dcp_nested,
    legacy_state_dict,
    safetensors_file,
    sharded_safetensors,
)


def _torchscript(ref: Reference, d: Path) -> Path:
    torch.jit.save(torch.jit.script(ref.model), d / "scripted.pt")
    return d / "scripted.pt"


def _exported(ref: Reference, d: Path) -> Path:
    torch.export.save(torch.export.export(ref.model, (ref.inputs,)), d / "exported.pt2")
    return d / "exported.pt2"


# One real file per registered layout, written by the API that makes it. A layout registered without
# an entry here fails test_every_registered_layout_has_a_file_here.
WRITERS: dict[str, Callable[[Reference, Path], Path]] = {
    "torch_save": ckptserve_checkpoint,
    "torch_save_legacy": legacy_state_dict,
    "safetensors": safetensors_file,
    "sharded_safetensors": sharded_safetensors,
    "dcp": dcp_nested,
    "torchscript": _torchscript,
    "exported_program": _exported,
}
# (copyable, self_describing, structurally checkable as a whole file)
FLAGS = {
    "torch_save": (True, False, True),
    "torch_save_legacy": (True, False, False),
    "safetensors": (True, False, True),
    "sharded_safetensors": (True, False, False),
    "dcp": (True, False, False),
    "torchscript": (False, True, True),
    "exported_program": (False, True, True),
}


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    ref = train_reference()
    out: dict[str, Path] = {}
    for name, write in WRITERS.items():
        directory = tmp_path_factory.mktemp(name)
        out[name] = write(ref, directory)
    return out


def _layout(name: str) -> Layout:
    layout = layout_named(name)
    assert layout is not None, name
    return layout


def test_every_registered_layout_has_a_file_here() -> None:
    names = [layout.name for layout in LAYOUTS]
    assert len(set(names)) == len(names)
    assert set(names) == set(WRITERS) == set(FLAGS)


@pytest.mark.parametrize("name", WRITERS)
def test_a_layout_detects_its_own_file_and_no_other(files: dict[str, Path], name: str) -> None:
    layout = _layout(name)
    assert detect_layout(files[name]) is layout
    for other, path in files.items():
        # The registry asks in order; the first yes wins, so each file has exactly one first match.
        first = next(candidate for candidate in LAYOUTS if candidate.detect(probe(path)))
        assert (first is layout) == (other == name), (name, other)
    if layout.directory:
        assert directory_layout(files[name]) is layout
    else:
        assert directory_layout(files[name].parent) is None  # a file's folder is no checkpoint directory


@pytest.mark.parametrize("name", WRITERS)
def test_a_truncated_file_is_never_complete(files: dict[str, Path], tmp_path: Path, name: str) -> None:
    layout = _layout(name)
    whole = files[name]
    target = whole if not layout.directory else max(p for p in whole.rglob("*") if p.is_file())
    checkable = FLAGS[name][2]
    assert layout.is_complete(target) is checkable
    cut = tmp_path / target.name
    cut.write_bytes(target.read_bytes()[: target.stat().st_size // 2])
    assert layout.is_complete(cut) is False
    if not layout.directory:  # the scanner asks the registry about the files it finds
        assert is_complete(target) is checkable
        assert is_complete(cut) is False


def test_a_truncated_safetensors_header_is_a_typed_error_not_another_layout(
    files: dict[str, Path], tmp_path: Path
) -> None:
    data = files["safetensors"].read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[:20])  # the header's length survives, the header does not
    with pytest.raises(CorruptCheckpointError, match="truncated or still being written"):
        detect_layout(cut)


@pytest.mark.parametrize("name", WRITERS)
def test_flags_are_what_the_loader_and_the_gate_use(files: dict[str, Path], name: str) -> None:
    layout = _layout(name)
    copyable, self_describing, _ = FLAGS[name]
    assert (layout.copyable, layout.self_describing) == (copyable, self_describing)
    architecture = None if self_describing else SmallNet
    model = load_model(architecture, files[name], trust_pickle=name == "exported_program")
    info = checkpoint_info(model)
    assert info.layout == name
    # The gate lets a file bring code only for a model of that very layout (see check_same_model).
    assert info.carries_code is self_describing


def test_metadata_comes_from_the_layouts_that_carry_it(files: dict[str, Path]) -> None:
    assert read_metadata(files["torch_save"])["epoch"] == 10
    assert read_metadata(files["safetensors"]) == {"epoch": 2}  # strings of numbers become numbers
    for name in ("torch_save_legacy", "sharded_safetensors", "dcp", "torchscript", "exported_program"):
        assert read_metadata(files[name]) == {}, name
