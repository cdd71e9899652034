"""The paper's own answer reading, re-implemented from its released code (github
coder-qicao/RL4GLUE at 2ad8bc5): the lenient evaluation parser with its random fill-in
(inference.py), and the PPO training reward (ppo.py, as its ppo.sh runs it). Each rule and
oddity, with the paper's file and line, is listed in docs/paper-protocol.md ("Parsing and
reward"); the comments below give the lines.

Both work in the suite's label space (the `classes` of `rlnlu.tasks.Task`; STS-B a float):

- `parse(task, generation)`: the label the paper's evaluation reads, or None where it would
  fall back to a random label;
- `labels_with_fill_in(task, generations, seed)`: `parse`, with each None replaced as the
  paper does (uniform over the classes; STS-B uniform on [0, 5]) but drawn from
  `random.Random(seed)`, in order, so that a cell is reproducible;
- `reward(task, generation, gold)`: the paper's PPO reward (1 correct, -1 wrong, -3
  invalid; STS-B 2.5 - |x - gold|, -2.5 without a number) for the suite's gold label.

Every suite task has an evaluation rule; the diagnostics (AX, AX-b, AX-g) have no reward,
since the paper trains none of them.

Where the paper's reward differs from `rlnlu.answers.reward` (the suite's strict reward):

- the closing `</Judgement>` is required (the suite reads an unclosed answer);
- label words are case-sensitive substrings, not whole words in any case: "Not" and "None"
  count as "No", a lower-case "yes" counts as nothing (ReCoRD excepted, which reads it);
- SST-2 lets "Positive" win over "Negative" and ReCoRD lets "Yes" win over "No", where the
  suite calls a text naming both invalid;
- an unreadable ReCoRD answer is wrong (-1), not invalid (-3);
- STS-B takes the first decimal, else the first integer (the suite needs exactly one
  number) and does not clamp it, so "10" against gold 0 earns -7.5 (the suite: -2.5);
- the paper casts rewards to float16 (exact for 1, -1, -3, -2.5; an STS-B reward keeps
  about three significant digits); here they are Python floats.
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass

from .answers import CLOSE_TAG
from .tasks import Task

SCALE = (0.0, 5.0)  # STS-B: evaluation clamps to it, the fill-in draws from it
CORRECT, WRONG, INVALID = 1.0, -1.0, -3.0
SCORE_OFFSET, SCORE_UNREAD = 2.5, -2.5  # STS-B reward: offset - |prediction - gold|

# The paper's number reader (utils.py:128-151): a number with a decimal point anywhere
# comes first, then a whole integer; \d and \b are Unicode-aware, as in the paper.
_DECIMAL = re.compile(r"[-+]?\d*\.\d+(?:[eE][-+]?\d+)?")
_INTEGER = re.compile(r"[-+]?\b\d+\b")


def first_number(text: str) -> float | None:
    """The number the paper reads from `text`, or None."""
    found = _DECIMAL.search(text) or _INTEGER.search(text)
    return float(found.group()) if found else None


# ---- evaluation ------------------------------------------------------------------------

def evaluation_text(generation: str) -> str:
    """What inference.py:379-389 reads: the text before the first `</Judgement>`, stripped,
    or the whole generation when the tag never closes."""
    before, tag, _ = generation.partition(CLOSE_TAG)
    return before.strip() if tag else generation


@dataclass(frozen=True)
class _Substrings:
    """A branch of the evaluation parser: the first (substrings, label) entry with any of its
    substrings in the text decides; `lower` lower-cases the text first."""
    entries: tuple[tuple[tuple[str, ...], str], ...]
    lower: bool = False

    def read(self, text: str):
        if self.lower:
            text = text.lower()
        for substrings, label in self.entries:
            if any(s in text for s in substrings):
                return label
        return None


class _Score:
    """STS-B (inference.py:417-429): the first number, clamped to the scale."""

    def read(self, text: str):
        number = first_number(text)
        if number is None:
            return None
        low, high = SCALE
        return min(max(number, low), high)


def _yes_no(yes: str, no: str) -> _Substrings:
    return _Substrings(((("Yes", "yes"), yes), (("No", "no"), no)))


_THREE_WAY = _Substrings(tuple(((c.capitalize(), c), c)
                               for c in ("entailment", "neutral", "contradiction")))

_READERS = {  # the branch of the paper's inference.py each rule comes from
    "glue/cola": _yes_no("acceptable", "unacceptable"),  # 430-444
    "glue/sst2": _Substrings(((("Positive",), "positive"), (("Negative",), "negative"))),  # 432
    "glue/mrpc": _yes_no("equivalent", "not_equivalent"),  # 430-444
    "glue/qqp": _yes_no("duplicate", "not_duplicate"),  # 430-444
    "glue/stsb": _Score(),  # 417-429
    "glue/mnli_m": _THREE_WAY,  # 403-416
    "glue/mnli_mm": _THREE_WAY,  # 403-416
    "glue/qnli": _yes_no("entailment", "not_entailment"),  # 392-402
    "glue/rte": _yes_no("entailment", "not_entailment"),  # 392-402
    "glue/wnli": _yes_no("entailment", "not_entailment"),  # 430-444
    "glue/ax": _THREE_WAY,  # 403-416
    "superglue/boolq": _yes_no("true", "false"),  # 511-522
    "superglue/cb": _THREE_WAY,  # 484-498, the same order as MNLI
    # 446-459; its "option one"/"option two" are covered by "one"/"two".
    "superglue/copa": _Substrings(((("one",), "choice1"), (("two",), "choice2")), lower=True),
    "superglue/multirc": _Substrings(((("True", "true"), "true"),
                                      (("False", "false"), "false"))),  # 535-546
    "superglue/record": _yes_no("true", "false"),  # 547-558
    # 31 files RTE under GLUE, so the 392-402 branch runs for it (499-510 is never reached).
    "superglue/rte": _yes_no("entailment", "not_entailment"),
    # 472-483; its "They are the same"/"They are different" are covered by the words.
    "superglue/wic": _Substrings(((("same",), "true"), (("different",), "false"))),
    "superglue/wsc": _yes_no("true", "false"),  # 460-471
    "superglue/axb": _yes_no("entailment", "not_entailment"),  # 523-534
    "superglue/axg": _yes_no("entailment", "not_entailment"),  # 523-534
}


def _reader(task: Task):
    try:
        return _READERS[task.key]
    except KeyError:
        raise ValueError(f"the paper's inference.py has no answer rule for {task.key}; "
                         f"tasks with one: {', '.join(_READERS)}") from None


def parse(task: Task, generation: str):
    """The label the paper's evaluation reads from `generation` (a class of `task`, or a
    float for STS-B), or None where the paper falls back to its random choice."""
    return _reader(task).read(evaluation_text(generation))


def labels_with_fill_in(task: Task, generations: list[str], seed: int) -> list:
    """`parse` for each generation, with each unreadable one filled as the paper does
    (uniform over the classes; STS-B uniform on the scale), drawn in order from
    `random.Random(seed)`."""
    reader, rng = _reader(task), random.Random(seed)
    labels = []
    for generation in generations:
        label = reader.read(evaluation_text(generation))
        if label is None:
            label = rng.uniform(*SCALE) if task.is_regression else rng.choice(task.classes)
        labels.append(label)
    return labels


# ---- PPO reward ------------------------------------------------------------------------

def reward_text(generation: str) -> str | None:
    """What ppo.py:438-440 reads: the text before the first `</Judgement>`, stripped, or
    None (invalid) when the tag never closes."""
    before, tag, _ = generation.partition(CLOSE_TAG)
    return before.strip() if tag else None


@dataclass(frozen=True)
class _TwoWay:
    """ppo.py:444-461: `plus` reads +1, else `minus` reads -1; the gold class `plus_class`
    is +1 and the other -1 (ppo.py:415); correct when the two agree."""
    plus: str
    minus: str
    plus_class: str
    both_invalid: bool = True  # SST-2 does not check for both words

    def score(self, text: str | None, gold) -> float:
        if text is None or (self.both_invalid and self.plus in text and self.minus in text):
            return INVALID
        if self.plus in text:
            said_plus = True
        elif self.minus in text:
            said_plus = False
        else:
            return INVALID
        return CORRECT if said_plus == (gold == self.plus_class) else WRONG


class _ThreeWay:
    """ppo.py:463-491 (MNLI, CB): exactly one of the three relations must be named."""

    def score(self, text: str | None, gold) -> float:
        if text is None:
            return INVALID
        named = [c for c in ("entailment", "neutral", "contradiction")
                 if c in text or c.capitalize() in text]
        if len(named) != 1:
            return INVALID
        return CORRECT if named[0] == gold else WRONG


class _Similarity:
    """ppo.py:492-505 (STS-B): offset minus the distance of the first number, unclamped."""

    def score(self, text: str | None, gold) -> float:
        number = None if text is None else first_number(text)
        if number is None:
            return SCORE_UNREAD
        return SCORE_OFFSET - abs(number - float(gold))


class _Candidate:
    """ppo.py:506-522 (ReCoRD, per candidate): "Yes"/"yes" says it is an answer, else
    "No"/"no" says it is not; anything else is wrong, only a missing tag invalid."""

    def score(self, text: str | None, gold) -> float:
        if text is None:
            return INVALID
        if "Yes" in text or "yes" in text:
            said = "true"
        elif "No" in text or "no" in text:
            said = "false"
        else:
            return WRONG
        return CORRECT if said == gold else WRONG


_REWARDS = {  # the branch of the paper's ppo.py each rule comes from
    "glue/cola": _TwoWay("Yes", "No", "acceptable"),  # 457-461
    "glue/sst2": _TwoWay("Positive", "Negative", "positive", both_invalid=False),  # 445-447
    "glue/mrpc": _TwoWay("Yes", "No", "equivalent"),  # 457-461
    "glue/qqp": _TwoWay("Yes", "No", "duplicate"),  # 457-461
    "glue/stsb": _Similarity(),  # 492-505
    "glue/mnli_m": _ThreeWay(),  # 463-491
    "glue/mnli_mm": _ThreeWay(),  # 463-491
    "glue/qnli": _TwoWay("Yes", "No", "entailment"),  # 457-461
    "glue/rte": _TwoWay("Yes", "No", "entailment"),  # 457-461
    "glue/wnli": _TwoWay("Yes", "No", "entailment"),  # 457-461
    "superglue/boolq": _TwoWay("Yes", "No", "true"),  # 457-461
    "superglue/cb": _ThreeWay(),  # 463-491
    "superglue/copa": _TwoWay("Option two", "Option one", "choice2"),  # 448-450
    "superglue/multirc": _TwoWay("True", "False", "true"),  # 454-456
    "superglue/record": _Candidate(),  # 506-522
    "superglue/rte": _TwoWay("Yes", "No", "entailment"),  # 457-461 (43 files RTE under GLUE)
    "superglue/wic": _TwoWay("Same", "Different", "true"),  # 451-453
    "superglue/wsc": _TwoWay("Yes", "No", "true"),  # 457-461
}


def reward(task: Task, generation: str, gold) -> float:
    """The paper's PPO reward for `generation` against the suite's gold label of `task`
    (a class; a float for STS-B; 'true'/'false' per ReCoRD candidate)."""
    rule = _REWARDS.get(task.key)
    if rule is None:
        raise ValueError(f"the paper's ppo.py has no reward for {task.key} (it trains no "
                         f"diagnostic: there is no train split); train on "
                         f"{task.train_task.key} instead")
    if not task.is_regression and gold not in task.classes:
        raise ValueError(f"gold label {gold!r} is not a class of {task.key}: "
                         f"{', '.join(task.classes)}")
    return rule.score(reward_text(generation), gold)
