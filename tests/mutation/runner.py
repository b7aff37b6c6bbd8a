"""``mutmut`` with each module's mutants run against that module's own unit tests only.

mutmut maps every test to the functions it calls, so a mutant of ``detect_layout`` would run every
unit test that loads a checkpoint (hours on this machine). This runs mutmut's own command line with
that map narrowed, in memory, to the test files ``tests/mutation/modules.py`` names for each module;
the full map mutmut saved stays on disk. Use it as ``python tests/mutation/runner.py run NAMES...``
(any mutmut command and arguments): as a script, not ``-m``, so that the package ``tests`` is first
imported by pytest from mutmut's copy in mutants/, never from here.
"""

from __future__ import annotations

import importlib.util
import os
import sys

# mutmut forks one child per mutant from a process that has run tests. With an OpenMP thread pool
# started in that parent, a forked child that enters torch waits forever on the pool's lock (libgomp
# is not fork-safe): one thread, nothing to fork-lock, before torch is imported.
os.environ["OMP_NUM_THREADS"] = "1"
os.environ["MKL_NUM_THREADS"] = "1"
# Hypothesis tests would draw new examples for every mutant (and replay the ones its database saved):
# a verdict could then come from a random find, not from the mutation. tests/conftest.py loads this
# profile: the same examples for every mutant, no database.
os.environ["HYPOTHESIS_PROFILE"] = "mutation"
from pathlib import Path
from typing import Any

import mutmut.__main__ as mutmut_main
from mutmut.state import state


def _modules() -> Any:
    """tests/mutation/modules.py, loaded by path under a name outside the ``tests`` package."""
    spec = importlib.util.spec_from_file_location("mutation_modules", Path(__file__).with_name("modules.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_MODULES = _modules()

_collect = mutmut_main.collect_or_load_stats


def _collect_then_narrow(*args: Any, **kwargs: Any) -> None:
    _collect(*args, **kwargs)
    tests = state().tests_by_mangled_function_name
    for function in list(tests):
        module = _MODULES.module_of(f"{function}__mutmut_1")
        tests[function] = {t for t in tests[function] if module is not None and _MODULES.own_tests(module, t)}


def main() -> None:
    mutmut_main.collect_or_load_stats = _collect_then_narrow
    sys.argv[0] = "mutmut"
    mutmut_main.cli()


if __name__ == "__main__":
    main()
