"""`protocol: paper` renders exactly what the paper's code renders.

The expected strings come from the paper's own prompt.py (read by `paper_code`, never copied
here), filled the way the paper's scripts fill them from the raw files, which these tests
read independently of the suite's loaders: a wrong field mapping, label target or few-shot
layout changes the string.
"""
import json
import re
from pathlib import Path

import pytest

from rlnlu import paper_code
from rlnlu.data import load_split
from rlnlu.prompts import PromptStyle, render_split
from rlnlu.tasks import get_task

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
PROMPT_FILE = ROOT.parent / "shared" / "paper-code" / "RL4GLUE-2ad8bc5" / "prompt.py"
pytestmark = pytest.mark.skipif(not PROMPT_FILE.is_file() or not DATA.is_dir(),
                                reason="needs ../shared/paper-code and ../shared/data")


@pytest.fixture(scope="module")
def templates():
    return paper_code.paper_templates(PROMPT_FILE)


def tsv_rows(relative: str, header: bool = True, strip: bool = True) -> list[list[str]]:
    """Rows as the paper's read_tsv splits them: the line stripped, then cut at tabs."""
    lines = (DATA / relative).read_text(encoding="utf-8").splitlines()
    return [(line.strip() if strip else line).split("\t") for line in lines[1 if header else 0:]]


def jsonl_rows(relative: str) -> list[dict]:
    return [json.loads(line) for line in (DATA / relative).read_text().splitlines()]


# How the paper's scripts fill its templates from one raw row (inference.py and ppo.py
# for evaluation/PPO prompts): (suite task, raw split file, template key, row -> fields).
EVAL_CASES = {
    "glue/cola": ("glue/CoLA/dev.tsv", "cola", lambda r: {"sentence": r[3]}),
    "glue/sst2": ("glue/SST-2/dev.tsv", "sst", lambda r: {"sentence": r[0]}),
    "glue/mrpc": ("glue/MRPC/dev.tsv", "mrpc", lambda r: {"sentence1": r[3], "sentence2": r[4]}),
    "glue/stsb": ("glue/STS-B/dev.tsv", "sts-b", lambda r: {"sentence1": r[7], "sentence2": r[8]}),
    "glue/qnli": ("glue/QNLI/dev.tsv", "qnli", lambda r: {"question": r[1], "sentence": r[2]}),
    "glue/rte": ("glue/RTE/dev.tsv", "rte", lambda r: {"sentence1": r[1], "sentence2": r[2]}),
    "glue/wnli": ("glue/WNLI/dev.tsv", "wnli", lambda r: {"sentence1": r[1], "sentence2": r[2]}),
    "glue/ax": ("glue/diagnostic/diagnostic-full.tsv", "mnli",
                lambda r: {"sentence1": r[5], "sentence2": r[6]}),
    "superglue/boolq": ("superglue/BoolQ/val.jsonl", "boolq",
                        lambda o: {"passage": o["passage"], "question": o["question"]}),
    "superglue/cb": ("superglue/CB/val.jsonl", "mnli",
                     lambda o: {"sentence1": o["premise"], "sentence2": o["hypothesis"]}),
    "superglue/copa": ("superglue/COPA/val.jsonl", "copa",
                       lambda o: {k: o[k] for k in ("premise", "choice1", "choice2", "question")}),
    "superglue/multirc": ("superglue/MultiRC/val.jsonl", "multirc",
                          lambda o: {"passage": o["passage"]["text"],
                                     "question": o["passage"]["questions"][0]["question"],
                                     "answer": o["passage"]["questions"][0]["answers"][0]["text"]}),
    "superglue/rte": ("superglue/RTE/val.jsonl", "rte",
                      lambda o: {"sentence1": o["premise"], "sentence2": o["hypothesis"]}),
    "superglue/wic": ("superglue/WiC/val.jsonl", "wic",
                      lambda o: {k: o[k] for k in ("word", "sentence1", "sentence2")}),
    "superglue/wsc": ("superglue/WSC/val.jsonl", "wsc",
                      lambda o: {"text": o["text"], "span1_text": o["target"]["span1_text"],
                                 "span2_text": o["target"]["span2_text"]}),
    "superglue/axb": ("superglue/AX-b/AX-b.jsonl", "rte",
                      lambda o: {"sentence1": o["sentence1"], "sentence2": o["sentence2"]}),
    "superglue/axg": ("superglue/AX-g/AX-g.jsonl", "rte",
                      lambda o: {"sentence1": o["premise"], "sentence2": o["hypothesis"]}),
}


def raw_rows(relative: str) -> list:
    if relative.endswith(".jsonl"):
        return jsonl_rows(relative)
    # The paper reads AX from the unlabelled diagnostic.tsv; the labelled diagnostic-full.tsv
    # here starts rows with empty columns, which stripping would remove.
    return tsv_rows(relative, header="CoLA" not in relative, strip="diagnostic" not in relative)


def paper_rows(key: str, split: str) -> list[dict]:
    task = get_task(*key.split("/"))
    style = PromptStyle(paper_templates=paper_code.paper_templates(PROMPT_FILE))
    return list(render_split(task, load_split(task, split, "local", DATA), None, style))


@pytest.mark.parametrize("key", sorted(EVAL_CASES))
def test_evaluation_prompt_is_the_papers(key, templates):
    relative, template_key, fields = EVAL_CASES[key]
    count = 1 if key == "superglue/multirc" else 3  # a MultiRC row is a passage of many records
    expected = [templates["eval"][template_key].format(**fields(row))
                for row in raw_rows(relative)[:count]]
    split = get_task(*key.split("/")).eval_split
    assert [row["prompt"] for row in paper_rows(key, split)[:count]] == expected


def test_record_and_the_absent_glue_tasks_fill_the_same_templates(templates):
    """ReCoRD, QQP and MNLI have no files here: records written by hand, filled as the
    paper's scripts fill them (ReCoRD: passage before its highlights, entity in the query)."""
    passage = "Bob met Ann in Paris.\n@highlight\nA meeting"
    cases = [
        ("superglue/record", {"passage": passage, "query": "@placeholder met Ann.", "entity": "Bob"},
         "record", {"text": "Bob met Ann in Paris.", "query": "Bob met Ann."}),
        ("glue/qqp", {"question1": "Why {x}?", "question2": "How?"},
         "qqp", {"sentence1": "Why {x}?", "sentence2": "How?"}),
        ("glue/mnli_mm", {"premise": "It rained.", "hypothesis": "It was wet."},
         "mnli", {"sentence1": "It rained.", "sentence2": "It was wet."}),
    ]
    for key, fields, template_key, paper_fields in cases:
        task = get_task(*key.split("/"))
        style = PromptStyle(paper_templates=templates)
        row = next(render_split(task, [{"idx": 0, "label": None, "fields": fields}], None, style))
        assert row["prompt"] == templates["eval"][template_key].format(**paper_fields)


# The paper's SFT data (sft.py read_tsv / read_jsonl): fields and the label text it writes.
SFT_CASES = {
    "glue/cola": ("glue/CoLA/train.tsv", "cola",
                  lambda r: ({"sentence": r[3]}, "Yes" if int(r[1]) == 1 else "No")),
    "glue/sst2": ("glue/SST-2/train.tsv", "sst",
                  lambda r: ({"sentence": r[0]}, "Positive" if int(r[1]) == 1 else "No")),
    "glue/mrpc": ("glue/MRPC/train.tsv", "mrpc",
                  lambda r: ({"sentence1": r[3], "sentence2": r[4]},
                             "Yes" if int(r[0]) == 1 else "No")),
    "glue/stsb": ("glue/STS-B/train.tsv", "sts-b",
                  lambda r: ({"sentence1": r[7], "sentence2": r[8]}, float(r[-1]))),
    "glue/rte": ("glue/RTE/train.tsv", "rte",
                 lambda r: ({"sentence1": r[1], "sentence2": r[2]},
                            "Yes" if r[3] == "entailment" else "No")),
    "glue/wnli": ("glue/WNLI/train.tsv", "wnli",
                  lambda r: ({"sentence1": r[1], "sentence2": r[2]},
                             "Yes" if int(r[3]) == 1 else "No")),
    "superglue/cb": ("superglue/CB/train.jsonl", "mnli",
                     lambda o: ({"sentence1": o["premise"], "sentence2": o["hypothesis"]},
                                {"entailment": 1, "contradiction": 2, "neutral": 3}[o["label"]])),
    "superglue/copa": ("superglue/COPA/train.jsonl", "copa",
                       lambda o: ({k: o[k] for k in ("premise", "choice1", "choice2", "question")},
                                  int(o["label"]))),
    "superglue/wic": ("superglue/WiC/train.jsonl", "wic",
                      lambda o: ({k: o[k] for k in ("word", "sentence1", "sentence2")},
                                 int(bool(o["label"])))),
    "superglue/wsc": ("superglue/WSC/train.jsonl", "wsc",
                      lambda o: ({"text": o["text"], "span1_text": o["target"]["span1_text"],
                                  "span2_text": o["target"]["span2_text"]},
                                 int(bool(o["label"])))),
    "superglue/multirc": ("superglue/MultiRC/train.jsonl", "multirc",
                          lambda o: ({"passage": o["passage"]["text"],
                                      "question": o["passage"]["questions"][0]["question"],
                                      "answer": o["passage"]["questions"][0]["answers"][0]["text"]},
                                     int(o["passage"]["questions"][0]["answers"][0]["label"]))),
}


@pytest.mark.parametrize("key", sorted(SFT_CASES))
def test_sft_text_is_the_papers_with_its_targets(key, templates):
    """Prompt + completion is the paper's SFT text (its EOS comes from the trainer), with
    its targets as written: SST-2 negatives "No", SuperGLUE labels as digits."""
    relative, template_key, read = SFT_CASES[key]
    fields, label = read(raw_rows(relative)[0])
    expected = templates["sft"][template_key].format(**fields, label=label)
    row = paper_rows(key, "train")[0]
    assert row["sft_prompt"] + row["completion"] == expected
    assert row["sft_prompt"].endswith("Assistant:\n<Judgement>")
    assert row["prompt"] != row["sft_prompt"]  # SFT's wording is not evaluation's


# Tasks whose train files are not here: hand-written records, with the fields and label
# text the paper's sft.py would give them.
HANDWRITTEN = {
    "glue/qqp": ({"question1": "Why x?", "question2": "How?"}, "duplicate",
                 "qqp", {"sentence1": "Why x?", "sentence2": "How?"}, "Yes", "Yes"),
    "glue/mnli_m": ({"premise": "It rained.", "hypothesis": "It was dry."}, "contradiction",
                    "mnli", {"sentence1": "It rained.", "sentence2": "It was dry."},
                    "Contradiction", "Contradiction"),
    "glue/qnli": ({"question": "Who?", "sentence": "Ann did."}, "not_entailment",
                  "qnli", {"question": "Who?", "sentence": "Ann did."}, "No", "No"),
    "superglue/boolq": ({"passage": "Cats purr.", "question": "do cats purr"}, "true",
                        "boolq", {"passage": "Cats purr.", "question": "do cats purr"}, 1, "Yes"),
    "superglue/record": ({"passage": "Bob met Ann.\n@highlight\nMeet", "query": "@placeholder met Ann",
                          "entity": "Bob"}, "true",
                         "record", {"text": "Bob met Ann.", "query": "Bob met Ann"}, "Yes", "Yes"),
}


@pytest.mark.parametrize("key", sorted(HANDWRITTEN))
def test_sft_text_of_tasks_without_files_here(key, templates):
    fields, label, template_key, paper_fields, sft_label, _ = HANDWRITTEN[key]
    task = get_task(*key.split("/"))
    style = PromptStyle(paper_templates=templates)
    row = next(render_split(task, [{"idx": 0, "label": label, "fields": fields}], None, style))
    assert row["sft_prompt"] + row["completion"] == templates["sft"][template_key].format(
        **paper_fields, label=sft_label)


def paper_few_shot(template: str, demonstrations: list[tuple[dict, str]], query: dict) -> str:
    """The paper's construct_fewshot_sample and its final format, step by step: cut the
    template before "Prompt:", format each demonstration's user part, then format the whole
    block with the question's fields."""
    system = re.search(r"^.*?(?=Prompt:)", template, re.DOTALL).group(0)
    user = re.search(r"Prompt:.*", template, re.DOTALL).group(0)
    shots = "".join("[ " + user.format(**fields) + f" {label} </Judgement>" + " ]\n"
                    for fields, label in demonstrations)
    return (system + "\nHere are some examples:\n" + shots + "\n" + user).format(**query)


@pytest.mark.parametrize("key", sorted(HANDWRITTEN))
def test_few_shot_block_of_tasks_without_files_here(key, templates):
    fields, label, template_key, paper_fields, _, shot_label = HANDWRITTEN[key]
    task = get_task(*key.split("/"))
    pool = [{"idx": i, "label": label, "fields": fields} for i in range(5)]
    style = PromptStyle(shots=5, shot_selection="first", paper_templates=templates)
    row = next(render_split(task, [{"idx": 99, "label": None, "fields": fields}], pool, style))
    assert row["prompt"] == paper_few_shot(templates["eval"][template_key],
                                           [(paper_fields, shot_label)] * 5, paper_fields)


def test_braces_in_demonstrations_are_kept_where_the_papers_code_would_fail(templates):
    """The paper formats its few-shot block twice, so a brace in a demonstration raises
    there; the suite formats each part once and keeps the text."""
    task = get_task("glue", "rte")
    hostile = {"premise": "Set {x} and {0}.", "hypothesis": "A set."}
    pool = [{"idx": 0, "label": "entailment", "fields": hostile}]
    style = PromptStyle(shots=1, shot_selection="first", paper_templates=templates)
    row = next(render_split(task, [{"idx": 9, "label": None, "fields": hostile}], pool, style))
    assert row["prompt"].count('"Set {x} and {0}."') == 2
    with pytest.raises((KeyError, IndexError)):
        paper_few_shot(templates["eval"]["rte"], [({"sentence1": hostile["premise"],
                                                    "sentence2": "A set."}, "Yes")],
                       {"sentence1": "a", "sentence2": "b"})


def test_sst2_negative_target_keeps_the_papers_defect(templates):
    negative = next(r for r in paper_rows("glue/sst2", "train") if r["label"] == "negative")
    assert negative["completion"] == "No</Judgement>"


# Few-shot demonstrations from the first five train rows (fewshot.py load_part_*): their
# label text per raw row, where it differs from the SFT target.
FEW_SHOT_LABELS = {
    "superglue/copa": lambda o: "Option One" if int(o["label"]) == 0 else "Option Two",
    "superglue/cb": lambda o: o["label"],
    "superglue/wic": lambda o: "Same" if o["label"] else "Different",
    "superglue/wsc": lambda o: "Yes" if o["label"] else "No",
    "superglue/multirc": lambda answer: "True" if answer["label"] == 1 else "False",
}


def multirc_train_options(count: int) -> list[tuple[dict, dict]]:
    """(fields, answer) of the first answer options of the first passages, in file order."""
    options = []
    for passage in raw_rows("superglue/MultiRC/train.jsonl"):
        for question in passage["passage"]["questions"]:
            for answer in question["answers"]:
                options.append(({"passage": passage["passage"]["text"],
                                  "question": question["question"], "answer": answer["text"]},
                                 answer))
                if len(options) == count:
                    return options
    return options


@pytest.mark.parametrize("key", sorted(SFT_CASES))
def test_few_shot_block_is_the_papers(key, templates):
    task = get_task(*key.split("/"))
    train_file, _, read = SFT_CASES[key]
    if key == "superglue/multirc":
        demonstrations = [(fields, FEW_SHOT_LABELS[key](answer))
                          for fields, answer in multirc_train_options(5)]
    else:
        label = FEW_SHOT_LABELS.get(key, lambda row: read(row)[1])
        demonstrations = [(read(row)[0], label(row)) for row in raw_rows(train_file)[:5]]
    relative, template_key, query_fields = EVAL_CASES[key]
    expected = paper_few_shot(templates["eval"][template_key], demonstrations,
                              query_fields(raw_rows(relative)[0]))

    style = PromptStyle(shots=5, shot_selection="first", paper_templates=templates)
    records = load_split(task, task.eval_split, "local", DATA)[:1]
    pool = load_split(task, "train", "local", DATA)
    assert next(render_split(task, records, pool, style))["prompt"] == expected


def test_a_changed_prompt_file_is_refused_naming_both_hashes(tmp_path):
    changed = tmp_path / "prompt.py"
    changed.write_text(PROMPT_FILE.read_text() + "\n")
    with pytest.raises(paper_code.PaperCodeError) as err:
        paper_code.paper_templates(changed)
    assert paper_code.PROMPT_FILE_SHA256 in str(err.value)
    assert paper_code.sha256_of(changed) in str(err.value)


@pytest.mark.parametrize("statement", ["import os", "x = open('f').read()", "x = 'a' + 'b'",
                                       "def f():\n    pass", "exec('1')"])
def test_anything_but_constants_is_refused_unexecuted(tmp_path, statement):
    hostile = tmp_path / "prompt.py"
    hostile.write_text(f"prompt_tmp = {{}}\n{statement}\n")
    with pytest.raises(paper_code.PaperCodeError, match=r"prompt\.py:2:"):
        paper_code.read_prompt_file(hostile)


def test_obtaining_a_local_copy_checks_it(tmp_path):
    out = tmp_path / "resources" / "prompt.py"
    paper_code.obtain_prompt_file(out, str(PROMPT_FILE))
    assert paper_code.sha256_of(out) == paper_code.PROMPT_FILE_SHA256
    with pytest.raises(paper_code.PaperCodeError, match="does not exist"):
        paper_code.obtain_prompt_file(tmp_path / "other.py", str(tmp_path / "missing.py"))
    assert not (tmp_path / "other.py").exists()
