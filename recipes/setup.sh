#!/usr/bin/env bash
# One-shot set-up on a fresh machine: system codecs (ffmpeg, Opus, Codec2, AMR-WB: for baselines and decoding),
# a virtual environment in .venv, and the project with its test/eval/train extras.
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
command -v ffmpeg >/dev/null 2>&1 || need+=(ffmpeg)
command -v c2enc >/dev/null 2>&1 || need+=(codec2)
command -v opusenc >/dev/null 2>&1 || need+=(opus-tools)
# AMR-WB encoder library (loaded with ctypes by codec.eval.baselines; ffmpeg decodes AMR-WB natively)
{ ldconfig -p 2>/dev/null | grep -q libvo-amrwbenc.so; } || need+=(libvo-amrwbenc0)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  else
    echo "setup: please install ${need[*]} (e.g. sudo apt-get install ${need[*]}); continuing without them" >&2
  fi
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[dev]'
# speaker similarity (codec eval --metrics ...,spk_sim): resemblyzer's webrtcvad dependency has no wheels, so the
# wheel-built fork provides the module and resemblyzer goes in without its declared dependencies (all present)
.venv/bin/python -m pip install -q webrtcvad-wheels && .venv/bin/python -m pip install -q --no-deps resemblyzer
