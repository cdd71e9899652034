"""The table builder: averages by the leaderboards' rule, 'no data' cells, reference rows."""
import pandas as pd
import pytest

from rlnlu.files import write_json
from rlnlu.tables import NO_DATA, write_tables


def _cell(task, method, metrics, examples=10, invalid=0.0, seed=0, status="ok", half=3.0):
    cell = {"model": "m", "benchmark": "glue", "task": task, "method": method, "seed": seed,
            "status": status}
    if status == "ok":
        score = sum(metrics.values()) / len(metrics)
        cell.update(metrics=metrics, score=score, examples=examples, invalid_rate=invalid,
                    score_ci95=[score - half, score + half])
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
    table = write_tables("glue", paths, tmp_path / "glue.csv", tmp_path / "glue.md")
    read = pd.read_csv(tmp_path / "glue.csv")
    assert len(read) == len(table)
    zero = table[(table.method == "zero_shot") & (table.source == "this run")].iloc[0]
    assert zero["mrpc_f1"] == 80.0 and zero["mrpc_acc"] == 60.0
    assert zero["qqp_f1"] == NO_DATA and zero["qqp_acc"] == NO_DATA
    assert zero["ax_mcc"] == 99.0
    assert zero["average"] == pytest.approx((70 + 50) / 2)
    assert zero["tasks_in_average"] == 2
    # MRPC ±3 and MNLI (two sets of ±3: ±3/√2) are independent: √(9 + 4.5) / 2
    assert zero["average_ci95"] == pytest.approx(round((9 + 4.5) ** 0.5 / 2, 2))
    assert zero["examples"] == 40
    assert zero["invalid_rate"] == pytest.approx(10.0 * 10 / 40)
    sft = table[table.method == "sft"].iloc[0]
    assert sft["rte_acc"] == 75.0 and sft["seeds"] == 2 and sft["examples"] == 10
    reference = table[table.source == "paper (GLUE test server)"]
    assert dict(zip(reference.method, reference.average))["ppo"] == 84.8
    assert "| zero_shot" in (tmp_path / "glue.md").read_text()


def test_unknown_task_in_a_metrics_file_fails(tmp_path):
    write_json(tmp_path / "x.json", _cell("nonsense", "zero_shot", {"accuracy": 1.0}))
    with pytest.raises(KeyError, match="nonsense"):
        write_tables("glue", [tmp_path / "x.json"], tmp_path / "g.csv", tmp_path / "g.md")
