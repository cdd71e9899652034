"""The parser and reward on crafted and hostile generations: never crash, never count an
invalid answer as valid."""
import pytest

from rlnlu.answers import RewardScheme, parse_answer, reward
from rlnlu.tasks import TASKS, get_task

RTE = get_task("glue", "rte")  # Yes = entailment, No = not_entailment
STSB = get_task("glue", "stsb")
COPA = get_task("superglue", "copa")


@pytest.mark.parametrize("generation, label", [
    ("Yes</Judgement>", "entailment"),
    (" no </Judgement>", "not_entailment"),
    ("YES.</Judgement><|im_end|>", "entailment"),
    ("Yes", "entailment"),  # tag never closed: the text still names one label
    ("Yes</Judgement> No No No", "entailment"),  # text after the closing tag is ignored
    ("<Judgement>No</Judgement>", "not_entailment"),
])
def test_a_single_label_word_is_read(generation, label):
    assert parse_answer(RTE, generation).label == label


@pytest.mark.parametrize("generation", [
    "",
    "   \n\t ",
    "</Judgement>",
    "Yes or No</Judgement>",  # both labels
    "Yesterday</Judgement>",  # label inside a longer word
    "Nobody knows</Judgement>",
    "Y\u0435s</Judgement>",  # Cyrillic e: a look-alike is not the label
    "\uff39\uff45\uff53</Judgement>",  # fullwidth letters
    "maybe</Judgement>",
    "x" * 100_000,  # 10k+ tokens of garbage
    ("Yes No " * 5000) + "</Judgement>",
])
def test_invalid_answers_are_invalid(generation):
    answer = parse_answer(RTE, generation)
    assert answer.label is None and not answer.valid
    assert reward(RTE, answer, "entailment") == RewardScheme().invalid


def test_closing_tag_presence_is_reported():
    assert parse_answer(RTE, "Yes</Judgement>").closed
    assert not parse_answer(RTE, "Yes").closed


def test_multi_word_labels():
    assert parse_answer(COPA, "Option two</Judgement>").label == "choice2"
    assert parse_answer(COPA, "option  one</Judgement>").label == "choice1"
    assert parse_answer(COPA, "Option</Judgement>").label is None
    assert parse_answer(COPA, "Option one, not Option two</Judgement>").label is None


@pytest.mark.parametrize("generation, value", [
    ("3.5</Judgement>", 3.5), ("4</Judgement>", 4.0), ("7</Judgement>", 5.0),
    ("-1</Judgement>", 0.0), ("Score: 2.25 </Judgement>", 2.25)])
def test_stsb_reads_one_number_clipped_to_the_scale(generation, value):
    assert parse_answer(STSB, generation).label == value


@pytest.mark.parametrize("generation", ["</Judgement>", "high</Judgement>", "3 or 4</Judgement>",
                                        "1.2.3</Judgement>"])
def test_stsb_without_exactly_one_number_is_invalid(generation):
    answer = parse_answer(STSB, generation)
    assert answer.label is None
    assert reward(STSB, answer, 3.0) == -2.5


def test_reward_values():
    scheme = RewardScheme()
    assert reward(RTE, parse_answer(RTE, "Yes</Judgement>"), "entailment") == 1.0
    assert reward(RTE, parse_answer(RTE, "No</Judgement>"), "entailment") == -1.0
    assert reward(STSB, parse_answer(STSB, "4.0</Judgement>"), 3.0) == pytest.approx(1.5)
    custom = RewardScheme(correct=2.0, wrong=0.0, invalid=-5.0)
    assert reward(RTE, parse_answer(RTE, "No</Judgement>"), "not_entailment", custom) == 2.0
    assert reward(RTE, parse_answer(RTE, "</Judgement>"), "entailment", custom) == -5.0
    assert scheme.invalid < scheme.wrong < scheme.correct


@pytest.mark.parametrize("task", [t for t in TASKS if not t.is_regression], ids=lambda t: t.key)
def test_every_task_reads_each_of_its_label_words(task):
    for label, word in zip(task.classes, task.label_words):
        assert parse_answer(task, f"{word}</Judgement>").label == label
        assert reward(task, parse_answer(task, f"{word}</Judgement>"), label) == 1.0
    assert parse_answer(task, " ".join(task.label_words) + "</Judgement>").label is None
