"""The project's benchmark: how fast its evaluator, PPO and SFT run on this machine, against
the loops they replace, and how far each step is from the machine's matmul rate.

    bash scripts/bench.sh                 # python -m bench; results in results/bench/
    bash scripts/bench.sh --quick         # tiny sizes: a smoke check of every measurement
    bash scripts/bench.sh --projection    # only print the paper-scale cost projection

Every comparison runs in one invocation, with the same model (the converted
SmolLM2-135M-Instruct at resources/models/smollm2-135m), tokenizer, examples, LoRA settings
and lengths on both sides:

  eval      rlnlu.generation.generate_answers (the project's settings from config.yaml)
            against the paper's released inference loop: batches of 4 prompts, left-padded,
            24-31 new tokens drawn per batch, stopping only at end-of-sequence; greedy both.
  ppo       one PPO update step (rollout + optimisation of one batch) of rlnlu.ppo.train_ppo
            against trl 1.12.0's PPOTrainer (trl.experimental.ppo), each side in a fresh
            subprocess so its peak RSS is its own. trl 1.12.0 is installed with
            `pip install --no-deps --target <cache>/trl-1.12.0`, never into the project's venv.
  sft       tokens/s of the project's SFT trainer (rlnlu.sft, TRL's SFTTrainer) against a
            plain PEFT + PyTorch loop over the very batches the trainer used.
  matmul    the machine's dense matmul rate (fp32 on CPU, bf16 on GPU); the PPO and SFT
            steps are reported as a fraction of it (FLOP conventions: bench/flops.py).
  planning  wall time of `snakemake -n --configfile configs/paper.yaml`.
  projection  GPU hours of the paper's grid for its 7B models, from FLOP counts and the
            settings of configs/paper.yaml over config.yaml.

Results: <out>/<section>.json, <out>/summary.json and <out>/README.md (a Markdown table).
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
import traceback
from dataclasses import asdict
from pathlib import Path

from .config import REPO
from .flops import ModelShape
from .measure import (TRL_BASELINE_VERSION, bench_eval, bench_matmul, bench_planning,
                      bench_ppo, bench_sft, check_data, check_model, run_child)
from .projection import (RECORD_CANDIDATES, GpuSpec, paper_config, project_paper_scale,
                         projection_settings, projection_table)
from .summary import format_report

DEFAULT_MODEL = "resources/models/smollm2-135m"
DEFAULT_DATA = "../shared/data"
DEFAULT_OUT = "results/bench"
SECTIONS = ("matmul", "eval", "ppo", "sft", "planning", "projection")


def _machine(device: str, dtype: str) -> dict:
    import peft
    import torch
    import transformers

    try:
        import trl

        trl_version = trl.__version__
    except ImportError:  # pragma: no cover
        trl_version = None
    info = {"date": time.strftime("%Y-%m-%d %H:%M"), "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "device": device, "dtype": dtype,
            "torch": torch.__version__, "transformers": transformers.__version__,
            "peft": peft.__version__, "trl": trl_version, "python": platform.python_version(),
            "loadavg_start": os.getloadavg()[0]}
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name()
    return info


def _section(name: str, func, *a) -> dict:
    print(f"[bench] {name} ...", file=sys.stderr, flush=True)
    start = time.perf_counter()
    try:
        result = func(*a)
    except SystemExit:
        raise
    except Exception:
        result = {"status": "error", "error": traceback.format_exc()}
    result["section_seconds"] = time.perf_counter() - start
    print(f"[bench] {name}: {result.get('status')} in {result['section_seconds']:.1f} s",
          file=sys.stderr, flush=True)
    return result


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke check")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--dtype", default="auto",
                        help="auto (fp32 on CPU, bf16 on GPU) | float32 | bfloat16")
    parser.add_argument("--out", default=DEFAULT_OUT, help="where the JSON files and README go")
    parser.add_argument("--model", default=DEFAULT_MODEL)
    parser.add_argument("--data", default=DEFAULT_DATA, help="GLUE files in the official layout")
    parser.add_argument("--cache-dir", default=os.environ.get(
        "RLNLU_BENCH_CACHE", str(Path.home() / ".cache" / "rlnlu-bench")),
        help=f"where trl=={TRL_BASELINE_VERSION} is installed for the PPO baseline")
    parser.add_argument("--only", default=",".join(SECTIONS),
                        help=f"comma-separated sections to run, of {','.join(SECTIONS)}")
    parser.add_argument("--projection", action="store_true",
                        help="print the paper-scale projection and exit")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-examples", type=int, default=None,
                        help="SST-2 dev examples (a seeded subsample; 0 = all 872); "
                             "default 256, --quick 8")
    parser.add_argument("--ppo-prompts", type=int, default=None, help="default 8, --quick 2")
    parser.add_argument("--ppo-tokens", type=int, default=None, help="default 16, --quick 4")
    parser.add_argument("--ppo-steps", type=int, default=None, help="measured steps, default 3")
    parser.add_argument("--ppo-warmup", type=int, default=None, help="default 1, --quick 0")
    parser.add_argument("--sft-batch", type=int, default=None, help="default 8, --quick 2")
    parser.add_argument("--sft-steps", type=int, default=None, help="measured, default 4, --quick 1")
    parser.add_argument("--sft-warmup", type=int, default=None, help="default 1")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    defaults = {  # name: (full, quick)
        "eval_examples": (256, 8), "ppo_prompts": (8, 2), "ppo_tokens": (16, 4),
        "ppo_steps": (3, 1), "ppo_warmup": (1, 0), "sft_batch": (8, 2), "sft_steps": (4, 1),
        "sft_warmup": (1, 1)}
    for name, (full, quick) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    unknown = set(args.only.split(",")) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown section(s) {sorted(unknown)}; known: {', '.join(SECTIONS)}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.child:
        return run_child(args.child, args.spec, args.result)
    if args.projection:
        print(projection_table(project_paper_scale()))
        return 0

    from rlnlu import files
    from rlnlu.models import resolve_device

    # Defaults are relative to the repository, paths given on the command line to the
    # directory the command was started in; everything runs from the repository.
    for name, default in (("model", DEFAULT_MODEL), ("data", DEFAULT_DATA), ("out", DEFAULT_OUT)):
        value = getattr(args, name)
        base = REPO if value == default else Path.cwd()
        setattr(args, name, str((base / value).expanduser().resolve()))
    args.cache_dir = str(Path(args.cache_dir).expanduser().resolve())
    os.chdir(REPO)
    wanted = args.only.split(",")
    needs_model = set(wanted) & {"eval", "ppo", "sft"}
    if needs_model:
        check_model(args.model)
        check_data(args.data)
    device = resolve_device(args.device)
    out = Path(args.out)
    results = {"quick": args.quick, "machine": _machine(device, args.dtype),
               "settings": {k: v for k, v in vars(args).items()
                            if k not in ("child", "spec", "result")}}
    shape = None
    if needs_model:
        from transformers import AutoConfig

        shape = ModelShape.from_config(AutoConfig.from_pretrained(args.model))
        results["model"] = {"path": args.model, "shape": asdict(shape),
                            "block_params": shape.block_params,
                            "lm_head_params": shape.lm_head_params}
    matmul = None
    if "matmul" in wanted or (set(wanted) & {"ppo", "sft"}):
        matmul = results["matmul"] = _section("matmul", bench_matmul, device, args.dtype, args.quick)
        if matmul.get("status") != "ok":
            matmul = None
    if "eval" in wanted:
        results["eval"] = _section("eval", bench_eval, args, device)
    if "ppo" in wanted:
        results["ppo"] = _section("ppo", bench_ppo, args, device, shape, matmul)
    if "sft" in wanted:
        results["sft"] = _section("sft", bench_sft, args, device, shape, matmul)
    if "planning" in wanted:
        results["planning"] = _section("planning", bench_planning)
    if "projection" in wanted:
        config = paper_config()
        results["projection"] = {"status": "ok", "gpu": asdict(GpuSpec()),
                                 "settings": projection_settings(config),
                                 "rows": project_paper_scale(config),
                                 "record_candidates_assumed": RECORD_CANDIDATES}
    results["machine"]["loadavg_end"] = os.getloadavg()[0]

    for name in SECTIONS:
        if name in results:
            files.write_json(out / f"{name}.json", results[name])
    files.write_json(out / "summary.json", results)
    report = format_report(results)
    files.write_text(out / "README.md", report)
    print(report)
    if "projection" in results:
        print(projection_table(results["projection"]["rows"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
