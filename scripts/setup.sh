#!/usr/bin/env bash
# Set-up for the embedded default: Python venv (.venv), the packaged images (npm, Debian) and DVC.
# Idempotent: a second run installs nothing new. Without root or apt it says what to run instead.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
UV_VERSION=0.13.9
NPM_PACKAGES=(emoji-datasource-google@16.0.0 emoji-datasource-twitter@16.0.0 openmoji@17.0.0)
DEB_PACKAGES=(tuxpaint-stamps-default openclipart-png libcairo2 openjdk-17-jre-headless)

say() { printf '[setup] %s\n' "$*"; }

# 1. Python dependencies (pyproject.toml), at the versions of requirements.lock (pip freeze of a
#    working venv; regenerate it with the command in its header after changing pyproject.toml).
#    uv installs them: the whole set-up took 77 s on a fresh clone (2 cores) against 161-177 s with
#    pip, whose install alone took 139 s (one wheel at a time). uv gets the indexes pip is configured with (pip.conf, PIP_* variables), so
#    both see the same packages; if uv cannot be had, pip installs the same pins. `pip check` must
#    stay clean either way. --compile-bytecode, as pip does: without .pyc files (and with
#    PYTHONDONTWRITEBYTECODE set, as on these machines, none are ever written) every process compiles
#    torch and transformers again, and a model-building stage starts in ~2x the time.
if [ ! -x .venv/bin/python ]; then
  say "creating .venv"
  "$PY" -m venv .venv
fi
uv_index_args() {  # pip's index settings as uv options, one per line
  .venv/bin/python -m pip config list 2>/dev/null | while IFS='=' read -r key value; do
    value=${value#\'}; value=${value%\'}
    case ${key#*.} in
      index-url) echo "--default-index=$value" ;;
      extra-index-url) for v in $value; do echo "--index=$v"; done ;;
      find-links) for v in $value; do echo "--find-links=$v"; done ;;
    esac
  done | sort -u
}
if ! .venv/bin/python -c "import pipeline, open_clip, clip_retrieval, pyspark, dvc, pytest" 2>/dev/null \
   || [ pyproject.toml -nt .venv/.installed ] || [ requirements.lock -nt .venv/.installed ]; then
  say "installing Python dependencies (first time: ~1 min)"
  log=$(mktemp)
  mapfile -t index_args < <(uv_index_args)
  if .venv/bin/python -m pip install -q "uv==$UV_VERSION" >"$log" 2>&1 \
     && .venv/bin/uv pip install --python .venv/bin/python --compile-bytecode --index-strategy unsafe-best-match "${index_args[@]}" \
          -c requirements.lock -e '.[test]' >>"$log" 2>&1; then
    :
  elif ! .venv/bin/python -m pip install -c requirements.lock -e '.[test]' >>"$log" 2>&1; then
    grep -v "^WARNING: Location" "$log" | tail -30; say "pip install failed (full log: $log)"; exit 1
  fi
  .venv/bin/python -c "import pipeline, open_clip, clip_retrieval, pyspark, dvc, pytest" 2>/dev/null
  touch .venv/.installed
fi
.venv/bin/python -m pip check >/dev/null || { .venv/bin/python -m pip check; exit 1; }

# 2. Debian packages: Tux Paint stamps and Open Clip Art (corpus images), cairo (SVG rendering),
#    Java 17 (Spark, for embed_corpus.distribution: pyspark and its test).
missing=()
for p in "${DEB_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    say "installing Debian packages: ${missing[*]}"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    say "missing Debian packages: ${missing[*]}"
    say "run as root: apt-get install ${missing[*]}   (then run this script again)"
    exit 1
  fi
fi

# 3. npm packages: the emoji images (Google, Twitter, OpenMoji), pinned, into .assets/.
need_npm=0
for spec in "${NPM_PACKAGES[@]}"; do
  name=${spec%@*}; ver=${spec##*@}
  have=$(sed -n 's/.*"version": *"\([^"]*\)".*/\1/p' ".assets/node_modules/$name/package.json" 2>/dev/null | head -1 || true)
  [ "$have" = "$ver" ] || need_npm=1
done
if [ $need_npm = 1 ]; then
  command -v npm >/dev/null || { say "npm not found: install Node.js and npm (apt-get install npm), then rerun"; exit 1; }
  say "installing npm packages: ${NPM_PACKAGES[*]}"
  mkdir -p .assets
  [ -f .assets/package.json ] || echo '{"private": true}' > .assets/package.json
  npm install --prefix .assets --no-audit --no-fund --silent "${NPM_PACKAGES[@]}"
fi

say "ok"
