"""scripts/setup.sh installs pyproject.toml's dependencies at the versions of requirements.lock: the lock
must pin every one of them at a version its specifier allows, and this venv must be what it says."""
from __future__ import annotations

import sysconfig
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]


def read_lock() -> dict[str, str]:
    pins = {}
    for line in (REPO / "requirements.lock").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, sep, version = line.partition("==")
            assert sep and version, f"requirements.lock: {line!r} is not NAME==VERSION"
            pins[canonicalize_name(name)] = version
    return pins


def test_the_lock_pins_every_dependency_within_its_specifier():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pins = read_lock()
    for spec in project["dependencies"] + project["optional-dependencies"]["test"]:
        req = Requirement(spec)
        name = canonicalize_name(req.name)
        assert name in pins, f"requirements.lock does not pin {req.name} (pyproject.toml: {spec})"
        assert req.specifier.contains(pins[name], prereleases=True), f"requirements.lock: {name}=={pins[name]} outside {spec}"


def test_this_venv_holds_the_lock():
    """Every pinned package at its pinned version (a developer may add tools, e.g. the mutation extra)."""
    site = sysconfig.get_paths()["purelib"]  # the venv's own: vendored copies elsewhere on sys.path (setuptools') are not installs
    installed = {canonicalize_name(d.metadata["Name"]): d.version for d in metadata.distributions(path=[site])}
    assert {n: (v, installed.get(n)) for n, v in read_lock().items() if installed.get(n) != v} == {}
