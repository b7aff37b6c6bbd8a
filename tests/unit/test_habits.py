"""Development habits stay in step: commit hooks run what `make lint` runs; a missing kubectl is told."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from tests.assets.kubectl import kustomize

ROOT = Path(__file__).resolve().parents[2]


def _make_lint_commands() -> list[str]:
    """The commands of the Makefile's lint target, with $(PY) spelled as the venv's python."""
    makefile = (ROOT / "Makefile").read_text()
    recipe = re.search(r"^lint:.*\n((?:\t.*\n)+)", makefile, flags=re.MULTILINE)
    assert recipe, "the Makefile has no lint target"
    lines = [line.strip().split("#")[0].strip() for line in recipe.group(1).splitlines()]
    return [line.replace("$(PY)", ".venv/bin/python") for line in lines if line]


def test_the_commit_hooks_run_what_make_lint_runs() -> None:
    config = yaml.safe_load((ROOT / ".pre-commit-config.yaml").read_text())
    hooks = [hook for repo in config["repos"] for hook in repo["hooks"]]
    assert [hook["entry"] for hook in hooks] == _make_lint_commands()
    assert {hook["language"] for hook in hooks} == {"system"}  # the project's venv, not a copy
    assert "mypy" in " ".join(_make_lint_commands())  # the type checker is part of `make test`


def test_without_kubectl_a_developer_gets_a_skip_saying_what_to_install(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty directory: no kubectl
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match=r"kubectl is not on PATH.*Install kubectl"):
        kustomize(tmp_path)


def test_without_kubectl_ci_fails_rather_than_skipping(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI must run them"):
        kustomize(tmp_path)
