"""Key alignment's choices a user sees: which prefix is stripped, which keys are twins, which dtypes fit."""

from __future__ import annotations

import hashlib

import pytest
import torch

from serving.checkpoints.keys import align_keys, check_dtype_kinds, fingerprint, shape_map, strip_wrappers
from serving.errors import ArchitectureMismatchError

EXPECTED = {"fc.weight": (2, 4), "fc.bias": (2,)}


@pytest.mark.parametrize("right", ["ema.", "raw."])
def test_the_prefix_whose_keys_fit_by_shape_wins_over_one_that_only_lands(right: str) -> None:
    # Both prefixes land every key on an architecture name; only one has the architecture's shapes.
    wrong = "raw." if right == "ema." else "ema."
    found = {
        **{right + k: v for k, v in EXPECTED.items()},
        **{wrong + k: (v[0] + 1, *v[1:]) for k, v in EXPECTED.items()},
    }
    alignment = align_keys(found, EXPECTED)
    assert alignment.stripped_prefix == right
    assert alignment.exact is False  # the other prefix's keys are reported, never dropped
    assert alignment.rename == {right + k: k for k in EXPECTED}
    assert alignment.unexpected == sorted(wrong + k for k in EXPECTED)
    assert not alignment.mismatched and not alignment.missing


def test_shape_exact_matches_outrank_more_keys_landing() -> None:
    # "big." lands two keys with wrong shapes; "fit." lands one with the right shape: fit wins.
    expected = {"w": (3,), "b": (3,)}
    found = {"big.w": (4,), "big.b": (4,), "fit.w": (3,)}
    alignment = align_keys(found, expected)
    assert alignment.stripped_prefix == "fit."
    assert alignment.missing == ["b"]


def test_more_keys_landing_break_a_tie_in_shape_exact_matches() -> None:
    expected = {"w": (3,), "b": (3,)}
    found = {"one.w": (3,), "two.w": (3,), "two.b": (5,)}
    alignment = align_keys(found, expected)
    assert alignment.stripped_prefix == "two."
    assert alignment.mismatched == [("b", (5,), (3,))]


def test_a_prefix_of_up_to_three_segments_is_stripped_and_no_deeper() -> None:
    three = {"a.b.c." + k: v for k, v in EXPECTED.items()}
    assert align_keys(three, EXPECTED).stripped_prefix == "a.b.c."
    assert align_keys(three, EXPECTED).exact
    four = {"a.b.c.d." + k: v for k, v in EXPECTED.items()}
    alignment = align_keys(four, EXPECTED)
    assert alignment.stripped_prefix == ""
    assert alignment.missing == sorted(EXPECTED)


def test_a_key_that_is_only_a_prefix_name_is_unexpected() -> None:
    found = {"model": (1,), **{"model." + k: v for k, v in EXPECTED.items()}}
    alignment = align_keys(found, EXPECTED)
    assert alignment.stripped_prefix == "model."
    assert alignment.unexpected == ["model"]


def test_a_wrapped_twin_is_unexpected_and_the_plain_key_is_served() -> None:
    found = {"fc.weight": (2, 4), "module.fc.weight": (2, 4), "fc.bias": (2,)}
    alignment = align_keys(found, EXPECTED)
    assert alignment.rename == {"fc.weight": "fc.weight", "fc.bias": "fc.bias"}
    assert alignment.unexpected == ["module.fc.weight"]


def test_wrappers_are_stripped_only_at_the_start_and_repeatedly() -> None:
    assert strip_wrappers("module._orig_mod.module.fc.weight") == "fc.weight"
    assert strip_wrappers("fc.module.weight") == "fc.module.weight"
    assert strip_wrappers("modules.fc") == "modules.fc"


def test_shape_map_keeps_tensors_and_sizes_and_skips_other_entries() -> None:
    entries = {"w": torch.zeros(2, 3), "size": torch.Size([4]), "extra": {"step": 1}, "n": 3}
    assert shape_map(entries) == {"w": (2, 3), "size": (4,)}


def test_inexact_alignment_raises_with_the_differences_and_the_way_out() -> None:
    alignment = align_keys({"fc.weight": (2, 4)}, EXPECTED)
    with pytest.raises(
        ArchitectureMismatchError, match=r"weights in ckpt\.pt .*1 missing key\(s\): fc\.bias"
    ) as e:
        alignment.raise_if_inexact("ckpt.pt")
    assert "strict: false" in (e.value.hint or "")
    align_keys(dict(EXPECTED), EXPECTED).raise_if_inexact("ckpt.pt")  # exact: nothing raised


def test_describe_lists_five_of_each_kind_and_counts_the_rest() -> None:
    expected = {f"l{i}.weight": (2,) for i in range(7)}
    found = {f"l{i}.weight": (3,) for i in range(7)}
    text = align_keys(found, expected).describe()
    assert text.startswith("7 shape mismatch(es): l0.weight (checkpoint [3] vs model [2])")
    assert "l4.weight" in text and "l5.weight" not in text
    assert text.endswith("(+2 more)")
    exactly_five = {f"l{i}.weight": (2,) for i in range(5)}
    assert "more" not in align_keys({}, exactly_five).describe()
    both = align_keys({"x": (1,)}, {"y": (1,)}).describe()
    assert both == "1 missing key(s): y; 1 unexpected key(s): x"


@pytest.mark.parametrize(
    "value, target, fits",
    [
        (torch.ones(2, dtype=torch.float16), torch.float32, True),  # a cast
        (torch.ones(2, dtype=torch.int64), torch.float32, False),  # integers for trained weights
        (torch.ones(2, dtype=torch.complex64), torch.float32, False),  # would drop the imaginary part
        (torch.ones(2, dtype=torch.float32), torch.complex64, True),
        (torch.ones(2, dtype=torch.complex64), torch.complex128, True),
        (torch.ones(2, dtype=torch.int64), torch.complex64, False),
        (torch.tensor([3.0, 4.0]), torch.int64, True),  # a counter saved as whole floats
        (torch.tensor([3.5, 4.0]), torch.int64, False),  # would be truncated
        (torch.tensor([float("nan")]), torch.int64, False),
        (torch.ones(2, dtype=torch.int32), torch.int64, True),
        (torch.ones(2, dtype=torch.bool), torch.int64, True),
        (torch.ones(2, dtype=torch.complex64), torch.int64, False),
    ],
)
def test_dtype_kinds(value: torch.Tensor, target: torch.dtype, fits: bool) -> None:
    weights = {"other": torch.ones(1, dtype=torch.int64), "w": value}
    targets = {"other": torch.int64, "w": target}
    if fits:
        check_dtype_kinds("ckpt.pt", weights, targets)
        return
    with pytest.raises(ArchitectureMismatchError) as caught:
        check_dtype_kinds("ckpt.pt", weights, targets)
    assert (
        f"1 of another kind of dtype (e.g. 'w' is {value.dtype}, the model's is {target})"
        in caught.value.message
    )
    assert "ckpt.pt" in caught.value.message
    assert "dtype cast" in (caught.value.hint or "")


def test_dtype_kinds_ignore_entries_the_model_lacks_and_non_tensors() -> None:
    weights = {"extra": torch.ones(1, dtype=torch.int64), "note": 1.5}
    check_dtype_kinds("ckpt.pt", weights, {"note": torch.int64, "w": torch.float32})


def test_a_prefix_never_wins_against_keys_that_already_fit() -> None:
    # Stripping "model." would land one key; leaving the keys alone lands both: nothing is stripped.
    expected = {"weight": (3,), "model.weight": (3,), "model.bias": (3,)}
    alignment = align_keys({"model.weight": (3,), "model.bias": (3,)}, expected)
    assert alignment.stripped_prefix == ""
    assert alignment.missing == ["weight"]


def test_more_keys_landing_beat_the_keys_as_they_are_on_equal_fit() -> None:
    expected = {"w": (3,), "b": (3,)}
    alignment = align_keys({"w": (3,), "two.w": (3,), "two.b": (5,)}, expected)
    assert alignment.stripped_prefix == "two."
    assert alignment.unexpected == ["w"]


def test_every_shape_exact_key_counts_not_only_the_last() -> None:
    expected = {"w": (3,), "b": (3,), "x": (3,)}
    found = {"a.b": (3,), "a.w": (3,), "c.b": (9,), "c.w": (9,), "c.x": (3,)}
    assert align_keys(found, expected).stripped_prefix == "a."


def test_a_compile_wrapped_twin_is_unexpected_though_it_sorts_first() -> None:
    found = {"_orig_mod.fc.weight": (2, 4), "fc.weight": (2, 4), "fc.bias": (2,)}
    alignment = align_keys(found, EXPECTED)
    assert alignment.rename == {"fc.weight": "fc.weight", "fc.bias": "fc.bias"}
    assert alignment.unexpected == ["_orig_mod.fc.weight"]


def test_fingerprint_is_the_documented_hash_of_sorted_names_and_shapes() -> None:
    # Users compare fingerprints across runs and versions (inspect, describe): the text hashed is fixed.
    text = b"a:1\nw:2,3"
    assert fingerprint({"w": (2, 3), "a": (1,)}) == hashlib.sha256(text).hexdigest()[:16]


def test_lists_in_messages_are_comma_separated_and_long_names_cut_at_100() -> None:
    text = align_keys({}, {"a": (1,), "b": (1,)}).describe()
    assert text == "2 missing key(s): a, b"
    mismatched = align_keys({"a": (1,), "b": (1,)}, {"a": (2,), "b": (2,)}).describe()
    assert (
        mismatched == "2 shape mismatch(es): a (checkpoint [1] vs model [2]), b (checkpoint [1] vs model [2])"
    )
    name = "n" * 150
    with pytest.raises(ArchitectureMismatchError) as caught:
        check_dtype_kinds("ckpt.pt", {name: torch.ones(1, dtype=torch.int64)}, {name: torch.float32})
    assert f"(e.g. {'n' * 100!r} is torch.int64" in caught.value.message
