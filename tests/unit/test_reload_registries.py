"""The policy and strategy registries: spec validation, describe and the watcher all use the same one."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest
import torch

from serving import checkpoint_info, load_model, save_checkpoint
from serving.errors import ConfigError
from serving.reload import Candidate, ModelSlot, Reloader, Scanner, rank, sample_input
from serving.reload.policies.base import Policy, Ranking
from serving.reload.policy import POLICIES
from serving.reload.strategies.base import Replacement, Strategy
from serving.reload.strategy import STRATEGIES, LoadFn
from serving.spec import ModelSpec, ReloadSpec, parse_spec
from tests.assets.archs import SmallNet
from tests.conftest import Reference, train_reference

SOURCE = "digits/model-config.yaml"
WHERE = f"{SOURCE}, handler."
ARCH = "tests.assets.archs:SmallNet"


def _spec(watch: Path, architecture: str | None = ARCH, **reload: object) -> ModelSpec:
    handler = {"input": {"shape": [1, 8, 8]}, "watch_dir": str(watch), "poll_interval_s": 0.01, **reload}
    if architecture is not None:
        handler["architecture"] = architecture
    return parse_spec(handler, model_dir=watch, source=SOURCE)


def _config_error(watch: Path, **reload: object) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        _spec(watch, ARCH, **reload)
    return caught.value


def _started(spec: ModelSpec, load: LoadFn) -> tuple[Reloader, ModelSlot]:
    reloader = Reloader(spec, load)
    model = reloader.initial_model(lambda m: None)
    assert model is not None
    slot = ModelSlot(model, sample_input((1, 8, 8), torch.float32))
    reloader.slot = slot
    return reloader, slot


def test_the_registries_hold_the_policies_and_strategies_there_are() -> None:
    assert list(POLICIES) == ["latest", "highest_epoch", "best", "pinned"]
    assert list(STRATEGIES) == ["shadow", "inplace"]
    assert all(policy.name == name for name, policy in POLICIES.items())
    assert all(strategy.name == name for name, strategy in STRATEGIES.items())
    defaults = ReloadSpec()
    assert (defaults.policy, defaults.strategy) == ("latest", "shadow")


def test_an_unknown_name_is_the_same_typed_error_listing_the_registered_names(tmp_path: Path) -> None:
    err = _config_error(tmp_path, policy="newest")
    assert err.message == (
        f"{WHERE}policy must be one of ['latest', 'highest_epoch', 'best', 'pinned'], got 'newest'."
    )
    err = _config_error(tmp_path, reload_strategy="copy")
    assert err.message == f"{WHERE}reload_strategy must be one of ['shadow', 'inplace'], got 'copy'."
    err = _config_error(tmp_path, policy="pinned")
    assert err.message == f"{WHERE}policy is 'pinned' but pinned (a file name in watch_dir) is not set."


class _Alphabetical(Policy):
    name = "alphabetical"
    requires = {"pinned": "a name to start from"}

    def rank(self, candidates: Sequence[Candidate], spec: ReloadSpec) -> Ranking:
        return Ranking(sorted(candidates, key=lambda c: c.name), explain=lambda c: c.name)


def test_a_registered_policy_is_configurable_and_ranks_for_the_watcher(
    reference: Reference, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(POLICIES, "alphabetical", _Alphabetical())
    err = _config_error(tmp_path, policy="unknown")
    assert "'pinned', 'alphabetical']" in err.message  # the listing is the registry's
    err = _config_error(tmp_path, policy="alphabetical")
    assert err.message.endswith("policy is 'alphabetical' but pinned (a name to start from) is not set.")
    spec = _spec(tmp_path, policy="alphabetical", pinned="a")
    for epoch in (1, 2):
        save_checkpoint(tmp_path, reference.model, epoch=epoch)
    scanner = Scanner(tmp_path)
    assert [c.name for c in rank(scanner.scan(), spec.reload)] == ["model_epoch_1.pth", "model_epoch_2.pth"]
    reloader, slot = _started(spec, lambda p, sha: load_model(SmallNet, p, sha256=sha))
    assert checkpoint_info(slot.model).epoch == 1  # the newest loses: alphabetical order wins
    assert reloader.status.policy == "alphabetical"
    assert "policy 'alphabetical' prefers model_epoch_1.pth" in reloader.status.skipped["model_epoch_2.pth"]


class _Recording(Strategy):
    name = "recording"

    def __init__(self) -> None:
        self.seen: list[Replacement] = []

    def apply(self, replacement: Replacement) -> None:
        self.seen.append(replacement)
        STRATEGIES["shadow"].apply(replacement)


def test_a_registered_strategy_is_configurable_and_the_watcher_uses_it(
    reference: Reference, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    recording = _Recording()
    monkeypatch.setitem(STRATEGIES, "recording", recording)
    spec = _spec(tmp_path, reload_strategy="recording")
    save_checkpoint(tmp_path, reference.model, epoch=1)
    reloader, slot = _started(spec, lambda p, sha: load_model(SmallNet, p, sha256=sha))
    assert reloader.status.strategy == "recording"
    save_checkpoint(tmp_path, train_reference(seed=11).model, epoch=2)
    assert reloader.poll_once()
    assert [r.path.name for r in recording.seen] == ["model_epoch_2.pth"]
    assert recording.seen[0].slot is slot and checkpoint_info(slot.model).epoch == 2


def test_inplace_swaps_a_whole_model_in_for_a_layout_that_is_not_copyable(
    reference: Reference, tmp_path: Path
) -> None:
    # TorchScript files bring their module: no weights to copy, so inplace falls back to a swap.
    torch.jit.save(torch.jit.script(reference.model), tmp_path / "model_epoch_1.pt")
    spec = _spec(tmp_path, architecture=None, reload_strategy="inplace")
    reloader, slot = _started(spec, lambda p, sha: load_model(None, p, sha256=sha))
    live = slot.model
    newer = train_reference(seed=11)
    torch.jit.save(torch.jit.script(newer.model), tmp_path / "model_epoch_2.pt")
    assert reloader.poll_once()
    assert slot.model is not live  # swapped, not copied into
    assert checkpoint_info(slot.model).path.endswith("model_epoch_2.pt")
    with torch.no_grad():
        torch.testing.assert_close(slot.model(newer.inputs), newer.outputs)
