"""The experiment grid: which (model, benchmark, task, method, seed) cells a config asks
for, what each cell needs as input, and which cells have no data.

The Snakefile asks this module every question about the grid, so that the rules stay thin
and the logic is testable without Snakemake.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from . import paths
from .methods import get_method
from .protocols import Protocol, get_protocol
from .settings import PLANNER_KEYS, GRPOSettings, PPOSettings, SFTSettings, split_mixing
from .tasks import Task, get_task


@dataclass(frozen=True)
class Cell:
    model: str
    benchmark: str
    task: str
    method: str
    seed: int

    @property
    def metrics_path(self) -> str:
        return paths.fill(paths.METRICS, **vars(self))


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
        builders = {"sft": SFTSettings, "ppo": PPOSettings, "grpo": GRPOSettings}
        for name in self.config["methods"]:
            method = get_method(name)
            if not method.trains:
                continue
            settings, _ = split_mixing(self.training_settings(name))
            try:
                builders[method.trainer].from_config(settings)
            except (TypeError, ValueError) as err:
                raise ConfigError(f"{method.trainer}: {err}") from None
            if (seed := self.seed_method(name)) and seed not in self.config["methods"]:
                raise ConfigError(
                    f"{name} is seeded from {seed} (as in the paper), but methods does not "
                    f"list {seed}; add it, or set {method.trainer}.seed_from: base")

    # ---- data ----
    def splits_needed(self, cell: Cell) -> list[tuple[Task, str]]:
        task = get_task(cell.benchmark, cell.task)
        needed = [(task, task.eval_split)]
        if get_method(cell.method).needs_train_split:
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
        """Where transformers loads the model from: the converted folder, or the hub id/path."""
        if self.is_embedded(model):
            return paths.fill(paths.EMBEDDED_MODEL, model=model)
        return self.config["model_registry"][model]["path"]

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
        return paths.fill(paths.adapter(method), model=model, benchmark=benchmark,
                          task=get_task(benchmark, task).train_task.name, seed=seed)

    def seed_method(self, method: str) -> str | None:
        """The method whose adapter an RL method starts from (the paper seeds PPO from SFT)."""
        spec = get_method(method)
        if not spec.is_rl or self.config.get(spec.trainer, {}).get("seed_from", "sft") == "base":
            return None
        return spec.starts_from

    def adapter_chain(self, cell: Cell) -> list[str]:
        """Adapters merged in order before evaluating the cell: [] for prompting methods,
        [sft] for SFT, [sft, ppo] for PPO seeded from SFT."""
        return [self.adapter_dir(cell.model, cell.benchmark, cell.task, m, cell.seed)
                for m in self.method_chain(cell.method)]

    def method_chain(self, method: str) -> list[str]:
        """The trained methods whose adapters a method's cells stack, in training order."""
        if not get_method(method).trains:
            return []
        chain = [method]
        while (parent := self.seed_method(chain[0])) is not None:
            chain.insert(0, parent)
        return chain

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

    def training_settings(self, method: str, task: str | None = None) -> dict:
        """A trained method's settings: its trainer's section (`sft`, `ppo`, `grpo`), with a
        multi-task method's own section (`sft_multi`, `ppo_multi`) over it, or, for `task`,
        the task's own budget (`max_examples_by_task`) over the section's `max_examples`."""
        spec = get_method(method)
        settings = dict(self.config.get(spec.trainer, {}))
        if spec.multi_task:
            settings.pop("max_examples", None)  # the mix caps per task instead
            settings.update(self.config.get(method, {}))
        elif task in (settings.get("max_examples_by_task") or {}):
            settings["max_examples"] = settings["max_examples_by_task"][task]
        for key in PLANNER_KEYS:  # the workflow's business, not the trainer's
            settings.pop(key, None)
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
        trained_on = get_task(cell.benchmark, cell.task).train_task.name
        for method in self.method_chain(cell.method):
            settings[method] = self.training_settings(method, trained_on)
            if get_method(method).is_rl:
                settings["reward"] = config["reward"]
        return settings
