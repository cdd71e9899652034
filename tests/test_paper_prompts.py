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


def test_sst2_negative_target_keeps_the_papers_defect(templates):
    negative = next(r for r in paper_rows("glue/sst2", "train") if r["label"] == "negative")
    assert negative["completion"] == "No</Judgement>"


# The paper's few-shot block (utils.py construct_fewshot_sample; fewshot.py takes the
# first five train rows): fields and demonstration label per raw train row.
FEW_SHOT_LABELS = {
    "glue/sst2": lambda r: "Positive" if int(r[1]) == 1 else "No",
    "glue/rte": lambda r: "Yes" if r[3] == "entailment" else "No",
    "glue/stsb": lambda r: float(r[-1]),
    "superglue/copa": lambda o: "Option One" if int(o["label"]) == 0 else "Option Two",
    "superglue/cb": lambda o: o["label"],
    "superglue/wic": lambda o: "Same" if o["label"] else "Different",
    "superglue/wsc": lambda o: "Yes" if o["label"] else "No",
}
FEW_SHOT_FIELDS = {
    "glue/sst2": SFT_CASES["glue/sst2"], "glue/rte": SFT_CASES["glue/rte"],
    "glue/stsb": SFT_CASES["glue/stsb"], "superglue/copa": SFT_CASES["superglue/copa"],
    "superglue/cb": SFT_CASES["superglue/cb"], "superglue/wic": SFT_CASES["superglue/wic"],
    "superglue/wsc": SFT_CASES["superglue/wsc"],
}


@pytest.mark.parametrize("key", sorted(FEW_SHOT_LABELS))
def test_few_shot_block_is_the_papers(key, templates):
    task = get_task(*key.split("/"))
    train_file, _, read = FEW_SHOT_FIELDS[key]
    template_key = EVAL_CASES[key][1]
    template = templates["eval"][template_key]
    # The paper's construction, step by step: cut the template before "Prompt:", format each
    # demonstration's user part, then format the whole block with the question's fields.
    system = re.search(r"^.*?(?=Prompt:)", template, re.DOTALL).group(0)
    user = re.search(r"Prompt:.*", template, re.DOTALL).group(0)
    shots = ""
    for row in raw_rows(train_file)[:5]:
        shots += "[ " + user.format(**read(row)[0]) + f" {FEW_SHOT_LABELS[key](row)} </Judgement>" + " ]\n"
    block = system + "\nHere are some examples:\n" + shots + "\n" + user
    query_row = raw_rows(EVAL_CASES[key][0])[0]
    expected = block.format(**EVAL_CASES[key][2](query_row))

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
