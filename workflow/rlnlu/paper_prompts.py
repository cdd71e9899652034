"""The paper's prompts, rendered as its released code renders them (`protocol: paper`).

Raw text, no chat template: `System_prompt: ... Prompt: ... Assistant:\\n<Judgement>`, with
the paper's own wording per task, read from its `prompt.py` (see `paper_code`). Evaluation
and PPO use its `prompt_tmp`; SFT uses its different `sft_prompts`; few-shot prompts are
its single block ("Here are some examples:" and five bracketed solved examples). Training
and few-shot targets are the paper's, defects included (docs/paper-protocol.md lists each
with the line of the paper's code it comes from): SST-2 negatives are written "No", the
SuperGLUE SFT targets are digits, few-shot COPA says "Option One", few-shot CB lowercase.

Templates are filled with `str.format`, as the paper's code does; inserted values are not
parsed again, so braces in the data are safe (where the paper formats its few-shot block a
second time and would fail on them, the block is assembled from once-formatted parts).
"""
from __future__ import annotations

from dataclasses import dataclass

from .answers import CLOSE_TAG
from .tasks import Task

FEW_SHOT_HEADING = "\nHere are some examples:\n"
_USER_PART = "Prompt:"  # where the paper's few-shot code cuts a template into system and user


@dataclass(frozen=True)
class PaperTask:
    """How the paper's code prompts one suite task: its template keys and which suite field
    fills each of the template's placeholders."""
    eval_key: str  # key in prompt_tmp
    sft_key: str  # key in sft_prompts
    placeholders: dict  # the template's name -> the suite record's field


_PAIR = {"sentence1": "sentence1", "sentence2": "sentence2"}
_NLI_PAIR = {"sentence1": "premise", "sentence2": "hypothesis"}

PAPER_TASKS = {
    # GLUE (the paper's inference.py / sft.py branches of the same names)
    "glue/cola": PaperTask("cola", "cola", {"sentence": "sentence"}),
    "glue/sst2": PaperTask("sst", "sst", {"sentence": "sentence"}),
    "glue/mrpc": PaperTask("mrpc", "mrpc", _PAIR),
    "glue/qqp": PaperTask("qqp", "qqp", {"sentence1": "question1", "sentence2": "question2"}),
    "glue/stsb": PaperTask("sts-b", "sts-b", _PAIR),
    "glue/mnli_m": PaperTask("mnli", "mnli", _NLI_PAIR),
    "glue/mnli_mm": PaperTask("mnli", "mnli", _NLI_PAIR),
    "glue/qnli": PaperTask("qnli", "qnli", {"question": "question", "sentence": "sentence"}),
    "glue/rte": PaperTask("rte", "rte", _NLI_PAIR),
    "glue/wnli": PaperTask("wnli", "wnli", _NLI_PAIR),
    "glue/ax": PaperTask("mnli", "mnli", _NLI_PAIR),  # AX is prompted as MNLI
    # SuperGLUE
    "superglue/boolq": PaperTask("boolq", "boolq", {"passage": "passage", "question": "question"}),
    "superglue/cb": PaperTask("mnli", "mnli", _NLI_PAIR),  # CB is prompted as MNLI
    "superglue/copa": PaperTask("copa", "copa", {"premise": "premise", "choice1": "choice1",
                                                 "choice2": "choice2", "question": "question"}),
    "superglue/multirc": PaperTask("multirc", "multirc", {"passage": "paragraph",
                                                          "question": "question",
                                                          "answer": "answer"}),
    "superglue/record": PaperTask("record", "record", {}),  # built by _record_fields
    "superglue/rte": PaperTask("rte", "rte", _NLI_PAIR),
    "superglue/wic": PaperTask("wic", "wic", {"word": "word", "sentence1": "sentence1",
                                              "sentence2": "sentence2"}),
    "superglue/wsc": PaperTask("wsc", "wsc", {"text": "text", "span1_text": "span1_text",
                                              "span2_text": "span2_text"}),
    "superglue/axb": PaperTask("rte", "rte", _NLI_PAIR),  # the diagnostics as RTE
    "superglue/axg": PaperTask("rte", "rte", _NLI_PAIR),
}

_YES_NO = {"true": "Yes", "false": "No"}
_ENTAIL_YES_NO = {"entailment": "Yes", "not_entailment": "No"}
_NLI_WORDS = {"entailment": "Entailment", "contradiction": "Contradiction", "neutral": "Neutral"}
_DIGITS = {"true": "1", "false": "0"}

# The label text of SFT targets, per suite class (sft.py's read_tsv / read_jsonl).
SFT_TARGETS = {
    "glue/cola": {"acceptable": "Yes", "unacceptable": "No"},
    "glue/sst2": {"positive": "Positive", "negative": "No"},  # the paper's defect
    "glue/mrpc": {"equivalent": "Yes", "not_equivalent": "No"},
    "glue/qqp": {"duplicate": "Yes", "not_duplicate": "No"},
    "glue/mnli_m": _NLI_WORDS,
    "glue/qnli": _ENTAIL_YES_NO,
    "glue/rte": _ENTAIL_YES_NO,
    "glue/wnli": _ENTAIL_YES_NO,
    "superglue/boolq": _DIGITS,  # SuperGLUE targets are the labels' integers
    "superglue/cb": {"entailment": "1", "contradiction": "2", "neutral": "3"},
    "superglue/copa": {"choice1": "0", "choice2": "1"},
    "superglue/multirc": _DIGITS,
    "superglue/record": _YES_NO,
    "superglue/rte": _ENTAIL_YES_NO,  # read from GLUE's RTE file
    "superglue/wic": _DIGITS,
    "superglue/wsc": _DIGITS,
}

# The label text of few-shot demonstrations (fewshot.py's load_part_* and utils.py's
# construct_fewshot_sample): the GLUE ones are SFT's; SuperGLUE's are words again.
FEW_SHOT_TARGETS = {
    **{key: words for key, words in SFT_TARGETS.items() if key.startswith("glue/")},
    "superglue/boolq": _YES_NO,
    "superglue/cb": {"entailment": "entailment", "contradiction": "contradiction",
                     "neutral": "neutral"},
    "superglue/copa": {"choice1": "Option One", "choice2": "Option Two"},
    "superglue/multirc": {"true": "True", "false": "False"},
    "superglue/record": _YES_NO,
    "superglue/wic": {"true": "Same", "false": "Different"},
    "superglue/wsc": _YES_NO,
    # The paper's few-shot code has no path for SuperGLUE's RTE (it stops on an unsupported
    # task); its RTE prompt takes GLUE RTE's Yes/No.
    "superglue/rte": _ENTAIL_YES_NO,
}


def paper_task(task: Task) -> PaperTask:
    return PAPER_TASKS[task.key]


def _target(table: dict, task: Task, label, what: str) -> str:
    if task.is_regression:
        return str(float(label))  # STS-B's score as Python writes a float: "3.8", "5.0"
    key = task.train_task.key
    if key not in table:
        raise ValueError(f"the paper's code has no {what} for {task.key}")
    return table[key][label]


def sft_target(task: Task, label) -> str:
    return _target(SFT_TARGETS, task, label, "SFT target")


def few_shot_target(task: Task, label) -> str:
    return _target(FEW_SHOT_TARGETS, task, label, "few-shot example")


def _record_fields(fields: dict) -> dict:
    """ReCoRD as the paper asks it: the passage before its highlights, and the query with
    the candidate entity in place of @placeholder."""
    return {"text": fields["passage"].split("@highlight")[0].strip(),
            "query": fields["query"].replace("@placeholder", fields["entity"])}


def template_fields(task: Task, fields: dict) -> dict:
    """A suite record's fields under the names the paper's template uses."""
    if task.key == "superglue/record":
        return _record_fields(fields)
    return {name: fields[field] for name, field in paper_task(task).placeholders.items()}


def eval_prompt(templates: dict, task: Task, fields: dict) -> str:
    """The evaluation and PPO prompt, ending with `Assistant:\\n<Judgement>`."""
    return templates["eval"][paper_task(task).eval_key].format(**template_fields(task, fields))


def sft_example(templates: dict, task: Task, fields: dict, label) -> tuple[str, str]:
    """SFT's prompt and completion: the paper's SFT text cut at its label, so the completion
    is the target and `</Judgement>` (the trainer adds EOS, as the paper's code does)."""
    template = templates["sft"][paper_task(task.train_task).sft_key]
    prefix, _, suffix = template.partition("{label}")
    return (prefix.format(**template_fields(task, fields)),
            sft_target(task, label) + suffix.format())


def few_shot_prompt(templates: dict, task: Task, fields: dict, shots: list[dict]) -> str:
    """The paper's few-shot block: the system part, the heading, each solved example as
    `[ <user part> <label> </Judgement> ]`, a blank line, then the question."""
    template = templates["eval"][paper_task(task).eval_key]
    cut = template.index(_USER_PART)
    system, user = template[:cut], template[cut:]
    query = template_fields(task, fields)
    examples = "".join(
        "[ " + user.format(**template_fields(task, shot["fields"]))
        + f" {few_shot_target(task, shot['label'])} {CLOSE_TAG}" + " ]\n"
        for shot in shots)
    return system.format(**query) + FEW_SHOT_HEADING + examples + "\n" + user.format(**query)
