"""Score one cell: generate answers for its prompts, read them with both parsers (the
suite's strict one and the paper's lenient one with its seeded random fill-in), and compute
the official metrics with their bootstrap interval under each. The protocol names the parser
of the cell's headline score; the other's score sits beside it, so the parser effect of a
cell is known without generating again.

Predictions are checked before they are scored: each row says its position and how many
rows the file had, and its stored label must be what its generation says. A file cut short
or altered fails with its path and line instead of giving a number."""
from __future__ import annotations

import logging

from . import paper_answers
from .answers import parse_answer
from .generation import generate_answers
from .metrics import bootstrap_interval, compute_metrics, task_score
from .protocols import PROTOCOLS, Decoding, Protocol
from .tasks import Task

log = logging.getLogger(__name__)


def predict(task: Task, model, tokenizer, prompt_rows: list[dict], batch_size: int,
            max_new_tokens: int, decoding: Decoding = PROTOCOLS["suite"].decoding,
            seed: int = 0) -> list[dict]:
    """Per-example predictions with the raw generation kept beside the strictly parsed
    label (the paper's parser reads the same generation when the cell is scored)."""
    generations = generate_answers(model, tokenizer, [r["prompt"] for r in prompt_rows],
                                   batch_size=batch_size, max_new_tokens=max_new_tokens,
                                   desc=f"{task.key}", decoding=decoding, seed=seed)
    predictions = []
    for position, (row, generation) in enumerate(zip(prompt_rows, generations), start=1):
        answer = parse_answer(task, generation)
        kept = {k: v for k, v in row.items() if k not in ("prompt", "completion")}
        predictions.append(dict(kept, generation=generation, prediction=answer.label,
                                valid=answer.valid, closed=answer.closed,
                                position=position, of=len(prompt_rows)))
    return predictions


def check_predictions(task: Task, predictions: list[dict]) -> None:
    """Raise a ValueError naming the file and line (for rows from `files.read_jsonl`) of the
    first prediction row that is incomplete, out of place, or disagrees with its own
    generation; and if rows are missing."""
    def where(i: int) -> str:
        return predictions.where(i) if hasattr(predictions, "where") else f"predictions row {i + 1}"

    source = getattr(predictions, "path", None)
    remedy = (f"rerun the cell's evaluation (`snakemake --forcerun {source}`), or delete the "
              f"file" if source else "rerun the cell's evaluation")
    source = source or "the predictions"
    if not predictions:
        raise ValueError(f"{source}: no predictions; {remedy}")
    total = predictions[0].get("of")
    for i, row in enumerate(predictions):
        missing = [k for k in ("generation", "prediction", "valid", "closed", "label")
                   if k not in row]
        if missing:
            raise ValueError(f"{where(i)}: missing {', '.join(missing)}: the file was altered; "
                             f"{remedy}")
        if "of" in row and (row.get("position") != i + 1 or row["of"] != total):
            raise ValueError(f"{where(i)}: row {row.get('position')} of {row['of']} where row "
                             f"{i + 1} of {total} belongs: rows are missing or out of order; "
                             f"{remedy}")
        gold = row["label"]
        if task.is_regression:
            sound_gold = isinstance(gold, (int, float)) and not isinstance(gold, bool)
        else:
            sound_gold = gold in task.classes
        if not sound_gold:
            raise ValueError(f"{where(i)}: gold label {gold!r} is not one of {task.key}'s "
                             f"labels; {remedy}")
        if not isinstance(row["generation"], str):
            raise ValueError(f"{where(i)}: the generation is not text; {remedy}")
        answer = parse_answer(task, row["generation"])
        if (answer.label, answer.valid) != (row["prediction"], row["valid"]):
            raise ValueError(
                f"{where(i)}: stored prediction {row['prediction']!r} (valid: {row['valid']!r}) "
                f"is not what its generation says ({answer.label!r}): the file was altered, or "
                f"written by an older answer parser; {remedy}")
    if total is not None and len(predictions) != total:
        raise ValueError(f"{source}: {len(predictions)} rows, but its rows say {total}: the "
                         f"file was cut short; {remedy}")


def _parser_result(task: Task, predictions: list[dict], labels: list, invalid_policy: str,
                   seed: int, bootstrap_resamples: int) -> dict:
    scores = compute_metrics(task, predictions, labels, invalid_policy, seed)
    result = {"metrics": scores, "score": task_score(scores)}
    if bootstrap_resamples:
        result["score_ci95"] = list(bootstrap_interval(task, predictions, labels,
                                                       bootstrap_resamples, seed=seed,
                                                       invalid_policy=invalid_policy))
    return result


def score(task: Task, predictions: list[dict], invalid_policy: str = "wrong", seed: int = 0,
          bootstrap_resamples: int = 1000, protocol: Protocol = PROTOCOLS["suite"]) -> dict:
    """The cell's metrics under both parsers; the protocol's parser gives the headline.
    `invalid_rate` counts answers the strict parser rejects, `unread_rate` those the paper's
    parser could not read and filled at random."""
    check_predictions(task, predictions)
    generations = [p["generation"] for p in predictions]
    unread = sum(paper_answers.parse(task, g) is None for g in generations)
    parsers = {
        "strict": dict(_parser_result(task, predictions, [p["prediction"] for p in predictions],
                                      invalid_policy, seed, bootstrap_resamples),
                       invalid_rate=100.0 * sum(not p["valid"] for p in predictions)
                       / len(predictions)),
        "paper": dict(_parser_result(task, predictions,
                                     paper_answers.labels_with_fill_in(task, generations, seed),
                                     invalid_policy, seed, bootstrap_resamples),
                      unread_rate=100.0 * unread / len(predictions)),
    }
    headline = parsers[protocol.parser]
    return {
        "status": "ok",
        "parser": protocol.parser,
        **{key: headline[key] for key in ("metrics", "score", "score_ci95") if key in headline},
        "examples": len(predictions),
        "invalid_rate": parsers["strict"]["invalid_rate"],
        "unclosed_rate": 100.0 * sum(not p["closed"] for p in predictions) / len(predictions),
        "parsers": parsers,
    }
