"""Aggregate cells into the paper's tables: a row per model x method, a column per task
metric, both benchmark averages, examples scored and invalid rate.

Two averages, each named for its rule:
- `average_leaderboard` (as the GLUE and SuperGLUE leaderboards define it): each task
  contributes one score, the mean of its metrics; MNLI's matched and mismatched sets
  together count as one task; the diagnostics (AX, AX-b, AX-g) are shown but not averaged.
  `tasks_in_average_leaderboard` says how many tasks it covers.
- `average_paper` (GLUE only; the BERT paper's rule, which the paper's reference rows
  follow): the mean of nine numbers, MNLI-m and MNLI-mm accuracy apart, QQP F1, STS-B
  Spearman, MRPC F1, CoLA MCC, SST-2, QNLI and RTE accuracy; WNLI and AX left out.
  `numbers_in_average_paper` says how many of the nine it covers.
A row with several seeds shows each number's mean over them, and beside it, in a column
named with `_sd`, their standard deviation (ddof 1; an average's over its per-seed values);
the Markdown table writes the two as 'mean ± sd'.
A task without data is shown as 'no data' and left out, so partial averages are never
mistaken for full ones. The paper's reference rows are GLUE test-server numbers, while
this suite's cells are scored on the dev splits.

A second table gives the parser effect: each cell's score under the suite's strict parser
and under the paper's lenient one (with its random fill-in), from the same generations.

`average_leaderboard_ci95` is the half-width of that average's 95% interval, from the tasks'
bootstrap intervals: tasks are scored on separate examples, so their errors are independent
and the average's half-width is the root of the summed squared task half-widths over the
number of tasks (an MNLI unit combines its two sets the same way).
"""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
import pandas as pd

from .files import atomic_path, read_json, write_text
from .metrics import METRIC_TITLES
from .tasks import get_task, tasks_of

NO_DATA = "no data"
SD = "_sd"  # the suffix of a column's standard deviation over seeds
REFERENCE_FILE = Path(__file__).resolve().parents[1] / "resources" / "paper_reference.csv"


# The paper's (BERT's) GLUE average: (task, metric) of each of its nine numbers.
PAPER_AVERAGE_NUMBERS = {
    "glue": (("mnli_m", "accuracy"), ("mnli_mm", "accuracy"), ("qqp", "f1"),
             ("stsb", "spearman"), ("mrpc", "f1"), ("cola", "mcc"), ("sst2", "accuracy"),
             ("qnli", "accuracy"), ("rte", "accuracy")),
}


def _average_unit(task_name: str) -> str:
    return "mnli" if task_name.startswith("mnli") else task_name


def average_leaderboard(benchmark: str, metrics_by_task: dict[str, dict]) -> tuple:
    """(average, tasks it covers) by the leaderboard's rule, over the tasks given."""
    units = defaultdict(list)
    for task in tasks_of(benchmark):
        if task.in_average and task.name in metrics_by_task:
            units[_average_unit(task.name)].append(np.mean(list(metrics_by_task[task.name].values())))
    scores = [np.mean(s) for s in units.values()]
    return (round(float(np.mean(scores)), 2) if scores else NO_DATA), len(scores)


def average_paper(benchmark: str, metrics_by_task: dict[str, dict]) -> tuple:
    """(average, numbers it covers) by the paper's rule; no such average for SuperGLUE."""
    numbers = [metrics_by_task[task][metric] for task, metric in
               PAPER_AVERAGE_NUMBERS.get(benchmark, ()) if task in metrics_by_task]
    return (round(float(np.mean(numbers)), 2) if numbers else NO_DATA), len(numbers)


def benchmark_table(benchmark: str, cells: list[dict]) -> pd.DataFrame:
    """One row per (model, method); seeds are averaged, and the row says how many."""
    by_row: dict[tuple, list[dict]] = defaultdict(list)
    for cell in cells:
        if cell["benchmark"] == benchmark:
            by_row[(cell["model"], cell["method"])].append(cell)
    rows = []
    for (model, method), members in sorted(by_row.items()):
        row = {"model": model, "method": method, "source": "this run",
               "seeds": len({c["seed"] for c in members})}
        metrics_by_task = {}
        unit_halves = defaultdict(list)
        examples, invalid_weighted = 0, 0.0
        for task in tasks_of(benchmark):
            task_cells = [c for c in members if c["task"] == task.name]
            if not task_cells:
                continue
            finished = [c for c in task_cells if c["status"] == "ok"]
            for metric in task.metrics:
                column = f"{task.name}_{METRIC_TITLES[metric]}"
                row[column] = (round(float(np.mean([c["metrics"][metric] for c in finished])), 2)
                               if finished else NO_DATA)
                _add_sd(row, column, [c["metrics"][metric] for c in finished])
            if not finished:
                continue
            metrics_by_task[task.name] = {metric: float(np.mean([c["metrics"][metric]
                                                                for c in finished]))
                                          for metric in task.metrics}
            if task.in_average:
                unit_halves[_average_unit(task.name)].append(
                    np.mean([(c["score_ci95"][1] - c["score_ci95"][0]) / 2 if "score_ci95" in c
                             else np.nan for c in finished]))
            examples += sum(c["examples"] for c in finished) // len(finished)
            invalid_weighted += sum(c["invalid_rate"] * c["examples"] for c in finished) / len(finished)
        row["average_leaderboard"], row["tasks_in_average_leaderboard"] = average_leaderboard(
            benchmark, metrics_by_task)
        halves = [np.sqrt(np.sum(np.square(h))) / len(h) for h in unit_halves.values()]
        row["average_leaderboard_ci95"] = (
            round(float(np.sqrt(np.sum(np.square(halves))) / len(halves)), 2)
            if halves and not np.isnan(halves).any() else NO_DATA)
        if benchmark in PAPER_AVERAGE_NUMBERS:
            row["average_paper"], row["numbers_in_average_paper"] = average_paper(
                benchmark, metrics_by_task)
        for column, average in (("average_leaderboard", average_leaderboard),
                                ("average_paper", average_paper)):
            if column in row:
                _add_sd(row, column, [average(benchmark, by_task)[0] for by_task in
                                      _metrics_by_seed(benchmark, members).values()])
        row["examples"] = examples
        row["invalid_rate"] = round(invalid_weighted / examples, 2) if examples else NO_DATA
        rows.append(row)
    table = pd.DataFrame(rows)
    table = table[[name for column in table.columns if not column.endswith(SD)
                   for name in (column, column + SD) if name in table.columns]]
    reference = pd.read_csv(REFERENCE_FILE)
    reference = reference[reference["benchmark"] == benchmark].drop(columns="benchmark")
    return pd.concat([table, reference], ignore_index=True)


def _add_sd(row: dict, column: str, values: list) -> None:
    """`column`'s standard deviation over seeds, when there are several to spread."""
    values = [v for v in values if v != NO_DATA]
    if len(values) > 1:
        row[column + SD] = round(float(np.std(values, ddof=1)), 2)


def _metrics_by_seed(benchmark: str, cells: list[dict]) -> dict[int, dict[str, dict]]:
    """seed -> task -> its metrics, from a row's finished cells."""
    by_seed: dict[int, dict] = defaultdict(dict)
    for cell in cells:
        if cell["status"] == "ok":
            metrics = get_task(benchmark, cell["task"]).metrics
            by_seed[cell["seed"]][cell["task"]] = {m: cell["metrics"][m] for m in metrics}
    return by_seed


def parser_effect_table(benchmark: str, cells: list[dict]) -> pd.DataFrame:
    """Per (model, method) and task: the score under the strict and the paper's parser
    (means over seeds) and their difference, paper minus strict."""
    by_row: dict[tuple, dict] = defaultdict(lambda: defaultdict(list))
    for cell in cells:
        if cell["benchmark"] == benchmark and cell["status"] == "ok":
            by_row[(cell["model"], cell["method"])][cell["task"]].append(cell["parsers"])
    rows = []
    for (model, method), by_task in sorted(by_row.items()):
        row = {"model": model, "method": method}
        for task in tasks_of(benchmark):
            if task.name not in by_task:
                continue
            strict, paper = (float(np.mean([p[name]["score"] for p in by_task[task.name]]))
                             for name in ("strict", "paper"))
            row[f"{task.name}_strict"] = round(strict, 2)
            row[f"{task.name}_paper"] = round(paper, 2)
            row[f"{task.name}_effect"] = round(paper - strict, 2)
        rows.append(row)
    return pd.DataFrame(rows)


def _write(table: pd.DataFrame, csv_path, md_path) -> None:
    with atomic_path(csv_path) as tmp:
        table.to_csv(tmp, index=False)
    shown = table.astype(object).fillna("")
    for sd in (column for column in table.columns if column.endswith(SD)):
        mean, spread = sd.removesuffix(SD), table[sd].notna()
        shown.loc[spread, mean] = [f"{m} ± {s}" for m, s in zip(table.loc[spread, mean],
                                                                 table.loc[spread, sd])]
        shown = shown.drop(columns=sd)
    write_text(md_path, shown.to_markdown(index=False) + "\n")


def write_tables(benchmark: str, metric_files: list[str], csv_path: str, md_path: str,
                 parser_csv: str | None = None, parser_md: str | None = None) -> pd.DataFrame:
    cells = [read_json(path) for path in metric_files]
    for cell in cells:
        get_task(cell["benchmark"], cell["task"])  # a stray file from a renamed task fails loudly
    table = benchmark_table(benchmark, cells)
    _write(table, csv_path, md_path)
    if parser_csv:
        _write(parser_effect_table(benchmark, cells), parser_csv, parser_md)
    return table
