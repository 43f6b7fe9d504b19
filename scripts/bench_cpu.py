"""Where the main command's time goes on this machine: per-stage wall seconds of a cold `dvc repro`.

    python scripts/bench_cpu.py                      # clone HEAD to a temp dir, dvc repro cold, print
    python scripts/bench_cpu.py --rev d5039ef        # the same for another commit
    python scripts/bench_cpu.py --save FILE.json     # also write the figures (the baseline is one)
    python scripts/bench_cpu.py --as-user --keep     # the main command as on a fresh clone (no --force);
        # --keep: then check `git status` in the kept clone (clean: training reproduced every weight)
    python scripts/bench_cpu.py --profile train@arf-0 [--repo DIR]
        # one stage of an already-run repo under cProfile: the 25 costliest functions

The run uses a fresh clone (its own empty DVC cache, so nothing is restored from a run cache) with
this checkout's `.venv` and `.assets` linked in, and PYTHONPATH pointing at the clone so the clone's
code runs, not the editable install's. A stage's seconds run from DVC printing "Running stage" to the
next stage's line: the stage's process (imports included) plus DVC hashing and caching its outputs,
which is what a user waits for. The ratio column compares with the previous main's figures
(`scripts/bench_cpu_baseline.json`, written by this script on that commit). Times on a shared or
busy machine are longer: run it alone.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BASELINE = ROOT / "scripts" / "bench_cpu_baseline.json"
STAGE_LINE = re.compile(r"Running stage '([^']+)'")


def clone(rev: str, where: Path) -> Path:
    repo = where / "repo"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(repo)], check=True)
    subprocess.run(["git", "-C", str(repo), "checkout", "-q", rev], check=True)
    for linked in (".venv", ".assets"):
        (repo / linked).symlink_to(ROOT / linked)
    return repo


def env_for(repo: Path) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(repo)
    env["PATH"] = f"{ROOT / '.venv' / 'bin'}{os.pathsep}{env['PATH']}"
    return env


def repro(repo: Path, stages: list[str], force: bool = True) -> dict:
    """Stage name -> seconds, in run order, from DVC's own output streamed line by line. --force: a
    stage whose outputs are in git (the eval records, the report) would otherwise be skipped when its
    inputs come out byte-identical, and the run would not be every stage; without it, the run is the
    README's main command on a fresh clone as a user runs it."""
    started = time.perf_counter()
    cmd = ["dvc", "repro"] + (["--force"] if force else []) + (["--single-item", *stages] if stages else [])
    proc = subprocess.Popen(cmd, cwd=repo, env=env_for(repo), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    marks: list[tuple[str, float]] = []
    for line in proc.stdout:
        match = STAGE_LINE.search(line)
        if match:
            marks.append((match.group(1), time.perf_counter()))
            print(f"  {time.perf_counter() - started:7.1f}s  {match.group(1)}", file=sys.stderr)
    if proc.wait():
        sys.exit(f"error: dvc repro failed in {repo} (exit {proc.returncode})")
    ended = time.perf_counter()
    ends = [t for _, t in marks[1:]] + [ended]
    stages = {name: round(end - start, 1) for (name, start), end in zip(marks, ends)}
    return {"total_s": round(ended - started, 1), "stages": stages}


def group(stage: str) -> str:
    """train@arf-0 -> train; matrix stages are summed per stage in the table's second part."""
    return stage.split("@")[0]


def table(run: dict, base: dict | None) -> str:
    base_stages = (base or {}).get("stages", {})
    rows = ["| stage | seconds | previous main | ratio |", "|---|---|---|---|"]

    def row(name, secs, prev):
        ratio = f"{prev / secs:.2f}x" if prev and secs else "-"
        rows.append(f"| {name} | {secs:.1f} | {prev if prev is not None else '-'} | {ratio} |")

    for name, secs in run["stages"].items():
        row(name, secs, base_stages.get(name))
    sums: dict[str, float] = {}
    base_sums: dict[str, float] = {}
    for name, secs in run["stages"].items():
        sums[group(name)] = sums.get(group(name), 0.0) + secs
    for name, secs in base_stages.items():
        base_sums[group(name)] = base_sums.get(group(name), 0.0) + secs
    rows.append("| **per stage, summed** | | | |")
    for name, secs in sums.items():
        prev = base_sums.get(name)
        row(f"{name} (all)", round(secs, 1), round(prev, 1) if prev is not None else None)
    row("**total**", run["total_s"], (base or {}).get("total_s"))
    return "\n".join(rows)


def profile(repo: Path, stage: str, top: int = 25) -> None:
    from dvc.repo import Repo

    with Repo(str(repo)) as dvc_repo:
        (found,) = dvc_repo.stage.collect(stage)
        cmd = shlex.split(found.cmd)
    if cmd[0] != "python":
        sys.exit(f"error: stage {stage} does not run a python script: {found.cmd}")
    out = Path(tempfile.mkdtemp()) / f"{stage.replace('@', '_')}.prof"
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "cProfile", "-o", str(out), *cmd[1:]], cwd=repo,
                   env=env_for(repo), check=True)
    print(f"{stage}: {time.perf_counter() - started:.1f}s under cProfile; profile in {out}")
    import pstats

    stats = pstats.Stats(str(out))
    stats.sort_stats("tottime").print_stats(top)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rev", default="HEAD", help="commit to clone and run (default HEAD)")
    ap.add_argument("--save", type=Path, help="write the figures here as JSON")
    ap.add_argument("--baseline", type=Path, default=BASELINE, help="figures to compare with")
    ap.add_argument("--keep", action="store_true", help="keep the clone (printed) after the run")
    ap.add_argument("--profile", metavar="STAGE", help="profile one stage of --repo instead")
    ap.add_argument("--repo", type=Path, help="run in this existing clone instead of a fresh one "
                    "(default for --profile: this checkout)")
    ap.add_argument("--stages", nargs="+", default=[], help="run only these stages (default: all)")
    ap.add_argument("--as-user", action="store_true", help="plain `dvc repro`, no --force: the main command "
                    "as run on a fresh clone (skips what training reproduces byte for byte)")
    args = ap.parse_args()

    if args.profile:
        profile((args.repo or ROOT).resolve(), args.profile)
        return
    scratch = None
    if args.repo:
        repo = args.repo.resolve()
    else:
        scratch = Path(tempfile.mkdtemp(prefix="bench_cpu_"))
        repo = clone(args.rev, scratch)
    rev = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"], check=True,
                         text=True, capture_output=True).stdout.strip()
    print(f"dvc repro{'' if args.as_user else ' --force'} of {rev} in {repo} ({os.cpu_count()} cores)", file=sys.stderr)
    run = {"rev": rev, "cores": os.cpu_count(), **repro(repo, args.stages, force=not args.as_user)}
    base = json.loads(args.baseline.read_text()) if args.baseline.is_file() else None
    if base:
        print(f"previous main: {base['rev']}")
    print(table(run, base))
    if args.save:
        args.save.write_text(json.dumps(run, indent=2) + "\n")
    if scratch and not args.keep:
        subprocess.run(["rm", "-rf", str(scratch)], check=True)
    elif scratch:
        print(f"clone kept: {repo}", file=sys.stderr)


if __name__ == "__main__":
    main()
