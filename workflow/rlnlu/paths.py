"""Every file the workflow writes or reads, written once. Each path is a pattern whose
`{fields}` are Snakemake wildcards in the rules; the planner fills them in with
`fill(pattern, **values)`, which leaves fields it is not given as wildcards."""
from __future__ import annotations

from .methods import get_method

# One adapter per benchmark for the multi-task methods sits in this folder instead of a task's.
ALL_TASKS = "all_tasks"

RECORDS = "resources/data/{benchmark}/{task}/{split}.jsonl"
EMBEDDED_MODEL = "resources/models/{model}"  # an embedded GGUF, converted once
PAPER_CODE = "resources/paper_code/prompt.py"
ZERO_SHOT_PROMPTS = "results/prompts/{model}/{benchmark}/{task}/zero_shot/{split}.jsonl"
FEW_SHOT_PROMPTS = "results/prompts/{model}/{benchmark}/{task}/few_shot/seed{seed}/{split}.jsonl"
CELL = "{model}/{benchmark}/{task}/{method}/seed{seed}"
PREDICTIONS = f"results/predictions/{CELL}.jsonl"
RUN_RECORD = f"results/predictions/{CELL}.run.json"
TEST_PREDICTIONS = f"results/test_predictions/{CELL}.jsonl"
TEST_RUN_RECORD = f"results/test_predictions/{CELL}.run.json"
METRICS = f"results/metrics/{CELL}.json"
SUBMISSION = "results/submissions/{model}/{method}/seed{seed}/{benchmark}.zip"
TABLE = "results/tables/{benchmark}.csv"
TABLE_MARKDOWN = "results/tables/{benchmark}.md"
PARSER_EFFECT = "results/tables/{benchmark}_parser_effect.csv"
PARSER_EFFECT_MARKDOWN = "results/tables/{benchmark}_parser_effect.md"
SCORES_PLOT = "results/plots/{benchmark}_scores.png"


class _KeepMissing(dict):
    def __missing__(self, key: str) -> str:
        return "{" + key + "}"


def fill(pattern: str, **values) -> str:
    """`pattern` with the given fields filled in; the others stay `{field}` wildcards."""
    return pattern.format_map(_KeepMissing(values))


def prompts(method: str) -> str:
    """The prompts a method is scored on: few-shot's are drawn per seed, the rest share
    zero-shot's."""
    return FEW_SHOT_PROMPTS if get_method(method).prompt_style == "few_shot" else ZERO_SHOT_PROMPTS


def _training_run(method: str) -> str:
    owner = ALL_TASKS if get_method(method).multi_task else "{task}"
    return f"{{model}}/{{benchmark}}/{owner}/{method}/seed{{seed}}"


def adapter(method: str) -> str:
    return f"results/adapters/{_training_run(method)}"


def curve(method: str) -> str:
    return f"results/curves/{_training_run(method)}.csv"


def curve_plot(method: str) -> str:
    return f"results/plots/curves/{_training_run(method)}.png"


def checkpoints(method: str) -> str:
    """Training checkpoints: outside the declared outputs, so that Snakemake does not delete
    them with an incomplete adapter and a rerun resumes from them."""
    return f"resources/checkpoints/{_training_run(method)}"
