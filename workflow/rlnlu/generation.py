"""Batched greedy generation that stops each answer at `</Judgement>` (or a token cap).

The prompts of a cell share their opening (the chat template and the system turn; with
fixed few-shot examples, the examples too): its keys and values are computed once and
reused by every batch, so each batch only encodes what differs.
"""
from __future__ import annotations

import copy

import torch
from tqdm.auto import tqdm

from .answers import CLOSE_TAG

# A shared opening shorter than this is not worth a separate forward pass.
MIN_SHARED_TOKENS = 8


def needs_special_tokens(tokenizer, prompt: str) -> bool:
    """A chat-template prompt already carries its BOS; a plain prompt needs the tokenizer's."""
    return not (tokenizer.bos_token and prompt.startswith(tokenizer.bos_token))


def shared_prefix_length(token_lists: list[list[int]]) -> int:
    """The number of leading tokens all lists share, leaving every list at least one token."""
    shortest = min(len(ids) for ids in token_lists)
    first = token_lists[0]
    length = 0
    while length < shortest - 1 and all(ids[length] == first[length] for ids in token_lists):
        length += 1
    return length


@torch.inference_mode()
def generate_answers(model, tokenizer, prompts: list[str], batch_size: int = 8,
                     max_new_tokens: int = 16, desc: str = "generating") -> list[str]:
    """Greedy continuations of `prompts`, in input order.

    Prompts are batched in order of length so that padding wastes little compute, and each
    sequence stops once it has written `</Judgement>` or EOS. The part after the shared
    opening is left-padded, so padding sits between the opening and the rest; positions
    come from the attention mask, so each token keeps its unpadded position.
    """
    if not prompts:
        return []
    special = needs_special_tokens(tokenizer, prompts[0])
    encoded = [tokenizer(text, add_special_tokens=special)["input_ids"] for text in prompts]
    shared = shared_prefix_length(encoded)
    if shared < MIN_SHARED_TOKENS:
        shared = 0
    device = next(model.parameters()).device
    prefix_cache = None
    if shared:
        prefix_cache = model(input_ids=torch.tensor([encoded[0][:shared]], device=device),
                             use_cache=True).past_key_values

    order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))
    outputs: list[str] = [""] * len(prompts)
    pad = tokenizer.pad_token_id
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
            input_ids = torch.tensor(rows, device=device)
            generated = model.generate(
                input_ids=input_ids, attention_mask=torch.tensor(masks, device=device),
                do_sample=False, max_new_tokens=max_new_tokens,
                stop_strings=[CLOSE_TAG], tokenizer=tokenizer,
                pad_token_id=pad, temperature=None, top_p=None, top_k=None, **kwargs)
            new_tokens = generated[:, input_ids.shape[1]:]
            for i, text in zip(batch, tokenizer.batch_decode(new_tokens, skip_special_tokens=True)):
                outputs[i] = text
            progress.update(len(batch))
    return outputs
