"""Batched generation of answers: greedy and stopping at `</Judgement>` (the suite's
protocol), or sampled with a length drawn per batch, stopping only at EOS (the paper's)."""
from __future__ import annotations

import random

import torch
from tqdm.auto import tqdm

from .answers import CLOSE_TAG
from .protocols import PROTOCOLS, Decoding


def needs_special_tokens(tokenizer, prompt: str) -> bool:
    """A chat-template prompt already carries its BOS; a plain prompt needs the tokenizer's."""
    return not (tokenizer.bos_token and prompt.startswith(tokenizer.bos_token))


def _decoding_options(decoding: Decoding) -> dict:
    if decoding.sample:  # the paper's top_k 0 / top_p 1: plain sampling at temperature 1
        return dict(do_sample=True, temperature=1.0, top_k=0, top_p=1.0)
    return dict(do_sample=False, temperature=None, top_p=None, top_k=None)


def adds_bos(tokenizer) -> bool:
    ids = tokenizer("a")["input_ids"]
    return tokenizer.bos_token_id is not None and ids[:1] == [tokenizer.bos_token_id]


def trl_prompt(tokenizer, prompt: str) -> str:
    """The prompt as TRL's trainers (SFT, GRPO) must receive it to tokenize it as evaluation
    does: TRL always adds special tokens, so a prompt that already carries its BOS text (a
    chat template wrote it, as Llama 2's does) drops it when the tokenizer adds a BOS itself."""
    if not needs_special_tokens(tokenizer, prompt) and adds_bos(tokenizer):
        return prompt[len(tokenizer.bos_token):]
    return prompt


@torch.inference_mode()
def generate_answers(model, tokenizer, prompts: list[str], batch_size: int = 8,
                     max_new_tokens: int = 16, desc: str = "generating",
                     decoding: Decoding = PROTOCOLS["suite"].decoding, seed: int = 0) -> list[str]:
    """Continuations of `prompts`, in input order.

    Prompts are batched in order of length so that left-padding wastes little compute.
    Each sequence stops at EOS, at `max_new_tokens` (or, for a decoding that draws its
    length, a length drawn per batch with `seed`), and at `</Judgement>` if the decoding
    says so. Sampling draws from torch's generator, which the caller seeds.
    """
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    outputs: list[str] = [""] * len(prompts)
    device = next(model.parameters()).device
    lengths = random.Random(seed)
    stop = dict(stop_strings=[CLOSE_TAG], tokenizer=tokenizer) if decoding.stop_at_close_tag else {}
    with tqdm(total=len(prompts), desc=desc, unit="ex") as progress:
        for start in range(0, len(order), batch_size):
            batch = order[start:start + batch_size]
            texts = [prompts[i] for i in batch]
            encoded = tokenizer(texts, return_tensors="pt", padding=True,
                                add_special_tokens=needs_special_tokens(tokenizer, texts[0])).to(device)
            if decoding.new_tokens:
                max_new_tokens = lengths.randrange(*decoding.new_tokens)
            generated = model.generate(
                **encoded, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id,
                **stop, **_decoding_options(decoding))
            new_tokens = generated[:, encoded["input_ids"].shape[1]:]
            for i, text in zip(batch, tokenizer.batch_decode(new_tokens, skip_special_tokens=True)):
                outputs[i] = text
            progress.update(len(batch))
    return outputs
