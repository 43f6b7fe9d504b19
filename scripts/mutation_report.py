"""Scope and report of the mutation run (scripts/mutation.sh; docs/mutation.md).

`--globs` prints the mutant-name globs `mutmut run` is given: one per function in SCOPE, so that only
those functions are tested even though mutmut rewrites whole files (pyproject.toml [tool.mutmut]).
Without it, reads mutmut's results (mutants/**/*.py.meta) for those functions and writes the per-module
table and every survivor, classified by KNOWN, to docs/mutation.md (and prints the table).

KNOWN matches a survivor by its function and the changed source line (removed and added text), not by
mutant number, so a classification survives renumbering and lapses when the line itself changes.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# module label -> (source file, functions). Methods are "Class.method". Left out on purpose:
# methods.Step._encode / backward_encodings / gathered (micro-batch and DDP machinery: only the slow
# training tests reach it), wise.evaluate_wise and wise.Scorer (model scoring, being moved), and the
# rest of retrieve.py (faiss search and index building need the 15-50 s embedding fixture).
SCOPE: dict[str, tuple[str, list[str]]] = {
    "losses": ("pipeline/core/losses.py", ["contrastive_loss", "group_ids"]),
    "methods": ("pipeline/core/methods.py", [
        "register_method", "list_methods", "get_method", "Step._text", "Step._image", "Step.encode_text",
        "Step.encode_image", "flyp_loss", "caption_loss", "head_ce_loss", "anchor_terms"]),
    "WiSE interpolation": ("pipeline/core/wise.py", ["interpolate", "changed_parts", "retrieval_r1"]),
    "lr schedule": ("pipeline/core/schedule.py", ["lr_factor"]),
    "retrieval top-k / dedup": ("pipeline/stages/retrieve.py", ["_assign", "RetrieveParams.check"]),
    "metrics": ("pipeline/core/scoring.py", ["classification_metrics", "mcnemar_p"]),
    "params constraints": ("pipeline/config.py", [
        "register_params", "list_param_sections", "_type_ok", "_type_name", "parse_section",
        "_check_constraints", "load_params_file"]),
    "splits and leak checks": ("pipeline/data/default.py", [
        "variant_key", "_variant_groups", "_assign", "split_emoji", "_pick_heldout", "_check_no_leaks",
        "DataParams.check"]),
    "skip counting": ("pipeline/io/shards.py", ["SkipCounter.__call__", "SkipCounter.report"]),
}

SEP = "\u01c1"  # mutmut's class separator in mangled names: x\u01c1Class\u01c1method


def mangled(path: str, func: str) -> str:
    module = path[:-3].replace("/", ".")
    if "." in func:
        cls, meth = func.split(".")
        return f"{module}.x{SEP}{cls}{SEP}{meth}"
    return f"{module}.x_{func}"


def globs() -> list[str]:
    return [f"{mangled(path, f)}__mutmut_*" for path, funcs in SCOPE.values() for f in funcs
            if (ROOT / path).is_file()]


# (file, function, removed line, added line) -> (kind, note), from scripts/mutation_known.json. Kinds:
# "equivalent": no test can tell it from the original (note: why); "import-time": code that runs at
# import, before mutmut's forked child switches the mutant on, so no test can see it; "gap": a
# behaviour no fast test checks (note: a test that kills it); "cosmetic": a gap in an error message's
# wording only. Lines are compared stripped.
KNOWN: dict[tuple[str, str, str, str], tuple[str, str]] = {}  # (file, function, minus, plus) -> (kind, note)
NO_TESTS: dict[tuple[str, str], str] = {}  # (file, function) -> what test would reach it (kind "no tests")


def _load_known() -> None:
    path = ROOT / "scripts" / "mutation_known.json"
    if path.is_file():
        for e in json.loads(path.read_text()):
            if e["kind"] == "no tests":
                NO_TESTS[(e["file"], e["function"])] = e["note"]
                continue
            KNOWN[(e["file"], e["function"], e["minus"].strip(), e["plus"].strip())] = (e["kind"], e["note"])


def changed_lines(name: str, path: str) -> tuple[str, str]:
    from mutmut.mutation.diff_apply import get_diff_for_mutant

    diff = get_diff_for_mutant(name, path=path).splitlines()
    minus = [d[1:] for d in diff if d.startswith("-") and not d.startswith("---")]
    plus = [d[1:] for d in diff if d.startswith("+") and not d.startswith("+++")]
    return " / ".join(m.strip() for m in minus), " / ".join(p.strip() for p in plus)


def collect():
    from mutmut.stats import status_by_exit_code

    rows, survivors = [], []
    for label, (path, funcs) in SCOPE.items():
        meta = ROOT / "mutants" / (path + ".meta")
        if not (ROOT / path).is_file():
            continue
        codes = json.loads(meta.read_text())["exit_code_by_key"] if meta.is_file() else {}
        wanted = {mangled(path, f): f for f in funcs}
        counts: Counter = Counter()
        for name, code in sorted(codes.items(), key=lambda kv: (kv[0].partition("__mutmut_")[0],
                                                                 int(kv[0].rpartition("_")[2]))):
            func = wanted.get(name.partition("__mutmut_")[0])
            if func is None:
                continue
            status = status_by_exit_code[code]
            counts["mutants"] += 1
            counts[status] += 1
            if status == "no tests":
                survivors.append((label, name.rpartition(".")[2], func, "", "", "no tests", NO_TESTS.get((path, func), "")))
            if status == "survived":
                minus, plus = changed_lines(name, path)
                kind, note = KNOWN.get((path, func, minus, plus), ("unclassified", ""))
                counts[kind] += 1
                survivors.append((label, name.rpartition(".")[2], func, minus, plus, kind, note))
        rows.append((label, path, funcs, counts))
    return rows, survivors


def score(c: Counter, adjusted: bool = False) -> str:
    caught = c["killed"] + c["timeout"]
    total = c["mutants"] - (c["equivalent"] + c["import-time"] if adjusted else 0)
    return f"{100 * caught / total:.1f}%" if total else "-"


def table(rows) -> str:
    out = ["| module | file | mutants | killed | survived | no tests | timeout | other | score "
           "| equivalent | import-time | score w/o those two |",
           "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    total: Counter = Counter()
    for label, path, funcs, c in rows:
        other = c["mutants"] - c["killed"] - c["survived"] - c["no tests"] - c["timeout"]
        out.append(f"| {label} | `{path}` | {c['mutants']} | {c['killed']} | {c['survived']} | {c['no tests']} "
                   f"| {c['timeout']} | {other} | {score(c)} | {c['equivalent']} | {c['import-time']} | {score(c, True)} |")
        total.update(c)
    other = total["mutants"] - total["killed"] - total["survived"] - total["no tests"] - total["timeout"]
    out.append(f"| **all** | | {total['mutants']} | {total['killed']} | {total['survived']} | {total['no tests']} "
               f"| {total['timeout']} | {other} | **{score(total)}** | {total['equivalent']} "
               f"| {total['import-time']} | **{score(total, True)}** |")
    return "\n".join(out)


def cell(s: str, n: int = 110) -> str:
    s = s if len(s) <= n else s[: n - 3] + "..."
    return "`" + s.replace("|", "\\|").replace("`", "'") + "`" if s else "(deleted)"


def numbers(nums: list[str]) -> str:
    """'#1-#4, #7' for mutant numbers 1 2 3 4 7."""
    ns, out = sorted(int(n) for n in nums), []
    for n in ns:
        if out and out[-1][1] == n - 1:
            out[-1][1] = n
        else:
            out.append([n, n])
    return ", ".join(f"#{a}" if a == b else f"#{a}-#{b}" for a, b in out)


def survivors_md(survivors) -> str:
    """Per module: the gaps and equivalents grouped by note (one test idea kills a group), then the
    unclassified ones, then every survivor's change in a collapsed table."""
    out = []
    for label in SCOPE:
        mine = [s for s in survivors if s[0] == label]
        if not mine:
            continue
        out += [f"### {label}", ""]
        for kind in ("no tests", "gap", "cosmetic", "import-time", "equivalent"):
            groups: dict[tuple[str, str], list[str]] = {}
            for _, name, func, minus, plus, k, note in mine:
                if k == kind:
                    groups.setdefault((func, note), []).append(name.partition("__mutmut_")[2])
            for (func, note), nums in groups.items():
                out.append(f"- **{kind}** `{func}` {numbers(nums)}: {note}")
        for _, name, func, minus, plus, k, note in mine:
            if k == "unclassified":
                out.append(f"- **unclassified** `{func}` #{name.partition('__mutmut_')[2]}: {cell(minus, 200)} -> {cell(plus, 200)}")
        out += ["", "<details><summary>each survivor's change</summary>", "",
                "| mutant | was | became | kind |", "|---|---|---|---|"]
        for _, name, func, minus, plus, k, note in mine:
            if k == "no tests":
                continue
            out.append(f"| {name.replace(SEP, '.')} | {cell(minus)} | {cell(plus)} | {k} |")
        out += ["", "</details>", ""]
    return "\n".join(out)


HEADER = """# Mutation testing

How well the fast tests pin down the core computations: [mutmut](https://github.com/boxed/mutmut)
changes one thing at a time in the functions below (an operator, a constant, an argument, a string)
and reruns the tests that reach that function; a mutant the tests do not notice *survives*. Not
part of `.ci/run`: it is a periodic check, run by hand.

```
scripts/mutation.sh          # ~7 min on 2 cores; writes this file
```

It installs `mutmut=={version}` into `.venv` if missing, deletes `mutants/` (mutmut's working copy:
`pipeline/` rewritten with every mutant behind a trampoline, the tests, `params.yaml`, results in
`*.meta`), runs `mutmut run --max-children 2` on the functions of `SCOPE` in
[`scripts/mutation_report.py`](../scripts/mutation_report.py), then regenerates this page.
Configuration: `[tool.mutmut]` in `pyproject.toml` (files, the test selection). Look at one mutant
with `.venv/bin/mutmut show <name>`; rerun a few with `.venv/bin/mutmut run "<glob>"` (after a full
run, `mutants/` holds everything it needs). Survivors are classified in
[`scripts/mutation_known.json`](../scripts/mutation_known.json), matched by function and changed
line (not by mutant number): **equivalent** (no test can tell it from the original; the reason is
given), **import-time** (see below), **gap** (a behaviour no fast test checks; the note says what
test would kill it, with the value computed by hand) or **cosmetic** (a gap in an error message's
wording only). A survivor whose line changed since is *unclassified* until looked at.

**Tests used**: the fast ones only (about a minute in all), `pytest_add_cli_args_test_selection` in
`pyproject.toml`: `test_losses_methods.py`, `test_params.py`, `test_faults_params.py`, `test_by_hand.py`,
`test_build_data.py` (without the subprocess entry-point test), `test_wise_report.py` (without the
two-process gloo test), `test_pack.py`, `test_gallery.py`, and by node id the by-hand metric tests
of `test_models_eval.py`, the params test of `test_retrieve.py` and the two fast captioning tests of
`test_caption_stage.py` (a renamed node id stops the run with pytest's usage error, exit 4). Left
out: the DVC workflows, presets, torchrun / gloo, pyspark, the training runs of `test_train.py`, and
every `test_retrieve.py` test that needs its corpus-embedding fixture (15-50 s per mutant: it spawns
clip-retrieval workers); `retrieve._assign` is tested without it in `test_by_hand.py`.

mutmut runs, per mutant, only the tests that called the mutated function during its stats run, and
it credits a call to the test it happened in; a module-scoped fixture is built in the first test
using it. [`scripts/mutmut_fixture_stats.py`](../scripts/mutmut_fixture_stats.py) (a pytest plugin
named in `pytest_add_cli_args`) credits what a fixture's setup calls to every test using the
fixture; without it, a mutant of `split_emoji` ran one `test_build_data.py` test instead of all.
Code that runs at import (`@register_method`, `@register_params`) runs before a forked child
switches its mutant on, so its mutants can never be killed: **import-time**, left out of the second
score with the equivalents.

**Scope** (`SCOPE`; the rest of each file is mutated too but never run):

{scope}

Left out on purpose: `Step._encode` / `backward_encodings` / `gathered` (micro-batch and DDP
machinery, reached only by the slow training tests), `wise.evaluate_wise` and `Scorer` (model
scoring), the rest of `retrieve.py` (faiss search and index building need the embedding fixture),
decorated functions (mutmut never mutates them: the method losses `arf`, `flyp`, ... and
properties) and module-level code (dataclass field constraints).

**Score** = (killed + timeout) / mutants; "no tests" means no selected test calls the function.
A survivor classified as a gap is a test to write: `test_by_hand.py` holds the tests written from
the first run's gap notes, computed by hand.

## Last run

{run}

{table}

## Survivors

{survivors}
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--globs", action="store_true", help="print the mutant globs for `mutmut run`, one a line")
    ap.add_argument("--wall", type=int, help="wall time of the run in seconds, for the report")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "mutation.md")
    a = ap.parse_args()
    if a.globs:
        print("\n".join(globs()))
        return 0
    import os

    os.chdir(ROOT)  # mutmut's helpers read pyproject.toml and mutants/ relative to the cwd
    _load_known()
    rows, survivors = collect()
    from importlib.metadata import version

    v = version("mutmut")
    run = (f"{date.today().isoformat()}, mutmut {v}, {os.cpu_count()} CPU cores"
           + (f", wall time {a.wall // 60} min {a.wall % 60} s (generation, stats, clean run and mutants)"
              if a.wall is not None else ""))
    t = table(rows)
    print(t)
    unclassified = sum(1 for s in survivors if s[5] == "unclassified")
    survivors_only = [s for s in survivors if s[5] != "no tests"]
    print(f"{len(survivors_only)} survivors ({unclassified} unclassified); details in {a.out}")
    scope = "\n".join(f"- {label}: `{path}`: " + ", ".join(f"`{f}`" for f in funcs)
                      for label, (path, funcs) in SCOPE.items())
    a.out.write_text(HEADER.format(version=v, run=run, table=t, scope=scope,
                                   survivors=survivors_md(survivors) or "None."))
    return 0


if __name__ == "__main__":
    sys.exit(main())
