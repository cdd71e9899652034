"""What an answer says: parse a generation into a label (or *invalid*) and score it as a reward.

Evaluation and RL training share these functions, so the metric and the reward can never
disagree about what the model answered.

The model answers inside `<Judgement> ... </Judgement>`. Parsing is strict: the text before
the first `</Judgement>` (the whole generation if the tag never closes) must name exactly
one label word, as a whole word, case-insensitively. No label, or two different labels,
is invalid. Look-alike characters (Cyrillic "е" in "Yеs") are not normalised away.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from .tasks import Task

OPEN_TAG = "<Judgement>"
CLOSE_TAG = "</Judgement>"
STSB_RANGE = (0.0, 5.0)
_NUMBER = re.compile(r"(?<![\w.])[-+]?\d+(?:\.\d+)?(?![\w.]*\d)")


@dataclass(frozen=True)
class Answer:
    label: str | float | None  # a task class, a similarity score, or None when invalid
    closed: bool  # whether the model closed the </Judgement> tag

    @property
    def valid(self) -> bool:
        return self.label is not None


def judgement_text(generation: str) -> tuple[str, bool]:
    """The text the model put inside the judgement, and whether it closed the tag."""
    before, tag, _ = generation.partition(CLOSE_TAG)
    # A model that repeats the opening tag is answering inside it.
    return before.replace(OPEN_TAG, " "), bool(tag)


def _word_pattern(word: str) -> re.Pattern:
    return re.compile(r"(?<!\w)" + r"\s+".join(map(re.escape, word.split())) + r"(?!\w)",
                      re.IGNORECASE)


def parse_answer(task: Task, generation: str) -> Answer:
    text, closed = judgement_text(generation)
    if task.is_regression:
        numbers = _NUMBER.findall(text)
        if len(numbers) != 1:
            return Answer(None, closed)
        low, high = STSB_RANGE
        return Answer(min(max(float(numbers[0]), low), high), closed)
    named = {label for label, word in zip(task.classes, task.label_words)
             if _word_pattern(word).search(text)}
    return Answer(named.pop() if len(named) == 1 else None, closed)


@dataclass(frozen=True)
class RewardScheme:
    """The paper's label-alignment reward; every value is configurable."""
    correct: float = 1.0
    wrong: float = -1.0
    invalid: float = -3.0
    regression_offset: float = 2.5  # STS-B reward: offset - |prediction - gold|
    regression_invalid: float = -2.5


def reward(task: Task, answer: Answer, gold, scheme: RewardScheme = RewardScheme()) -> float:
    if task.is_regression:
        if not answer.valid:
            return scheme.regression_invalid
        return scheme.regression_offset - abs(float(answer.label) - float(gold))
    if not answer.valid:
        return scheme.invalid
    return scheme.correct if answer.label == gold else scheme.wrong
