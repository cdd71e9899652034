"""The table builder: averages by both rules, 'no data' cells, reference rows, the parser
effect."""
import pandas as pd
import pytest

from rlnlu.files import write_json
from rlnlu.tables import NO_DATA, average_leaderboard, average_paper, write_tables


def _cell(task, method, metrics, examples=10, invalid=0.0, seed=0, status="ok", half=3.0):
    cell = {"model": "m", "benchmark": "glue", "task": task, "method": method, "seed": seed,
            "status": status}
    if status == "ok":
        score = sum(metrics.values()) / len(metrics) if metrics else 0.0
        cell.update(metrics=metrics, score=score, examples=examples, invalid_rate=invalid,
                    score_ci95=[score - half, score + half],
                    parsers={"strict": {"score": score}, "paper": {"score": score + 5.0}})
    return cell


def test_glue_table(tmp_path):
    cells = [
        _cell("mrpc", "zero_shot", {"f1": 80.0, "accuracy": 60.0}, invalid=10.0),  # task score 70
        _cell("mnli_m", "zero_shot", {"accuracy": 40.0}),
        _cell("mnli_mm", "zero_shot", {"accuracy": 60.0}),  # MNLI counts once: 50
        _cell("ax", "zero_shot", {"mcc": 99.0}),  # diagnostic: shown, not averaged
        _cell("qqp", "zero_shot", {}, status="no data"),
        _cell("rte", "sft", {"accuracy": 70.0}, seed=0),
        _cell("rte", "sft", {"accuracy": 80.0}, seed=1),
    ]
    paths = []
    for n, cell in enumerate(cells):
        paths.append(tmp_path / f"{n}.json")
        write_json(paths[-1], cell)
    table = write_tables("glue", paths, tmp_path / "glue.csv", tmp_path / "glue.md",
                         tmp_path / "parsers.csv", tmp_path / "parsers.md")
    read = pd.read_csv(tmp_path / "glue.csv")
    assert len(read) == len(table)
    zero = table[(table.method == "zero_shot") & (table.source == "this run")].iloc[0]
    assert zero["mrpc_f1"] == 80.0 and zero["mrpc_acc"] == 60.0
    assert zero["qqp_f1"] == NO_DATA and zero["qqp_acc"] == NO_DATA
    assert zero["ax_mcc"] == 99.0
    assert zero["average_leaderboard"] == pytest.approx((70 + 50) / 2)
    assert zero["tasks_in_average_leaderboard"] == 2
    # the paper's rule: MRPC by F1, MNLI-m and -mm apart
    assert zero["average_paper"] == pytest.approx((80 + 40 + 60) / 3)
    assert zero["numbers_in_average_paper"] == 3
    # MRPC ±3 and MNLI (two sets of ±3: ±3/√2) are independent: √(9 + 4.5) / 2
    assert zero["average_leaderboard_ci95"] == pytest.approx(round((9 + 4.5) ** 0.5 / 2, 2))
    assert zero["examples"] == 40
    assert zero["invalid_rate"] == pytest.approx(10.0 * 10 / 40)
    sft = table[table.method == "sft"].iloc[0]
    assert sft["rte_acc"] == 75.0 and sft["seeds"] == 2 and sft["examples"] == 10
    # several seeds: the standard deviation beside each mean, 'mean ± sd' in Markdown
    assert sft["rte_acc_sd"] == sft["average_leaderboard_sd"] == sft["average_paper_sd"] == 7.07
    assert pd.isna(zero["rte_acc_sd"]) and "mrpc_f1_sd" not in table.columns
    assert list(read.columns).index("rte_acc_sd") == list(read.columns).index("rte_acc") + 1
    markdown = (tmp_path / "glue.md").read_text()
    assert "75.0 ± 7.07" in markdown and "_sd" not in markdown
    reference = table[table.source.str.startswith("paper (GLUE test server")]
    assert dict(zip(reference.method, reference.average_paper)) == {
        "zero_shot": 46.1, "few_shot": 58.7, "sft": 78.5, "ppo": 84.8, "ppo_multi": 82.9,
        "fine_tuned": 82.1}
    assert reference.average_leaderboard.isna().all()  # never shown under the other rule
    assert "| zero_shot" in (tmp_path / "glue.md").read_text()
    parsers = pd.read_csv(tmp_path / "parsers.csv")
    sft_parsers = parsers[parsers.method == "sft"].iloc[0]
    assert (sft_parsers.rte_strict, sft_parsers.rte_paper, sft_parsers.rte_effect) == (75, 80, 5)


# BERT's GLUE test-server numbers (Devlin et al. 2019, Table 1) per task.
BERT_BASE = {"mnli_m": 84.6, "mnli_mm": 83.4, "qqp": 71.2, "qnli": 90.5, "sst2": 93.5,
             "cola": 52.1, "stsb": 85.8, "mrpc": 88.9, "rte": 66.4}
BERT_LARGE = {"mnli_m": 86.7, "mnli_mm": 85.9, "qqp": 72.1, "qnli": 92.7, "sst2": 94.9,
              "cola": 60.5, "stsb": 86.5, "mrpc": 89.3, "rte": 70.1}
METRIC = {"qqp": "f1", "mrpc": "f1", "stsb": "spearman", "cola": "mcc"}


@pytest.mark.parametrize("numbers, reported", [(BERT_BASE, 79.6), (BERT_LARGE, 82.1)])
def test_paper_rule_gives_the_reference_rows_for_bert(numbers, reported):
    metrics = {task: {METRIC.get(task, "accuracy"): value} for task, value in numbers.items()}
    average, covered = average_paper("glue", metrics)
    assert (round(average, 1), covered) == (reported, 9)
    # the leaderboard's rule reads the same system differently (MNLI once, one task each)
    assert average_leaderboard("glue", metrics)[0] != pytest.approx(average, abs=0.5)


def test_unknown_task_in_a_metrics_file_fails(tmp_path):
    write_json(tmp_path / "x.json", _cell("nonsense", "zero_shot", {"accuracy": 1.0}))
    with pytest.raises(KeyError, match="nonsense"):
        write_tables("glue", [tmp_path / "x.json"], tmp_path / "g.csv", tmp_path / "g.md")
