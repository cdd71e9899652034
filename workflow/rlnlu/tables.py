"""Aggregate cells into the paper's tables: a row per model x method, a column per task
metric, the benchmark average, examples scored and invalid rate.

Average rule (as the GLUE and SuperGLUE leaderboards define it): each task contributes
one score, the mean of its metrics; MNLI's matched and mismatched sets together count as
one task (their mean); the diagnostics (AX, AX-b, AX-g) are shown but not averaged. A task
without data is shown as 'no data' and left out; `tasks_in_average` says how many tasks
the average covers, so partial averages are never mistaken for full ones.

`average_ci95` is the half-width of the average's 95% interval, from the tasks' bootstrap
intervals: tasks are scored on separate examples, so their errors are independent and the
average's half-width is the root of the summed squared task half-widths over the number of
tasks (an MNLI unit combines its two sets the same way).
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
REFERENCE_FILE = Path(__file__).resolve().parents[1] / "resources" / "paper_reference.csv"


def _average_unit(task_name: str) -> str:
    return "mnli" if task_name.startswith("mnli") else task_name


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
        unit_scores, unit_halves = defaultdict(list), defaultdict(list)
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
            if not finished:
                continue
            if task.in_average:
                unit_scores[_average_unit(task.name)].append(
                    np.mean([c["score"] for c in finished]))
                unit_halves[_average_unit(task.name)].append(
                    np.mean([(c["score_ci95"][1] - c["score_ci95"][0]) / 2 if "score_ci95" in c
                             else np.nan for c in finished]))
            examples += sum(c["examples"] for c in finished) // len(finished)
            invalid_weighted += sum(c["invalid_rate"] * c["examples"] for c in finished) / len(finished)
        scores = [np.mean(s) for s in unit_scores.values()]
        row["average"] = round(float(np.mean(scores)), 2) if scores else NO_DATA
        halves = [np.sqrt(np.sum(np.square(h))) / len(h) for h in unit_halves.values()]
        row["average_ci95"] = (round(float(np.sqrt(np.sum(np.square(halves))) / len(halves)), 2)
                               if halves and not np.isnan(halves).any() else NO_DATA)
        row["tasks_in_average"] = len(scores)
        row["examples"] = examples
        row["invalid_rate"] = round(invalid_weighted / examples, 2) if examples else NO_DATA
        rows.append(row)
    table = pd.DataFrame(rows)
    reference = pd.read_csv(REFERENCE_FILE)
    reference = reference[reference["benchmark"] == benchmark].drop(columns="benchmark")
    return pd.concat([table, reference], ignore_index=True)


def write_tables(benchmark: str, metric_files: list[str], csv_path: str, md_path: str) -> pd.DataFrame:
    cells = [read_json(path) for path in metric_files]
    for cell in cells:
        get_task(cell["benchmark"], cell["task"])  # a stray file from a renamed task fails loudly
    table = benchmark_table(benchmark, cells)
    with atomic_path(csv_path) as tmp:
        table.to_csv(tmp, index=False)
    write_text(md_path, table.astype(object).fillna("").to_markdown(index=False) + "\n")
    return table
