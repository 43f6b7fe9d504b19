"""pytest plugin for the mutation run (scripts/mutation.sh), loaded by [tool.mutmut] pytest_add_cli_args.

mutmut runs, for each mutant, only the tests that called the mutated function during its stats run;
it credits a call to the test in whose setup, call or teardown it happened. A module-scoped fixture
(test_build_data.py's `built`, which runs the whole data build) is set up once, in the first test that
uses it, so the other tests reading its output were never credited with the functions it called:
a mutant in split_emoji ran one test and survived where a later test would have failed.

During the stats run only (MUTANT_UNDER_TEST == "stats"), this records the functions each fixture's
setup calls and credits them to every test that uses that fixture. Outside the stats run it does
nothing, so the mutants still share the fixture (one build per mutant, not one per test).
"""
from __future__ import annotations

import os

import pytest

_hits: dict[int, set[str]] = {}  # id(FixtureDef) -> mangled names of the functions its setup called


def _recording() -> bool:
    return os.environ.get("MUTANT_UNDER_TEST") == "stats"


@pytest.hookimpl(hookwrapper=True)
def pytest_fixture_setup(fixturedef, request):
    if not _recording():
        yield
        return
    from mutmut.state import state

    calls = state()._stats
    before = set(calls)
    calls.clear()
    try:
        yield
    finally:
        _hits.setdefault(id(fixturedef), set()).update(calls)
        calls.update(before)


@pytest.hookimpl(tryfirst=True)  # before mutmut's own teardown hook, which takes the calls
def pytest_runtest_teardown(item, nextitem):
    if not _recording():
        return
    from mutmut.state import state

    for defs in item._fixtureinfo.name2fixturedefs.values():
        for fixturedef in defs:
            state()._stats.update(_hits.get(id(fixturedef), ()))
