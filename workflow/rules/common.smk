import json
import os
import re
import shlex
import sys

from snakemake.utils import validate

# The package holding all logic; jobs import it from the installed environment.
sys.path.insert(0, os.path.join(workflow.basedir, "workflow"))

from rlnlu import grid, paths  # noqa: E402
from rlnlu.methods import METHOD_NAMES, get_method  # noqa: E402
from rlnlu.tasks import get_task  # noqa: E402

validate(config, schema="../schemas/config.schema.yaml")
GRID = grid.Grid.from_config(config)
GRID.check()  # unknown model keys, bad settings, missing data: fail before any job

# GPU rules start their command with {GPU}: empty, except with `resources: gpu: N` (as in
# profiles/gpu), where each such job first claims one free GPU of N through
# profiles/gpu/pick_gpu.py, which runs it with CUDA_VISIBLE_DEVICES set to that GPU.
GPU_SLOTS = getattr(workflow.global_resources.get("gpu"), "value", None)
GPU = (
    f"python {shlex.quote(os.path.join(workflow.basedir, 'profiles', 'gpu', 'pick_gpu.py'))} "
    f"--slots {GPU_SLOTS} -- "
    if GPU_SLOTS
    else ""
)

# Every job's command starts with this: its log also gets a numbered name, <log>.1 on the
# first attempt, <log>.2 on the next (a retry, or a later run), as a hard link to the same
# file. Snakemake deletes <log> before it reruns a job; the numbered name keeps that file, so
# a failed attempt's log survives its retry. (Without hard links the job runs unnumbered.)
NUMBER_THE_LOG = (
    "n=1; while [ -e {log}.$n ]; do n=$((n + 1)); done; "
    ": > {log}; ln {log} {log}.$n || true; "
)


wildcard_constraints:
    model="|".join(map(re.escape, config["model_registry"])),
    benchmark="glue|superglue",
    task="[a-z0-9_]+",
    method="|".join(METHOD_NAMES),
    split="train|validation|test",
    seed="[0-9]+",


def model_location(wildcards):
    return GRID.model_location(wildcards.model)


def model_input(wildcards):
    """The converted folder for an embedded model; hub models load from the hub cache."""
    location = GRID.model_location(wildcards.model)
    return [location] if GRID.is_embedded(wildcards.model) else []


def json_arg(value):
    """A JSON value as one shell word (settings travel to the CLI this way)."""
    return shlex.quote(json.dumps(value, sort_keys=True))


def few_shot_pool(wildcards):
    train_task = get_task(wildcards.benchmark, wildcards.task).train_task
    return paths.fill(
        paths.RECORDS,
        benchmark=wildcards.benchmark,
        task=train_task.name,
        split="train",
    )


def prompt_file(model, benchmark, task, method, seed, split):
    return paths.fill(
        paths.prompts(method),
        model=model,
        benchmark=benchmark,
        task=task,
        seed=seed,
        split=split,
    )


def reward_settings():
    """The reward values of the config and the protocol's reward rule, as one JSON word."""
    return json_arg(dict(config["reward"], rule=GRID.protocol.reward_rule))


def paper_code_input(wildcards):
    return [paths.PAPER_CODE] if GRID.protocol.paper_prompts else []


def paper_code_option(wildcards):
    local_copy = config["paper_code"]["prompt_file"]
    return f"--local-copy {shlex.quote(local_copy)}" if local_copy else ""


def chat_template_option(wildcards):
    return (
        "--chat-template"
        if GRID.chat_template(wildcards.model)
        else "--no-chat-template"
    )


def few_shot_options(wildcards, input):
    """The train pool and how many demonstrations to draw from it, with the cell's seed."""
    prompts = config["prompts"]
    return (
        f"--train {input.train} --shots {prompts['shots']} "
        f"--shot-selection {prompts['shot_selection']} --seed {wildcards.seed}"
    )


def cell_of(wildcards):
    return grid.Cell(
        wildcards.model,
        wildcards.benchmark,
        wildcards.task,
        wildcards.method,
        int(wildcards.seed),
    )


def eval_prompts(wildcards):
    task = get_task(wildcards.benchmark, wildcards.task)
    return prompt_file(
        wildcards.model,
        wildcards.benchmark,
        wildcards.task,
        wildcards.method,
        wildcards.seed,
        task.eval_split,
    )


def eval_adapters(wildcards):
    return GRID.adapter_chain(cell_of(wildcards))


def score_input(wildcards):
    if GRID.missing_data(cell_of(wildcards)):
        return {}
    return {
        name: path.format(**wildcards) for name, path in rules.evaluate.output.items()
    }


def score_options(wildcards, input):
    reason = GRID.missing_data(cell_of(wildcards))
    if reason:
        return f"--no-data {shlex.quote(reason)}"
    return f"--predictions {input.predictions} --run-record {input.run_record}"


def sft_dev_prompts(wildcards):
    """The dev prompts an SFT curve scores (the evaluation's subsample), if it scores any."""
    sft = config.get("sft", {})
    tasks = sft.get("dev_curve_tasks")
    if not sft.get("dev_curve_every") or (
        tasks is not None and wildcards.task not in tasks
    ):
        return []
    task = get_task(wildcards.benchmark, wildcards.task)
    return prompt_file(
        wildcards.model,
        wildcards.benchmark,
        wildcards.task,
        "sft",
        wildcards.seed,
        task.eval_split,
    )


def sft_task_settings(wildcards):
    """A task's SFT settings, with its own budget if `sft.max_examples_by_task` names it."""
    return json_arg(GRID.training_settings("sft", wildcards.task))


def sft_dev_options(wildcards, input):
    return f"--dev {input.dev} {sample_options(wildcards)}" if input.dev else ""


def train_prompts(benchmark, task_name, model):
    return prompt_file(model, benchmark, task_name, "zero_shot", None, "train")


def rl_train_tasks(wildcards, method):
    if get_method(method).multi_task:
        return GRID.multi_task_train_tasks(wildcards.benchmark)
    return [get_task(wildcards.benchmark, wildcards.task)]


def rl_inputs(wildcards, method):
    """Training prompts and the SFT adapter an RL run starts from (if it is seeded)."""
    tasks = rl_train_tasks(wildcards, method)
    cell = grid.Cell(
        wildcards.model,
        wildcards.benchmark,
        getattr(wildcards, "task", tasks[0].name),
        method,
        int(wildcards.seed),
    )
    return {
        "train": [train_prompts(t.benchmark, t.name, wildcards.model) for t in tasks],
        "seed_adapter": GRID.adapter_chain(cell)[:-1],
    }


def rl_train_options(wildcards, input, method):
    """`--train benchmark/task=path` per task (the reward needs each row's task)."""
    tasks = rl_train_tasks(wildcards, method)
    options = [f"--train {t.key}={path}" for t, path in zip(tasks, input.train)]
    options += [f"--seed-adapter {path}" for path in input.seed_adapter]
    return " ".join(options)


def sample_options(wildcards):
    """Cells score a seeded subsample of their split, the same examples for every method."""
    if not config["evaluation"]["max_examples"]:
        return ""
    return (
        f"--max-examples {config['evaluation']['max_examples']} "
        f"--sample-seed {config['evaluation']['sample_seed']}"
    )


def test_prompts(wildcards):
    return prompt_file(
        wildcards.model,
        wildcards.benchmark,
        wildcards.task,
        wildcards.method,
        wildcards.seed,
        "test",
    )


def submission_tasks(wildcards):
    """Tasks of the benchmark in the config whose test split is available."""
    return [t for t in GRID.tasks(wildcards.benchmark) if not GRID.missing_test_data(t)]


def submission_predictions(wildcards):
    return [
        paths.fill(paths.TEST_PREDICTIONS, task=t.name, **wildcards)
        for t in submission_tasks(wildcards)
    ]
