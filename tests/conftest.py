"""Shared test fixtures."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

TINY_SENTENCES = [
    "You are an expert annotator for natural language understanding tasks.",
    "Read the input, then give your judgement as exactly one of the allowed answers.",
    "Human: Is the sentence grammatical? Allowed answers: Yes, No.",
    "Sentence: The cat sat on the mat. Premise: A man plays. Hypothesis: Someone plays.",
    "Assistant: <Judgement>Yes</Judgement> <Judgement>No</Judgement>",
    "Positive Negative Entailment Contradiction Neutral True False 0.0 1.5 5.0",
]


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A 2-layer, 64-wide Llama with random weights and a byte-level BPE tokenizer trained
    here on a few sentences; `<Judgement>` and `</Judgement>` are single tokens, and the
    tokenizer has separate eos and pad tokens. Returns the folder (a str) to load from."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    folder = tmp_path_factory.mktemp("tiny-llama")
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(TINY_SENTENCES, trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<pad>", "</s>"], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="</s>", pad_token="<pad>")
    tokenizer.add_tokens(["<Judgement>", "</Judgement>"])  # whole tokens, kept when decoding
    tokenizer.save_pretrained(folder)

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=512, tie_word_embeddings=True,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                         bos_token_id=None,
                         # Wider than the default 0.02, so LoRA can move the logits within a few steps.
                         initializer_range=0.1)
    LlamaForCausalLM(config).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def one_thread():
    """On 2 shared cores a tiny model runs ~10x faster single-threaded. RL test modules use it
    for all their tests (`pytestmark`); their kill-and-resume subprocesses use the same setting
    so both compute identically."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def learnable_model_dir(tiny_model_dir, tmp_path_factory):
    """The tiny Llama's architecture and tokenizer with weights of our own: 0.02-std layers
    and 6x larger (tied) embeddings, so the logits are peaked enough for LoRA to make "Yes"
    likely, while it is still said only ~5% of the time at the start."""
    import torch
    from transformers import AutoConfig, LlamaForCausalLM

    folder = tmp_path_factory.mktemp("tiny-learnable")
    config = AutoConfig.from_pretrained(tiny_model_dir)
    config.initializer_range = 0.02
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        model.get_input_embeddings().weight.mul_(6.0)
    model.save_pretrained(folder)
    for name in os.listdir(tiny_model_dir):
        if name.startswith("tokenizer"):
            shutil.copy(Path(tiny_model_dir) / name, folder)
    return str(folder)


@pytest.fixture(scope="session")
def rte_rows():
    """Makes `n` RTE prompt rows, all labelled entailment (answered "Yes")."""
    def make(n: int) -> list[dict]:
        return [{"idx": i, "label": "entailment",
                 "prompt": f"Human: Premise: A man plays {i}. Hypothesis: Someone plays.\n\n"
                           "Assistant: <Judgement>"} for i in range(n)]

    return make


@pytest.fixture(scope="session")
def yes_or_not():
    """+1 for a correct answer, -1 otherwise: on `rte_rows`, +1 iff the answer is "Yes"."""
    from rlnlu.answers import RewardScheme

    return RewardScheme(correct=1.0, wrong=-1.0, invalid=-1.0)


@pytest.fixture(scope="session")
def random_lora_model(tiny_model_dir):
    """Returns a function making a LoRA-wrapped tiny model whose B matrices are random, so
    the adapter changes the model as a trained one would (fresh adapters are zero)."""
    def make():
        import torch
        from peft import get_peft_model
        from transformers import AutoModelForCausalLM

        from rlnlu.models import lora_config

        torch.manual_seed(0)
        model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                               lora_config(r=4, bias="none"))
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                if "lora_B" in name:
                    parameter.normal_(0, 0.5)
        return model
    return make
