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


def byte_level_bpe(texts, vocab_size: int, special_tokens: list[str]):
    """A byte-level BPE (as GPT-2, GPT-NeoX and Qwen2 use) trained here on `texts`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=special_tokens, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return bpe


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A 2-layer, 64-wide Llama with random weights and a byte-level BPE tokenizer trained
    here on a few sentences; `<Judgement>` and `</Judgement>` are single tokens, and the
    tokenizer has separate eos and pad tokens. Returns the folder (a str) to load from."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    folder = tmp_path_factory.mktemp("tiny-llama")
    bpe = byte_level_bpe(TINY_SENTENCES, 400, ["<pad>", "</s>"])
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


# ---- small stand-ins of the paper's three models ----

# Chat templates in the format each real model's tokenizer_config.json carries (Llama 2's
# [INST]/<<SYS>> turns, Qwen2.5's ChatML); MPT-7B-chat ships none (registry: chat_template false).
LLAMA2_CHAT_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
    "{% set system_message = '<<SYS>>\\n' + messages[0]['content'] + '\\n<</SYS>>\\n\\n' %}"
    "{% else %}{% set loop_messages = messages %}{% set system_message = '' %}{% endif %}"
    "{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}"
    "{% if loop.index0 == 0 %}{% set content = system_message + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' ' + content.strip() + ' ' + eos_token }}{% endif %}"
    "{% endfor %}")
CHATML_TEMPLATE = (
    "{% if messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")


def corpus_lines(paths) -> list[str]:
    """Text to train a stand-in's tokenizer on: the prompts' own words and the task files."""
    from rlnlu import prompts

    lines = [*TINY_SENTENCES, prompts.SYSTEM]
    for path in paths:
        lines += Path(path).read_text(encoding="utf-8").splitlines()
    return lines


def write_paper_standins(folder: Path, corpus: list[str]) -> dict[str, str]:
    """Tiny random stand-ins of the paper's models, each a hub-style folder (config, weights,
    generation config, tokenizer) as `hf download` leaves it, keyed by the paper registry's
    names. Each keeps what sets its real model apart:
      - llama2-7b-chat: Llama, SentencePiece-style tokenizer that adds <s>, no pad token,
        untied embeddings, the [INST] chat template;
      - qwen2.5-7b-instruct: Qwen2 (q/k/v projections with biases), byte-level BPE without a
        BOS, eos <|im_end|> and pad <|endoftext|>, ChatML;
      - mpt-7b-chat: MPT (ALiBi, fused Wqkv, no biases), GPT-NeoX-style tokenizer whose bos,
        eos and unk are all <|endoftext|> and which has no pad token, no chat template, and a
        config.json whose auto_map names remote code that is not there (loading must use
        transformers' own MPT class, never trust_remote_code)."""
    import json

    import torch
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import (GenerationConfig, LlamaConfig, LlamaForCausalLM, MptConfig,
                              MptForCausalLM, PreTrainedTokenizerFast, Qwen2Config,
                              Qwen2ForCausalLM)

    sizes = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                 tie_word_embeddings=False)
    made = {}

    # Llama 2: BPE over "▁"-marked words (SentencePiece style), <s> prepended on encoding.
    spm = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    spm.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    spm.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(),
                                     decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    spm.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=1200, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False))
    spm.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)])
    llama_tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=spm, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
        chat_template=LLAMA2_CHAT_TEMPLATE)
    torch.manual_seed(0)
    llama = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(llama_tokenizer), bos_token_id=1, eos_token_id=2, pad_token_id=None,
        **sizes))
    made["llama2-7b-chat"] = (llama, llama_tokenizer,
                              GenerationConfig(bos_token_id=1, eos_token_id=2, pad_token_id=0))

    # Qwen2.5: byte-level BPE, no BOS, ChatML; the model stops at <|im_end|> or <|endoftext|>.
    qwen_bpe = byte_level_bpe(corpus, 1200, ["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    qwen_tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=qwen_bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>",
        chat_template=CHATML_TEMPLATE)
    endoftext, im_end = qwen_tokenizer.convert_tokens_to_ids(["<|endoftext|>", "<|im_end|>"])
    torch.manual_seed(0)
    qwen = Qwen2ForCausalLM(Qwen2Config(
        vocab_size=len(qwen_tokenizer), bos_token_id=endoftext, eos_token_id=endoftext, **sizes))
    assert qwen.model.layers[0].self_attn.q_proj.bias is not None  # Qwen2's q/k/v biases
    made["qwen2.5-7b-instruct"] = (qwen, qwen_tokenizer, GenerationConfig(
        bos_token_id=endoftext, eos_token_id=[im_end, endoftext], pad_token_id=endoftext))

    # MPT-7B: GPT-NeoX's byte-level BPE with one <|endoftext|> for bos/eos/unk and no pad.
    neox_bpe = byte_level_bpe(corpus, 1200, ["<|endoftext|>", "<|padding|>"])
    mpt_tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=neox_bpe, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
        unk_token="<|endoftext|>")
    torch.manual_seed(0)
    mpt = MptForCausalLM(MptConfig(
        vocab_size=len(mpt_tokenizer), d_model=64, n_heads=4, n_layers=2, expansion_ratio=2,
        max_seq_len=2048, no_bias=True, bos_token_id=0, eos_token_id=0))
    made["mpt-7b-chat"] = (mpt, mpt_tokenizer, GenerationConfig(bos_token_id=0, eos_token_id=0))

    folders = {}
    for key, (model, tokenizer, generation_config) in made.items():
        target = folder / key
        model.generation_config = generation_config
        model.save_pretrained(target)
        tokenizer.save_pretrained(target)
        folders[key] = str(target)
    config_path = folder / "mpt-7b-chat" / "config.json"
    config = json.loads(config_path.read_text())
    config["auto_map"] = {"AutoConfig": "configuration_mpt.MPTConfig",
                          "AutoModelForCausalLM": "modeling_mpt.MPTForCausalLM"}
    config_path.write_text(json.dumps(config, indent=2))
    return folders
