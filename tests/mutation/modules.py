"""The modules ``make mutation`` scores: each one's mutants, named as mutmut names them."""

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


def module_of(mutant: str) -> str | None:
    """The module ``mutant`` is scored under; None when no module claims it (mutated but not scored)."""
    for module, patterns in MODULES.items():
        if any(fnmatch.fnmatchcase(mutant, p) for p in patterns):
            return module
    return None
