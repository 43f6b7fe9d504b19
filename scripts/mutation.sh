#!/usr/bin/env bash
# Mutation testing of the core modules with mutmut, on the fast tests (docs/mutation.md).
# Not part of .ci/run. ~7 min on 2 cores; writes docs/mutation.md and prints the per-module table.
#
#   scripts/mutation.sh                      # the whole scope (scripts/mutation_report.py SCOPE)
#   scripts/mutation.sh "pipeline.core.losses.x_*"    # only these mutants (globs), a fresh run whose
#                                                     # report goes to mutants/mutation.md instead
#
# Environment: MUTATION_JOBS (parallel mutants, default 2), MUTATION_TIMEOUT (seconds before the
# mutmut run is stopped, default 1800; the report then counts what was not reached as "other").
set -euo pipefail
cd "$(dirname "$0")/.."

MUTMUT_VERSION=3.8.1
PY=.venv/bin/python
say() { printf '[mutation] %s\n' "$*"; }

if [ "$($PY -c 'import importlib.metadata as m; print(m.version("mutmut"))' 2>/dev/null)" != "$MUTMUT_VERSION" ]; then
  say "installing mutmut==$MUTMUT_VERSION into .venv"
  $PY -m pip install -q "mutmut==$MUTMUT_VERSION"
fi

# One thread per test process: the mutants run MUTATION_JOBS at a time, and forked children must not
# inherit a busy OpenMP pool.
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false

out=docs/mutation.md
if [ $# -gt 0 ]; then
  GLOBS=("$@")
  out=mutants/mutation.md
else
  mapfile -t GLOBS < <($PY scripts/mutation_report.py --globs)
fi

# mutmut copies a file into mutants/ only when it is not there yet, so a stale copy of a changed
# test or helper would be used: always start from scratch.
rm -rf mutants
mkdir -p mutants
log=mutants/mutation-run.log
say "mutmut run on ${#GLOBS[@]} function globs, ${MUTATION_JOBS:-2} at a time (log: $log)"
start=$(date +%s)
rc=0
timeout "${MUTATION_TIMEOUT:-1800}" .venv/bin/mutmut run --max-children "${MUTATION_JOBS:-2}" "${GLOBS[@]}" >"$log" 2>&1 || rc=$?
wall=$(( $(date +%s) - start ))
if [ $rc -ne 0 ]; then
  tr '\r' '\n' <"$log" | grep -av '^⠀\|^[⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏]' | tail -40
  say "mutmut run exited with $rc after ${wall}s"
  [ $rc -eq 124 ] || exit $rc
fi
grep -a 'mutations/second' "$log" || true
say "wall time ${wall}s"
$PY scripts/mutation_report.py --wall "$wall" --out "$out"
