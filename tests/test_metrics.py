"""Official metrics against scikit-learn/scipy on random cases, and invalid answers as wrong."""
import random

import numpy as np
import pytest
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

from rlnlu.metrics import bootstrap_interval, compute_metrics, task_score
from rlnlu.tasks import get_task


def _rows(labels, **extra):
    return [dict({"idx": i, "label": label}, **extra) for i, label in enumerate(labels)]


@pytest.mark.parametrize("seed", range(5))
def test_classification_metrics_match_sklearn(seed):
    rng = random.Random(seed)
    mrpc, cola, cb = get_task("glue", "mrpc"), get_task("glue", "cola"), get_task("superglue", "cb")
    for task in (mrpc, cola, cb):
        golds = [rng.choice(task.classes) for _ in range(60)]
        predictions = [rng.choice(task.classes) for _ in range(60)]
        scores = compute_metrics(task, _rows(golds), predictions)
        if "accuracy" in task.metrics:
            assert scores["accuracy"] == pytest.approx(100 * accuracy_score(golds, predictions))
        if "mcc" in task.metrics:
            assert scores["mcc"] == pytest.approx(100 * matthews_corrcoef(golds, predictions))
        if "f1" in task.metrics:
            assert scores["f1"] == pytest.approx(
                100 * f1_score(golds, predictions, pos_label="equivalent"))
        if "macro_f1" in task.metrics:
            assert scores["macro_f1"] == pytest.approx(
                100 * f1_score(golds, predictions, average="macro"))


def test_stsb_correlations_match_scipy():
    rng = np.random.default_rng(0)
    golds = list(rng.uniform(0, 5, 50))
    predictions = list(np.clip(np.array(golds) + rng.normal(0, 1, 50), 0, 5))
    scores = compute_metrics(get_task("glue", "stsb"), _rows(golds), predictions)
    assert scores["pearson"] == pytest.approx(100 * pearsonr(golds, predictions)[0])
    assert scores["spearman"] == pytest.approx(100 * spearmanr(golds, predictions)[0])


def test_invalid_answers_count_as_wrong():
    rte = get_task("glue", "rte")
    golds = ["entailment", "not_entailment"] * 5
    predictions = [None] * 10  # every answer invalid
    assert compute_metrics(rte, _rows(golds), predictions)["accuracy"] == 0.0
    mrpc = get_task("glue", "mrpc")
    # Invalid on a negative example must not become a free true negative.
    scores = compute_metrics(mrpc, _rows(["not_equivalent", "equivalent"]), [None, "equivalent"])
    assert scores["accuracy"] == 50.0
    cb = get_task("superglue", "cb")
    assert compute_metrics(cb, _rows(list(cb.classes)), [None] * 3)["accuracy"] == 0.0


def test_random_fill_is_the_papers_option_and_seeded():
    rte = get_task("glue", "rte")
    golds = ["entailment"] * 200
    first = compute_metrics(rte, _rows(golds), [None] * 200, invalid_policy="random", seed=1)
    again = compute_metrics(rte, _rows(golds), [None] * 200, invalid_policy="random", seed=1)
    assert first == again and 35 < first["accuracy"] < 65


def test_multirc_f1a_and_exact_match_per_question():
    multirc = get_task("superglue", "multirc")
    rows = [{"idx": i, "label": label, "group": group} for i, (label, group) in enumerate(
        [("true", "q1"), ("false", "q1"), ("true", "q2"), ("true", "q2")])]
    predictions = ["true", "false", "true", "false"]
    scores = compute_metrics(multirc, rows, predictions)
    assert scores["exact_match"] == 50.0  # q1 all right, q2 not
    assert scores["f1a"] == pytest.approx(100 * f1_score(
        [r["label"] for r in rows], predictions, pos_label="true"))


def test_record_takes_the_first_accepted_entity_per_query():
    record = get_task("superglue", "record")
    rows = [{"idx": f"{q}-{e}", "label": "true" if e == gold else "false", "group": q,
             "answers": [gold], "fields": {"entity": e}}
            for q, gold, entities in [("a", "Paris", ["London", "Paris"]),
                                      ("b", "the Moon", ["Mars", "Moon"])]
            for e in entities]
    # query a: accepts Paris (right); query b: accepts Moon ("the Moon" after normalization)
    scores = compute_metrics(record, rows, ["false", "true", "false", "true"])
    assert scores == {"f1": 100.0, "exact_match": 100.0}
    scores = compute_metrics(record, rows, ["true", "false", None, None])
    assert scores == {"f1": 0.0, "exact_match": 0.0}


def test_task_score_averages_two_metrics():
    assert task_score({"f1": 80.0, "accuracy": 70.0}) == 75.0


def test_a_constant_prediction_has_no_correlation_and_a_finite_interval():
    # 195 answers of 1.8 have a float standard deviation of 4e-16, not 0: still constant
    stsb = get_task("glue", "stsb")
    golds = list(np.random.default_rng(0).uniform(0, 5, 200))
    constant = [1.8] * 200
    assert compute_metrics(stsb, _rows(golds), constant) == {"pearson": 0.0, "spearman": 0.0}
    # two answers in 200 differ: one resample in seven draws only 1.8s, which must not make the
    # interval undefined (it did: nan in the table)
    nearly_constant = [1.2 if i % 100 == 0 else 1.8 for i in range(200)]
    low, high = bootstrap_interval(stsb, _rows(golds), nearly_constant, resamples=200)
    assert np.isfinite([low, high]).all() and low <= high


def test_bootstrap_interval_brackets_the_score():
    rte = get_task("glue", "rte")
    rng = random.Random(0)
    golds = [rng.choice(rte.classes) for _ in range(100)]
    predictions = [g if rng.random() < 0.7 else None for g in golds]
    point = task_score(compute_metrics(rte, _rows(golds), predictions))
    low, high = bootstrap_interval(rte, _rows(golds), predictions, resamples=200)
    assert low < point < high and high - low < 30
