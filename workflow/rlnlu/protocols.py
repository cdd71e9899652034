"""What a protocol decides: how prompts are written and how answers are decoded and read.

`suite` is this suite's corrected protocol (the default): its own task wording in the
model's chat template, greedy decoding that stops at `</Judgement>`, the strict parser.
`paper` is the released code's: its prompts from `prompt.py` as raw text (no chat template),
its few-shot block and training targets (defects included), sampled decoding of 24 to 31
new tokens (top_k 0, top_p 1, TRL's `LengthSampler(24, 32)` per batch) that stops only at
EOS, its lenient parser with a seeded random fill-in, and its PPO reward rule. Every cell is scored under both
parsers; the protocol names the one its headline `score` uses.
"""
from __future__ import annotations

from dataclasses import dataclass

PROTOCOL_NAMES = ("suite", "paper")


@dataclass(frozen=True)
class Decoding:
    sample: bool  # sample (temperature 1, no top-k/top-p filtering) or decode greedily
    new_tokens: tuple[int, int] | None  # drawn per batch from [low, high); None: the config's
    stop_at_close_tag: bool  # stop a sequence at `</Judgement>` as well as at EOS


@dataclass(frozen=True)
class Protocol:
    name: str
    paper_prompts: bool  # the paper's templates from its prompt.py
    chat_template: bool  # whether a model's chat template may wrap the prompt
    decoding: Decoding
    parser: str  # "strict" (answers.parse_answer) or "paper" (paper_answers)
    reward_rule: str  # the RL training reward: "suite" (answers.reward) or "paper" (paper_answers)


PROTOCOLS = {
    "suite": Protocol("suite", paper_prompts=False, chat_template=True,
                      decoding=Decoding(sample=False, new_tokens=None, stop_at_close_tag=True),
                      parser="strict", reward_rule="suite"),
    "paper": Protocol("paper", paper_prompts=True, chat_template=False,
                      decoding=Decoding(sample=True, new_tokens=(24, 32), stop_at_close_tag=False),
                      parser="paper", reward_rule="paper"),
}


def get_protocol(name: str) -> Protocol:
    try:
        return PROTOCOLS[name]
    except KeyError:
        raise ValueError(f"protocol: {name!r} is not one of {', '.join(PROTOCOLS)}") from None
