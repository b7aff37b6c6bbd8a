"""The validation gate: what it lets through, what it refuses and why, and the swap it guards."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from serving.errors import CandidateRejected
from serving.loader import INFO_ATTRIBUTE, CheckpointInfo
from serving.reload import ModelSlot, check_forward, check_weights_finite, sample_input
from serving.reload.slot import check_same_model
from serving.session import ModelSession
from serving.spec import parse_spec
from tests.assets.archs import SmallNet
from tests.unit.test_session import KEEP_THREADS, write_checkpoint

IMAGE = (1, 8, 8)


class Scaled(nn.Module):
    """Multiplies its input by one weight: finite weights can still give infinite outputs."""

    def __init__(self, scale: float = 1.0) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(scale))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) * self.scale


class Returns(nn.Module):
    """A model whose forward returns ``value`` whatever its input (after checking the input's dtype)."""

    def __init__(self, value: object, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.value, self.dtype = value, dtype
        self.weight = nn.Parameter(torch.ones(1, dtype=dtype))

    def forward(self, x: torch.Tensor) -> object:
        self.seen = x
        return self.value


class Embedder(nn.Module):
    """Takes integer token ids, like a language model."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 4)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.embed(ids).mean(1)


def tagged(model: nn.Module, layout: str, kind: str) -> nn.Module:
    """``model`` as if loaded from a file of ``layout``/``kind`` (what the loader attaches)."""
    info = CheckpointInfo("/x", layout, kind, "0" * 64, 1, "", "cpu", "float32", 0.0)
    setattr(model, INFO_ATTRIBUTE, info)
    return model


# --- sample_input ----------------------------------------------------------------------------------


def test_the_sample_is_a_fixed_batch_of_two_with_variable_axes_set_to_one() -> None:
    sample = sample_input((3, -1, 5), torch.float32)
    assert sample.shape == (2, 3, 1, 5) and sample.dtype == torch.float32
    # Every worker and every reload sees the same sample: the output shape they compare is the same.
    assert torch.equal(sample, sample_input((3, -1, 5), torch.float32))
    # Varied, finite values: zeros would hide a model that only overflows on real inputs.
    assert torch.isfinite(sample).all() and len(set(sample.flatten().tolist())) == sample.numel()


def test_the_sample_keeps_the_declared_dtype() -> None:
    half = sample_input(IMAGE, torch.float16)
    assert half.dtype == torch.float16 and torch.equal(half, sample_input(IMAGE, torch.float32).half())
    ids = sample_input((4,), torch.int64)
    assert ids.dtype == torch.int64 and ids.shape == (2, 4) and not ids.any()  # 0 fits any vocabulary


# --- check_weights_finite ----------------------------------------------------------------------


def test_non_finite_weights_are_refused_with_their_count_and_name() -> None:
    weights = {"ok": torch.ones(3), "fc.weight": torch.tensor([1.0, float("nan"), float("inf"), 2.0])}
    with pytest.raises(
        CandidateRejected, match=r"^2 non-finite value\(s\) \(NaN/Inf\) in weight 'fc.weight'"
    ):
        check_weights_finite(weights)


def test_finite_weights_integer_buffers_and_extra_state_pass() -> None:
    check_weights_finite(
        {"w": torch.randn(3), "steps": torch.tensor([7], dtype=torch.int64), "_extra_state": {"v": 1}}
    )


# --- check_forward ---------------------------------------------------------------------------------


def test_the_forward_runs_on_the_sample_placed_like_the_model() -> None:
    model = Returns(torch.zeros(2, 3), dtype=torch.float64)
    sample = sample_input(IMAGE, torch.float32)
    assert check_forward(model, model, sample, None) == (2, 3)
    assert model.seen.dtype == torch.float64 and torch.equal(model.seen, sample.double())
    # Integer ids stay integers whatever the model's float dtype: an embedding needs them.
    embedder = Embedder().double()
    assert check_forward(embedder, embedder, sample_input((5,), torch.int64), None) == (2, 4)


def test_the_sample_goes_to_the_models_device() -> None:
    # "meta" stands in for a GPU here: a model whose weights live off the CPU gets its sample there.
    model = Returns(torch.zeros(2, 3)).to("meta")
    assert check_forward(model, model, sample_input(IMAGE, torch.float32), None) == (2, 3)
    assert model.seen.device.type == "meta"


def test_a_failing_forward_is_refused_with_its_error_and_a_dtype_hint() -> None:
    model = Embedder()
    with pytest.raises(CandidateRejected, match=r"^The warm-up forward failed: RuntimeError: ") as caught:
        check_forward(model, model, sample_input((5,), torch.float32), None)
    assert "Expected tensor for argument #1 'indices'" in caught.value.message  # torch's own reason
    assert caught.value.hint is not None and "handler.input.dtype: int64" in caught.value.hint


class Raises(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise ValueError("x" * 300)


def test_a_long_forward_error_is_cut_to_200_characters() -> None:
    model = Raises()
    with pytest.raises(CandidateRejected) as caught:
        check_forward(model, model, sample_input(IMAGE, torch.float32), None)
    assert caught.value.message == f"The warm-up forward failed: ValueError: {'x' * 200}."


def test_the_first_output_of_a_tuple_or_list_is_checked() -> None:
    for box in (tuple, list):
        model = Returns(box([torch.zeros(2, 7), "not a tensor"]))
        assert check_forward(model, model, sample_input(IMAGE, torch.float32), (2, 7)) == (2, 7)
        nan = Returns(box([torch.full((2, 7), float("nan"))]))
        with pytest.raises(CandidateRejected, match="non-finite outputs"):
            check_forward(nan, nan, sample_input(IMAGE, torch.float32), None)


def test_an_output_that_is_not_a_tensor_is_refused() -> None:
    model = Returns({"logits": torch.zeros(2, 3)})
    with pytest.raises(CandidateRejected, match=r"^The warm-up forward returned dict, not a tensor\."):
        check_forward(model, model, sample_input(IMAGE, torch.float32), None)


def test_an_output_shape_other_than_the_served_models_is_refused() -> None:
    model = Returns(torch.zeros(2, 5))
    sample = sample_input(IMAGE, torch.float32)
    assert check_forward(model, model, sample, (2, 5)) == (2, 5)
    with pytest.raises(
        CandidateRejected, match=r"^The warm-up output has shape \(2, 5\); the served model gives \(2, 4\)\."
    ):
        check_forward(model, model, sample, (2, 4))


def test_infinite_outputs_are_refused_and_integer_outputs_are_not_checked_for_them() -> None:
    overflow = Scaled(3e38)  # a finite weight; the sample's values above 1 overflow float32
    with pytest.raises(
        CandidateRejected, match=r"^The warm-up forward gave non-finite outputs \(NaN/Inf\)\.$"
    ):
        check_forward(overflow, overflow, sample_input(IMAGE, torch.float32), None)
    ids = Returns(torch.zeros(2, 3, dtype=torch.int64))
    assert check_forward(ids, ids, sample_input(IMAGE, torch.float32), None) == (2, 3)


# --- check_same_model --------------------------------------------------------------------------


def test_weights_of_the_same_model_pass() -> None:
    check_same_model(SmallNet(), SmallNet())
    check_same_model(tagged(SmallNet(), "torch_save", "training_checkpoint"), SmallNet())


def test_a_file_that_brings_its_own_code_must_match_the_served_kind() -> None:
    script = tagged(SmallNet(), "torchscript", "torchscript")
    weights = tagged(SmallNet(), "torch_save", "training_checkpoint")
    for live, candidate in ((weights, script), (script, weights)):
        with pytest.raises(CandidateRejected, match="never its code") as caught:
            check_same_model(live, candidate)
        new, old = getattr(candidate, INFO_ATTRIBUTE), getattr(live, INFO_ATTRIBUTE)
        said = f"The candidate is a {new.layout} file ({new.kind}); the served model is {old.layout} "
        assert caught.value.message.startswith(f"{said}({old.kind}).")
    check_same_model(script, tagged(SmallNet(), "torchscript", "torchscript"))
    # Two weight files of different layouts are still weights of the same model.
    check_same_model(weights, tagged(SmallNet(), "safetensors", "state_dict"))


def test_a_model_of_another_class_is_refused_by_name() -> None:
    class SmallNet2(SmallNet):
        pass

    served = r"the served model a tests\.assets\.archs\.SmallNet\.$"
    with pytest.raises(CandidateRejected, match=rf"is a tests\.unit\.test_gate\..*SmallNet2; {served}"):
        check_same_model(SmallNet(), SmallNet2())


def test_weights_of_another_shape_or_dtype_are_refused_with_counts_and_the_first_name() -> None:
    with pytest.raises(
        CandidateRejected, match=r"0 missing, 0 unexpected, 3 of another shape or dtype \(first: 'fc.bias'\)"
    ):
        check_same_model(SmallNet(), SmallNet(hidden=32))
    with pytest.raises(CandidateRejected, match=r"0 missing, 0 unexpected, 1 of another shape or dtype"):
        check_same_model(Scaled(), Scaled().double())

    class Extra(Scaled):
        def __init__(self) -> None:
            super().__init__()
            self.bias = nn.Parameter(torch.zeros(1))

    with pytest.raises(CandidateRejected, match=r"0 missing, 1 unexpected, 0 of .* \(first: 'bias'\)"):
        _same_class(Scaled(), Extra())
    with pytest.raises(CandidateRejected, match=r"1 missing, 0 unexpected, 0 of .* \(first: 'bias'\)"):
        _same_class(Extra(), Scaled())


def _same_class(live: nn.Module, candidate: nn.Module) -> None:
    """check_same_model on two models of different keys that claim the same class."""
    candidate.__class__ = type(live)
    check_same_model(live, candidate)


# --- the slot: validate, then swap -------------------------------------------------------------


def test_validate_refuses_each_kind_of_bad_candidate_and_swap_serves_a_good_one() -> None:
    live = SmallNet().eval()
    slot = ModelSlot(live, sample_input(IMAGE, torch.float32))
    assert slot.output_shape == (2, 10)
    nan = SmallNet().eval()
    with torch.no_grad():
        nan.fc.weight[0, 0] = float("nan")
    with pytest.raises(CandidateRejected, match="non-finite value"):
        slot.validate(nan)
    with pytest.raises(CandidateRejected, match="differ from the served model"):
        slot.validate(SmallNet(hidden=32).eval())
    assert slot.model is live
    good = SmallNet().eval()
    slot.validate(good)
    slot.swap(good)
    assert slot.model is good
    with slot.use() as used:
        assert used is good


def test_validate_refuses_a_candidate_whose_output_shape_changed() -> None:
    slot = ModelSlot(Returns(torch.zeros(2, 3)), sample_input(IMAGE, torch.float32))
    with pytest.raises(
        CandidateRejected, match=r"output has shape \(2, 4\); the served model gives \(2, 3\)"
    ):
        slot.validate(Returns(torch.zeros(2, 4)))


# --- the session's start-up gate ---------------------------------------------------------------


def open_over(tmp_path: Path, newest_scale: float) -> ModelSession:
    """A session watching a good epoch 1 and an epoch 2 of ``Scaled(newest_scale)``, polling hourly."""
    watch = tmp_path / "watch"
    write_checkpoint(watch / "model_epoch_1.pth", Scaled(2.0), epoch=1)
    write_checkpoint(watch / "model_epoch_2.pth", Scaled(newest_scale), epoch=2)
    handler = {"architecture": "tests.unit.test_gate:Scaled", "input": {"shape": list(IMAGE)}}
    spec = parse_spec(
        {**handler, "postprocess": {"kind": "raw"}, "watch_dir": str(watch), "poll_interval_s": 3600},
        model_dir=tmp_path,
    )
    return ModelSession.open(spec, model_dir=tmp_path, threads=KEEP_THREADS)


@pytest.mark.parametrize(
    ("scale", "reason"),
    [
        (3e38, "The warm-up forward gave non-finite outputs"),  # finite weights, Inf outputs
        (float("nan"), "1 non-finite value(s) (NaN/Inf) in weight 'scale'"),
    ],
)
def test_start_up_gates_the_newest_watched_checkpoint_and_serves_an_older_good_one(
    tmp_path: Path, scale: float, reason: str
) -> None:
    session = open_over(tmp_path, scale)
    try:
        assert session.served is not None and session.served.epoch == 1
        assert session.slot is not None and session.slot.output_shape == (2, 64)
        assert session.reloader is not None
        (rejection,) = session.reloader.status.recent_rejections
        assert Path(rejection.path).name == "model_epoch_2.pth" and reason in rejection.reason
    finally:
        session.close()
