"""The paper's grid executed, small: configs/paper.yaml as it is, every method in it, run end
to end through Snakemake on tiny random stand-ins of the paper's three architectures (a
Llama, a Qwen2 with q/k/v biases, an MPT; see `write_paper_standins` in conftest.py), on CPU
in fp32, on real GLUE and SuperGLUE data. Only the budgets are shrunk (examples, steps), so a
setting added to or changed in configs/paper.yaml is exercised here as it is; a setting that
works for one architecture only (LoRA targets, biases, chat templates, tokenizers without a
pad token, remote code) fails here.

The same grid runs through a real SLURM cluster in tests/test_slurm_cluster.py."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import corpus_lines, write_paper_standins

ROOT = Path(__file__).resolve().parents[1]
PAPER_CONFIG = ROOT / "configs" / "paper.yaml"
SHARED_DATA = ROOT.parent / "shared" / "data"
PAPER_PROMPT_FILE = ROOT.parent / "shared" / "paper-code" / "RL4GLUE-2ad8bc5" / "prompt.py"
# One GLUE and one SuperGLUE task of the real data: a binary and a three-class task.
TASKS = {"glue": ["rte"], "superglue": ["cb"]}
TASK_FILES = ["glue/RTE/train.tsv", "superglue/CB/train.jsonl"]
PAPER_METHODS = {"zero_shot", "few_shot", "sft", "sft_multi", "ppo", "ppo_multi", "grpo"}
CPU = {"device": "cpu", "dtype": "float32"}


def paper() -> dict:
    return yaml.safe_load(PAPER_CONFIG.read_text())


def tiny_budgets(standins: dict[str, str]) -> dict:
    """What is merged over configs/paper.yaml: where the models and data are, CPU in fp32,
    fewer examples and steps. Nothing else: every other setting is the paper config's."""
    return {
        "tasks": TASKS,
        "data": {"source": "local", "local_dir": str(SHARED_DATA)},
        "paper_code": {"prompt_file": str(PAPER_PROMPT_FILE)},
        "model_registry": {key: {"path": folder} for key, folder in standins.items()},
        "inference": dict(CPU),
        "evaluation": {"max_examples": 6},
        "sft": {**CPU, "max_examples": 8},
        "sft_multi": {"cap_per_task": 8, "lines_per_task": 8},
        # one step of one mini-batch of the paper's size, instead of three passes
        "ppo": {**CPU, "steps": 1, "passes": None, "prompts_per_step": 4},
        "ppo_multi": {"cap_per_task": 8},
        "grpo": {**CPU, "steps": 1, "prompts_per_step": 4},
    }


def write_tiny_paper_config(folder: Path) -> Path:
    """Stand-ins of every model in configs/paper.yaml under `folder`, and the budget config
    to give after the paper config (`--configfile configs/paper.yaml <this>`)."""
    models = paper()["models"]
    corpus = corpus_lines(SHARED_DATA / name for name in TASK_FILES)
    standins = write_paper_standins(folder / "models", corpus)
    missing = set(models) - set(standins)
    assert not missing, f"configs/paper.yaml names models without a stand-in: {missing}"
    path = folder / "tiny-paper.yaml"
    path.write_text(yaml.safe_dump(tiny_budgets({key: standins[key] for key in models})))
    return path


def snakemake_command(workdir: Path, tiny_config: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "--directory",
            str(workdir), "--configfile", str(PAPER_CONFIG), str(tiny_config), *args]


def offline_env() -> dict:
    return dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
                PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")


def expected_cells() -> list[tuple[str, str, str, str]]:
    config = paper()
    return [(model, benchmark, task, method) for model in config["models"]
            for benchmark, tasks in TASKS.items() for task in tasks
            for method in config["methods"]]


def check_tiny_paper_run(workdir: Path, standins: dict[str, str]) -> None:
    """Every cell of every architecture scored, each training method's adapter trained on
    the architecture's own modules, prompts as the config's protocol writes them (the paper's
    raw text, or each model's own chat format)."""
    config = paper()
    for model, benchmark, task, method in expected_cells():
        cell = json.loads((workdir / f"results/metrics/{model}/{benchmark}/{task}/{method}/seed0.json")
                          .read_text())
        assert cell["examples"] == 6 and cell["score"] is not None, (model, task, method, cell)
    for model in config["models"]:
        for method in ("sft", "ppo", "grpo"):
            adapter = workdir / f"results/adapters/{model}/glue/rte/{method}/seed0"
            settings = json.loads((adapter / "adapter_config.json").read_text())
            expected_bias = config.get(method, {}).get("lora_bias", "lora_only")
            assert settings["bias"] == expected_bias, (model, method)
            weights = lora_tensor_names(adapter)
            assert weights, f"{model} {method}: an adapter without LoRA weights"
        if model.startswith("qwen"):  # the paper's trainable biases: Qwen2's q/k/v biases
            assert any(name.endswith(".bias") for name in lora_tensor_names(
                workdir / f"results/adapters/{model}/glue/rte/sft/seed0")), model
    plain = (workdir / "results/prompts/mpt-7b-chat/glue/rte/zero_shot/validation.jsonl").read_text()
    llama = (workdir / "results/prompts/llama2-7b-chat/glue/rte/few_shot/seed0/validation.jsonl"
             ).read_text()
    qwen = (workdir / "results/prompts/qwen2.5-7b-instruct/glue/rte/zero_shot/validation.jsonl"
            ).read_text()
    if config["protocol"] == "paper":  # the paper's raw text, whatever the model's template
        assert all('"prompt": "System_prompt:\\n' in prompts for prompts in (plain, llama, qwen))
        assert "[INST]" not in llama and "<|im_start|>" not in qwen
    else:
        assert "[INST]" in llama and "<|im_start|>assistant" in qwen and "Human: " in plain
    tables = {b: (workdir / f"results/tables/{b}.csv").read_text() for b in TASKS}
    for model in config["models"]:
        assert all(model in table for table in tables.values()), model


def lora_tensor_names(adapter: Path) -> list[str]:
    from safetensors import safe_open

    with safe_open(str(adapter / "adapter_model.safetensors"), "pt") as weights:
        return list(weights.keys())


@pytest.fixture(scope="module")
def tiny_paper(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not present")
    folder = tmp_path_factory.mktemp("tiny-paper")
    config = write_tiny_paper_config(folder)
    registry = yaml.safe_load(config.read_text())["model_registry"]
    return config, {key: entry["path"] for key, entry in registry.items()}


@pytest.mark.parametrize("model", ["llama2-7b-chat", "qwen2.5-7b-instruct", "mpt-7b-chat"])
def test_sft_trains_on_the_tokens_evaluation_reads(tiny_paper, model, tmp_path):
    """An SFT example is the prompt exactly as evaluation tokenizes it (one BOS where the
    model has one, whether its chat template writes it or its tokenizer adds it), then the
    answer and the model's own EOS."""
    from rlnlu import prompts, sft
    from rlnlu.generation import needs_special_tokens
    from rlnlu.models import load_tokenizer
    from rlnlu.tasks import get_task

    _, standins = tiny_paper
    task = get_task("glue", "rte")
    tokenizer = load_tokenizer(standins[model])
    registry = {**yaml.safe_load((ROOT / "config.yaml").read_text())["model_registry"][model],
                **paper().get("model_registry", {}).get(model, {})}  # as Snakemake merges them
    chat = registry.get("chat_template", True)
    record = {"idx": 0, "label": "entailment",
              "fields": {"premise": "A man plays.", "hypothesis": "Someone plays."}}
    prompt = prompts.render(task, record, [], prompts.PromptStyle(shots=0, chat_template=chat),
                            tokenizer)
    rows = [{"prompt": prompt, "completion": prompts.completion(task, "entailment")}]
    trainer = sft.build_trainer(standins[model], rows, tmp_path, sft.SFTSettings(device="cpu"))
    trained = trainer.train_dataset[0]["input_ids"]
    read = tokenizer(prompt, add_special_tokens=needs_special_tokens(tokenizer, prompt))["input_ids"]
    assert trained[:len(read)] == read, (tokenizer.convert_ids_to_tokens(trained[:4]),
                                         tokenizer.convert_ids_to_tokens(read[:4]))
    assert trained[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(trained[len(read):-1]) == "Yes</Judgement>"


def test_paper_config_names_every_method():
    assert set(paper()["methods"]) == PAPER_METHODS


def test_every_paper_method_runs_on_all_three_architectures(tiny_paper, tmp_path):
    config, standins = tiny_paper
    result = subprocess.run(snakemake_command(tmp_path, config, "--cores", "2"),
                            env=offline_env(), capture_output=True, text=True, timeout=3600)
    assert result.returncode == 0, f"{result.stdout[-3000:]}\n{result.stderr[-8000:]}"
    check_tiny_paper_run(tmp_path, standins)
