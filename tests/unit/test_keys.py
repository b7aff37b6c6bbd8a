"""Key alignment and fingerprints, on plain name -> shape maps."""

from __future__ import annotations

from serving.checkpoints import align_keys, fingerprint

EXPECTED = {"conv.weight": (4, 1, 3, 3), "conv.bias": (4,), "fc.weight": (2, 4), "fc.bias": (2,)}


def _prefixed(prefix: str) -> dict[str, tuple[int, ...]]:
    return {prefix + k: v for k, v in EXPECTED.items()}


def test_exact_keys_need_nothing() -> None:
    alignment = align_keys(EXPECTED, EXPECTED)
    assert alignment.exact and alignment.stripped_prefix == ""
    assert alignment.rename == {k: k for k in EXPECTED}


def test_wrapper_prefixes_are_stripped_even_when_stacked() -> None:
    for prefix in ("module.", "_orig_mod.", "module._orig_mod."):
        alignment = align_keys(_prefixed(prefix), EXPECTED)
        assert alignment.exact, prefix
        assert alignment.rename[prefix + "fc.bias"] == "fc.bias"


def test_a_common_attribute_prefix_is_found_and_other_keys_are_reported() -> None:
    found = {**_prefixed("model."), "criterion.weight": (2,)}  # Lightning module with a weighted loss
    alignment = align_keys(found, EXPECTED)
    assert alignment.stripped_prefix == "model."
    assert alignment.unexpected == ["criterion.weight"]
    assert not alignment.missing and not alignment.mismatched


def test_a_prefix_is_only_stripped_when_it_helps() -> None:
    found = {"model.weight": (3,), "model.bias": (3,)}
    expected = {"model.weight": (3,), "model.bias": (3,)}
    assert align_keys(found, expected).stripped_prefix == ""


def test_missing_unexpected_and_mismatched_are_all_listed() -> None:
    found = {"conv.weight": (4, 1, 5, 5), "conv.bias": (4,), "fc.weight": (2, 4), "other": (1,)}
    alignment = align_keys(found, EXPECTED)
    assert alignment.missing == ["fc.bias"]
    assert alignment.unexpected == ["other"]
    assert alignment.mismatched == [("conv.weight", (4, 1, 5, 5), (4, 1, 3, 3))]
    text = alignment.describe()
    assert "1 missing key(s): fc.bias" in text
    assert "conv.weight (checkpoint [4, 1, 5, 5] vs model [4, 1, 3, 3])" in text


def test_long_lists_are_cut_with_a_count() -> None:
    expected = {f"layer{i}.weight": (1,) for i in range(12)}
    assert "(+7 more)" in align_keys({}, expected).describe()


def test_fingerprint_depends_on_names_and_shapes_not_order() -> None:
    shuffled = dict(reversed(list(EXPECTED.items())))
    assert fingerprint(shuffled) == fingerprint(EXPECTED)
    assert fingerprint({**EXPECTED, "fc.bias": (3,)}) != fingerprint(EXPECTED)
    assert len(fingerprint(EXPECTED)) == 16
