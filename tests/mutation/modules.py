"""The modules ``make mutation`` scores: each one's mutants (as mutmut names them) and its own tests."""

from __future__ import annotations

import fnmatch

# Module -> mutmut mutant-name patterns (fnmatch). A name is ``<dotted module>.x_<function>__mutmut_<n>``
# for a function, ``<dotted module>.xǁ<Class>ǁ<method>__mutmut_<n>`` for a method. The files must also
# be listed in pyproject.toml's [tool.mutmut] only_mutate (mutmut generates mutants per file).
MODULES: dict[str, tuple[str, ...]] = {
    "reload policy": ("serving.reload.policy.*", "serving.reload.policies.*"),
    "reload candidates": ("serving.reload.candidates.*",),
    "checkpoint layout": ("serving.checkpoints.layout.*", "serving.checkpoints.layouts.*"),
    "checkpoint keys": ("serving.checkpoints.keys.*",),
    "spec": ("serving.spec.*",),
    "codecs": ("serving.codecs.*",),
    # The gate: the slot's checks, its sample and swap, and the session's start-up gate.
    "gate": (
        "serving.reload.slot.x_check_*",
        "serving.reload.slot.x_sample_input*",
        "serving.reload.slot.xǁModelSlotǁvalidate*",
        "serving.reload.slot.xǁModelSlotǁswap*",
        "serving.session.xǁModelSessionǁ_gate*",
        "serving.session.xǁModelSessionǁ_check_candidate*",
    ),
}


# Module -> its own unit tests (fnmatch on the test's node id): the only tests run on its mutants.
OWN_TESTS: dict[str, tuple[str, ...]] = {
    "reload policy": ("tests/unit/test_reload*.py::*",),
    "reload candidates": ("tests/unit/test_reload*.py::*",),
    "checkpoint layout": (
        "tests/unit/test_layout*.py::*",
        "tests/unit/test_checkpoint*.py::*",
        "tests/unit/test_hostile_checkpoints.py::*",
        "tests/unit/test_loader.py::*",  # load_model against every layout, each written by its own API
        "tests/unit/test_attack_checkpoints.py::*",
    ),
    "checkpoint keys": ("tests/unit/test_keys*.py::*", "tests/unit/test_loader*.py::*"),
    "spec": ("tests/unit/test_spec*.py::*",),
    "codecs": (
        "tests/unit/test_codec*.py::*",
        "tests/unit/test_attack_decoders.py::*",
        "tests/unit/test_grpc_tensors.py::*",
    ),
    "gate": (
        "tests/unit/test_reload*.py::*",
        "tests/unit/test_session*.py::*",
        "tests/unit/test_hostile_checkpoints.py::*",
        "tests/unit/test_gate*.py::*",
    ),
}


def own_tests(module: str, test: str) -> bool:
    """True when ``test`` (a pytest node id) is one of ``module``'s own unit tests."""
    return any(fnmatch.fnmatchcase(test, p) for p in OWN_TESTS[module])


def module_of(mutant: str) -> str | None:
    """The module ``mutant`` is scored under; None when no module claims it (mutated but not scored)."""
    for module, patterns in MODULES.items():
        if any(fnmatch.fnmatchcase(mutant, p) for p in patterns):
            return module
    return None
