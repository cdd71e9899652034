"""Leaderboard submission files from test-split predictions of one (model, method).

The paper's numbers are GLUE/SuperGLUE test-server scores; this writes what the servers
take: GLUE's `<Task>.tsv` (index, prediction) and SuperGLUE's `<Task>.jsonl` (idx, label),
zipped with the files at the archive's root. Test answers that are invalid must still carry
a label, so they are filled as the paper did, with a seeded random label; the count of
filled answers per task is logged.
"""
from __future__ import annotations

import json
import logging
import zipfile
from collections import defaultdict

from .files import atomic_path, read_jsonl
from .metrics import fill_invalid
from .tasks import Task

log = logging.getLogger(__name__)

# GLUE's binary tasks take the class index; the NLI tasks and AX take the class name.
GLUE_INDEX_LABELS = {"cola", "sst2", "mrpc", "qqp", "wnli"}
GLUE_FILE_NAMES = {"mnli_m": "MNLI-m", "mnli_mm": "MNLI-mm"}
SUPERGLUE_FILE_NAMES = {"axb": "AX-b", "axg": "AX-g"}


def _labels(task: Task, predictions: list[dict], seed: int) -> list:
    labels = [p["prediction"] for p in predictions]
    invalid = sum(label is None for label in labels)
    if invalid:
        log.warning("%s: %d of %d test answers invalid, filled with random labels",
                    task.key, invalid, len(labels))
    # No gold labels on test: a placeholder gold keeps fill_invalid's random draw.
    return fill_invalid(task, labels, [task.classes[0] if task.classes else 0.0] * len(labels),
                        policy="random", seed=seed)


def glue_file(task: Task, predictions: list[dict], seed: int) -> tuple[str, str]:
    lines = ["index\tprediction"]
    for prediction, label in zip(predictions, _labels(task, predictions, seed)):
        if task.is_regression:
            value = f"{float(label):.3f}"
        elif task.name in GLUE_INDEX_LABELS:
            value = str(task.classes.index(label))
        else:
            value = label
        lines.append(f"{prediction['idx']}\t{value}")
    return GLUE_FILE_NAMES.get(task.name, task.title) + ".tsv", "\n".join(lines) + "\n"


def superglue_file(task: Task, predictions: list[dict], seed: int) -> tuple[str, str]:
    labels = _labels(task, predictions, seed)
    if task.name == "multirc":
        rows = _multirc_rows(predictions, labels)
    elif task.name == "record":
        rows = _record_rows(predictions, labels)
    elif task.name == "copa":
        rows = [{"idx": p["idx"], "label": task.classes.index(label)}
                for p, label in zip(predictions, labels)]
    else:
        rows = [{"idx": p["idx"], "label": label} for p, label in zip(predictions, labels)]
    name = SUPERGLUE_FILE_NAMES.get(task.name, task.title) + ".jsonl"
    return name, "".join(json.dumps(row) + "\n" for row in rows)


def _multirc_rows(predictions, labels) -> list[dict]:
    """MultiRC nests answers in questions in paragraphs; groups are "paragraph-question"."""
    paragraphs: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for prediction, label in zip(predictions, labels):
        paragraph, question = prediction["group"].split("-")
        paragraphs[paragraph][question].append({"idx": prediction["idx"],
                                                "label": int(label == "true")})
    return [{"idx": int(p), "passage": {"questions": [
                {"idx": int(q), "answers": answers} for q, answers in questions.items()]}}
            for p, questions in paragraphs.items()]


def _record_rows(predictions, labels) -> list[dict]:
    """ReCoRD: per query, the first candidate entity judged a fit (the first candidate if
    none is)."""
    chosen: dict[str, str] = {}
    for prediction, label in zip(predictions, labels):
        query, entity = prediction["group"], prediction["fields"]["entity"]
        if label == "true" and query not in chosen:
            chosen[query] = entity
        chosen.setdefault(query + "\0first", entity)
    queries = dict.fromkeys(p["group"] for p in predictions)
    return [{"idx": int(q) if q.isdigit() else q,
             "label": chosen.get(q, chosen[q + "\0first"])} for q in queries]


def write_submission(benchmark: str, tasks: list[Task], prediction_files: list[str],
                     out_zip: str, seed: int = 0) -> list[str]:
    writer = glue_file if benchmark == "glue" else superglue_file
    names = []
    with atomic_path(out_zip) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as archive:
        for task, path in zip(tasks, prediction_files):
            name, text = writer(task, read_jsonl(path), seed)
            archive.writestr(name, text)
            names.append(name)
    return names
