"""Tests of rlnlu.data: the real GLUE/SuperGLUE files, small official-format files for the tasks
too large to keep, malformed rows, missing splits, and the hub path against the local one."""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import pytest

from rlnlu import files
from rlnlu.data import (DataError, MissingDataError, load_split, missing_data_message,
                        write_split)
from rlnlu.tasks import get_task

REAL = Path(__file__).resolve().parents[1].parent / "shared" / "data"
needs_real = pytest.mark.skipif(not REAL.is_dir(),
                                reason=f"the real GLUE/SuperGLUE files are not at {REAL}")


def task_of(key: str):
    return get_task(*key.split("/"))


@lru_cache(maxsize=None)
def real(key: str, split: str) -> list[dict]:
    return load_split(task_of(key), split, "local", REAL)


def put(root: Path, relative: str, content: str | bytes) -> Path:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
    return path


def jsonl(*objects) -> str:
    return "".join(json.dumps(o) + "\n" for o in objects)


# ---------------------------------------------------------------- the real files

# Row counts from /work/shared/data/README.md (MultiRC: answer options).
REAL_COUNTS = {
    "glue/cola": (8551, 1043, 1063), "glue/sst2": (67349, 872, 1821),
    "glue/mrpc": (3668, 408, 1725), "glue/stsb": (5749, 1500, 1379),
    "glue/qnli": (None, 5463, 5463), "glue/rte": (2490, 277, 3000),
    "glue/wnli": (635, 71, 146), "glue/ax": (None, None, 1104),
    "superglue/boolq": (None, 3270, 3245), "superglue/cb": (250, 56, 250),
    "superglue/copa": (400, 100, 500), "superglue/multirc": (27243, 4848, 9693),
    "superglue/rte": (2490, 277, 3000), "superglue/wic": (5428, 638, 1400),
    "superglue/wsc": (554, 104, 146), "superglue/axb": (None, None, 1104),
    "superglue/axg": (None, None, 356),
}
REAL_SPLITS = [(key, split, count) for key, counts in REAL_COUNTS.items()
               for split, count in zip(("train", "validation", "test"), counts) if count]
LABELLED_TEST = {"glue/ax", "superglue/axb", "superglue/axg"}


@needs_real
@pytest.mark.parametrize("key,split,count", REAL_SPLITS, ids=[f"{k}-{s}" for k, s, _ in REAL_SPLITS])
def test_real_split_has_readme_count_and_full_label_set(key, split, count):
    task, records = task_of(key), real(key, split)
    assert len(records) == count
    assert all(list(r["fields"]) == list(task.fields) for r in records)
    assert all(isinstance(text, str) for r in records for text in r["fields"].values())
    labels = {r["label"] for r in records}
    if split == "test" and key not in LABELLED_TEST:
        assert labels == {None}
    elif task.is_regression:
        assert all(isinstance(x, float) and 0 <= x <= 5 for x in labels)
    else:
        assert labels == set(task.classes)


@needs_real
def test_real_quirks_survive():
    mrpc = real("glue/mrpc", "validation")
    assert mrpc[0]["fields"]["sentence1"].startswith("He said the foodservice pie business")
    assert mrpc[0]["label"] == "equivalent"
    assert not any(t.startswith("\ufeff") for r in mrpc for t in r["fields"].values())
    for key, split in [("glue/qnli", "validation"), ("glue/qnli", "test"), ("glue/rte", "train")]:
        assert any('"' in t for r in real(key, split) for t in r["fields"].values())
    assert '"quiescent"' in real("glue/qnli", "test")[0]["fields"]["sentence"]
    cola = real("glue/cola", "validation")[0]  # headerless file
    assert cola == {"idx": 0, "label": "acceptable",
                    "fields": {"sentence": "The sailors rode the breeze clear of the rocks."}}
    assert real("glue/cola", "test")[1]["idx"] == 1
    assert [r["label"] for r in real("glue/wnli", "validation")[:2]] == ["not_entailment", "entailment"]
    assert real("glue/stsb", "validation")[0]["label"] == 5.0
    assert real("superglue/axb", "test")[0]["idx"] == 0  # "0" in the file
    multirc = real("superglue/multirc", "validation")
    assert multirc[0]["group"] == "0-0" and len({r["group"] for r in multirc}) < len(multirc)


@needs_real
def test_real_superglue_rte_matches_glue_rte():
    # Same pairs and labels; SuperGLUE's copy dropped some quotation marks GLUE's keeps.
    def unquoted(record):
        return {name: text.replace('"', "") for name, text in record["fields"].items()}

    for split in ("train", "validation"):
        pairs = list(zip(real("glue/rte", split), real("superglue/rte", split)))
        assert all(g["idx"] == s["idx"] and g["label"] == s["label"] for g, s in pairs)
        assert all(unquoted(g) == unquoted(s) for g, s in pairs)


@needs_real
def test_train_split_follows_train_from():
    assert load_split(task_of("superglue/axb"), "train", "local", REAL) == real("superglue/rte", "train")
    assert missing_data_message(task_of("superglue/axg"), "train", REAL) is None
    assert missing_data_message(task_of("glue/qnli"), "train", REAL)


# ---------------------------------------------------------------- official-format files written here

MNLI_COLUMNS = ("index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\t"
                "sentence1_parse\tsentence2_parse\tsentence1\tsentence2")


def mnli_row(index, premise, hypothesis, *labels):
    return "\t".join([str(index), "31193", f"{index}n", "government", "( ( a ) )", "( b )",
                      "(ROOT (S a))", "(ROOT (S b))", premise, hypothesis, *labels]) + "\n"


def write_mnli(root: Path) -> None:
    put(root, "glue_data/MNLI/train.tsv", MNLI_COLUMNS + "\tlabel1\tgold_label\n"
        + mnli_row(0, 'He said "no".', "He refused.", "entailment", "entailment")
        + mnli_row(1, "It rained.", "It was dry.", "contradiction", "contradiction"))
    dev_head = MNLI_COLUMNS + "".join(f"\tlabel{i}" for i in range(1, 6)) + "\tgold_label\n"
    put(root, "glue_data/MNLI/dev_matched.tsv", dev_head
        + mnli_row(0, "A cat sat.", "An animal sat.", *["entailment"] * 5, "entailment"))
    put(root, "glue_data/MNLI/dev_mismatched.tsv", dev_head
        + mnli_row(0, "Tea is hot.", "Tea is cold.", *["neutral"] * 5, "neutral")
        + mnli_row(1, "Go.", "Stay.", "contradiction", "neutral", "contradiction", "", "",
                   "contradiction"))
    put(root, "glue_data/MNLI/test_matched.tsv", MNLI_COLUMNS + "\n" + mnli_row(0, "Hi.", "Hello."))


def test_mnli_from_glue_data_folder(tmp_path):
    write_mnli(tmp_path)
    m, mm, ax = task_of("glue/mnli_m"), task_of("glue/mnli_mm"), task_of("glue/ax")
    train = load_split(m, "train", "local", tmp_path)
    assert train[0] == {"idx": 0, "label": "entailment",
                        "fields": {"premise": 'He said "no".', "hypothesis": "He refused."}}
    assert load_split(mm, "train", "local", tmp_path) == train == load_split(ax, "train", "local", tmp_path)
    assert [r["label"] for r in load_split(mm, "validation", "local", tmp_path)] == [
        "neutral", "contradiction"]
    assert load_split(m, "validation", "local", tmp_path)[0]["fields"]["premise"] == "A cat sat."
    assert load_split(m, "test", "local", tmp_path) == [
        {"idx": 0, "label": None, "fields": {"premise": "Hi.", "hypothesis": "Hello."}}]
    assert missing_data_message(mm, "test", tmp_path)


def test_qqp_uses_its_id_column(tmp_path):
    head = "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n"
    put(tmp_path, "glue/QQP/train.tsv", head + "133273\t213221\t213222\tHow is it?\tHow's it?\t1\n"
        + "402555\t536040\t536041\tWhy?\tWhen?\t0\n")
    put(tmp_path, "glue/QQP/dev.tsv", head + "201359\t303345\t303346\tA?\tB?\t0\n")
    put(tmp_path, "glue/QQP/test.tsv", "id\tquestion1\tquestion2\n0\tC?\tD?\n1\tE?\tF?")
    qqp = task_of("glue/qqp")
    assert load_split(qqp, "train", "local", tmp_path) == [
        {"idx": 133273, "label": "duplicate", "fields": {"question1": "How is it?", "question2": "How's it?"}},
        {"idx": 402555, "label": "not_duplicate", "fields": {"question1": "Why?", "question2": "When?"}}]
    assert load_split(qqp, "validation", "local", tmp_path)[0]["idx"] == 201359
    assert [r["label"] for r in load_split(qqp, "test", "local", tmp_path)] == [None, None]


RECORD_TEXT = "Anna met Bob in Paris. Bob liked Paris.\n@highlight\nAnna flies home"


def span(word: str, occurrence: int = 0) -> dict:
    start = -1
    for _ in range(occurrence + 1):
        start = RECORD_TEXT.index(word, start + 1)
    return {"start": start, "end": start + len(word) - 1}  # inclusive end, as ReCoRD writes it


def record_passage(*qas) -> dict:
    # Entities deliberately out of passage order, with repeats.
    entities = [span("Paris", 1), span("Anna"), span("Bob", 1), span("Paris"), span("Bob"), span("Anna", 1)]
    return {"source": "Daily mail", "passage": {"text": RECORD_TEXT, "entities": entities},
            "qas": list(qas), "idx": 0}


def record_expected(query_idx: int, query: str, answers: list[str]) -> list[dict]:
    return [{"idx": f"{query_idx}-{k}", "group": str(query_idx), "answers": answers,
             "fields": {"passage": RECORD_TEXT, "query": query, "entity": entity},
             "label": ("true" if entity in answers else "false") if answers else None}
            for k, entity in enumerate(["Anna", "Bob", "Paris"])]


def test_record_one_record_per_distinct_entity(tmp_path):
    query = "@placeholder liked the city."
    gold = [dict(span("Bob", 1), text="Bob"), dict(span("Bob"), text="Bob")]
    put(tmp_path, "super_glue/ReCoRD/val.jsonl",
        jsonl(record_passage({"query": query, "answers": gold, "idx": 5})))
    put(tmp_path, "super_glue/ReCoRD/test.jsonl",
        jsonl(record_passage({"query": query, "idx": 9})))
    record = task_of("superglue/record")
    assert load_split(record, "validation", "local", tmp_path) == record_expected(5, query, ["Bob"])
    assert load_split(record, "test", "local", tmp_path) == record_expected(9, query, [])
    with pytest.raises(MissingDataError, match="train"):
        load_split(record, "train", "local", tmp_path)


# ---------------------------------------------------------------- malformed rows

RTE_HEAD = "index\tsentence1\tsentence2\tlabel\n"
CB_OK = {"premise": "P.", "hypothesis": "H.", "label": "neutral", "idx": 0}
MULTIRC_ROW = {"idx": 0, "passage": {"text": "T.", "questions": [
    {"question": "Q?", "idx": 0, "answers": [{"text": "A", "idx": 7, "label": 1},
                                             {"text": "B", "idx": 7, "label": 0}]}]}}
BAD_ROWS = {  # case: (task, split, file, content, line, message fragment)
    "column-count": ("glue/rte", "validation", "glue/RTE/dev.tsv",
                     RTE_HEAD + "0\tA.\tB.\tentailment\n1\tA.\tentailment\n", 3,
                     "expected 4 tab-separated columns, found 3"),
    "unknown-label": ("glue/rte", "validation", "glue/RTE/dev.tsv",
                      RTE_HEAD + "0\tA.\tB.\tmaybe\n", 2, "unknown label 'maybe'"),
    "binary-label-out-of-range": ("glue/cola", "train", "glue/CoLA/train.tsv",
                                  "gj04\t1\t\tFine.\ngj04\t2\t\tOdd.\n", 2, "unknown label 2"),
    "score-not-number": ("glue/stsb", "validation", "glue/STS-B/dev.tsv",
                         "index\tsentence1\tsentence2\tscore\n0\tA.\tB.\thigh\n", 2, "not a number"),
    "missing-column": ("glue/qnli", "validation", "glue/QNLI/dev.tsv",
                       "index\tquestion\tsentence\n0\tQ?\tS.\n", 1, "missing column(s) ['label']"),
    "empty-file": ("glue/sst2", "validation", "glue/SST-2/dev.tsv", "", 1, "no data rows"),
    "header-only": ("glue/sst2", "validation", "glue/SST-2/dev.tsv", "sentence\tlabel\n", 1,
                    "no data rows"),
    "not-utf8": ("glue/sst2", "validation", "glue/SST-2/dev.tsv",
                 b"sentence\tlabel\nfine \t1\nna\xefve \t0\n", 3, "not valid UTF-8"),
    "duplicate-idx": ("glue/rte", "validation", "glue/RTE/dev.tsv",
                      RTE_HEAD + "4\tA.\tB.\tentailment\n4\tC.\tD.\tentailment\n", 3,
                      "duplicate idx 4"),
    "not-json": ("superglue/cb", "validation", "superglue/CB/val.jsonl",
                 jsonl(CB_OK) + '{"premise": "P.",\n', 2, "not valid JSON"),
    "not-an-object": ("superglue/cb", "validation", "superglue/CB/val.jsonl", "[1, 2]\n", 1,
                      "not a JSON object"),
    "missing-key": ("superglue/cb", "validation", "superglue/CB/val.jsonl",
                    jsonl(CB_OK, {"premise": "P.", "label": "neutral", "idx": 1}), 2,
                    "missing key 'hypothesis'"),
    "missing-label": ("superglue/rte", "validation", "superglue/RTE/val.jsonl",
                      jsonl({"premise": "P.", "hypothesis": "H.", "idx": 0}), 1,
                      "missing key 'label'"),
    "text-not-string": ("superglue/cb", "validation", "superglue/CB/val.jsonl",
                        jsonl(dict(CB_OK, premise=None)), 1, "expected text"),
    "bool-label-as-word": ("superglue/boolq", "validation", "superglue/BoolQ/val.jsonl",
                           jsonl({"passage": "P.", "question": "q", "label": "yes", "idx": 0}), 1,
                           "unknown label 'yes'"),
    "multirc-duplicate-answer": ("superglue/multirc", "validation", "superglue/MultiRC/val.jsonl",
                                 jsonl(MULTIRC_ROW), 1, "duplicate idx 7"),
}


@pytest.mark.parametrize("case", list(BAD_ROWS))
def test_bad_row_names_file_and_line(tmp_path, case):
    key, split, relative, content, line, fragment = BAD_ROWS[case]
    path = put(tmp_path, relative, content)
    with pytest.raises(DataError) as raised:
        load_split(task_of(key), split, "local", tmp_path)
    assert not isinstance(raised.value, MissingDataError)
    assert f"{path}:{line}:" in str(raised.value)
    assert fragment in str(raised.value)


# ---------------------------------------------------------------- missing splits


def test_missing_file_names_task_split_paths_and_remedy(tmp_path):
    with pytest.raises(MissingDataError) as raised:
        load_split(task_of("glue/qnli"), "train", "local", tmp_path)
    message = str(raised.value)
    for part in ("glue/qnli", "train", str(tmp_path / "glue/QNLI/train.tsv"),
                 str(tmp_path / "glue_data/QNLI/train.tsv"), "data.local_dir", "data.source: hub"):
        assert part in message
    message = str(pytest.raises(MissingDataError, load_split, task_of("superglue/boolq"), "train",
                                "local", tmp_path).value)
    for folder in ("superglue", "super_glue", "SuperGLUE"):
        assert str(tmp_path / folder / "BoolQ/train.jsonl") in message


@pytest.mark.parametrize("key,split,source,local_dir", [
    ("glue/ax", "validation", "local", "somewhere"),
    ("glue/ax", "validation", "hub", None),
    ("glue/rte", "validation", "local", None),
])
def test_split_without_data_is_missing(key, split, source, local_dir):
    with pytest.raises(MissingDataError) as raised:
        load_split(task_of(key), split, source, local_dir)
    assert key in str(raised.value) and split in str(raised.value)
    assert missing_data_message(task_of(key), split, local_dir)


def test_unknown_source_is_rejected():
    with pytest.raises(ValueError, match="unknown data source"):
        load_split(task_of("glue/rte"), "validation", "ftp", None)


# ---------------------------------------------------------------- write_split


def test_write_split_writes_records_or_nothing(tmp_path):
    task = task_of("glue/rte")
    put(tmp_path, "glue/RTE/dev.tsv", RTE_HEAD + '0\tHe said "hi".\tHe spoke.\tentailment\n')
    out = tmp_path / "out" / "rte.jsonl"
    write_split(task, "validation", "local", tmp_path, out)
    assert files.read_jsonl(out) == load_split(task, "validation", "local", tmp_path)

    put(tmp_path, "glue/RTE/train.tsv", RTE_HEAD + "0\tA.\tB.\tmaybe\n")
    bad_out = tmp_path / "bad" / "rte.jsonl"
    with pytest.raises(DataError):
        write_split(task, "train", "local", tmp_path, bad_out)
    assert not bad_out.parent.exists()  # not even a temporary file or its folder


# ---------------------------------------------------------------- hub source against local files


@pytest.fixture
def fake_hub(monkeypatch):
    """Replace datasets.load_dataset with one serving in-memory tables; records the calls."""
    datasets = pytest.importorskip("datasets")
    calls, tables = [], {}

    def load_dataset(path, name, split):
        calls.append((path, name, split))
        return tables[(path, name, split)]

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return datasets, tables, calls


MULTIRC_VAL = {"idx": 3, "version": 1.1, "passage": {"text": "Sam ran. Kim sat.", "questions": [
    {"question": "Who ran?", "idx": 0, "answers": [{"text": "Sam", "idx": 10, "label": 1},
                                                   {"text": "Kim", "idx": 11, "label": 0}]},
    {"question": "Who sat?", "idx": 1, "answers": [{"text": "Kim", "idx": 12, "label": 1}]}]}}

HUB_CASES = {  # case: (task, split, hub split, local file, local content, hub columns)
    "glue-rte": ("glue/rte", "validation", "validation", "glue/RTE/dev.tsv",
                 RTE_HEAD + '0\tHe said "so.\tHe spoke.\tentailment\n1\tA.\tB.\tnot_entailment\n',
                 {"sentence1": ['He said "so.', "A."], "sentence2": ["He spoke.", "B."],
                  "label": [0, 1], "idx": [0, 1]}),
    "glue-sst2": ("glue/sst2", "validation", "validation", "glue/SST-2/dev.tsv",
                  "sentence\tlabel\nit 's fine \t1\ndull \t0\n",
                  {"sentence": ["it 's fine ", "dull "], "label": [1, 0], "idx": [0, 1]}),
    "glue-stsb": ("glue/stsb", "validation", "validation", "glue/STS-B/dev.tsv",
                  "index\tgenre\tsentence1\tsentence2\tscore\n0\tnews\tA.\tB.\t5.000\n"
                  "1\tnews\tC.\tD.\t0.500\n",
                  {"sentence1": ["A.", "C."], "sentence2": ["B.", "D."], "label": [5.0, 0.5],
                   "idx": [0, 1]}),
    "glue-stsb-test": ("glue/stsb", "test", "test", "glue/STS-B/test.tsv",
                       "index\tgenre\tsentence1\tsentence2\n0\tnews\tA.\tB.\n",
                       {"sentence1": ["A."], "sentence2": ["B."], "label": [-1.0], "idx": [0]}),
    "glue-mnli-mm": ("glue/mnli_mm", "validation", "validation_mismatched",
                     "glue/MNLI/dev_mismatched.tsv",
                     MNLI_COLUMNS + "\tgold_label\n" + mnli_row(0, "P.", "H.", "contradiction"),
                     {"premise": ["P."], "hypothesis": ["H."], "label": [2], "idx": [0]}),
    "superglue-boolq": ("superglue/boolq", "validation", "validation", "superglue/BoolQ/val.jsonl",
                        jsonl({"question": "is it", "passage": "It is.", "idx": 0, "label": True},
                              {"question": "is not", "passage": "No.", "idx": 1, "label": False}),
                        {"question": ["is it", "is not"], "passage": ["It is.", "No."],
                         "label": [1, 0], "idx": [0, 1]}),
    "superglue-copa-test": ("superglue/copa", "test", "test", "superglue/COPA/test.jsonl",
                            jsonl({"premise": "P.", "choice1": "A.", "choice2": "B.",
                                   "question": "cause", "idx": 0}),
                            {"premise": ["P."], "choice1": ["A."], "choice2": ["B."],
                             "question": ["cause"], "label": [-1], "idx": [0]}),
    "superglue-axb": ("superglue/axb", "test", "test", "superglue/AX-b/AX-b.jsonl",
                      jsonl({"idx": "0", "label": "not_entailment", "sentence1": "S.",
                             "sentence2": "T.", "logic": "Negation"}),
                      {"sentence1": ["S."], "sentence2": ["T."], "label": [1], "idx": [0]}),
    "superglue-multirc": ("superglue/multirc", "validation", "validation",
                          "superglue/MultiRC/val.jsonl", jsonl(MULTIRC_VAL),
                          {"paragraph": ["Sam ran. Kim sat."] * 3,
                           "question": ["Who ran?", "Who ran?", "Who sat?"],
                           "answer": ["Sam", "Kim", "Kim"], "label": [1, 0, 1],
                           "idx": [{"paragraph": 3, "question": q, "answer": a}
                                   for q, a in [(0, 10), (0, 11), (1, 12)]]}),
}


@pytest.mark.parametrize("case", list(HUB_CASES))
def test_hub_records_equal_local_records(tmp_path, fake_hub, case):
    datasets, tables, calls = fake_hub
    key, split, hub_split, relative, content, columns = HUB_CASES[case]
    task = task_of(key)
    tables[(task.hub_path, task.hub_config, hub_split)] = datasets.Dataset.from_dict(columns)
    put(tmp_path, relative, content)
    assert load_split(task, split, "hub") == load_split(task, split, "local", tmp_path)
    assert calls == [(task.hub_path, task.hub_config, hub_split)]


def test_hub_record_equals_local_record(tmp_path, fake_hub):
    datasets, tables, _ = fake_hub
    task = task_of("superglue/record")
    query = "@placeholder liked the city."
    put(tmp_path, "superglue/ReCoRD/val.jsonl", jsonl(record_passage(
        {"query": query, "answers": [dict(span("Bob"), text="Bob")], "idx": 5})))
    spans = sorted(record_passage()["passage"]["entities"], key=lambda e: e["start"])
    features = datasets.Features({
        "passage": datasets.Value("string"), "query": datasets.Value("string"),
        "entities": datasets.Sequence(datasets.Value("string")),
        "entity_spans": datasets.Sequence({"text": datasets.Value("string"),
                                           "start": datasets.Value("int32"),
                                           "end": datasets.Value("int32")}),
        "answers": datasets.Sequence(datasets.Value("string")),
        "idx": {"passage": datasets.Value("int32"), "query": datasets.Value("int32")}})
    tables[(task.hub_path, task.hub_config, "validation")] = datasets.Dataset.from_dict({
        "passage": [RECORD_TEXT], "query": [query], "entities": [["Paris", "Bob", "Anna"]],
        "entity_spans": [{"text": [RECORD_TEXT[s["start"]:s["end"] + 1] for s in spans],
                          "start": [s["start"] for s in spans], "end": [s["end"] for s in spans]}],
        "answers": [["Bob"]], "idx": [{"passage": 0, "query": 5}]}, features=features)
    hub = load_split(task, "validation", "hub")
    assert hub == load_split(task, "validation", "local", tmp_path) == record_expected(5, query, ["Bob"])
