"""What an answer says: parse a generation into a label (or *invalid*) and score it as a reward.

Evaluation and RL training share these functions, so the metric and the reward can never
disagree about what the model answered.

The model answers inside `<Judgement> ... </Judgement>`. Parsing is strict: the text before
the first `</Judgement>` (the whole generation if the tag never closes) must name exactly
one label word, as a whole word, case-insensitively. No label, or two different labels,
is invalid.

A whole word is not part of a longer one: no letter or digit of any script, "_" or
combining accent touches it, nor a hyphen or apostrophe that joins it to one
("Non-entailment" does not name Entailment, nor "No-one" No). Look-alike characters
(Cyrillic "е" in "Yеs", the long s "ſ", the Kelvin sign, fullwidth letters) are not
normalised away: case is folded for ASCII letters only. An STS-B answer must hold exactly
one run of ASCII digits, a plain decimal standing on its own ("3 or 4", "1.2.3 0", "3rd"
are invalid).
"""
from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable

from .tasks import Task

OPEN_TAG = "<Judgement>"
CLOSE_TAG = "</Judgement>"
STSB_RANGE = (0.0, 5.0)
_NUMBER_LIKE = re.compile(r"[0-9][0-9.]*")  # every run of ASCII digits (and dots)
_NUMBER = re.compile(r"[0-9]+(?:\.[0-9]+)?\.?")  # a decimal, maybe ending a sentence
_JOINERS = ("-", "'", "\u2019")  # a hyphen or apostrophe between letters joins two words


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


def _caseless(part: str) -> str:
    """`part` matching either case of its ASCII letters only (re.IGNORECASE would also let
    "ſ" match "s" and the Kelvin sign "k")."""
    return "".join(f"[{c.lower()}{c.upper()}]" if c.isascii() and c.isalpha() else re.escape(c)
                   for c in part)


@lru_cache(maxsize=None)
def _word_pattern(word: str) -> re.Pattern:
    return re.compile(r"\s+".join(map(_caseless, word.split())))


def _is_letter(char: str) -> bool:
    """Part of a word: a letter or digit of any script, "_", or a combining mark
    ("Yes" followed by U+0301 is not "Yes")."""
    return bool(char) and (char.isalnum() or char == "_"
                           or unicodedata.category(char).startswith("M"))


def _at(text: str, i: int) -> str:
    return text[i] if 0 <= i < len(text) else ""


def _stands_alone(text: str, start: int, end: int) -> bool:
    """Whether text[start:end] is a whole word: no letter touches it, nor a hyphen or
    apostrophe that joins it to one ("Non-entailment", "No-one")."""
    before, after = _at(text, start - 1), _at(text, end)
    if _is_letter(before) or _is_letter(after):
        return False
    if before in _JOINERS and _is_letter(_at(text, start - 2)):
        return False
    return not (after in _JOINERS and _is_letter(_at(text, end + 1)))


def names_word(text: str, word: str) -> bool:
    """Whether `text` names `word` (a label word, maybe of several words) as a whole word."""
    return any(_stands_alone(text, m.start(), m.end())
               for m in _word_pattern(word).finditer(text))


def read_number(text: str) -> float | None:
    """The one number in `text`, or None if there is none, more than one, or it is not a
    plain (signed) decimal standing on its own."""
    found = list(_NUMBER_LIKE.finditer(text))
    if len(found) != 1 or not _NUMBER.fullmatch(found[0].group()):
        return None
    start, end = found[0].span()
    if _is_letter(_at(text, end)):
        return None  # "3rd", "3a"
    sign, before = 1.0, _at(text, start - 1)
    if before in ("-", "+"):
        sign, before = (-1.0 if before == "-" else 1.0), _at(text, start - 2)
    if before == "." or _is_letter(before):
        return None  # "a3", "x-1", ".5"
    return sign * float(found[0].group().rstrip("."))


def parse_answer(task: Task, generation: str) -> Answer:
    text, closed = judgement_text(generation)
    if task.is_regression:
        number = read_number(text)
        if number is None:
            return Answer(None, closed)
        low, high = STSB_RANGE
        return Answer(min(max(number, low), high), closed)
    named = {label for label, word in zip(task.classes, task.label_words)
             if names_word(text, word)}
    return Answer(named.pop() if len(named) == 1 else None, closed)


@dataclass(frozen=True)
class RewardScheme:
    """The paper's label-alignment reward; every value is configurable."""
    correct: float = 1.0
    wrong: float = -1.0
    invalid: float = -3.0
    regression_offset: float = 2.5  # STS-B reward: offset - |prediction - gold|
    regression_invalid: float = -2.5
    # An answer that never closes </Judgement> counts as invalid for the reward (the paper's
    # PPO reward does so; its evaluation parser, like ours, reads unclosed text).
    require_close: bool = False
    # Whose rule reads the answer: "suite" (the strict parser, with the values above) or
    # "paper" (the paper's own PPO reward, `paper_answers.reward`, with its fixed values).
    rule: str = "suite"


def reward(task: Task, answer: Answer, gold, scheme: RewardScheme = RewardScheme()) -> float:
    unusable = not answer.valid or (scheme.require_close and not answer.closed)
    if task.is_regression:
        if unusable:
            return scheme.regression_invalid
        return scheme.regression_offset - abs(float(answer.label) - float(gold))
    if unusable:
        return scheme.invalid
    return scheme.correct if answer.label == gold else scheme.wrong


def training_reward(scheme: RewardScheme) -> Callable[[Task, str, object], float]:
    """The RL training reward as one callable, `(task, generation, gold) -> float`: the one
    place where the rule that scores a sampled generation is chosen."""
    if scheme.rule == "paper":
        from . import paper_answers  # imported here: it builds on this module

        return paper_answers.reward
    if scheme.rule != "suite":
        raise ValueError(f"reward rule must be 'suite' or 'paper', not {scheme.rule!r}")

    def score(task: Task, generation: str, gold) -> float:
        return reward(task, parse_answer(task, generation), gold, scheme)

    return score
