#!/usr/bin/env bash
# The PPO oracle (not part of the test run): the project's PPO step against TRL 0.11.4's
# PPOTrainer.step, the trainer the paper's code calls, on identical inputs. See
# docs/benchmarks.md ("PPO oracle"); bench/ppo_oracle.py says what is compared.
#
#   bash scripts/ppo_oracle.sh                 # writes results/bench/ppo_oracle.json
#
# TRL 0.11.4 needs a transformers from before 4.46, so it gets its own virtual environment
# (built once, under ~/.cache/rlnlu-bench or $RLNLU_BENCH_CACHE, next to the benchmark's
# trl 1.12 folder), with torch==2.13.0 installed first so that nothing pulls a CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ ! -x .venv/bin/python ]]; then
    echo "no .venv here: run 'bash scripts/setup.sh' first" >&2
    exit 1
fi
cache="${RLNLU_BENCH_CACHE:-$HOME/.cache/rlnlu-bench}"
oracle_env="$cache/trl-0.11.4-env"
if [[ ! -f "$oracle_env/.complete" ]]; then
    echo "[oracle] building $oracle_env (once)" >&2
    mkdir -p "$cache"
    rm -rf "$oracle_env"
    .venv/bin/python -m venv "$oracle_env"
    "$oracle_env/bin/pip" install --quiet --upgrade pip
    "$oracle_env/bin/pip" install --quiet torch==2.13.0
    "$oracle_env/bin/pip" install --quiet trl==0.11.4 transformers==4.45.2 peft==0.13.2 \
        accelerate==1.0.1 rich "numpy<2.3"
    touch "$oracle_env/.complete"
fi
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export PYTHONPATH="$PWD/workflow${PYTHONPATH:+:$PYTHONPATH}"
exec .venv/bin/python bench/ppo_oracle.py --oracle-python "$oracle_env/bin/python" "$@"
