"""Ranking rules of every policy on hand-made candidates: no files, so each rule is one assertion."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from serving.errors import ConfigError
from serving.reload.candidates import Candidate, Signature, number_in_name
from serving.reload.policies.base import written
from serving.reload.policies.best import metric_value
from serving.reload.policy import POLICIES, rank, rank_with_reasons
from serving.spec import ReloadSpec

WATCH = Path("/nonexistent-watch-dir")  # ranking never reads it, except "pinned" (no .pin there)


def _candidate(name: str, mtime_s: float, epoch: int | None = None, **metadata: Any) -> Candidate:
    signature = Signature(((name, 100, int(mtime_s * 1e9), 1),))
    return Candidate(WATCH / name, signature, epoch, metadata)


def _names(candidates: list[Candidate]) -> list[str]:
    return [c.name for c in candidates]


def test_number_in_name_reads_the_docstring_examples_and_prefers_the_labelled_number() -> None:
    assert number_in_name("ckpt-300.pt") == 300
    assert number_in_name("model_epoch_12.pth") == 12
    assert number_in_name("v2_epoch_12.pth") == 12  # the labelled number, not the first one
    assert number_in_name("run3_step=40_final.pt") == 40
    assert number_in_name("EPOCH-7.pt") == 7  # labels in any case
    assert number_in_name("v2-ckpt-300.pt") == 300  # no label: the last number
    assert number_in_name("model.pt") is None


def test_latest_is_the_last_written_and_ties_go_to_the_higher_epoch() -> None:
    old, new = _candidate("old.pt", 100.0, epoch=9), _candidate("new.pt", 200.0, epoch=1)
    assert _names(rank([old, new], ReloadSpec(WATCH, policy="latest"))) == ["new.pt", "old.pt"]
    assert _names(rank([new, old], ReloadSpec(WATCH, policy="latest"))) == ["new.pt", "old.pt"]
    low, high, none = (_candidate(n, 300.0, e) for n, e in (("low.pt", 2), ("high.pt", 5), ("none.pt", None)))
    assert _names(rank([none, low, high], ReloadSpec(WATCH, policy="latest"))) == [
        "high.pt",
        "low.pt",
        "none.pt",
    ]


def test_saved_at_is_the_written_time_when_it_is_a_finite_number() -> None:
    saved = _candidate("a.pt", 100.0, ckptserve={"saved_at": 500.0})
    assert saved.written_at == 500.0
    for bad in (True, "500", float("nan"), float("inf"), None):
        assert _candidate("b.pt", 100.0, ckptserve={"saved_at": bad}).written_at == 100.0
    assert _candidate("c.pt", 100.0, ckptserve=None).written_at == 100.0
    assert _candidate("d.pt", 100.5).written_at == 100.5  # the modification time, in seconds


def test_highest_epoch_ranks_candidates_without_an_epoch_last_and_ties_by_time() -> None:
    bare = _candidate("bare.pt", 900.0)  # written last, but no epoch
    one, three = _candidate("e1.pt", 100.0, 1), _candidate("e3.pt", 50.0, 3)
    spec = ReloadSpec(WATCH, policy="highest_epoch")
    assert _names(rank([bare, one, three], spec)) == ["e3.pt", "e1.pt", "bare.pt"]
    older, newer = _candidate("older.pt", 10.0, 3), _candidate("newer.pt", 20.0, 3)
    assert _names(rank([older, newer, one], spec)) == ["newer.pt", "older.pt", "e1.pt"]
    assert _names(rank([newer, older], spec)) == ["newer.pt", "older.pt"]


def test_best_ranks_by_the_metric_then_the_later_checkpoint() -> None:
    a = _candidate("a.pt", 100.0, 1, loss=0.5)
    b = _candidate("b.pt", 200.0, 2, loss=0.2)
    tie_old, tie_new = _candidate("t_old.pt", 300.0, 3, loss=0.2), _candidate("t_new.pt", 400.0, 4, loss=0.2)
    minimize = ReloadSpec(WATCH, policy="best", metric="loss")
    assert _names(rank([a, tie_old, b, tie_new], minimize)) == ["t_new.pt", "t_old.pt", "b.pt", "a.pt"]
    maximize = ReloadSpec(WATCH, policy="best", metric="loss", mode="max")
    assert _names(rank([b, a], maximize)) == ["a.pt", "b.pt"]
    # Equal scores and equal times: the higher epoch is the later checkpoint.
    e5, e6 = _candidate("e5.pt", 500.0, 5, loss=0.1), _candidate("e6.pt", 500.0, 6, loss=0.1)
    assert _names(rank([e5, e6], minimize)) == ["e6.pt", "e5.pt"]


def test_best_reads_string_metrics_and_skips_missing_and_non_finite_ones() -> None:
    # safetensors metadata holds strings only: "0.25" is the number 0.25.
    text = _candidate("text.st", 100.0, 1, metrics={"loss": "0.25"})
    number = _candidate("number.pt", 200.0, 2, metrics={"loss": 0.5})
    nan = _candidate("nan.pt", 300.0, 3, metrics={"loss": float("nan")})
    nan_text = _candidate("nan_text.st", 310.0, 3, metrics={"loss": "nan"})
    word = _candidate("word.st", 320.0, 3, metrics={"loss": "low"})
    flag = _candidate("flag.pt", 330.0, 3, metrics={"loss": True})
    flat = _candidate("flat.pt", 340.0, 3, metrics=0.1)
    absent = _candidate("absent.pt", 400.0, 4)
    everything = [text, number, nan, nan_text, word, flag, flat, absent]
    ranking = rank_with_reasons(everything, ReloadSpec(WATCH, policy="best", metric="metrics.loss"))
    assert _names(ranking.ordered) == ["text.st", "number.pt"]
    assert set(ranking.skipped) == {"nan.pt", "nan_text.st", "word.st", "flag.pt", "flat.pt", "absent.pt"}
    assert ranking.skipped["absent.pt"] == "no 'metrics.loss' in its metadata"
    assert ranking.explain(text) == "metrics.loss=0.25"


@pytest.mark.parametrize(
    ("metadata", "dotted", "expected"),
    [
        ({"loss": 1}, "loss", 1.0),
        ({"loss": "1e-3"}, "loss", 0.001),
        ({"m": {"acc": 0.75}}, "m.acc", 0.75),
        ({"m": {"acc": 0.75}}, "m.loss", None),
        ({"m": 0.75}, "m.acc", None),
        ({"loss": float("-inf")}, "loss", None),
        ({"loss": None}, "loss", None),
        ({"loss": [0.1]}, "loss", None),
        ({"loss": False}, "loss", None),
    ],
)
def test_metric_value(metadata: dict[str, Any], dotted: str, expected: float | None) -> None:
    value = metric_value(metadata, dotted)
    assert value == expected and (value is None or isinstance(value, float))


def test_pinned_serves_only_the_pinned_candidate_and_reports_what_no_candidate_has() -> None:
    a, b = _candidate("a.pt", 100.0, 1), _candidate("b.pt", 200.0, 2)
    ranking = rank_with_reasons([a, b], ReloadSpec(WATCH, policy="pinned", pinned="a.pt"))
    assert _names(ranking.ordered) == ["a.pt"]
    assert ranking.skipped == {"b.pt": "not pinned (the pin names 'a.pt')"}
    assert ranking.unmatched_pins == [] and ranking.explain(a) == "pinned by pinned:"
    gone = rank_with_reasons([a, b], ReloadSpec(WATCH, policy="pinned", pinned="gone.pt"))
    assert gone.ordered == [] and gone.unmatched_pins == ["gone.pt"]


def test_pinned_requires_a_pin_and_the_others_require_nothing() -> None:
    with pytest.raises(ConfigError, match=r"handler\.policy is 'pinned' but pinned \(a file name"):
        POLICIES["pinned"].check(ReloadSpec(WATCH, policy="pinned"), "handler.")
    POLICIES["pinned"].check(ReloadSpec(WATCH, policy="pinned", pinned="a.pt"), "handler.")
    for name in ("latest", "highest_epoch", "best"):
        POLICIES[name].check(ReloadSpec(WATCH, policy=name), "handler.")


def test_written_says_when_and_at_which_epoch() -> None:
    assert written(_candidate("a.pt", 0.0, 4)) == "written 1970-01-01T00:00:00Z, epoch 4"
    assert written(_candidate("b.pt", 86400.0)) == "written 1970-01-02T00:00:00Z, epoch none"


def test_pinned_without_a_watch_dir_uses_the_configured_pin() -> None:
    a, b = _candidate("a.pt", 100.0, 1), _candidate("b.pt", 200.0, 2)
    assert _names(rank([a, b], ReloadSpec(None, policy="pinned", pinned="b.pt"))) == ["b.pt"]


def test_pinned_says_a_pin_file_chose_the_candidate(tmp_path: Path) -> None:
    (tmp_path / ".pin").write_text("b.pt\n")
    a, b = _candidate("a.pt", 100.0, 1), _candidate("b.pt", 200.0, 2)
    ranking = rank_with_reasons([a, b], ReloadSpec(tmp_path, policy="pinned", pinned="a.pt"))
    assert _names(ranking.ordered) == ["b.pt"] and ranking.explain(b) == "pinned by .pin"


def test_latest_and_highest_epoch_explain_a_candidate_by_when_and_which_epoch_it_was_written() -> None:
    c = _candidate("a.pt", 0.0, 4)
    for policy in ("latest", "highest_epoch"):
        assert rank_with_reasons([c], ReloadSpec(WATCH, policy=policy)).explain(c) == written(c)
