"""Batched generation of answers: greedy and stopping at `</Judgement>` (the suite's
protocol), or sampled with a length drawn per batch, stopping only at EOS (the paper's).

The prompts of a cell share their opening (the chat template and the system turn; with
fixed few-shot examples, the examples too): its keys and values are computed once and
reused by every batch, so each batch only encodes what differs.
"""
from __future__ import annotations

import copy
import random

import torch
from tqdm.auto import tqdm

from .answers import CLOSE_TAG
from .protocols import PROTOCOLS, Decoding

# A shared opening shorter than this is not worth a separate forward pass.
MIN_SHARED_TOKENS = 8


def needs_special_tokens(tokenizer, prompt: str) -> bool:
    """A chat-template prompt already carries its BOS; a plain prompt needs the tokenizer's."""
    return not (tokenizer.bos_token and prompt.startswith(tokenizer.bos_token))


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


def shared_prefix_length(token_lists: list[list[int]]) -> int:
    """The number of leading tokens all lists share, leaving every list at least one token."""
    shortest = min(len(ids) for ids in token_lists)
    first = token_lists[0]
    length = 0
    while length < shortest - 1 and all(ids[length] == first[length] for ids in token_lists):
        length += 1
    return length


def reusable_opening_length(token_lists: list[list[int]]) -> int:
    """The shared opening worth encoding once: `shared_prefix_length`, or 0 when shorter
    than MIN_SHARED_TOKENS."""
    shared = shared_prefix_length(token_lists)
    return shared if shared >= MIN_SHARED_TOKENS else 0


def _decoding_options(decoding: Decoding) -> dict:
    if decoding.sample:  # the paper's top_k 0 / top_p 1: plain sampling at temperature 1
        return dict(do_sample=True, temperature=1.0, top_k=0, top_p=1.0)
    return dict(do_sample=False, temperature=None, top_p=None, top_k=None)


@torch.inference_mode()
def generate_answers(model, tokenizer, prompts: list[str], batch_size: int = 8,
                     max_new_tokens: int = 16, desc: str = "generating",
                     decoding: Decoding = PROTOCOLS["suite"].decoding, seed: int = 0) -> list[str]:
    """Continuations of `prompts`, in input order.

    Prompts are batched in order of length so that padding wastes little compute. Each
    sequence stops at EOS, at `max_new_tokens` (or, for a decoding that draws its length, a
    length drawn per batch with `seed`), and at `</Judgement>` if the decoding says so.
    Sampling draws from torch's generator, which the caller seeds. The part after the shared
    opening is left-padded, so padding sits between the opening and the rest; positions come
    from the attention mask, so each token keeps its unpadded position.
    """
    if not prompts:
        return []
    special = needs_special_tokens(tokenizer, prompts[0])
    encoded = [tokenizer(text, add_special_tokens=special)["input_ids"] for text in prompts]
    shared = reusable_opening_length(encoded)
    device = next(model.parameters()).device
    prefix_cache = None
    if shared:
        prefix_cache = model(input_ids=torch.tensor([encoded[0][:shared]], device=device),
                             use_cache=True).past_key_values

    order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))
    outputs: list[str] = [""] * len(prompts)
    pad = tokenizer.pad_token_id
    lengths = random.Random(seed)
    stop = dict(stop_strings=[CLOSE_TAG], tokenizer=tokenizer) if decoding.stop_at_close_tag else {}
    with tqdm(total=len(prompts), desc=desc, unit="ex") as progress:
        for start in range(0, len(order), batch_size):
            batch = order[start:start + batch_size]
            width = max(len(encoded[i]) for i in batch) - shared
            rows, masks = [], []
            for i in batch:
                rest = encoded[i][shared:]
                rows.append(encoded[i][:shared] + [pad] * (width - len(rest)) + rest)
                masks.append([1] * shared + [0] * (width - len(rest)) + [1] * len(rest))
            kwargs = {}
            if prefix_cache is not None:
                cache = copy.deepcopy(prefix_cache)
                cache.batch_repeat_interleave(len(batch))
                kwargs["cache"] = cache
            if decoding.new_tokens:
                max_new_tokens = lengths.randrange(*decoding.new_tokens)
            input_ids = torch.tensor(rows, device=device)
            generated = model.generate(
                input_ids=input_ids, attention_mask=torch.tensor(masks, device=device),
                max_new_tokens=max_new_tokens, pad_token_id=pad, **stop,
                **_decoding_options(decoding), **kwargs)
            new_tokens = generated[:, input_ids.shape[1]:]
            for i, text in zip(batch, tokenizer.batch_decode(new_tokens, skip_special_tokens=True)):
                outputs[i] = text
            progress.update(len(batch))
    return outputs
