"""The task registry: one table of GLUE and SuperGLUE tasks that every other module reads.

A task names its benchmark, the canonical input fields, its classes (in the Hugging Face
label order, so hub integers map by position), the label word the model answers for each
class, the official metrics, and where its files live in both sources.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Task:
    benchmark: str
    name: str  # key used in paths and config, unique within its benchmark
    title: str  # as the benchmark's leaderboard names it
    fields: tuple[str, ...]  # canonical input fields, in prompt order
    instruction: str
    classes: tuple[str, ...] = ()  # empty for regression (STS-B)
    label_words: tuple[str, ...] = ()  # parallel to classes
    metrics: tuple[str, ...] = ("accuracy",)
    eval_split: str = "validation"  # the labelled split the tables report
    train_from: str | None = None  # borrow the train split (few-shot, SFT) from this task
    in_average: bool = True  # diagnostics are reported but not averaged
    hub_path: str = ""
    hub_config: str = ""
    hub_splits: dict = field(default_factory=dict)  # canonical split -> hub split name
    local_dir: str = ""  # folder under the benchmark's local root
    local_files: dict = field(default_factory=dict)  # canonical split -> file name

    @property
    def key(self) -> str:
        return f"{self.benchmark}/{self.name}"

    @property
    def is_regression(self) -> bool:
        return not self.classes

    @property
    def train_task(self) -> "Task":
        return get_task(self.benchmark, self.train_from) if self.train_from else self

    def label_word(self, label: str) -> str:
        return self.label_words[self.classes.index(label)]

    def class_of_word(self, word: str) -> str:
        return self.classes[self.label_words.index(word)]


_GLUE_FILES = {"train": "train.tsv", "validation": "dev.tsv", "test": "test.tsv"}
_SG_FILES = {"train": "train.jsonl", "validation": "val.jsonl", "test": "test.jsonl"}
_HUB_SPLITS = {"train": "train", "validation": "validation", "test": "test"}
_NLI3 = ("entailment", "neutral", "contradiction")
_NLI3_WORDS = ("Entailment", "Neutral", "Contradiction")
_ENTAIL_INSTRUCTION = "Does the first sentence entail the second sentence?"


_HUB_PATHS = {"glue": "nyu-mll/glue", "superglue": "aps/super_glue"}
_LOCAL_FILES = {"glue": _GLUE_FILES, "superglue": _SG_FILES}


def _task(benchmark, name, title, fields, instruction, classes, words, metrics=("accuracy",),
          **kw):
    """A registry entry; by default the hub config is the task's key and the local folder
    its official title."""
    kw.setdefault("hub_config", name)
    kw.setdefault("local_dir", title)
    kw.setdefault("local_files", dict(_LOCAL_FILES[benchmark]))
    kw.setdefault("hub_splits", dict(_HUB_SPLITS))
    return Task(benchmark, name, title, fields, instruction, classes, words, metrics,
                hub_path=_HUB_PATHS[benchmark], **kw)


def _glue(*args, **kw):
    return _task("glue", *args, **kw)


def _superglue(*args, **kw):
    return _task("superglue", *args, **kw)


TASKS: tuple[Task, ...] = (
    # ---- GLUE ----
    _glue("cola", "CoLA", ("sentence",),
          "Is the following sentence grammatically acceptable English?",
          ("unacceptable", "acceptable"), ("No", "Yes"), ("mcc",)),
    _glue("sst2", "SST-2", ("sentence",),
          "What is the sentiment of the following movie review sentence?",
          ("negative", "positive"), ("Negative", "Positive"), hub_config="sst2"),
    _glue("mrpc", "MRPC", ("sentence1", "sentence2"),
          "Do the two sentences mean the same thing?",
          ("not_equivalent", "equivalent"), ("No", "Yes"), ("f1", "accuracy")),
    _glue("qqp", "QQP", ("question1", "question2"),
          "Do the two questions ask the same thing?",
          ("not_duplicate", "duplicate"), ("No", "Yes"), ("f1", "accuracy")),
    _glue("stsb", "STS-B", ("sentence1", "sentence2"),
          "How similar are the two sentences in meaning, on a scale from 0 (unrelated) "
          "to 5 (equivalent)? Answer with a number.",
          (), (), ("pearson", "spearman")),
    _glue("mnli_m", "MNLI-m", ("premise", "hypothesis"),
          "What is the relation of the hypothesis to the premise?", _NLI3, _NLI3_WORDS,
          hub_config="mnli", local_dir="MNLI",
          hub_splits={"train": "train", "validation": "validation_matched", "test": "test_matched"},
          local_files={"train": "train.tsv", "validation": "dev_matched.tsv",
                       "test": "test_matched.tsv"}),
    _glue("mnli_mm", "MNLI-mm", ("premise", "hypothesis"),
          "What is the relation of the hypothesis to the premise?", _NLI3, _NLI3_WORDS,
          train_from="mnli_m", hub_config="mnli", local_dir="MNLI",
          hub_splits={"validation": "validation_mismatched", "test": "test_mismatched"},
          local_files={"validation": "dev_mismatched.tsv", "test": "test_mismatched.tsv"}),
    _glue("qnli", "QNLI", ("question", "sentence"),
          "Does the sentence contain the answer to the question?",
          ("entailment", "not_entailment"), ("Yes", "No")),
    _glue("rte", "RTE", ("premise", "hypothesis"), _ENTAIL_INSTRUCTION,
          ("entailment", "not_entailment"), ("Yes", "No")),
    _glue("wnli", "WNLI", ("premise", "hypothesis"), _ENTAIL_INSTRUCTION,
          ("not_entailment", "entailment"), ("No", "Yes")),
    # AX: the hub copy has no labels; the local diagnostic-full.tsv does.
    _glue("ax", "AX", ("premise", "hypothesis"),
          "What is the relation of the hypothesis to the premise?", _NLI3, _NLI3_WORDS,
          ("mcc",), eval_split="test", train_from="mnli_m", in_average=False,
          local_dir="diagnostic", hub_splits={"test": "test"},
          local_files={"test": "diagnostic-full.tsv"}),
    # ---- SuperGLUE ----
    _superglue("boolq", "BoolQ", ("passage", "question"),
               "Read the passage and answer the question with yes or no.",
               ("false", "true"), ("No", "Yes")),
    _superglue("cb", "CB", ("premise", "hypothesis"),
               "What is the relation of the hypothesis to the premise?",
               ("entailment", "contradiction", "neutral"),
               ("Entailment", "Contradiction", "Neutral"), ("accuracy", "macro_f1")),
    _superglue("copa", "COPA", ("premise", "question", "choice1", "choice2"),
               "Which option is the more plausible cause or effect of the premise?",
               ("choice1", "choice2"), ("Option one", "Option two")),
    # MultiRC: one record per answer option, grouped by question.
    _superglue("multirc", "MultiRC", ("paragraph", "question", "answer"),
               "Read the paragraph. Is the candidate answer to the question true or false?",
               ("false", "true"), ("False", "True"), ("f1a", "exact_match")),
    # ReCoRD: one yes/no judgement per candidate entity, grouped by query.
    _superglue("record", "ReCoRD", ("passage", "query", "entity"),
               "Read the passage. Does the candidate entity correctly fill @placeholder "
               "in the query?",
               ("false", "true"), ("No", "Yes"), ("f1", "exact_match")),
    _superglue("rte", "RTE", ("premise", "hypothesis"), _ENTAIL_INSTRUCTION,
               ("entailment", "not_entailment"), ("Yes", "No")),
    _superglue("wic", "WiC", ("word", "sentence1", "sentence2"),
               "Is the word used with the same meaning in both sentences?",
               ("false", "true"), ("Different", "Same")),
    _superglue("wsc", "WSC", ("text", "span1_text", "span2_text"),
               "In the text, does the pronoun (second span) refer to the noun phrase "
               "(first span)?",
               ("false", "true"), ("No", "Yes"), hub_config="wsc.fixed"),
    _superglue("axb", "AX-b", ("premise", "hypothesis"), _ENTAIL_INSTRUCTION,
               ("entailment", "not_entailment"), ("Yes", "No"), ("mcc",),
               eval_split="test", train_from="rte", in_average=False,
               hub_splits={"test": "test"}, local_files={"test": "AX-b.jsonl"}),
    _superglue("axg", "AX-g", ("premise", "hypothesis"), _ENTAIL_INSTRUCTION,
               ("entailment", "not_entailment"), ("Yes", "No"), ("accuracy",),
               eval_split="test", train_from="rte", in_average=False,
               hub_splits={"test": "test"}, local_files={"test": "AX-g.jsonl"}),
)

_BY_KEY = {t.key: t for t in TASKS}


def get_task(benchmark: str, name: str) -> Task:
    try:
        return _BY_KEY[f"{benchmark}/{name}"]
    except KeyError:
        known = ", ".join(t.name for t in TASKS if t.benchmark == benchmark)
        raise KeyError(f"unknown task {benchmark}/{name}; {benchmark} tasks are: {known}") from None


def tasks_of(benchmark: str) -> list[Task]:
    return [t for t in TASKS if t.benchmark == benchmark]
