"""The settings layer and the config schema name the same settings with the same values, so
a setting is added in one place (workflow/rlnlu/settings.py) and the schema can only
disagree by failing here."""
from __future__ import annotations

import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import yaml

from rlnlu import settings
from rlnlu.settings import GRPOSettings, KLSettings, PPOSettings, SFTSettings

SCHEMA = yaml.safe_load((Path(__file__).parents[1] / "workflow/schemas/config.schema.yaml")
                        .read_text(encoding="utf-8"))
DEFINITIONS = SCHEMA["definitions"]
WORKFLOW_ONLY = {"seed", *settings.PLANNER_KEYS}  # the seed is the cell's


def _names(cls) -> set[str]:
    return {f.name for f in fields(cls)}


def test_schema_hardware_values_are_the_settings_layers():
    assert tuple(DEFINITIONS["dtype"]["enum"]) == settings.DTYPES
    assert tuple(DEFINITIONS["device"]["enum"]) == settings.DEVICES


def test_schema_names_every_trainer_setting_and_no_other():
    sft = set(DEFINITIONS["sft_settings"]["properties"]) - WORKFLOW_ONLY
    assert sft == _names(SFTSettings) - WORKFLOW_ONLY
    rl = set(DEFINITIONS["rl_settings"]["properties"]) - WORKFLOW_ONLY
    assert rl - {"kl"} <= _names(PPOSettings) | _names(GRPOSettings)
    assert _names(PPOSettings) - WORKFLOW_ONLY == rl - {"num_generations", "max_completion_length",
                                                         "beta", "save_total_limit"}
    assert set(DEFINITIONS["rl_settings"]["properties"]["kl"]["properties"]) == _names(KLSettings)
    mixing = set(SCHEMA["properties"]["sft_multi"]["properties"])
    assert mixing == set(settings.MIXING_KEYS)


def test_parsing_the_workflow_does_not_import_torch():
    """The planner builds every trainer's settings (configs/paper.yaml has all seven methods)
    without importing torch, so `snakemake -n` stays quick."""
    code = ("import sys, yaml; sys.path.insert(0, 'workflow'); from rlnlu import grid; "
            "config = yaml.safe_load(open('configs/paper.yaml')); "
            "grid.Grid.from_config(config).check_method_settings(); "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=Path(__file__).parents[1], check=True)
    assert out.stdout.strip() == "False"


def test_the_paper_config_trains_every_task_on_its_whole_train_split():
    """configs/paper.yaml is merged over config.yaml: the embedded default's per-task SFT
    budget must not reach the paper's grid."""
    from bench.config import load_config
    from rlnlu.grid import Grid

    config = load_config("config.yaml")
    default = Grid.from_config(config)
    paper = Grid.from_config(load_config("config.yaml", "configs/paper.yaml"))
    for task, rows in config["sft"]["max_examples_by_task"].items():
        assert default.training_settings("sft", task)["max_examples"] == rows
    assert default.training_settings("sft", "rte")["max_examples"] == config["sft"]["max_examples"]
    for task in ("sst2", "rte", "cola"):
        assert paper.training_settings("sft", task)["max_examples"] is None
