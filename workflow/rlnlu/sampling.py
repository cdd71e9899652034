"""Every seeded draw of rows that is not a model's: the evaluation subsample (the same
examples for every method), training subsamples, the multi-task mix, and the order SFT
sees its rows in. Few-shot demonstrations are drawn in `prompts`.
"""
from __future__ import annotations

import math
import random

from .settings import MIXING_RULES


def subsample(records: list[dict], limit: int | None, seed: int) -> list[dict]:
    """A seeded subsample of at most `limit` items, keeping whole groups (MultiRC questions,
    ReCoRD queries) together so per-question metrics stay meaningful. Order is preserved."""
    if not limit:
        return records
    keys = list(dict.fromkeys(r.get("group", r["idx"]) for r in records))
    if len(keys) <= limit:
        return records
    chosen = set(random.Random(seed).sample(keys, limit))
    return [r for r in records if r.get("group", r["idx"]) in chosen]


def mix_tasks(rows_by_task: dict[str, list[dict]], rule: str, seed: int,
              cap_per_task: int | None = None, lines_per_task: int = 30000) -> list[dict]:
    """Training rows for one multi-task adapter, shuffled with `seed`.

    `cap_per_task` first takes a seeded subsample of each larger task. Then "upsample" draws
    every smaller task with replacement up to the size of the largest, so small tasks are not
    drowned out; "repeat" is the paper's released rule (its sft.py, `lines_per_file`): a task
    with fewer than `lines_per_task` rows is repeated whole, ceil(lines_per_task / rows)
    times; "proportional" keeps each task as it is.
    """
    if rule not in MIXING_RULES:
        raise ValueError(f"mixing rule must be one of {', '.join(MIXING_RULES)}, not {rule!r}")
    rng = random.Random(seed)
    capped = {task: subsample_rows(rows, cap_per_task, rng) for task, rows in sorted(rows_by_task.items())}
    target = max((len(rows) for rows in capped.values()), default=0)
    mixed = []
    for rows in capped.values():
        if rule == "upsample" and rows:
            rows = rows + rng.choices(rows, k=target - len(rows))
        elif rule == "repeat" and rows and len(rows) < lines_per_task:
            rows = rows * math.ceil(lines_per_task / len(rows))
        mixed.extend(rows)
    rng.shuffle(mixed)
    return mixed


def subsample_rows(rows: list[dict], limit: int | None, rng: random.Random) -> list[dict]:
    """At most `limit` training rows, drawn without replacement by `rng`, in their original
    order (rows, not questions: a training row is one answer to learn)."""
    if not limit or len(rows) <= limit:
        return list(rows)
    return [rows[i] for i in sorted(rng.sample(range(len(rows)), limit))]


def stratified_order(rows: list[dict], seed: int) -> list[dict]:
    """The rows shuffled with `seed`, then interleaved by completion (the gold answer) so that
    each answer is spread evenly over the run: any run of consecutive rows, such as a batch,
    holds the answers in about their overall proportions."""
    rng = random.Random(seed)
    by_answer: dict[str, list[dict]] = {}
    for row in rng.sample(rows, len(rows)):
        by_answer.setdefault(row["completion"], []).append(row)
    # The k-th of n rows with one answer sits at (k + u) / n of the run, u a seeded offset.
    placed = [((k + offset) / len(group), rng.random(), row)
              for group, offset in ((g, rng.random()) for g in by_answer.values())
              for k, row in enumerate(group)]
    return [row for *_, row in sorted(placed, key=lambda item: item[:2])]
