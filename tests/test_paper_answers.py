"""The paper's answer reading, re-implemented: each expected value below is the decision of
the paper's released code (inference.py for evaluation, ppo.py for the reward), worked out by
reading it; the comments give the lines."""
import dataclasses
import random

import pytest

from rlnlu.paper_answers import labels_with_fill_in, parse, reward
from rlnlu.tasks import TASKS, get_task

T = "</Judgement>"

EVALUATION = [
    # The judgement text (inference.py:379-389): before the first closing tag; the whole
    # generation when the tag never closes.
    ("glue/rte", "Yes" + T + " No", "entailment"),
    ("glue/rte", "No" + T + " Yes", "not_entailment"),
    ("glue/rte", "Maybe" + T + "Yes" + T, None),
    ("glue/rte", T + "Yes", None),
    ("glue/rte", "I would say yes, it follows", "entailment"),  # unclosed: all of it
    ("glue/rte", "Maybe.\n<Analysis> Hard to tell", None),
    # Yes/No tasks (inference.py:392-402 QNLI/RTE, 430-444 CoLA/QQP/MRPC/WNLI, 460-471 WSC,
    # 511-522 BoolQ, 523-534 AX-b/AX-g, 547-558 ReCoRD): "Yes"/"yes" first, then "No"/"no",
    # as substrings, case as written.
    ("glue/cola", "Yes" + T, "acceptable"),
    ("glue/cola", "No" + T, "unacceptable"),
    ("glue/cola", "yes" + T, "acceptable"),
    ("glue/cola", "YES" + T, None),
    ("glue/cola", "NO" + T, None),
    ("glue/mrpc", "No, yes" + T, "equivalent"),  # Yes wins a tie
    ("glue/mrpc", "Yes" + T, "equivalent"),
    ("glue/qqp", "Not really" + T, "not_duplicate"),  # "No" inside "Not"
    ("glue/qqp", "I don't know" + T, "not_duplicate"),  # "no" inside "know"
    ("glue/wnli", "None of them" + T, "not_entailment"),
    ("glue/wnli", "Entailment" + T, None),
    ("glue/qnli", "The eyes say so" + T, "entailment"),  # "yes" inside "eyes"
    ("glue/qnli", "No" + T, "not_entailment"),
    ("superglue/boolq", "yes" + T, "true"),
    ("superglue/boolq", "False" + T, None),
    ("superglue/boolq", "True" + T, None),
    ("superglue/wsc", "No" + T, "false"),
    ("superglue/wsc", "Yes" + T, "true"),
    ("superglue/rte", "No" + T, "not_entailment"),  # the GLUE branch runs (inference.py:31)
    ("superglue/axb", "No" + T, "not_entailment"),
    ("superglue/axg", "Yes, it does" + T, "entailment"),
    ("superglue/record", "Yes" + T, "true"),
    ("superglue/record", "Nope" + T, "false"),
    ("superglue/record", "Maybe" + T, None),
    # SST-2 (inference.py:431-432): "Positive", then "Negative", case-sensitive.
    ("glue/sst2", "Positive" + T, "positive"),
    ("glue/sst2", "Negative" + T, "negative"),
    ("glue/sst2", "Negative, not Positive" + T, "positive"),
    ("glue/sst2", "positive" + T, None),
    ("glue/sst2", "Yes" + T, None),
    # MNLI and AX (inference.py:403-416), CB (484-498): entailment, then neutral, then
    # contradiction, each capitalised or lower-case.
    ("glue/mnli_m", "Entailment" + T, "entailment"),
    ("glue/mnli_mm", "neutral" + T, "neutral"),
    ("glue/mnli_m", "Contradiction" + T, "contradiction"),
    ("glue/mnli_m", "not_entailment" + T, "entailment"),
    ("glue/mnli_mm", "Neutral, not a contradiction" + T, "neutral"),
    ("glue/mnli_m", "Contradiction or entailment" + T, "entailment"),
    ("glue/mnli_m", "CONTRADICTION" + T, None),
    ("glue/ax", "contradiction" + T, "contradiction"),
    ("superglue/cb", "Contradiction, maybe neutral" + T, "neutral"),
    ("superglue/cb", "It is entailed" + T, None),
    ("superglue/cb", "Entailment" + T, "entailment"),
    # COPA (inference.py:446-459): lower-cased, "one" anywhere, then "two".
    ("superglue/copa", "Option one" + T, "choice1"),
    ("superglue/copa", "Option two" + T, "choice2"),
    ("superglue/copa", "OPTION TWO" + T, "choice2"),
    ("superglue/copa", "Option two: someone left" + T, "choice1"),
    ("superglue/copa", "None" + T, "choice1"),
    ("superglue/copa", "Option 2" + T, None),
    ("superglue/copa", "The network" + T, "choice2"),
    # WiC (inference.py:472-483): lower-case "same", then "different", only.
    ("superglue/wic", "They are the same" + T, "true"),
    ("superglue/wic", "different" + T, "false"),
    ("superglue/wic", "Same" + T, None),
    ("superglue/wic", "Different" + T, None),
    ("superglue/wic", "not the same" + T, "true"),
    ("superglue/wic", "the same, or different" + T, "true"),
    # MultiRC (inference.py:535-546): "True"/"true", then "False"/"false".
    ("superglue/multirc", "True" + T, "true"),
    ("superglue/multirc", "false" + T, "false"),
    ("superglue/multirc", "untrue" + T, "true"),
    ("superglue/multirc", "TRUE" + T, None),
    ("superglue/multirc", "Yes" + T, None),
    # STS-B (inference.py:417-429 with utils.py:128-151): a number with a decimal point
    # anywhere, else the first whole integer; clamped to [0, 5].
    ("glue/stsb", "3.5" + T, 3.5),
    ("glue/stsb", "4" + T, 4.0),
    ("glue/stsb", "7" + T, 5.0),
    ("glue/stsb", "-1" + T, 0.0),
    ("glue/stsb", "4 or maybe 3.5" + T, 3.5),
    ("glue/stsb", "3rd" + T, None),
    ("glue/stsb", "about .5" + T, 0.5),
    ("glue/stsb", "2.5e1" + T, 5.0),
    ("glue/stsb", "1e3" + T, None),
    ("glue/stsb", "3/5" + T, 3.0),
    ("glue/stsb", "4." + T, 4.0),
    ("glue/stsb", "1.2.3" + T, 1.2),
    ("glue/stsb", "no number" + T, None),
    ("glue/stsb", "2.25 out of 5", 2.25),  # unclosed: all of it
]


def _task(key):
    return get_task(*key.split("/"))


@pytest.mark.parametrize("key, generation, label", EVALUATION)
def test_the_evaluation_parser_decides_as_the_paper(key, generation, label):
    assert parse(_task(key), generation) == label


def test_the_crafted_table_covers_every_task():
    assert len(EVALUATION) >= 40
    assert {key for key, _, _ in EVALUATION} == {t.key for t in TASKS}


@pytest.mark.parametrize("task", TASKS, ids=lambda t: t.key)
def test_the_paper_reads_the_suite_label_words_as_the_suite_does(task):
    """The orientation check: answering a class's label word gives that class, except WiC,
    whose capitalised words the paper's evaluation cannot read."""
    if task.is_regression:
        return
    for label, word in zip(task.classes, task.label_words):
        expected = None if task.key == "superglue/wic" else label
        assert parse(task, word + T) == expected


def test_a_task_without_a_rule_is_refused():
    squad = dataclasses.replace(get_task("glue", "rte"), name="squad")
    with pytest.raises(ValueError, match="no answer rule for glue/squad"):
        parse(squad, "Yes" + T)


# ---- the random fill-in (inference.py:402, 416, 422, 443 and the other branches) -------------

UNREADABLE = ["Maybe" + T] * 300


def test_the_fill_in_is_seeded_and_reproducible():
    rte = get_task("glue", "rte")
    generations = ["Yes" + T, "Maybe" + T, "No" + T, "???" + T, "Yes" + T]
    first = labels_with_fill_in(rte, generations, seed=7)
    assert first == labels_with_fill_in(rte, generations, seed=7)
    assert first[0] == "entailment" and first[2] == "not_entailment" and first[4] == "entailment"
    draws = random.Random(7)
    assert [first[1], first[3]] == [draws.choice(rte.classes), draws.choice(rte.classes)]


def test_the_fill_in_draws_only_for_unreadable_answers_in_order():
    wic = get_task("superglue", "wic")
    alone = labels_with_fill_in(wic, ["Same" + T, "Different" + T], seed=3)
    among = labels_with_fill_in(wic, ["Same" + T, "same" + T, "Different" + T], seed=3)
    assert among == [alone[0], "true", alone[1]]


def test_the_fill_in_is_uniform_over_the_classes():
    mnli = get_task("glue", "mnli_m")
    filled = labels_with_fill_in(mnli, UNREADABLE, seed=0)
    counts = {c: filled.count(c) for c in mnli.classes}
    assert sum(counts.values()) == len(UNREADABLE)
    assert all(70 <= n <= 130 for n in counts.values()), counts
    assert filled != labels_with_fill_in(mnli, UNREADABLE, seed=1)


def test_the_stsb_fill_in_is_uniform_on_the_scale():
    stsb = get_task("glue", "stsb")
    filled = labels_with_fill_in(stsb, ["3.5" + T] + UNREADABLE, seed=0)
    assert filled[0] == 3.5
    assert all(0.0 <= x <= 5.0 for x in filled[1:])
    assert len(set(filled[1:])) == len(UNREADABLE)
    assert 2.0 < sum(filled[1:]) / len(UNREADABLE) < 3.0
    assert filled == labels_with_fill_in(stsb, ["3.5" + T] + UNREADABLE, seed=0)


# ---- the PPO reward (ppo.py, as ppo.sh runs it) ----------------------------------------------

REWARDS = [
    # The judgement text (ppo.py:438-440): the closing tag is required; an empty judgement
    # or no word is invalid (ppo.py:457-461); gold 0 becomes -1 (ppo.py:415).
    ("glue/rte", "Yes" + T, "entailment", 1.0),
    ("glue/rte", "Yes" + T, "not_entailment", -1.0),
    ("glue/rte", "No" + T, "not_entailment", 1.0),
    ("glue/rte", "Yes", "entailment", -3.0),
    ("glue/rte", "Yes</Judgement", "entailment", -3.0),
    ("glue/rte", T, "entailment", -3.0),
    ("glue/rte", "Maybe" + T + "Yes", "entailment", -3.0),
    # Yes/No tasks (ppo.py:457-461): capitalised words only, both words invalid.
    ("glue/rte", "yes" + T, "entailment", -3.0),
    ("glue/rte", "no" + T, "not_entailment", -3.0),
    ("glue/rte", "Yes, not No" + T, "entailment", -3.0),
    ("glue/rte", "Yes. Not obviously" + T, "entailment", -3.0),
    ("glue/rte", "Not at all" + T, "not_entailment", 1.0),
    ("glue/cola", "Yes" + T, "acceptable", 1.0),
    ("glue/cola", "Yes" + T, "unacceptable", -1.0),
    ("glue/qqp", "None" + T, "not_duplicate", 1.0),
    ("superglue/boolq", "Yes" + T, "false", -1.0),
    ("superglue/wsc", "No" + T, "false", 1.0),
    ("superglue/rte", "Yes" + T, "entailment", 1.0),  # ppo.py:43 files RTE under GLUE
    # SST-2 (ppo.py:445-447): no both-words check; "Positive" wins.
    ("glue/sst2", "Positive and Negative" + T, "positive", 1.0),
    ("glue/sst2", "Positive and Negative" + T, "negative", -1.0),
    ("glue/sst2", "Negative" + T, "negative", 1.0),
    ("glue/sst2", "positive" + T, "positive", -3.0),
    # COPA (ppo.py:448-450): "Option two" is +1 (label 1, choice 2), case-sensitive.
    ("superglue/copa", "Option two" + T, "choice2", 1.0),
    ("superglue/copa", "Option one" + T, "choice2", -1.0),
    ("superglue/copa", "Option one or Option two" + T, "choice1", -3.0),
    ("superglue/copa", "option two" + T, "choice2", -3.0),
    ("superglue/copa", "two" + T, "choice2", -3.0),
    # WiC (ppo.py:451-453): capitalised "Same" is +1 (true), "Different" -1.
    ("superglue/wic", "Same" + T, "true", 1.0),
    ("superglue/wic", "Different" + T, "true", -1.0),
    ("superglue/wic", "same" + T, "true", -3.0),
    ("superglue/wic", "Same? Different" + T, "false", -3.0),
    # MultiRC (ppo.py:454-456): "True" +1, "False" -1.
    ("superglue/multirc", "True" + T, "false", -1.0),
    ("superglue/multirc", "False" + T, "false", 1.0),
    ("superglue/multirc", "true" + T, "true", -3.0),
    ("superglue/multirc", "True or False" + T, "true", -3.0),
    # MNLI and CB (ppo.py:463-491): exactly one relation named, substrings, two cases.
    ("glue/mnli_m", "Entailment" + T, "entailment", 1.0),
    ("glue/mnli_m", "Entailment" + T, "neutral", -1.0),
    ("glue/mnli_mm", "Neutral or contradiction" + T, "neutral", -3.0),
    ("glue/mnli_m", "not_entailment" + T, "entailment", 1.0),
    ("glue/mnli_m", "ENTAILMENT" + T, "entailment", -3.0),
    ("glue/mnli_m", "Entailment", "entailment", -3.0),
    ("superglue/cb", "Contradiction" + T, "contradiction", 1.0),
    ("superglue/cb", "Maybe" + T, "neutral", -3.0),
    # STS-B (ppo.py:492-505): 2.5 - |x - gold| with the first number, unclamped.
    ("glue/stsb", "3.5" + T, 3.0, 2.0),
    ("glue/stsb", "10" + T, 0.0, -7.5),
    ("glue/stsb", "-1" + T, 1.0, 0.5),
    ("glue/stsb", "4 or 3.5" + T, 3.5, 2.5),
    ("glue/stsb", "similar" + T, 3.0, -2.5),
    ("glue/stsb", "3.5", 3.5, -2.5),
    # ReCoRD (ppo.py:506-522): yes/no against "the candidate is a gold answer"; lower case
    # read, "Yes" wins; unreadable is wrong, only a missing tag invalid.
    ("superglue/record", "Yes" + T, "true", 1.0),
    ("superglue/record", "Yes" + T, "false", -1.0),
    ("superglue/record", "yes" + T, "true", 1.0),
    ("superglue/record", "No" + T, "false", 1.0),
    ("superglue/record", "no" + T, "true", -1.0),
    ("superglue/record", "Yes and no" + T, "true", 1.0),
    ("superglue/record", "Maybe" + T, "true", -1.0),
    ("superglue/record", "Maybe" + T, "false", -1.0),
    ("superglue/record", "Yes", "true", -3.0),
]


@pytest.mark.parametrize("key, generation, gold, value", REWARDS)
def test_the_reward_is_the_paper_s(key, generation, gold, value):
    assert reward(_task(key), generation, gold) == pytest.approx(value)


DIAGNOSTICS = ("ax", "axb", "axg")  # no train split, so the paper trains none
TRAINED = [t for t in TASKS if t.name not in DIAGNOSTICS]


@pytest.mark.parametrize("task", [t for t in TRAINED if not t.is_regression], ids=lambda t: t.key)
def test_answering_the_gold_label_word_earns_the_paper_s_reward(task):
    """The orientation check (ppo.py:415 and the label reading of ppo.py:53-191): the suite's
    label word for the gold class earns +1, another class's word -1."""
    for gold in task.classes:
        for label, word in zip(task.classes, task.label_words):
            assert reward(task, word + T, gold) == (1.0 if label == gold else -1.0)


@pytest.mark.parametrize("name", DIAGNOSTICS)
def test_the_diagnostics_have_no_reward(name):
    task = next(t for t in TASKS if t.name == name)
    with pytest.raises(ValueError, match=f"no reward for {task.key}.*{task.train_task.key}"):
        reward(task, "Yes" + T, task.classes[0])


def test_a_gold_label_outside_the_task_is_refused():
    with pytest.raises(ValueError, match="'positive' is not a class of glue/rte"):
        reward(get_task("glue", "rte"), "Yes" + T, "positive")



def test_the_protocols_reward_rule_picks_the_training_reward():
    """Under the paper's protocol RL trains on the paper's PPO reward, not the suite's."""
    from rlnlu.answers import RewardScheme, training_reward

    rte = get_task("glue", "rte")
    paper, suite = training_reward(RewardScheme(rule="paper")), training_reward(RewardScheme())
    assert paper(rte, " yes </Judgement>", "entailment") == -3.0  # the paper's reward is case-sensitive
    assert suite(rte, " yes </Judgement>", "entailment") == 1.0
    assert paper(rte, " Yes or No </Judgement>", "entailment") == -3.0  # both labels
    with pytest.raises(ValueError, match="reward rule"):
        training_reward(RewardScheme(rule="other"))
