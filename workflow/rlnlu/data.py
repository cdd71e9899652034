"""Read GLUE and SuperGLUE splits into canonical records, from the official files or the hub.

A canonical record is one JSON-able dict:

    {"idx": <official row index, int or str>,
     "fields": {<each name in task.fields>: str},
     "label": <one of task.classes, a float for STS-B, or None where the split is unlabelled>}

MultiRC yields one record per answer option and ReCoRD one per candidate entity; both add a
"group" key (the question the record belongs to), and ReCoRD an "answers" list of gold strings.

Two sources give the same records: `local` reads the benchmarks' own files under
`data.local_dir` (`glue/<Task>/*.tsv`, `superglue/<Task>/*.jsonl`); `hub` reads the Hugging Face
copies. Every problem in a file is reported with its path and 1-based line number.
"""
from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Callable, Iterable, Iterator, NamedTuple

from . import files
from .tasks import Task

SOURCES = ("local", "hub")

# Benchmark folder names accepted under data.local_dir, in the order tried: ours, then the
# names the official download scripts and zips use.
_BENCHMARK_FOLDERS = {
    "glue": ("glue", "glue_data"),
    "superglue": ("superglue", "super_glue", "SuperGLUE"),
}

_HOW_TO_SUPPLY = ("set data.local_dir to a folder in the official layout "
                  "(glue/<Task>/<file>.tsv, superglue/<Task>/<file>.jsonl), or set data.source: hub")


class DataError(ValueError):
    """A split that cannot be read into canonical records; the message says where and why."""


class MissingDataError(DataError):
    """The requested split is not available from the chosen source."""


class _BadRow(ValueError):
    """A problem in one row; the caller adds the row's location."""


# ---------------------------------------------------------------- public API


def load_split(task: Task, split: str, source: str, local_dir: str | os.PathLike | None = None
               ) -> list[dict]:
    """Canonical records of `split` of `task`, read from `source` ("local" or "hub")."""
    task = _owner_of(task, split)
    if source == "local":
        return _load_local(task, split, local_dir)
    if source == "hub":
        return _load_hub(task, split)
    raise ValueError(f"unknown data source {source!r}; expected one of {SOURCES}")


def write_split(task: Task, split: str, source: str, local_dir, out_path) -> None:
    """Load a split and write its records as JSON lines; nothing is written if loading fails."""
    files.write_jsonl(out_path, load_split(task, split, source, local_dir))


def _owner_of(task: Task, split: str) -> Task:
    # Tasks without their own training data (MNLI-mm, the diagnostics) borrow another's.
    return task.train_task if split == "train" else task


# ---------------------------------------------------------------- local files


def _local_candidates(task: Task, split: str, local_dir) -> list[Path]:
    name = task.local_files[split]
    return [Path(local_dir) / folder / task.local_dir / name
            for folder in _BENCHMARK_FOLDERS[task.benchmark]]


def _find_local_file(task: Task, split: str, local_dir) -> Path | None:
    if not local_dir:
        return None
    return next((p for p in _local_candidates(task, split, local_dir) if p.is_file()), None)


def missing_data_message(task: Task, split: str, local_dir) -> str | None:
    """Why `split` of `task` cannot be read from `local_dir`, or None when its file is there."""
    task = _owner_of(task, split)
    if split not in task.local_files:
        return (f"{task.key} has no {split} split in the official files "
                f"(it has: {', '.join(task.local_files)})")
    if _find_local_file(task, split, local_dir) is not None:
        return None
    tried = ", ".join(map(str, _local_candidates(task, split, local_dir))) if local_dir \
        else "nothing (data.local_dir is not set)"
    if local_dir and not Path(local_dir).is_dir():
        tried += f" (data.local_dir {local_dir} itself does not exist)"
    return f"no {split} data for {task.key}: tried {tried}; {_HOW_TO_SUPPLY}"


def _load_local(task: Task, split: str, local_dir) -> list[dict]:
    if message := missing_data_message(task, split, local_dir):
        raise MissingDataError(message)
    path = _find_local_file(task, split, local_dir)
    # Labels are required outside test files; test files may carry them (the diagnostics do).
    labelled = split != "test"
    reader = _glue_rows if task.benchmark == "glue" else _superglue_rows
    return _checked(reader(task, path, labelled), f"{path}:1")


def _read_text(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")  # MRPC's files begin with a byte-order mark
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise DataError(f"{path}:{line}: not valid UTF-8 ({err.reason})") from None


# ---- GLUE TSVs


class _TsvLayout(NamedTuple):
    columns: dict  # canonical field -> column name in the header
    label: str  # label column; unlabelled test files lack it
    idx: str  # index column; files without one number their rows from 0, as the hub does


_NLI_PAIR = {"premise": "sentence1", "hypothesis": "sentence2"}
_GLUE_LAYOUTS = {
    "cola": _TsvLayout({"sentence": "sentence"}, "label", "index"),
    "sst2": _TsvLayout({"sentence": "sentence"}, "label", "index"),
    "mrpc": _TsvLayout({"sentence1": "#1 String", "sentence2": "#2 String"}, "Quality", "index"),
    "qqp": _TsvLayout({"question1": "question1", "question2": "question2"}, "is_duplicate", "id"),
    "stsb": _TsvLayout({"sentence1": "sentence1", "sentence2": "sentence2"}, "score", "index"),
    "mnli_m": _TsvLayout(_NLI_PAIR, "gold_label", "index"),
    "mnli_mm": _TsvLayout(_NLI_PAIR, "gold_label", "index"),
    "qnli": _TsvLayout({"question": "question", "sentence": "sentence"}, "label", "index"),
    "rte": _TsvLayout(_NLI_PAIR, "label", "index"),
    "wnli": _TsvLayout(_NLI_PAIR, "label", "index"),
    "ax": _TsvLayout({"premise": "Premise", "hypothesis": "Hypothesis"}, "Label", "index"),
}
# CoLA's train and dev files have no header row (its test file does).
_COLA_HEADER = ["source", "label", "original_label", "sentence"]


def _tsv_lines(path: Path) -> Iterator[tuple[int, list[str]]]:
    # Quoting off: QNLI and RTE contain bare '"' that would otherwise swallow tabs and lines.
    reader = csv.reader(io.StringIO(_read_text(path), newline=""),
                        delimiter="\t", quoting=csv.QUOTE_NONE)
    try:
        for cells in reader:
            yield reader.line_num, cells
    except csv.Error as err:
        raise DataError(f"{path}:{reader.line_num}: {err}") from None


def _glue_rows(task: Task, path: Path, labelled: bool) -> Iterator[tuple[str, dict]]:
    layout = _GLUE_LAYOUTS[task.name]
    lines = _tsv_lines(path)
    first = next(lines, None)
    if first is None:
        return
    header, body = first[1], lines
    if task.name == "cola" and "sentence" not in header:
        header, body = _COLA_HEADER, _prepend(first, lines)
    required = list(layout.columns.values()) + ([layout.label] if labelled else [])
    missing = [c for c in required if c not in header]
    if missing:
        raise DataError(f"{path}:1: missing column(s) {missing}; the header has {header}")

    def parse(numbered: tuple[int, list[str]]) -> Iterator[dict]:
        number, cells = numbered
        if len(cells) != len(header):
            raise _BadRow(f"expected {len(header)} tab-separated columns, found {len(cells)}")
        row = dict(zip(header, cells))
        yield {"idx": _official_idx(row.get(layout.idx, number)),
               "fields": {f: row[c] for f, c in layout.columns.items()},
               "label": _class_label(task, row[layout.label]) if layout.label in row else None}

    # Data rows are numbered from 0 for files without an index column.
    numbered_rows = ((f"{path}:{line}", (n, cells)) for n, (line, cells) in enumerate(body))
    yield from _parsed(numbered_rows, parse)


def _prepend(item, rest: Iterator) -> Iterator:
    yield item
    yield from rest


# ---- SuperGLUE JSON lines

# JSON key path per canonical field, where it is not the field's own name.
_SUPERGLUE_KEYS = {
    "wsc": {"span1_text": ("target", "span1_text"), "span2_text": ("target", "span2_text")},
    "axb": {"premise": ("sentence1",), "hypothesis": ("sentence2",)},
}


def _superglue_rows(task: Task, path: Path, labelled: bool) -> Iterator[tuple[str, dict]]:
    parse_object = {"multirc": _multirc_local, "record": _record_local}.get(task.name, _plain_local)

    def parse(line: str) -> Iterator[dict]:
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            raise _BadRow(f"not valid JSON ({err.msg})") from None
        if not isinstance(obj, dict):
            raise _BadRow("not a JSON object")
        return parse_object(task, obj, labelled)

    lines = _read_text(path).split("\n")
    if lines[-1] == "":
        lines.pop()  # a final newline ends the last row; it does not start another
    yield from _parsed(((f"{path}:{n}", line) for n, line in enumerate(lines, start=1)), parse)


def _plain_local(task: Task, obj: dict, labelled: bool) -> Iterator[dict]:
    keys = _SUPERGLUE_KEYS.get(task.name, {})
    fields = {f: _text(_lookup(obj, keys.get(f, (f,)))) for f in task.fields}
    yield {"idx": _official_idx(obj["idx"]), "fields": fields, "label": _label_of(task, obj, labelled)}


def _multirc_local(task: Task, obj: dict, labelled: bool) -> Iterator[dict]:
    passage = obj["passage"]
    for question in passage["questions"]:
        for answer in question["answers"]:
            yield _multirc_record(task, obj["idx"], question["idx"], answer["idx"], passage["text"],
                                  question["question"], answer["text"],
                                  _label_of(task, answer, labelled))


def _record_local(task: Task, obj: dict, labelled: bool) -> Iterator[dict]:
    passage = obj["passage"]
    text = _text(passage["text"])
    # Entity offsets are inclusive at both ends.
    spans = sorted(passage["entities"], key=lambda e: e["start"])
    entities = [text[e["start"]:e["end"] + 1] for e in spans]
    for qa in obj["qas"]:
        answers = qa["answers"] if labelled else qa.get("answers", [])
        yield from _record_candidates(qa["idx"], text, qa["query"], entities,
                                      [a["text"] for a in answers])


def _lookup(obj: dict, keys: tuple[str, ...]):
    for key in keys:
        obj = obj[key]
    return obj


def _label_of(task: Task, obj: dict, labelled: bool):
    # The diagnostics are "test" files that do carry labels, so labels are optional only there.
    if labelled or "label" in obj:
        return _class_label(task, obj["label"])
    return None


# ---------------------------------------------------------------- hub


# Hub column per canonical field, where it is not the field's own name.
_HUB_COLUMNS = {
    "glue/rte": _NLI_PAIR,
    "glue/wnli": _NLI_PAIR,
    "superglue/axb": _NLI_PAIR,
}


def _load_hub(task: Task, split: str) -> list[dict]:
    if split not in task.hub_splits:
        raise MissingDataError(f"{task.key} has no {split} split on the hub "
                               f"(it has: {', '.join(task.hub_splits)})")
    import datasets  # deferred: only this source needs the (slow to import) hub client

    hub_split = task.hub_splits[split]
    try:
        rows = datasets.load_dataset(task.hub_path, task.hub_config, split=hub_split)
    except OSError as err:  # ConnectionError (offline, no network), a missing cache entry
        raise MissingDataError(_hub_unreachable(task, hub_split, err)) from None
    source = f"hub {task.hub_path} ({task.hub_config}, split {hub_split})"
    parse_row = {"multirc": _multirc_hub, "record": _record_hub}.get(task.name, _plain_hub)
    numbered_rows = ((f"{source} row {n}", row) for n, row in enumerate(rows))
    return _checked(_parsed(numbered_rows, lambda row: parse_row(task, row)), source)


def _hub_unreachable(task: Task, hub_split: str, err: Exception) -> str:
    offline = [name for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
               if os.environ.get(name, "").lower() in ("1", "true", "yes", "on")]
    why = (f"{' and '.join(offline)} {'is' if len(offline) == 1 else 'are'} set and it is not "
           f"in the local cache (HF_HOME)" if offline else "the hub cannot be reached")
    return (f"cannot load {task.hub_path} ({task.hub_config}, split {hub_split}) for {task.key} "
            f"with data.source: hub: {why} ({type(err).__name__}: {err}). Run once with network "
            f"access to fill the cache, or set data.source: local and data.local_dir to a copy "
            f"in the official layout (as configs/local-data.yaml does)")


def _plain_hub(task: Task, row: dict) -> Iterator[dict]:
    columns = _HUB_COLUMNS.get(task.key, {})
    yield {"idx": _official_idx(row["idx"]),
           "fields": {f: _text(row[columns.get(f, f)]) for f in task.fields},
           "label": _hub_label(task, row["label"])}


def _multirc_hub(task: Task, row: dict) -> Iterator[dict]:
    idx = row["idx"]
    yield _multirc_record(task, idx["paragraph"], idx["question"], idx["answer"], row["paragraph"],
                          row["question"], row["answer"], _hub_label(task, row["label"]))


def _record_hub(task: Task, row: dict) -> Iterator[dict]:
    # `entities` is an unordered set on the hub; `entity_spans`, where present, keeps passage order
    # (a Sequence of dicts arrives as a dict of lists, a list of dicts as is).
    spans = row.get("entity_spans")
    if isinstance(spans, dict):
        entities = spans["text"]
    else:
        entities = [s["text"] for s in spans] if spans else row["entities"]
    yield from _record_candidates(row["idx"]["query"], row["passage"], row["query"], entities,
                                  row["answers"])


def _hub_label(task: Task, raw):
    return None if raw == -1 else _class_label(task, raw)  # the hub marks unlabelled rows -1


# ---------------------------------------------------------------- shared record building


def _multirc_record(task, paragraph_idx, question_idx, answer_idx, paragraph, question, answer,
                    label) -> dict:
    return {"idx": _official_idx(answer_idx), "group": f"{paragraph_idx}-{question_idx}",
            "fields": {"paragraph": _text(paragraph), "question": _text(question),
                       "answer": _text(answer)},
            "label": label}


def _record_candidates(query_idx, passage: str, query: str, entities: Iterable[str],
                       answers: Iterable[str]) -> Iterator[dict]:
    # Sorted unique answers, as the hub gives them; no answers means an unlabelled test query.
    gold = sorted({_text(a) for a in answers})
    for k, entity in enumerate(dict.fromkeys(entities)):  # dedupe, keeping passage order
        yield {"idx": f"{query_idx}-{k}", "group": str(query_idx),
               "fields": {"passage": _text(passage), "query": _text(query), "entity": _text(entity)},
               "label": ("true" if entity in gold else "false") if gold else None,
               "answers": gold}


def _class_label(task: Task, raw):
    """Map a raw label (class name, boolean, or integer position) onto task.classes."""
    if task.is_regression:
        try:
            return float(raw)
        except (TypeError, ValueError):
            raise _BadRow(f"score {raw!r} is not a number") from None
    if isinstance(raw, bool):
        raw = "true" if raw else "false"
    if isinstance(raw, str) and raw in task.classes:
        return raw
    if isinstance(raw, str) and raw.isascii() and raw.isdigit():
        raw = int(raw)  # GLUE writes binary labels as 0/1
    if isinstance(raw, int) and 0 <= raw < len(task.classes):
        return task.classes[raw]
    raise _BadRow(f"unknown label {raw!r}; {task.key} labels are {list(task.classes)}")


def _official_idx(raw):
    # TSV cells and AX-b's JSON give indices as digit strings; the hub gives integers.
    if isinstance(raw, str) and raw.isascii() and raw.isdigit():
        return int(raw)
    if isinstance(raw, (int, str)) and not isinstance(raw, bool):
        return raw
    raise _BadRow(f"idx {raw!r} is neither an integer nor a string")


def _text(value) -> str:
    if not isinstance(value, str):
        raise _BadRow(f"expected text, found {value!r}")
    return value


def _parsed(numbered_rows: Iterable[tuple[str, object]],
            parse: Callable[[object], Iterable[dict]]) -> Iterator[tuple[str, dict]]:
    """Parse each (location, raw row) into records, prefixing any problem with its location."""
    for where, raw in numbered_rows:
        try:
            for record in parse(raw):
                yield where, record
        except KeyError as err:
            raise DataError(f"{where}: missing key {err.args[0]!r}") from None
        except (_BadRow, TypeError) as err:
            raise DataError(f"{where}: {err}") from None


def _checked(located: Iterable[tuple[str, dict]], start: str) -> list[dict]:
    """Collect records, rejecting a duplicated idx and a split with no rows at all."""
    records, first_seen = [], {}
    for where, record in located:
        if record["idx"] in first_seen:
            raise DataError(f"{where}: duplicate idx {record['idx']!r} "
                            f"(first at {first_seen[record['idx']]})")
        first_seen[record["idx"]] = where
        records.append(record)
    if not records:
        raise DataError(f"{start}: no data rows (empty file or header only)")
    return records
