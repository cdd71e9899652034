"""The experiment grid: which (model, benchmark, task, method, seed) cells a config asks
for, what each cell needs as input, and which cells have no data.

The Snakefile asks this module every question about the grid, so that the rules stay thin
and the logic is testable without Snakemake.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .protocols import Protocol, get_protocol
from .tasks import Task, get_task

METHODS = ("zero_shot", "few_shot", "sft", "sft_multi", "ppo", "ppo_multi", "grpo")
# Fine-tuned models are prompted like zero-shot; only few_shot adds demonstrations.
PROMPT_STYLE = {method: "few_shot" if method == "few_shot" else "zero_shot" for method in METHODS}
NEEDS_TRAIN_SPLIT = {"few_shot", "sft", "sft_multi", "ppo", "ppo_multi", "grpo"}


@dataclass(frozen=True)
class Cell:
    model: str
    benchmark: str
    task: str
    method: str
    seed: int

    @property
    def metrics_path(self) -> str:
        return (f"results/metrics/{self.model}/{self.benchmark}/{self.task}/"
                f"{self.method}/seed{self.seed}.json")


class ConfigError(ValueError):
    pass


@dataclass
class Grid:
    config: dict

    @classmethod
    def from_config(cls, config: dict) -> "Grid":
        return cls(config)

    # ---- the cells ----
    def tasks(self, benchmark: str) -> list[Task]:
        return [get_task(benchmark, name) for name in self.config["tasks"].get(benchmark, [])]

    def cells(self, benchmark: str | None = None) -> list[Cell]:
        return [Cell(model, b, task.name, method, seed)
                for model in self.config["models"]
                for b in self.config["benchmarks"] if benchmark in (None, b)
                for task in self.tasks(b)
                for method in self.config["methods"]
                for seed in self.config["seeds"]]

    def check(self) -> None:
        """Fail before any job runs on a config that cannot work."""
        registry = self.config["model_registry"]
        for model in self.config["models"]:
            if model not in registry:
                raise ConfigError(f"models: {model!r} is not in model_registry "
                                  f"(known: {', '.join(registry)}); add an entry for it")
            spec = registry[model]
            needed = ("package", "gguf_file") if spec["source"] == "embedded" else ("path",)
            for key in needed:
                if key not in spec:
                    raise ConfigError(f"model_registry.{model}.{key} is required for "
                                      f"source: {spec['source']}")
        if self.config["data"]["source"] == "local":
            local_dir = self.config["data"].get("local_dir")
            if not local_dir:
                raise ConfigError("data.local_dir must name a folder when data.source is local")
            if not Path(local_dir).is_dir():
                raise ConfigError(
                    f"data.local_dir: {local_dir} does not exist; point it at a folder with "
                    "the GLUE/SuperGLUE files in their official layouts, or set "
                    "data.source: hub (data.missing: no_data only covers tasks absent there)")
        self.check_method_settings()
        if self.config["data"]["missing"] == "fail":
            for cell in self.cells():
                if reason := self.missing_data(cell):
                    raise ConfigError(f"{reason}\nTo run without it, set data.missing: no_data "
                                      f"or drop the task from tasks.{cell.benchmark}.")

    def check_method_settings(self) -> None:
        """Build each training method's settings now, so a misspelt or invalid key fails at
        parse time, naming it, instead of in a job an hour later."""
        from .grpo import GRPOSettings
        from .ppo import PPOSettings
        from .sft import MIXING_KEYS, SFTSettings

        builders = {"sft": SFTSettings, "sft_multi": SFTSettings, "ppo": PPOSettings,
                    "ppo_multi": PPOSettings, "grpo": GRPOSettings}
        for method in self.config["methods"]:
            if method not in builders:
                continue
            settings = (self.sft_settings(method) if method.startswith("sft")
                        else self.rl_settings(method))
            settings = {k: v for k, v in settings.items() if k not in MIXING_KEYS}
            try:
                builders[method].from_config(settings)
            except (TypeError, ValueError) as err:
                raise ConfigError(f"{method.removesuffix('_multi')}: {err}") from None
            if self.seed_method(method) and self.seed_method(method) not in self.config["methods"]:
                raise ConfigError(
                    f"{method} is seeded from {self.seed_method(method)} (as in the paper), but "
                    f"methods does not list {self.seed_method(method)}; add it, or set "
                    f"{method.removesuffix('_multi')}.seed_from: base")

    # ---- data ----
    def splits_needed(self, cell: Cell) -> list[tuple[Task, str]]:
        task = get_task(cell.benchmark, cell.task)
        needed = [(task, task.eval_split)]
        if cell.method in NEEDS_TRAIN_SPLIT:
            needed.append((task.train_task, "train"))
        return needed

    def missing_data(self, cell: Cell) -> str | None:
        """Why a cell cannot be scored for lack of data, or None. The hub has every split."""
        for task, split in self.splits_needed(cell):
            if message := self._missing(task, split):
                return message
        return None

    # ---- models ----
    def is_embedded(self, model: str) -> bool:
        return self.config["model_registry"][model]["source"] == "embedded"

    def model_location(self, model: str) -> str:
        from .models import model_location

        return model_location(self.config["model_registry"][model], model)

    @property
    def protocol(self) -> Protocol:
        return get_protocol(self.config.get("protocol", "suite"))

    def chat_template(self, model: str) -> bool:
        """The model's chat template wraps its prompts, unless the protocol writes raw text."""
        return (self.protocol.chat_template
                and self.config["model_registry"][model].get("chat_template", True))

    # ---- fine-tuned cells: which adapters a cell's evaluation stacks on the base ----
    def adapter_dir(self, model: str, benchmark: str, task: str, method: str, seed) -> str:
        """Single-task adapters are trained on the task's training data (MNLI-mm and the
        diagnostics use MNLI's or RTE's); multi-task adapters are one per benchmark."""
        if method.endswith("_multi"):
            return f"results/adapters/{model}/{benchmark}/all_tasks/{method}/seed{seed}"
        owner = get_task(benchmark, task).train_task.name
        return f"results/adapters/{model}/{benchmark}/{owner}/{method}/seed{seed}"

    def seed_method(self, method: str) -> str | None:
        """The method whose adapter an RL method starts from (the paper seeds PPO from SFT)."""
        if method not in ("ppo", "ppo_multi", "grpo"):
            return None
        if self.config.get(method.removesuffix("_multi"), {}).get("seed_from", "sft") == "base":
            return None
        return "sft_multi" if method == "ppo_multi" else "sft"

    def adapter_chain(self, cell: Cell) -> list[str]:
        """Adapters merged in order before evaluating the cell: [] for prompting methods,
        [sft] for SFT, [sft, ppo] for PPO seeded from SFT."""
        if cell.method in ("zero_shot", "few_shot"):
            return []
        chain = [cell.method]
        while (parent := self.seed_method(chain[0])) is not None:
            chain.insert(0, parent)
        return [self.adapter_dir(cell.model, cell.benchmark, cell.task, m, cell.seed) for m in chain]

    def multi_task_train_tasks(self, benchmark: str) -> list[Task]:
        """Distinct training tasks of a benchmark's configured tasks that have training data."""
        owners = {task.train_task.key: task.train_task for task in self.tasks(benchmark)}
        return [task for task in owners.values() if not self._missing(task, "train")]

    def missing_test_data(self, task: Task) -> str | None:
        return self._missing(task, "test")

    def _missing(self, task: Task, split: str) -> str | None:
        if self.config["data"]["source"] != "local":
            return None
        from .data import missing_data_message

        return missing_data_message(task, split, self.config["data"]["local_dir"])

    def sft_settings(self, method: str) -> dict:
        """SFT settings for `sft` or `sft_multi` (the latter overrides the former's)."""
        settings = dict(self.config.get("sft", {}))
        if method == "sft_multi":
            settings.pop("max_examples", None)  # the mix caps per task instead
            settings.update(self.config.get("sft_multi", {}))
        return settings

    def rl_settings(self, method: str) -> dict:
        """Settings of an RL method's trainer: `ppo` / `grpo`, with `ppo_multi`'s overrides."""
        settings = dict(self.config.get(method.removesuffix("_multi"), {}))
        if method.endswith("_multi"):
            settings.update(self.config.get(method, {}))
        settings.pop("seed_from", None)  # where training starts is the workflow's business
        return settings

    def cell_settings(self, cell: Cell) -> dict:
        """Exactly the settings that affect one cell's number: its model, data, prompts,
        decoding, scoring, and the training settings of every adapter it stacks. Its hash
        is recorded in the cell's metrics; anything else in the config can change freely."""
        config = self.config
        settings = {
            "protocol": self.protocol.name,
            "model": config["model_registry"][cell.model],
            "data": {k: config["data"][k] for k in ("source", "local_dir")},
            "evaluation": {k: config["evaluation"][k]
                           for k in ("max_examples", "sample_seed", "invalid_policy",
                                     "bootstrap_resamples")},
            "inference": config["inference"],
            "seed": cell.seed,
        }
        if cell.method == "few_shot":
            settings["prompts"] = config["prompts"]
        chain = self.adapter_chain(cell)
        for method in (m for m in METHODS if any(f"/{m}/" in path for path in chain)):
            settings[method] = (self.sft_settings(method) if method.startswith("sft")
                                else self.rl_settings(method))
            if not method.startswith("sft"):
                settings["reward"] = config["reward"]
        return settings
