"""What each method of the paper is: what it trains, what it starts from, whether one
adapter serves every task of a benchmark, and which prompts it is scored on. The planner,
the rules and the tables ask this table instead of testing method names."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Method:
    name: str
    trainer: str | None  # the training algorithm and its settings section; None: prompting only
    multi_task: bool  # one adapter per model and benchmark, trained on all its tasks
    starts_from: str | None  # the method whose adapter it continues (the paper seeds RL from SFT)
    prompt_style: str  # "zero_shot" or "few_shot": the prompts its cells are scored on

    @property
    def trains(self) -> bool:
        return self.trainer is not None

    @property
    def needs_train_split(self) -> bool:
        """Few-shot draws its demonstrations from the train split; trained methods train on it."""
        return self.trains or self.prompt_style == "few_shot"

    @property
    def is_rl(self) -> bool:
        return self.starts_from is not None


METHODS = {method.name: method for method in (
    Method("zero_shot", None, False, None, "zero_shot"),
    Method("few_shot", None, False, None, "few_shot"),
    Method("sft", "sft", False, None, "zero_shot"),
    Method("sft_multi", "sft", True, None, "zero_shot"),
    Method("ppo", "ppo", False, "sft", "zero_shot"),
    Method("ppo_multi", "ppo", True, "sft_multi", "zero_shot"),
    Method("grpo", "grpo", False, "sft", "zero_shot"),
)}
METHOD_NAMES = tuple(METHODS)


def get_method(name: str) -> Method:
    try:
        return METHODS[name]
    except KeyError:
        raise KeyError(f"unknown method {name!r}; known: {', '.join(METHODS)}") from None
