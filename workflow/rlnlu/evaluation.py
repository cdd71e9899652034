"""Score one cell: generate answers for its prompts, parse them strictly, and compute the
official metrics with their bootstrap interval and the invalid rate."""
from __future__ import annotations

import logging

from .answers import parse_answer
from .generation import generate_answers
from .metrics import bootstrap_interval, compute_metrics, task_score
from .tasks import Task

log = logging.getLogger(__name__)


def predict(task: Task, model, tokenizer, prompt_rows: list[dict], batch_size: int,
            max_new_tokens: int) -> list[dict]:
    """Per-example predictions with the raw generation kept beside the parsed label."""
    generations = generate_answers(model, tokenizer, [r["prompt"] for r in prompt_rows],
                                   batch_size=batch_size, max_new_tokens=max_new_tokens,
                                   desc=f"{task.key}")
    predictions = []
    for row, generation in zip(prompt_rows, generations):
        answer = parse_answer(task, generation)
        kept = {k: v for k, v in row.items() if k not in ("prompt", "completion")}
        predictions.append(dict(kept, generation=generation, prediction=answer.label,
                                valid=answer.valid, closed=answer.closed))
    return predictions


def score(task: Task, predictions: list[dict], invalid_policy: str = "wrong", seed: int = 0,
          bootstrap_resamples: int = 1000) -> dict:
    labels = [p["prediction"] for p in predictions]
    scores = compute_metrics(task, predictions, labels, invalid_policy, seed)
    result = {
        "status": "ok",
        "metrics": scores,
        "score": task_score(scores),
        "examples": len(predictions),
        "invalid_rate": 100.0 * sum(not p["valid"] for p in predictions) / len(predictions),
        "unclosed_rate": 100.0 * sum(not p["closed"] for p in predictions) / len(predictions),
    }
    if bootstrap_resamples:
        low, high = bootstrap_interval(task, predictions, labels, bootstrap_resamples,
                                       seed=seed, invalid_policy=invalid_policy)
        result["score_ci95"] = [low, high]
    return result
