"""load_model against every checkpoint layout, each written by the real torch API that makes it."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import cast
from unittest import mock

import pytest
import torch
import torch.distributed.checkpoint as dcp
from safetensors.torch import save_file, save_model

from serving import checkpoint_info, load_model, save_checkpoint
from serving.checkpoints import fingerprint, shape_map
from serving.errors import ConfigError
from tests.assets.archs import BufferNet, SmallNet, TiedNet
from tests.conftest import Reference, train_reference

Writer = Callable[[Reference, Path], Path]


def state_dict_file(ref: Reference, d: Path) -> Path:  # seed 9.1
    torch.save(ref.model.state_dict(), d / "model_weights.pth")
    return d / "model_weights.pth"


def legacy_state_dict(ref: Reference, d: Path) -> Path:
    torch.save(ref.model.state_dict(), d / "legacy.pt", _use_new_zipfile_serialization=False)
    return d / "legacy.pt"


def training_checkpoint(ref: Reference, d: Path) -> Path:  # seeds 9.3 / 9.4, verbatim layout
    torch.save(
        {
            "epoch": 4,
            "model_state_dict": ref.model.state_dict(),
            "optimizer_state_dict": ref.optimizer.state_dict(),
            "loss": torch.tensor(0.25),
        },
        d / "checkpoint.pth",
    )
    return d / "checkpoint.pth"


def ckptserve_checkpoint(ref: Reference, d: Path) -> Path:  # seeds 9.5 (meaningful names) and 9.7
    return save_checkpoint(d, ref.model, optimizer=ref.optimizer, epoch=10, loss=0.5)


def gpu_written(ref: Reference, d: Path) -> Path:  # seed 9.6: storages tagged cuda:0, as a GPU run writes
    with mock.patch("torch.serialization.location_tag", lambda storage: "cuda:0"):
        torch.save({"model_state_dict": ref.model.state_dict(), "epoch": 1}, d / "gpu.pth")
    with pytest.raises(RuntimeError, match="CUDA"):  # proof that a plain load fails on this machine
        torch.load(d / "gpu.pth", weights_only=True)
    return d / "gpu.pth"


def ddp_state_dict(ref: Reference, d: Path) -> Path:
    torch.save({f"module.{k}": v for k, v in ref.model.state_dict().items()}, d / "ddp.pth")
    return d / "ddp.pth"


def compiled_state_dict(ref: Reference, d: Path) -> Path:
    # The wrapper alone adds "_orig_mod."; nothing is compiled.
    compiled = cast(torch.nn.Module, torch.compile(ref.model))
    assert next(iter(compiled.state_dict())).startswith("_orig_mod.")
    torch.save(compiled.state_dict(), d / "compiled.pth")
    return d / "compiled.pth"


def lightning_checkpoint(ref: Reference, d: Path) -> Path:
    torch.save(
        {
            "epoch": 3,
            "global_step": 120,
            "pytorch-lightning_version": "2.4.0",
            "state_dict": {f"model.{k}": v for k, v in ref.model.state_dict().items()},
            "optimizer_states": [ref.optimizer.state_dict()],
            "lr_schedulers": [],
            "hyper_parameters": {"hidden": 16, "lr": 0.01},
        },
        d / "epoch=3-step=120.ckpt",
    )
    return d / "epoch=3-step=120.ckpt"


def safetensors_file(ref: Reference, d: Path) -> Path:
    save_file(ref.model.state_dict(), d / "model.safetensors", metadata={"epoch": "2"})
    return d / "model.safetensors"


def sharded_safetensors(ref: Reference, d: Path) -> Path:
    out = d / "sharded"
    out.mkdir()
    items = list(ref.model.state_dict().items())
    weight_map = {}
    for i, part in enumerate((items[::2], items[1::2])):
        name = f"model-{i + 1:05d}-of-00002.safetensors"
        save_file({k: v.contiguous() for k, v in part}, out / name)
        weight_map.update({k: name for k, _ in part})
    (out / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return out


def dcp_nested(ref: Reference, d: Path) -> Path:
    dcp.save({"model": ref.model.state_dict(), "optim": ref.optimizer.state_dict()}, checkpoint_id=d / "dcp")
    return d / "dcp"


def dcp_flat(ref: Reference, d: Path) -> Path:
    dcp.save(ref.model.state_dict(), checkpoint_id=d / "dcp_flat")
    return d / "dcp_flat"


LAYOUTS: dict[str, tuple[Writer, str]] = {
    "state_dict": (state_dict_file, "state_dict"),
    "legacy_state_dict": (legacy_state_dict, "state_dict"),
    "training_checkpoint": (training_checkpoint, "training_checkpoint"),
    "ckptserve_checkpoint": (ckptserve_checkpoint, "training_checkpoint"),
    "gpu_written": (gpu_written, "training_checkpoint"),
    "ddp": (ddp_state_dict, "state_dict"),
    "compiled": (compiled_state_dict, "state_dict"),
    "lightning": (lightning_checkpoint, "lightning"),
    "safetensors": (safetensors_file, "state_dict"),
    "sharded_safetensors": (sharded_safetensors, "state_dict"),
    "dcp_nested": (dcp_nested, "dcp"),
    "dcp_flat": (dcp_flat, "dcp"),
}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_weights_layout_reproduces_the_eval_outputs(
    layout: str, reference: Reference, tmp_path: Path
) -> None:
    writer, kind = LAYOUTS[layout]
    path = writer(reference, tmp_path)
    model = load_model(SmallNet, path)
    assert not model.training
    assert all(not p.requires_grad for p in model.parameters())
    with torch.no_grad():
        assert torch.equal(model(reference.inputs), reference.outputs)
    info = checkpoint_info(model)
    assert info.kind == kind
    assert info.device == "cpu"
    assert info.fingerprint == fingerprint(shape_map(reference.model.state_dict()))


def test_self_describing_layouts_need_no_architecture(reference: Reference, tmp_path: Path) -> None:
    torch.jit.save(torch.jit.script(reference.model), tmp_path / "scripted.pt")
    torch.export.save(torch.export.export(reference.model, (reference.inputs,)), tmp_path / "exported.pt2")
    for name, layout in (("scripted.pt", "torchscript"), ("exported.pt2", "exported_program")):
        # torch.export.load unpickles with plain pickle: it needs trust (see test_hostile_checkpoints.py).
        model = load_model(None, tmp_path / name, trust_pickle=layout == "exported_program")
        with torch.no_grad():
            torch.testing.assert_close(model(reference.inputs), reference.outputs)
        assert checkpoint_info(model).layout == layout


def test_whole_pickled_model_loads_only_when_trusted(
    reference: Reference, tmp_path: Path
) -> None:  # seed 9.2
    torch.save(reference.model, tmp_path / "entire_model.pth")
    model = load_model(None, tmp_path / "entire_model.pth", trust_pickle=True)
    assert not model.training
    with torch.no_grad():
        assert torch.equal(model(reference.inputs), reference.outputs)
    assert checkpoint_info(model).kind == "pickled_module"


def test_architecture_may_be_a_class_an_instance_or_a_string(reference: Reference, tmp_path: Path) -> None:
    path = state_dict_file(reference, tmp_path)
    arch_file = Path(__file__).parent.parent / "assets" / "archs.py"
    for arch in (SmallNet, SmallNet(), "tests.assets.archs:SmallNet", f"{arch_file}:SmallNet"):
        with torch.no_grad():
            assert torch.equal(load_model(arch, path)(reference.inputs), reference.outputs), arch


def test_architecture_kwargs_build_the_right_shapes(tmp_path: Path) -> None:
    from tests.conftest import train_reference

    wide = train_reference(hidden=32)
    path = state_dict_file(wide, tmp_path)
    model = load_model("tests.assets.archs:SmallNet", path, architecture_kwargs={"hidden": 32})
    with torch.no_grad():
        assert torch.equal(model(wide.inputs), wide.outputs)


def test_metadata_epoch_loss_hash_and_saved_device(reference: Reference, tmp_path: Path) -> None:
    path = gpu_written(reference, tmp_path)
    info = checkpoint_info(load_model(SmallNet, path))
    assert info.epoch == 1
    assert info.metadata["saved_devices"] == ["cuda:0"]
    assert info.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert info.size_bytes == path.stat().st_size

    info = checkpoint_info(load_model(SmallNet, training_checkpoint(reference, tmp_path)))
    assert (info.epoch, info.loss) == (4, 0.25)
    assert "optimizer_state_dict" not in info.metadata

    info = checkpoint_info(load_model(SmallNet, lightning_checkpoint(reference, tmp_path)))
    assert info.metadata["pytorch-lightning_version"] == "2.4.0"
    assert info.metadata["hyper_parameters"] == {"hidden": 16, "lr": 0.01}


def test_dtype_casts_floating_weights_only(reference: Reference, tmp_path: Path) -> None:
    model = load_model(SmallNet, training_checkpoint(reference, tmp_path), dtype="float64")
    assert model.conv.weight.dtype == torch.float64
    assert model.bn.num_batches_tracked.dtype == torch.int64
    with torch.no_grad():
        torch.testing.assert_close(
            model(reference.inputs.double()), reference.outputs.double(), atol=1e-5, rtol=1e-5
        )
    assert checkpoint_info(model).dtype == "float64"


def test_weights_are_private_memory_not_a_map_of_the_file(reference: Reference, tmp_path: Path) -> None:
    # Training may overwrite the file in place (plain torch.save to one name); the model must not change.
    path = state_dict_file(reference, tmp_path)
    model = load_model(SmallNet, path)
    torch.save({k: torch.zeros_like(v) for k, v in reference.model.state_dict().items()}, path)
    with torch.no_grad():
        assert torch.equal(model(reference.inputs), reference.outputs)


def test_tied_weights_saved_once_by_safetensors(tmp_path: Path) -> None:
    torch.manual_seed(1)
    tied = TiedNet().eval()
    save_model(tied, str(tmp_path / "tied.safetensors"))  # drops the duplicate out.weight
    model = load_model(TiedNet, tmp_path / "tied.safetensors")
    tokens = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        assert torch.equal(model(tokens), tied(tokens))


def test_non_persistent_buffers_are_built_for_real(tmp_path: Path) -> None:
    torch.manual_seed(2)
    net = BufferNet().eval()
    torch.save(net.state_dict(), tmp_path / "buffer.pth")
    model = load_model(BufferNet, tmp_path / "buffer.pth")
    x = torch.randn(2, 6)
    with torch.no_grad():
        assert torch.equal(model(x), net(x))


def test_non_strict_loads_what_fits_and_reports_the_rest(
    reference: Reference, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    weights = dict(reference.model.state_dict())
    del weights["head.bias"]
    weights["extra.weight"] = torch.ones(2)
    torch.save(weights, tmp_path / "partial.pth")
    with caplog.at_level(logging.WARNING):
        model = load_model(SmallNet, tmp_path / "partial.pth", strict=False)
    info = checkpoint_info(model)
    assert info.missing_keys == ("head.bias",)
    assert info.unexpected_keys == ("extra.weight",)
    assert torch.equal(model.conv.weight, reference.model.conv.weight)
    assert "head.bias" in caplog.text


def test_state_dict_key_picks_one_of_several(reference: Reference, tmp_path: Path) -> None:
    torch.save({"model": reference.model.state_dict(), "ema": {}}, tmp_path / "one.pth")
    # Two state dicts of the same architecture with different weights: only the named one may be served.
    teacher = train_reference(seed=1).model.state_dict()
    for key, wanted in (("student", reference.model.state_dict()), ("ema_model", teacher)):
        torch.save({"ema_model": teacher, "student": reference.model.state_dict()}, tmp_path / "two.pth")
        model = load_model(SmallNet, tmp_path / "two.pth", state_dict_key=key)
        assert checkpoint_info(model).kind == "training_checkpoint"
        assert all(torch.equal(v, wanted[k]) for k, v in model.state_dict().items()), key
    with torch.no_grad():
        out = load_model(SmallNet, tmp_path / "one.pth")(reference.inputs)
    assert torch.equal(out, reference.outputs)


def test_the_architecture_breaks_ties_between_state_dicts(reference: Reference, tmp_path: Path) -> None:
    other = torch.nn.Linear(3, 3).state_dict()
    torch.save({"generator": reference.model.state_dict(), "discriminator": other}, tmp_path / "gan.pth")
    with torch.no_grad():
        assert torch.equal(load_model(SmallNet, tmp_path / "gan.pth")(reference.inputs), reference.outputs)


def test_device_auto_is_the_cpu_here_and_cuda_is_refused(reference: Reference, tmp_path: Path) -> None:
    path = state_dict_file(reference, tmp_path)
    # A machine without a GPU, simulated so that the test asserts the same on a GPU machine.
    with (
        mock.patch("torch.cuda.is_available", return_value=False),
        mock.patch("serving.devices._mps_available", return_value=False),
    ):
        assert checkpoint_info(load_model(SmallNet, path, device="auto", gpu_id=0)).device == "cpu"
        with pytest.raises(ConfigError, match="no usable CUDA") as caught:
            load_model(SmallNet, path, device="cuda:0")
    assert "auto" in (caught.value.hint or "")
