"""FLOP counts of a decoder-only transformer's forward passes, training steps, generation and
PPO/SFT steps, in the MFU convention (2 FLOPs per multiply-add, real tokens only)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelShape:
    """The matmul shapes of a decoder-only transformer (Llama/Qwen/MPT style)."""
    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    gated_mlp: bool = True  # SwiGLU (gate, up, down) or a plain 2-matrix MLP (MPT)

    @classmethod
    def from_config(cls, config) -> "ModelShape":
        """From a transformers config (or anything with the same attribute names)."""
        heads = config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        return cls(layers=config.num_hidden_layers, hidden=config.hidden_size,
                   intermediate=config.intermediate_size, heads=heads,
                   kv_heads=getattr(config, "num_key_value_heads", None) or heads,
                   head_dim=head_dim, vocab=config.vocab_size)

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """(in_features, out_features) of each linear layer of one block."""
        q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        shapes = {"q_proj": (self.hidden, q), "k_proj": (self.hidden, kv),
                  "v_proj": (self.hidden, kv), "o_proj": (q, self.hidden)}
        if self.gated_mlp:
            shapes.update(gate_proj=(self.hidden, self.intermediate),
                          up_proj=(self.hidden, self.intermediate),
                          down_proj=(self.intermediate, self.hidden))
        else:
            shapes.update(up_proj=(self.hidden, self.intermediate),
                          down_proj=(self.intermediate, self.hidden))
        return shapes

    @property
    def block_params(self) -> int:
        """Weights of the blocks' linear layers (no embeddings, norms or biases)."""
        return self.layers * sum(i * o for i, o in self.linear_shapes().values())

    @property
    def lm_head_params(self) -> int:
        return self.vocab * self.hidden

    def lora_params(self, rank: int, targets) -> int:
        """Weights of rank-`rank` LoRA adapters on the named linear layers of every block
        ("all-linear": every linear layer of the blocks, as PEFT reads it; not the lm_head;
        None: PEFT's default for the architecture, the query and value projections)."""
        shapes = self.linear_shapes()
        if targets is None:
            # PEFT's default for Llama and Qwen2; MPT's, its fused Wqkv (hidden -> 3·hidden,
            # no grouped keys), has the same r·4·hidden weights per block.
            targets = ["q_proj", "v_proj"]
        if targets == "all-linear":
            targets = list(shapes)
        unknown = sorted(set(targets) - set(shapes))
        if unknown:
            raise ValueError(f"no linear layer named {unknown}; the blocks have {sorted(shapes)}")
        return self.layers * sum(rank * sum(shapes[name]) for name in targets)

    def attention_flops(self, queries: int, keys: int) -> int:
        """Scores and weighted values, all layers: 2 matmuls of queries×keys×(heads·head_dim),
        2 FLOPs per multiply-add. Causal masking is not halved (the PaLM/MFU convention)."""
        return 4 * self.layers * self.heads * self.head_dim * queries * keys


def forward_flops(shape: ModelShape, seq_lens, lm_head_positions: int, lora_params: int = 0) -> int:
    """One forward pass over sequences of the given lengths (real tokens only): 2 FLOPs per
    weight per token in the blocks (+ LoRA), attention over each sequence, and the lm_head
    over `lm_head_positions` positions (only those whose logits are needed)."""
    tokens = sum(seq_lens)
    return (2 * (shape.block_params + lora_params) * tokens
            + sum(shape.attention_flops(s, s) for s in seq_lens)
            + 2 * shape.lm_head_params * lm_head_positions)


def train_flops(shape: ModelShape, seq_lens, lm_head_positions: int, lora_params: int = 0,
                frozen_base: bool = True, recompute: bool = False) -> int:
    """Forward + backward of one training step.

    Full training (frozen_base=False): 3 × forward (backward = activation + weight gradients).
    LoRA on a frozen base (the convention used here): the frozen linear layers and the lm_head
    need only activation gradients, so their backward ≈ 1 × forward (2 × in total); attention
    has no weights, every backward matmul is needed: 3 × its forward; the LoRA matrices get both
    gradients: 3 × their forward. `recompute` adds one more forward of the blocks (activation
    checkpointing, on by default for the project's TRL trainers on GPU)."""
    tokens = sum(seq_lens)
    linear = 2 * shape.block_params * tokens + 2 * shape.lm_head_params * lm_head_positions
    attention = sum(shape.attention_flops(s, s) for s in seq_lens)
    lora = 2 * lora_params * tokens
    if not frozen_base:
        total = 3 * (linear + attention + lora)
    else:
        total = 2 * linear + 3 * attention + 3 * lora
    if recompute:
        total += 2 * (shape.block_params + lora_params) * tokens + attention
    return total


def generation_flops(shape: ModelShape, prompt_lens, new_tokens: int, lora_params: int = 0) -> int:
    """Prefill each prompt (logits at its last position only) and decode `new_tokens` − 1 more
    tokens one at a time against the key/value cache."""
    total = 0
    for p in prompt_lens:
        total += 2 * (shape.block_params + lora_params) * p + shape.attention_flops(p, p)
        total += 2 * shape.lm_head_params  # the first new token
        for j in range(1, new_tokens):
            total += (2 * (shape.block_params + lora_params + shape.lm_head_params)
                      + shape.attention_flops(1, p + j))
    return total


def ppo_step_flops(shape: ModelShape, prompt_lens, response_len: int, ppo_epochs: int = 1,
                   lora_params: int = 0) -> dict:
    """The work one PPO step needs, defined once for both implementations: sample
    `response_len` tokens per prompt (the sampling pass also yields the policy's log-probs
    and values); one forward of the reference (no adapter) over prompt + response, with the
    lm_head at response positions; `ppo_epochs` LoRA training passes over the same. Value
    heads (hidden → 1) are negligible. A separate policy forward pass is not needed work."""
    seqs = [p + response_len for p in prompt_lens]
    positions = len(prompt_lens) * response_len
    parts = {
        "rollout": generation_flops(shape, prompt_lens, response_len, lora_params),
        "reference_forward": forward_flops(shape, seqs, positions),
        "update": ppo_epochs * train_flops(shape, seqs, positions, lora_params),
    }
    parts["total"] = sum(parts.values())
    return parts


def sft_step_flops(shape: ModelShape, seq_lens, loss_positions: int, lora_params: int = 0) -> int:
    """One LoRA SFT step: blocks over every real token, the lm_head only where there is a
    loss (the completion tokens) — the work needed, whatever an implementation computes."""
    return train_flops(shape, seq_lens, loss_positions, lora_params)
