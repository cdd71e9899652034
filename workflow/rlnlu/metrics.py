"""The benchmarks' official metrics (scikit-learn and scipy), benchmark averages, and
bootstrap confidence intervals.

Invalid answers are scored as wrong: for a classification task the prediction becomes a
class other than the gold one (for binary tasks, the opposite class); for STS-B the end of
the 0-5 scale farthest from the gold score. The paper instead filled invalid answers with
a random label; that is `invalid_policy="random"`.
"""
from __future__ import annotations

import random
import re
import string
from collections import Counter, defaultdict

import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

from .tasks import Task

METRIC_TITLES = {"accuracy": "acc", "mcc": "mcc", "f1": "f1", "macro_f1": "macro_f1",
                 "pearson": "pearson", "spearman": "spearman", "f1a": "f1a",
                 "exact_match": "em"}


def fill_invalid(task: Task, predictions: list, golds: list, policy: str = "wrong",
                 seed: int = 0) -> list:
    """Replace invalid (None) predictions so that the official metric can be computed."""
    rng = random.Random(seed)
    filled = []
    for prediction, gold in zip(predictions, golds):
        if prediction is not None:
            filled.append(prediction)
        elif task.is_regression:
            filled.append(rng.uniform(0, 5) if policy == "random"
                          else (0.0 if float(gold) >= 2.5 else 5.0))
        elif policy == "random":
            filled.append(rng.choice(task.classes))
        else:
            others = [c for c in task.classes if c != gold]
            filled.append(others[task.classes.index(gold) % len(others)])
    return filled


def _group_exact_match(groups: list, predictions: list, golds: list) -> float:
    """MultiRC EM: a question counts only if every one of its answer options is right."""
    correct = defaultdict(lambda: True)
    for group, prediction, gold in zip(groups, predictions, golds):
        correct[group] &= prediction == gold
    return float(np.mean(list(correct.values())))


def _normalize_answer(text: str) -> list[str]:
    """ReCoRD's (SQuAD's) answer normalization: lowercase, no punctuation, articles or
    extra whitespace."""
    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return text.split()


def _token_f1(prediction: str, gold: str) -> float:
    predicted, expected = _normalize_answer(prediction), _normalize_answer(gold)
    common = sum((Counter(predicted) & Counter(expected)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(predicted), common / len(expected)
    return 2 * precision * recall / (precision + recall)


def record_scores(rows: list[dict], predictions: list) -> dict[str, float]:
    """ReCoRD: per query, the predicted entity is the first candidate judged a fit; F1 and
    EM take the best match over the gold answers, then average over queries."""
    by_query: dict[str, dict] = {}
    for row, prediction in zip(rows, predictions):
        query = by_query.setdefault(row["group"], {"answers": row["answers"], "entity": ""})
        if prediction == "true" and not query["entity"]:
            query["entity"] = row["fields"]["entity"]
    f1s, ems = [], []
    for query in by_query.values():
        f1s.append(max(_token_f1(query["entity"], a) for a in query["answers"]))
        ems.append(max(float(_normalize_answer(query["entity"]) == _normalize_answer(a))
                       for a in query["answers"]))
    return {"f1": float(np.mean(f1s)), "exact_match": float(np.mean(ems))}


def compute_metrics(task: Task, rows: list[dict], predictions: list,
                    invalid_policy: str = "wrong", seed: int = 0) -> dict[str, float]:
    """The task's official metrics on a 0-100 scale. `rows` carry the gold `label` (and
    `group`, `answers` and `fields` where the task needs them); `predictions` hold parsed
    labels, None for invalid answers."""
    golds = [row["label"] for row in rows]
    filled = fill_invalid(task, predictions, golds, invalid_policy, seed)
    scores: dict[str, float] = {}
    if task.name == "record":
        scores = record_scores(rows, filled)
    for metric in task.metrics:
        if metric in scores:
            continue
        if metric == "accuracy":
            scores[metric] = accuracy_score(golds, filled)
        elif metric == "mcc":
            scores[metric] = matthews_corrcoef(golds, filled)
        elif metric in ("f1", "f1a"):  # binary F1 of the positive class
            positive = task.classes[-1] if task.name != "multirc" else "true"
            scores[metric] = f1_score(golds, filled, pos_label=positive, average="binary")
        elif metric == "macro_f1":
            scores[metric] = f1_score(golds, filled, average="macro", labels=list(task.classes))
        elif metric == "pearson":
            scores[metric] = _correlation(pearsonr, golds, filled)
        elif metric == "spearman":
            scores[metric] = _correlation(spearmanr, golds, filled)
        elif metric == "exact_match":
            scores[metric] = _group_exact_match([r["group"] for r in rows], filled, golds)
        else:
            raise ValueError(f"{task.key}: unknown metric {metric!r}")
    return {name: 100.0 * float(value) for name, value in scores.items()}


def _correlation(fn, golds, predictions) -> float:
    golds, predictions = np.asarray(golds, float), np.asarray(predictions, float)
    if np.ptp(golds) == 0 or np.ptp(predictions) == 0:  # exact: a float std need not be 0
        return 0.0  # undefined for a constant prediction; count it as no correlation
    return float(fn(golds, predictions)[0])


def task_score(scores: dict[str, float]) -> float:
    """One number per task: the mean of its metrics, as the GLUE/SuperGLUE leaderboards do."""
    return float(np.mean(list(scores.values())))


def bootstrap_interval(task: Task, rows: list[dict], predictions: list, resamples: int = 1000,
                       confidence: float = 0.95, seed: int = 0,
                       invalid_policy: str = "wrong") -> tuple[float, float]:
    """Percentile bootstrap interval of the task score, resampling whole groups (MultiRC
    questions, ReCoRD queries) or single examples."""
    members = defaultdict(list)
    for position, row in enumerate(rows):
        members[row.get("group", position)].append(position)
    groups = list(members.values())
    rng = np.random.default_rng(seed)
    samples = []
    for _ in range(resamples):
        sample_rows, sample_predictions = [], []
        for draw, g in enumerate(rng.integers(0, len(groups), len(groups))):
            for p in groups[g]:
                # a group drawn twice counts as two groups
                sample_rows.append(dict(rows[p], group=(draw, rows[p].get("group"))))
                sample_predictions.append(predictions[p])
        samples.append(task_score(compute_metrics(
            task, sample_rows, sample_predictions, invalid_policy, seed)))
    alpha = (1 - confidence) / 2
    return float(np.quantile(samples, alpha)), float(np.quantile(samples, 1 - alpha))
