"""Shared test fixtures."""
from __future__ import annotations

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
