#!/usr/bin/env bash
# Build the speech corpus: bash recipes/data/build.sh OUT_DIR [extra build_corpus.py args, e.g. --include-music]
set -euo pipefail; here="$(cd "$(dirname "$0")" && pwd)"; py="${PYTHON:-$( [ -x "$here/../../.venv/bin/python" ] && echo "$here/../../.venv/bin/python" || echo python3)}"; out="${1:?usage: build.sh OUT_DIR [args]}"; shift; exec "$py" "$here/build_corpus.py" --out "$out" "$@"
