"""scripts/probe_faults.py: its whole corpus ends in a correct result or one clear line, and its
classifier does see a traceback, a silent wrong result and lost data when they happen."""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import probe_faults as pf  # noqa: E402


def test_every_probe_gives_the_right_result_or_one_clear_line(tmp_path):
    results = {}
    for i, probe in enumerate(pf.probes()):
        (tmp_path / str(i)).mkdir()
        results[probe.name] = pf.classify(probe, tmp_path / str(i))
    assert len(results) >= 75
    wrong = {name: r for name, r in results.items() if r[0] not in ("correct", "clear error")}
    assert not wrong
    assert sum(r[0] == "correct" for r in results.values()) == 5


def fake_arf(behaviour):
    def arf(args):
        if behaviour == "raise":
            raise KeyError("boom")
        if behaviour == "clobber":
            out = Path(args[args.index("--out") + 1])
            (out / "benchmark" / "build_data.json").write_text("{}")
            sys.exit(1)
        if behaviour == "vague":
            print("error: something went wrong", file=sys.stderr)
            sys.exit(1)
        sys.exit(0)
    return arf


@pytest.mark.parametrize("behaviour, outcome", [("raise", "traceback"), ("succeed", "silent wrong"),
                                                ("vague", "silent wrong"), ("clobber", "data lost")])
def test_the_classifier_sees_each_failure(tmp_path, monkeypatch, behaviour, outcome):
    probe = next(p for p in pf.probes() if p.name == "csv/parent-path")
    real = pf.arf
    calls = []

    def first_real_then_fake(args):
        calls.append(args)
        return (real if len(calls) == 1 else fake_arf(behaviour))(args)  # the good build is real

    monkeypatch.setattr(pf, "arf", first_real_then_fake)
    assert pf.classify(probe, tmp_path)[0] == outcome
