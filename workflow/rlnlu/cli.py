"""Entry points the Snakemake rules call: `python -m rlnlu <command> ...`.

Each command does one step of the paper's pipeline and writes its outputs atomically.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time

from . import files
from .prompts import SHOT_SELECTIONS
from .protocols import PROTOCOL_NAMES
from .settings import split_mixing
from .tasks import get_task


def _task(args):
    return get_task(args.benchmark, args.task)


def cmd_prepare_data(args):
    from .data import write_split

    write_split(_task(args), args.split, args.source, args.local_dir, args.out)


def cmd_convert_model(args):
    from pathlib import Path

    from .models import convert_gguf, embedded_gguf

    convert_gguf(embedded_gguf(args.package, args.gguf_file), Path(args.out))


def cmd_render_prompts(args):
    from .models import load_tokenizer
    from .paper_code import paper_templates
    from .prompts import PromptStyle, render_split

    task = _task(args)
    records = files.read_jsonl(args.records)
    train_pool = files.read_jsonl(args.train) if args.train else None
    style = PromptStyle(shots=args.shots, chat_template=args.chat_template,
                        shot_selection=args.shot_selection, seed=args.seed,
                        paper_templates=paper_templates(args.paper_prompts)
                        if args.paper_prompts else None)
    tokenizer = load_tokenizer(args.model_location) if args.chat_template else None
    files.write_jsonl(args.out, render_split(task, records, train_pool, style, tokenizer))


def cmd_obtain_paper_code(args):
    from .paper_code import obtain_prompt_file

    obtain_prompt_file(args.out, args.local_copy)


def cmd_evaluate(args):
    import torch

    from .evaluation import predict
    from .models import load_model, load_tokenizer

    from .models import resolve_device
    from .sampling import subsample
    from .protocols import get_protocol
    from .provenance import run_record

    started = time.perf_counter()
    torch.manual_seed(args.seed)
    task = _task(args)
    rows = subsample(files.read_jsonl(args.prompts), args.max_examples, args.sample_seed)
    tokenizer = load_tokenizer(args.model_location)
    model = load_model(args.model_location, args.dtype, args.device, args.adapter)
    predictions = predict(task, model, tokenizer, rows, args.batch_size, args.max_new_tokens,
                          get_protocol(args.protocol).decoding, args.seed)
    record = run_record(resolve_device(args.device), time.perf_counter() - started)
    logging.info("%d predictions; %s", len(predictions), record)
    files.write_jsonl(args.out, predictions)
    files.write_json(args.run_record, record)


def cmd_score(args):
    from .evaluation import score
    from .protocols import get_protocol

    task = _task(args)
    cell = {"model": args.model, "benchmark": args.benchmark, "task": args.task,
            "method": args.method, "seed": args.seed}
    from pathlib import Path

    from .provenance import git_commit, settings_hash

    settings = json.loads(args.cell_settings)
    provenance = {"git_commit": git_commit(Path(__file__).resolve().parent),
                  "settings_hash": settings_hash(settings), "settings": settings}
    if args.no_data:
        result = {"status": "no data", "reason": args.no_data}
    else:
        result = score(task, files.read_jsonl(args.predictions), args.invalid_policy, args.seed,
                       args.bootstrap_resamples, get_protocol(args.protocol))
        provenance["evaluation_run"] = files.read_json(args.run_record)
    files.write_json(args.out, dict(cell, **result, provenance=provenance))


def _training_rows(rows_by_task: dict[str, list[dict]], mixing: dict, seed: int) -> list[dict]:
    """One task's rows as they are; the tasks of a multi-task method mixed by its `mixing`
    settings, capped per task also when the benchmark lists a single task."""
    from .sampling import mix_tasks

    mixing = dict(mixing)
    if len(rows_by_task) == 1 and not mixing:
        return next(iter(rows_by_task.values()))
    return mix_tasks(rows_by_task, mixing.pop("mixing", "upsample"), seed, **mixing)


def cmd_train_sft(args):
    from .sft import SFTSettings, train_sft

    settings, mixing = split_mixing(dict(json.loads(args.settings), seed=args.seed))
    rows = _training_rows({path: files.read_jsonl(path) for path in args.train}, mixing,
                          args.seed)
    dev_rows = None
    if args.dev:
        from .sampling import subsample

        dev_rows = subsample(files.read_jsonl(args.dev), args.max_examples, args.sample_seed)
    summary = train_sft(args.model_location, rows, args.adapter, args.work_dir,
                        SFTSettings.from_config(settings), args.curve_csv, args.curve_png,
                        dev_rows)
    print(json.dumps(summary))


def _keyed_train_rows(pairs: list[str]) -> dict[str, list[dict]]:
    """`benchmark/task=path` arguments -> the prompt rows of each task, tagged with it."""
    rows_by_task = {}
    for pair in pairs:
        key, _, path = pair.partition("=")
        get_task(*key.split("/"))  # an unknown task fails here, by name
        rows_by_task[key] = [dict(row, task=key) for row in files.read_jsonl(path)]
    return rows_by_task


def cmd_train_rl(args):
    """PPO (single- or multi-task) or GRPO, from an SFT seed adapter or the base model."""
    from .answers import RewardScheme

    settings, mixing = split_mixing(dict(json.loads(args.settings), seed=args.seed))
    rows_by_task = _keyed_train_rows(args.train)
    rows = _training_rows(rows_by_task, mixing, args.seed)
    task = get_task(*next(iter(rows_by_task)).split("/")) if len(rows_by_task) == 1 else None
    if args.algorithm == "ppo":
        from .ppo import PPOSettings as Settings, train_ppo as train
    else:
        from .grpo import GRPOSettings as Settings, train_grpo as train

        if task is None:
            raise ValueError("GRPO trains one task at a time; give a single --train")
    summary = train(args.model_location, rows, task, args.adapter, args.work_dir,
                    Settings.from_config(settings), args.curve_csv, args.curve_png,
                    seed_adapter=args.seed_adapter,
                    reward_scheme=RewardScheme(**json.loads(args.reward)))
    print(json.dumps(summary, default=str))


def cmd_submission(args):
    from .submissions import write_submission

    tasks = [get_task(args.benchmark, name) for name in args.tasks]
    names = write_submission(args.benchmark, tasks, args.predictions, args.out, args.seed)
    logging.info("wrote %s with %s", args.out, ", ".join(names))


def cmd_tables(args):
    from .report import plot_scores
    from .tables import write_tables

    table = write_tables(args.benchmark, args.metrics, args.csv, args.markdown,
                         args.parser_csv, args.parser_markdown)
    plot_scores(args.benchmark, args.metrics, args.plot)
    print(table.to_string(index=False))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rlnlu", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    def command(name, fn, *, task=False):
        sub = commands.add_parser(name)
        sub.set_defaults(fn=fn)
        if task:
            sub.add_argument("--benchmark", required=True)
            sub.add_argument("--task", required=True)
        return sub

    sub = command("prepare-data", cmd_prepare_data, task=True)
    sub.add_argument("--split", required=True)
    sub.add_argument("--source", choices=["hub", "local"], required=True)
    sub.add_argument("--local-dir")
    sub.add_argument("--out", required=True)

    sub = command("convert-model", cmd_convert_model)
    sub.add_argument("--package", required=True)
    sub.add_argument("--gguf-file", required=True)
    sub.add_argument("--out", required=True)

    sub = command("render-prompts", cmd_render_prompts, task=True)
    sub.add_argument("--records", required=True)
    sub.add_argument("--train")
    sub.add_argument("--model-location", required=True)
    sub.add_argument("--shots", type=int, default=0)
    sub.add_argument("--shot-selection", choices=list(SHOT_SELECTIONS), default="random")
    sub.add_argument("--chat-template", action=argparse.BooleanOptionalAction, default=True)
    sub.add_argument("--seed", type=int, default=0)
    sub.add_argument("--paper-prompts", help="the paper's prompt.py: render with its templates")
    sub.add_argument("--out", required=True)

    sub = command("obtain-paper-code", cmd_obtain_paper_code)
    sub.add_argument("--local-copy", help="a local copy of prompt.py (else it is downloaded)")
    sub.add_argument("--out", required=True)

    sub = command("evaluate", cmd_evaluate, task=True)
    sub.add_argument("--prompts", required=True)
    sub.add_argument("--model-location", required=True)
    sub.add_argument("--adapter", action="append", default=[])
    sub.add_argument("--dtype", default="auto")
    sub.add_argument("--device", default="auto")
    sub.add_argument("--batch-size", type=int, default=8)
    sub.add_argument("--max-new-tokens", type=int, default=16)
    sub.add_argument("--max-examples", type=int, help="a seeded subsample of the prompts")
    sub.add_argument("--sample-seed", type=int, default=0)
    sub.add_argument("--seed", type=int, default=0)
    sub.add_argument("--protocol", choices=PROTOCOL_NAMES, default="suite",
                     help="its decoding: greedy (suite) or the paper's sampling")
    sub.add_argument("--out", required=True)
    sub.add_argument("--run-record", required=True, help="where to write device, time, memory")

    sub = command("score", cmd_score, task=True)
    sub.add_argument("--model", required=True)
    sub.add_argument("--method", required=True)
    sub.add_argument("--seed", type=int, default=0)
    sub.add_argument("--predictions")
    sub.add_argument("--run-record", help="the evaluation's device, time and memory record")
    sub.add_argument("--cell-settings", default="{}",
                     help="JSON of exactly the settings that affect this cell (hashed)")
    sub.add_argument("--no-data", help="write a 'no data' cell with this reason")
    sub.add_argument("--invalid-policy", choices=["wrong", "random"], default="wrong")
    sub.add_argument("--protocol", choices=PROTOCOL_NAMES, default="suite",
                     help="whose parser gives the headline score (both are reported)")
    sub.add_argument("--bootstrap-resamples", type=int, default=1000)
    sub.add_argument("--out", required=True)

    def training_arguments(sub):
        sub.add_argument("--model-location", required=True)
        sub.add_argument("--settings", default="{}", help="the method's settings as JSON")
        sub.add_argument("--seed", type=int, default=0)
        sub.add_argument("--adapter", required=True, help="where the PEFT adapter goes")
        sub.add_argument("--work-dir", required=True, help="checkpoints, kept across kills")
        sub.add_argument("--curve-csv", required=True)
        sub.add_argument("--curve-png")

    sub = command("train-sft", cmd_train_sft)
    sub.add_argument("--train", action="append", required=True,
                     help="training prompts (JSON lines); several make a multi-task mix")
    sub.add_argument("--dev", help="dev prompts whose score the curve records (as evaluated)")
    sub.add_argument("--max-examples", type=int, help="a seeded subsample of the dev prompts")
    sub.add_argument("--sample-seed", type=int, default=0)
    training_arguments(sub)

    sub = command("train-rl", cmd_train_rl)
    sub.add_argument("--algorithm", choices=["ppo", "grpo"], required=True)
    sub.add_argument("--train", action="append", required=True, metavar="BENCHMARK/TASK=PATH",
                     help="training prompts of a task; several make a multi-task run")
    sub.add_argument("--seed-adapter", help="SFT adapter merged into the base before PPO")
    sub.add_argument("--reward", default="{}", help="reward values as a JSON object")
    training_arguments(sub)

    sub = command("submission", cmd_submission)
    sub.add_argument("--benchmark", required=True)
    sub.add_argument("--tasks", nargs="+", required=True)
    sub.add_argument("--predictions", nargs="+", required=True, help="one per task, in order")
    sub.add_argument("--seed", type=int, default=0)
    sub.add_argument("--out", required=True)

    sub = command("tables", cmd_tables)
    sub.add_argument("--benchmark", required=True)
    sub.add_argument("--csv", required=True)
    sub.add_argument("--markdown", required=True)
    sub.add_argument("--plot", required=True, help="bar chart of the scores (PNG)")
    sub.add_argument("--parser-csv", help="each cell under the strict and the paper's parser")
    sub.add_argument("--parser-markdown")
    sub.add_argument("metrics", nargs="*")
    return parser


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        args.fn(args)
    except (ValueError, KeyError, TypeError, FileNotFoundError) as err:
        # Data, config and file errors carry their own explanation; no traceback needed.
        logging.error("%s", err)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
