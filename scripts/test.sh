#!/usr/bin/env bash
# Set up (if needed) and run the whole test suite offline.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
snakemake --lint
snakefmt --check .
python -m pytest tests -q -rs "$@"   # -rs: say why each skipped test was skipped
