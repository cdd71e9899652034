#!/usr/bin/env bash
# The benchmark command (not part of the test run): measures this machine, writes
# results/bench/*.json and results/bench/README.md. See docs/benchmarks.md.
#
#   bash scripts/bench.sh                     # the full benchmark (about 15-30 min on 2 CPU cores),
#                                             # then the PPO oracle (scripts/ppo_oracle.sh)
#   bash scripts/bench.sh --quick             # tiny sizes: a smoke check of every measurement
#   bash scripts/bench.sh --device cuda       # on a GPU (bf16 by default there)
#   bash scripts/bench.sh --projection        # print the paper-scale GPU-hour projection only
#   bash scripts/bench.sh --help              # every option
#
# Needs .venv (bash scripts/setup.sh), the converted model (snakemake --cores 1
# resources/models/smollm2-135m) and SST-2 at ../shared/data (or --data DIR). The PPO
# baseline installs trl==1.12.0 once into its own folder (~/.cache/rlnlu-bench, or
# $RLNLU_BENCH_CACHE), never into .venv.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ ! -x .venv/bin/python ]]; then
    echo "no .venv here: run 'bash scripts/setup.sh' first" >&2
    exit 1
fi
. .venv/bin/activate
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export PYTHONPATH="$PWD/workflow:$PWD${PYTHONPATH:+:$PYTHONPATH}"  # rlnlu, and bench itself
python -m bench "$@"
if [[ $# -eq 0 ]]; then  # the full benchmark also checks PPO against TRL 0.11.4 (the paper's)
    bash scripts/ppo_oracle.sh
fi
