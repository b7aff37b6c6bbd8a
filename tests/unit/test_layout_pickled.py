"""torch.save's pickled layouts read by their descriptors: what is refused, why, and what comes back."""

from __future__ import annotations

import pickle
import sys
import types
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from serving.checkpoints.layout import detect_layout
from serving.checkpoints.layouts.base import CheckpointContents, ReadOptions
from serving.checkpoints.layouts.torch_save import TorchSave
from serving.errors import (
    AmbiguousCheckpointError,
    ArchitectureError,
    CkptServeError,
    CorruptCheckpointError,
    NotACheckpointError,
    UnsafeCheckpointError,
)
from tests.assets.archs import SmallNet
from tests.assets.hostile import Hostile
from tests.conftest import Reference

# The legacy format's first three pickles (magic number, protocol, system info), as torch writes them.
_LEGACY_HEADER = b"".join(
    pickle.dumps(x, protocol=2)
    for x in (0x1950A86A20F9469CFC6C, 1001, {"protocol_version": 1001, "little_endian": True})
)


def _read(path: Path, **options: object) -> CheckpointContents:
    return detect_layout(path).read(path, ReadOptions(**options))  # type: ignore[arg-type]


def _refusal(path: Path, **options: object) -> CkptServeError:
    with pytest.raises(CkptServeError) as caught:
        _read(path, **options)
    return caught.value


class Config:
    """A training script's own object inside a checkpoint: loadable only when named in safe_globals."""

    def __init__(self, lr: float) -> None:
        self.lr = lr


class Slotted:
    """An allowed class whose pickled state does not fit it (a dict for an object without __dict__)."""

    __slots__ = ("x",)

    def __reduce__(self) -> tuple[object, tuple[()], dict[str, int]]:
        return (Slotted, (), {"x": 1})


# Six plain classes: the unsafe-pickle refusal lists at most five of the globals it found.
class G1: ...


class G2: ...


class G3: ...


class G4: ...


class G5: ...


class G6: ...


def _global_name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


@pytest.fixture
def gone_class_file(tmp_path: Path) -> Iterator[Path]:
    """A checkpoint holding an object whose module was importable when saved and is not any more."""
    module = types.ModuleType("ckptserve_gone_module")
    thing = type("Thing", (), {"__module__": module.__name__})
    module.Thing = thing  # type: ignore[attr-defined]
    sys.modules[module.__name__] = module
    try:
        torch.save({"model_state_dict": SmallNet().state_dict(), "thing": thing()}, tmp_path / "gone.pt")
    finally:
        del sys.modules[module.__name__]
    yield tmp_path / "gone.pt"


# --- what is refused, as what ----------------------------------------------------------------------


def test_reading_metadata_never_unpickles_code(reference: Reference, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    torch.save(
        {"epoch": 3, "model_state_dict": reference.model.state_dict(), "x": Hostile(marker)},
        tmp_path / "m.pt",
    )
    with pytest.raises(UnsafeCheckpointError):
        TorchSave().metadata(tmp_path / "m.pt")
    assert not marker.exists()


def _garbage_zip_pickle(reference: Reference, d: Path) -> Path:
    # A torch.save archive whose data.pkl was overwritten in place: same size, no opcode torch knows.
    path = d / "garbage.pt"
    torch.save(reference.model.state_dict(), path)
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo("garbage/data.pkl")
    start = info.header_offset + 30 + len(info.filename) + len(info.extra)
    data = bytearray(path.read_bytes())
    data[start : start + info.compress_size] = b"\x99" * info.compress_size
    path.write_bytes(bytes(data))
    return path


def _garbage_legacy_pickle(reference: Reference, d: Path) -> Path:
    (d / "garbage_legacy.pt").write_bytes(_LEGACY_HEADER + b"\x80\x02" + b"\x99" * 64)
    return d / "garbage_legacy.pt"


@pytest.mark.parametrize("trust_pickle", [False, True], ids=["untrusted", "trusted"])
@pytest.mark.parametrize("damage", [_garbage_zip_pickle, _garbage_legacy_pickle], ids=["zip", "legacy"])
def test_a_damaged_pickle_is_corrupt_never_unsafe(
    reference: Reference, tmp_path: Path, damage: object, trust_pickle: bool
) -> None:
    # weights_only words every unpickler failure "Weights only load failed"; bytes that are no pickle
    # hold no code, and telling the user to trust them would be wrong advice.
    path = damage(reference, tmp_path)  # type: ignore[operator]
    err = _refusal(path, trust_pickle=trust_pickle)
    assert isinstance(err, CorruptCheckpointError)
    assert repr(str(path)) in err.message and "(UnpicklingError)" in err.message
    assert "trust_pickle" not in (err.hint or "") and "save it again" in (err.hint or "")


def test_an_archive_missing_a_tensor_names_the_file_and_the_reader_failure(
    reference: Reference, tmp_path: Path
) -> None:
    torch.save(reference.model.state_dict(), tmp_path / "full.pt")
    with zipfile.ZipFile(tmp_path / "full.pt") as src, zipfile.ZipFile(tmp_path / "holed.pt", "w") as dst:
        for info in src.infolist():
            if info.filename != "full/data/0":
                dst.writestr(info, src.read(info))
    err = _refusal(tmp_path / "holed.pt")
    assert isinstance(err, CorruptCheckpointError)
    assert repr(str(tmp_path / "holed.pt")) in err.message and "(RuntimeError)" in err.message


def test_a_trusted_pickle_whose_class_is_gone_is_an_architecture_error(gone_class_file: Path) -> None:
    err = _refusal(gone_class_file, trust_pickle=True)
    assert isinstance(err, ArchitectureError)
    assert repr(str(gone_class_file)) in err.message and "(ModuleNotFoundError)" in err.message
    assert "importable" in (err.hint or "")


def test_an_untrusted_pickle_of_a_gone_class_is_unsafe_and_names_it(gone_class_file: Path) -> None:
    err = _refusal(gone_class_file)
    assert isinstance(err, UnsafeCheckpointError)
    assert "ckptserve_gone_module.Thing" in err.message and "pickled Python objects" in err.message


def test_an_allowed_class_whose_state_does_not_fit_it_is_corrupt(tmp_path: Path) -> None:
    torch.save({"model_state_dict": SmallNet().state_dict(), "s": Slotted()}, tmp_path / "s.pt")
    err = _refusal(tmp_path / "s.pt", safe_globals=(_global_name(Slotted),))
    assert isinstance(err, CorruptCheckpointError)
    assert repr(str(tmp_path / "s.pt")) in err.message and "(AttributeError)" in err.message


def test_safe_globals_take_a_class_of_a_nested_module(reference: Reference, tmp_path: Path) -> None:
    torch.save({"model_state_dict": reference.model.state_dict(), "config": Config(0.1)}, tmp_path / "c.pt")
    contents = _read(tmp_path / "c.pt", safe_globals=(_global_name(Config),))
    assert contents.kind == "training_checkpoint" and contents.source_key == "model_state_dict"
    assert torch.equal(contents.state_dict["fc.weight"], reference.model.fc.weight)  # type: ignore[index]


def test_a_safe_global_that_cannot_be_imported_is_named(reference: Reference, tmp_path: Path) -> None:
    torch.save(reference.model.state_dict(), tmp_path / "w.pt")
    err = _refusal(tmp_path / "w.pt", safe_globals=("no_such_module_ckptserve.Thing",))
    assert isinstance(err, ArchitectureError)
    assert "'no_such_module_ckptserve.Thing'" in err.message


def test_the_pickle_size_cap_names_the_file(
    reference: Reference, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("serving.checkpoints.pickle_size.MAX_PICKLE_BYTES", 16)
    torch.save(reference.model.state_dict(), tmp_path / "w.pt")
    err = _refusal(tmp_path / "w.pt")
    assert isinstance(err, CorruptCheckpointError) and "pickle of more than" in err.message
    assert repr(str(tmp_path / "w.pt")) in err.message


# --- the unsafe refusal: what the file holds, and which globals -----------------------------------


def _listed(err: CkptServeError) -> str:
    return err.message.split("weights-only allowlist: ", 1)[1].removesuffix(".")


def test_a_whole_pickled_model_is_named_as_one(reference: Reference, tmp_path: Path) -> None:
    torch.save(reference.model, tmp_path / "model.pt")
    err = _refusal(tmp_path / "model.pt")
    assert isinstance(err, UnsafeCheckpointError)
    assert err.message.startswith(
        f"{str(tmp_path / 'model.pt')!r} holds a whole pickled model (torch.save(model));"
    )


def test_five_foreign_globals_are_all_listed(tmp_path: Path) -> None:
    classes = (G1, G2, G3, G4, G5)
    torch.save(
        {"model_state_dict": SmallNet().state_dict(), **{c.__name__: c() for c in classes}}, tmp_path / "o.pt"
    )
    err = _refusal(tmp_path / "o.pt")
    assert isinstance(err, UnsafeCheckpointError)
    assert err.message.startswith(f"{str(tmp_path / 'o.pt')!r} holds pickled Python objects;")
    assert sorted(_listed(err).split(", ")) == sorted(map(_global_name, classes))


def test_a_sixth_foreign_global_is_counted_not_listed(tmp_path: Path) -> None:
    classes = (G1, G2, G3, G4, G5, G6)
    torch.save(
        {"model_state_dict": SmallNet().state_dict(), **{c.__name__: c() for c in classes}}, tmp_path / "o.pt"
    )
    listed = _listed(_refusal(tmp_path / "o.pt"))
    assert listed.endswith(" (+1 more)")
    names = listed.removesuffix(" (+1 more)").split(", ")
    assert len(names) == 5 and set(names) < set(map(_global_name, classes))


# --- what a read returns ---------------------------------------------------------------------------


def test_torch_save_tensors_stay_mapped_on_the_file(reference: Reference, tmp_path: Path) -> None:
    # maps_file: optimizer state in the same file is never read into memory.
    torch.save(reference.model.state_dict(), tmp_path / "w.pt")
    tensor = _read(tmp_path / "w.pt").state_dict["fc.weight"]  # type: ignore[index]
    address = tensor.data_ptr()
    with open("/proc/self/maps") as maps:
        mapped = [line.split()[-1] for line in maps if _covers(line.split()[0], address)]
    assert mapped == [str(tmp_path / "w.pt")]


def _covers(span: str, address: int) -> bool:
    low, high = (int(x, 16) for x in span.split("-"))
    return low <= address < high


def test_metadata_of_a_file_holding_no_dict_is_empty(tmp_path: Path) -> None:
    torch.save([torch.ones(2), torch.zeros(3)], tmp_path / "list.pt")
    assert TorchSave().metadata(tmp_path / "list.pt") == {}


def test_a_file_holding_a_list_is_no_checkpoint_and_says_what_to_save(tmp_path: Path) -> None:
    torch.save([torch.ones(2)], tmp_path / "list.pt")
    err = _refusal(tmp_path / "list.pt")
    assert isinstance(err, NotACheckpointError)
    assert err.message.startswith(f"{str(tmp_path / 'list.pt')!r} holds a list,")
    assert "model_state_dict" in (err.hint or "")


def test_an_ambiguous_checkpoint_names_its_file(reference: Reference, tmp_path: Path) -> None:
    sd = reference.model.state_dict()
    torch.save({"student": sd, "teacher": sd}, tmp_path / "two.pt")
    err = _refusal(tmp_path / "two.pt")
    assert isinstance(err, AmbiguousCheckpointError)
    assert repr(str(tmp_path / "two.pt")) in err.message


def test_a_training_checkpoint_says_which_entry_held_the_weights(
    reference: Reference, tmp_path: Path
) -> None:
    torch.save({"epoch": 2, "weights": reference.model.state_dict()}, tmp_path / "t.pt")
    contents = _read(tmp_path / "t.pt")
    assert (contents.kind, contents.source_key, contents.metadata["epoch"]) == (
        "training_checkpoint",
        "weights",
        2,
    )
