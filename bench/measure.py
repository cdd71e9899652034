"""The measurements: the machine's matmul rate, the evaluator against the paper's loop, a PPO
step against TRL 1.12's PPOTrainer (each side in its own subprocess), an SFT step against a
plain PEFT loop, and planning the paper's grid; with the timing and memory helpers they share."""
from __future__ import annotations

import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

from .config import REPO, load_config
from .flops import ModelShape, ppo_step_flops, sft_step_flops

TRL_BASELINE_VERSION = "1.12.0"  # the last trl release with PPOTrainer
QKVO = ["q_proj", "k_proj", "v_proj", "o_proj"]


# ====================================================================== helpers

def _now() -> float:
    return time.perf_counter()


def _cpu_seconds() -> float:
    """CPU time of this process (all threads): on a loaded machine a steadier measure of a
    step's work than its wall time."""
    import resource

    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def _peak_rss_mib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _reset_peak_rss() -> bool:
    """Reset this process's peak RSS to its current RSS (Linux: /proc/self/clear_refs), so
    two measurements in one process each get their own peak; False where unsupported."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _peak_rss_since_reset_mib() -> float | None:
    """The peak RSS since `_reset_peak_rss` (VmHWM), or None where /proc is not there."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def _rss_mib() -> float:
    try:
        import psutil

        return psutil.Process().memory_info().rss / 2 ** 20
    except ImportError:  # pragma: no cover
        return float("nan")


def check_model(model: str) -> None:
    if not (Path(model) / "config.json").is_file():
        raise SystemExit(
            f"The benchmark model is missing: {model} has no config.json.\n"
            "Convert the embedded SmolLM2-135M first, with the workflow's convert rule:\n"
            "    snakemake --cores 1 resources/models/smollm2-135m")


def check_data(data: str) -> None:
    from rlnlu.data import missing_data_message
    from rlnlu.tasks import get_task

    task = get_task("glue", "sst2")
    for split in ("validation", "train"):
        if message := missing_data_message(task, split, data):
            raise SystemExit(f"The benchmark data is missing: {message}")


def _sst2_rows(data: str, split: str, tokenizer, limit: int | None, seed: int) -> list[dict]:
    from rlnlu.data import load_split
    from rlnlu.prompts import PromptStyle, render_split
    from rlnlu.sampling import subsample
    from rlnlu.tasks import get_task

    task = get_task("glue", "sst2")
    records = subsample(load_split(task, split, "local", data), limit, seed)
    return list(render_split(task, records, None, PromptStyle(shots=0, chat_template=True),
                             tokenizer))


# ====================================================================== matmul

def bench_matmul(device: str, dtype_name: str, quick: bool) -> dict:
    import torch

    from rlnlu.models import resolve_dtype

    dtype = resolve_dtype(dtype_name, device)
    sizes = [256, 512] if quick else ([1024, 2048] if device == "cpu" else [4096, 8192])
    budget = 0.2 if quick else 1.0  # seconds per size
    best, per_size = 0.0, {}
    for n in sizes:
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        for _ in range(2):
            a @ b
        _sync(device)
        reps, start = 0, _now()
        while True:
            a @ b
            reps += 1
            if reps % 4 == 0:
                _sync(device)
                if _now() - start >= budget:
                    break
        _sync(device)
        rate = 2 * n ** 3 * reps / (_now() - start)
        per_size[str(n)] = rate
        best = max(best, rate)
    return {"status": "ok", "device": device, "dtype": str(dtype).removeprefix("torch."),
            "flops_per_s": best, "per_size": per_size, "threads": torch.get_num_threads()}


# ====================================================================== evaluation

def paper_generate(model, tokenizer, prompts: list[str], batch_size: int = 4,
                   min_new_tokens: int = 24, max_new_tokens: int = 31, seed: int = 0):
    """The paper's released inference loop: prompts in data order, batches of 4, left-padded,
    a number of new tokens drawn per batch from [24, 31], greedy, stopping only when every
    sequence has written end-of-sequence. Returns (texts, new tokens generated)."""
    import torch

    from rlnlu.generation import needs_special_tokens

    rng = random.Random(seed)
    device = next(model.parameters()).device
    texts, generated = [], 0
    with torch.inference_mode():
        for start in range(0, len(prompts), batch_size):
            batch = prompts[start:start + batch_size]
            encoded = tokenizer(batch, return_tensors="pt", padding=True,
                                add_special_tokens=needs_special_tokens(tokenizer, batch[0])).to(device)
            out = model.generate(**encoded, do_sample=False,
                                 max_new_tokens=rng.randint(min_new_tokens, max_new_tokens),
                                 pad_token_id=tokenizer.pad_token_id, temperature=None,
                                 top_p=None, top_k=None)
            new = out[:, encoded["input_ids"].shape[1]:]
            generated += int(new.numel())
            texts += tokenizer.batch_decode(new, skip_special_tokens=True)
    return texts, generated


def bench_eval(args, device: str) -> dict:
    from rlnlu.answers import parse_answer
    from rlnlu.generation import generate_answers
    from rlnlu.models import load_model, load_tokenizer
    from rlnlu.tasks import get_task

    inference = load_config("config.yaml")["inference"]
    batch_size, max_new = inference["batch_size"], inference["max_new_tokens"]
    task = get_task("glue", "sst2")
    tokenizer = load_tokenizer(args.model)
    limit = args.eval_examples or None
    rows = _sst2_rows(args.data, "validation", tokenizer, limit, args.seed)
    prompts = [row["prompt"] for row in rows]
    model = load_model(args.model, args.dtype, device)

    # warm-up of both code paths (first-call allocations, thread pools)
    generate_answers(model, tokenizer, prompts[:2], batch_size=2, max_new_tokens=2, desc="warm-up")
    paper_generate(model, tokenizer, prompts[:2], 2, 2, 2)

    _sync(device)
    start = _now()
    project_texts = generate_answers(model, tokenizer, prompts, batch_size=batch_size,
                                     max_new_tokens=max_new, desc="project evaluator")
    _sync(device)
    project_seconds = _now() - start
    start = _now()
    paper_texts, paper_tokens = paper_generate(model, tokenizer, prompts, seed=args.seed)
    _sync(device)
    paper_seconds = _now() - start

    def side(texts, seconds, **extra):
        parsed = [parse_answer(task, text) for text in texts]
        return dict(examples_per_s=len(texts) / seconds, seconds=seconds,
                    accuracy=sum(a.label == r["label"] for a, r in zip(parsed, rows)) / len(rows),
                    invalid_rate=sum(not a.valid for a in parsed) / len(rows), **extra), parsed

    project, project_parsed = side(
        project_texts, project_seconds, batch_size=batch_size, max_new_tokens=max_new,
        stop="</Judgement> or EOS", order="sorted by prompt length")
    baseline, paper_parsed = side(
        paper_texts, paper_seconds, batch_size=4, new_tokens="24-31 per batch", stop="EOS only",
        order="data order", new_token_slots=paper_tokens)
    agreement = sum(a.label == b.label for a, b in zip(project_parsed, paper_parsed)) / len(rows)
    lengths = [len(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts]
    return {"status": "ok", "task": "glue/sst2", "split": "validation", "examples": len(rows),
            "mean_prompt_tokens": sum(lengths) / len(lengths), "decoding": "greedy",
            "project": project, "baseline": baseline,
            "speedup": project["examples_per_s"] / baseline["examples_per_s"],
            "agreement": agreement,
            "examples_shown": [{"gold": r["label"], "project": a, "paper": b}
                               for r, a, b in list(zip(rows, project_texts, paper_texts))[:5]]}


# ====================================================================== PPO (one subprocess per side)

def _ppo_spec(args, device: str) -> dict:
    from rlnlu.models import load_tokenizer

    tokenizer = load_tokenizer(args.model)
    prompts = args.ppo_prompts
    rows = _sst2_rows(args.data, "train", tokenizer, prompts, args.seed)[:prompts]
    return {"model": args.model, "device": device, "dtype": args.dtype, "seed": args.seed,
            "rows": [{"prompt": r["prompt"], "label": r["label"]} for r in rows],
            "response_length": args.ppo_tokens, "steps": args.ppo_steps,
            "warmup_steps": args.ppo_warmup, "learning_rate": 1e-4, "kl_coef": 0.2,
            "lora": {"lora_r": 16, "lora_alpha": 32, "lora_dropout": 0.05, "lora_rslora": True,
                     "lora_bias": "lora_only", "lora_target_modules": QKVO},
            "workflow": str(REPO / "workflow")}


def _child_ppo_project(spec: dict) -> dict:
    """The project's PPO: rlnlu.ppo.train_ppo for warmup + measured steps, each step timed by
    train_ppo itself from the start of its rollout to the end of its PPO update."""
    import torch

    from rlnlu.ppo import train_ppo
    from rlnlu.settings import KLSettings, PPOSettings
    from rlnlu.tasks import get_task

    n = len(spec["rows"])
    settings = PPOSettings(
        **spec["lora"], kl=KLSettings(init_kl_coef=spec["kl_coef"], adaptive=False),
        learning_rate=spec["learning_rate"], optimizer="adamw", prompts_per_step=n,
        mini_batch_size=n, ppo_epochs=1, steps=spec["warmup_steps"] + spec["steps"],
        response_length_min=spec["response_length"], response_length_max=spec["response_length"],
        save_steps=0, seed=spec["seed"], dtype=spec["dtype"], device=spec["device"])
    steps: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="bench-ppo-") as tmp:
        tmp = Path(tmp)
        summary = train_ppo(spec["model"], spec["rows"], get_task("glue", "sst2"),
                            tmp / "adapter", tmp / "work", settings, tmp / "curve.csv",
                            log=lambda message: None, on_step=steps.append)
    return {"implementation": "rlnlu.ppo.train_ppo",
            "step_seconds_all": [step["step_seconds"] for step in steps],
            "response_tokens_mean": [step["response_tokens_mean"] for step in steps],
            "reward": summary["final"].get("reward"),
            "notes": "value head on the policy backbone; reference = PPO adapter disabled; "
                     "log-probs at response positions only; stops at </Judgement> or EOS",
            "torch_threads": torch.get_num_threads()}


def _answer_reward_model(tokenizer, rows: list[dict], task, device):
    """A reward 'model' for TRL's PPOTrainer: get_reward() calls `model.<base_model_prefix>(...)`
    and `model.score(hidden_states[-1])`, then reads the score at each sequence's last token.
    Here the backbone decodes the response after its (known) prompt and scores it with
    rlnlu.answers, the project's own reward; every position carries that score."""
    import torch
    from torch import nn

    from rlnlu.answers import parse_answer, reward
    from rlnlu.generation import needs_special_tokens

    prompts = [(tokenizer(r["prompt"], add_special_tokens=needs_special_tokens(
        tokenizer, r["prompt"]))["input_ids"], r["label"]) for r in rows]

    class Output:
        def __init__(self, hidden):
            self.hidden_states = (hidden,)

    class AnswerBackbone(nn.Module):
        calls = matched = 0

        def forward(self, input_ids, attention_mask, **kwargs):
            scores = []
            for ids, mask in zip(input_ids.tolist(), attention_mask.tolist()):
                tokens = [t for t, m in zip(ids, mask) if m]
                gold, response = None, tokens
                for prompt, label in prompts:
                    if tokens[:len(prompt)] == prompt:
                        gold, response = label, tokens[len(prompt):]
                        break
                AnswerBackbone.calls += 1
                AnswerBackbone.matched += gold is not None
                answer = parse_answer(task, tokenizer.decode(response, skip_special_tokens=True))
                scores.append(reward(task, answer, gold) if gold is not None else -3.0)
            values = torch.tensor(scores, dtype=torch.float32, device=input_ids.device)
            return Output(values[:, None, None].expand(-1, input_ids.size(1), 1))

    class AnswerReward(nn.Module):
        base_model_prefix = "backbone"

        def __init__(self):
            super().__init__()
            self.backbone = AnswerBackbone()
            self.score = nn.Identity()

    return AnswerReward().to(device)


def _child_ppo_trl(spec: dict) -> dict:
    """TRL 1.12.0's PPOTrainer (trl.experimental.ppo) with the same model, LoRA, prompts,
    response length, one PPO epoch over one mini-batch of all prompts. TRL needs a separate
    value model (a sequence-classification copy of the model, trained in full, as in TRL's
    examples) and a reward model (the answer parser above)."""
    import torch
    import trl
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    if trl.__version__ != TRL_BASELINE_VERSION:
        raise RuntimeError(f"expected trl {TRL_BASELINE_VERSION} first on sys.path, "
                           f"got {trl.__version__} from {trl.__file__}")
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    from rlnlu.generation import needs_special_tokens
    from rlnlu.models import load_tokenizer, resolve_device, resolve_dtype
    from rlnlu.tasks import get_task
    from rlnlu.settings import LoraSettings

    device = resolve_device(spec["device"])
    dtype = resolve_dtype(spec["dtype"], device)
    torch.manual_seed(spec["seed"])
    tokenizer = load_tokenizer(spec["model"])
    pad_note = None
    if tokenizer.pad_token_id == tokenizer.eos_token_id:
        # TRL treats every pad id as padding, also inside prompts: with pad = EOS = <|im_end|>,
        # the chat template's turn ends would vanish from the model's input. Use another
        # existing special token as pad (no new embeddings); the text tokens are unchanged.
        for candidate in ("<|endoftext|>", tokenizer.unk_token):
            if candidate and candidate in tokenizer.get_vocab() and \
                    tokenizer.convert_tokens_to_ids(candidate) != tokenizer.eos_token_id:
                tokenizer.pad_token = candidate
                pad_note = f"pad token set to {candidate!r} (TRL masks every pad id)"
                break
    rows = spec["rows"]
    n = len(rows)
    dataset = Dataset.from_dict({"input_ids": [
        tokenizer(r["prompt"], add_special_tokens=needs_special_tokens(tokenizer, r["prompt"]))["input_ids"]
        for r in rows]})
    policy = AutoModelForCausalLM.from_pretrained(spec["model"], dtype=dtype)
    value = AutoModelForSequenceClassification.from_pretrained(spec["model"], dtype=dtype, num_labels=1)
    value.config.pad_token_id = tokenizer.pad_token_id
    reward_model = _answer_reward_model(tokenizer, rows, get_task("glue", "sst2"), device)
    steps = spec["warmup_steps"] + spec["steps"]
    on_cpu = device == "cpu"
    marks: list[float] = []

    with tempfile.TemporaryDirectory(prefix="bench-trl-ppo-") as tmp:
        config = PPOConfig(
            output_dir=tmp, report_to="none", save_strategy="no", logging_steps=1,
            per_device_train_batch_size=n, gradient_accumulation_steps=1, num_mini_batches=1,
            local_rollout_forward_batch_size=n, num_ppo_epochs=1, total_episodes=n * steps,
            response_length=spec["response_length"], stop_token="eos", temperature=1.0,
            missing_eos_penalty=None, kl_coef=spec["kl_coef"], learning_rate=spec["learning_rate"],
            num_sample_generations=0, seed=spec["seed"], use_cpu=on_cpu,
            bf16=(not on_cpu and dtype == torch.bfloat16), disable_tqdm=True)
        trainer = PPOTrainer(args=config, processing_class=tokenizer, model=policy,
                             ref_model=None, reward_model=reward_model, train_dataset=dataset,
                             value_model=value, eval_dataset=dataset,
                             peft_config=LoraSettings(**spec["lora"]).lora(),
                             callbacks=[step_timer(device, marks)])
        trainer.train()
        scores = [entry.get("objective/scores") for entry in trainer.state.log_history
                  if "objective/scores" in entry]
    steps_seconds = [b - a for a, b in zip(marks, marks[1:])]
    backbone = type(reward_model.backbone)
    if backbone.matched < backbone.calls:
        raise RuntimeError(f"the reward model found the prompt of only {backbone.matched} of "
                           f"{backbone.calls} sequences: rewards would be wrong")
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    return {"implementation": f"trl {trl.__version__} PPOTrainer (trl.experimental.ppo)",
            "step_seconds_all": steps_seconds, "reward": scores[-1] if scores else None,
            "trainable_parameters": trainable, "pad_note": pad_note,
            "reward_sequences_scored": backbone.calls,
            "notes": "separate value model (full copy, trained in full), reference = policy "
                     "with its adapter disabled, full-vocabulary logits over every position, "
                     "stops at EOS only", "torch_threads": torch.get_num_threads()}


def run_child(kind: str, spec_path: str, result_path: str) -> int:
    """Entry point of a measurement subprocess: run one side, write its result JSON."""
    import torch

    spec = json.loads(Path(spec_path).read_text(encoding="utf-8"))
    result = {"status": "ok"}
    try:
        result.update({"ppo-project": _child_ppo_project, "ppo-trl": _child_ppo_trl}[kind](spec))
        measured = result["step_seconds_all"][spec["warmup_steps"]:]
        result["step_seconds"] = sum(measured) / len(measured) if measured else None
    except Exception:  # recorded in the result: the parent reports it and moves on
        result = {"status": "error", "error": traceback.format_exc()}
    result["peak_rss_mib"] = _peak_rss_mib()
    result["rss_end_mib"] = _rss_mib()
    if torch.cuda.is_available():
        result["peak_cuda_mib"] = torch.cuda.max_memory_allocated() / 2 ** 20
    Path(result_path).write_text(json.dumps(result, indent=2), encoding="utf-8")
    return 0


def ensure_trl(cache_dir: Path, version: str = TRL_BASELINE_VERSION) -> Path:
    """trl==version in its own folder (pip --target --no-deps), never in the project's venv."""
    target = Path(cache_dir).expanduser() / f"trl-{version}"
    if (target / "trl" / "__init__.py").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".trl-{version}-", dir=target.parent))
    try:
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                        "--target", str(tmp), f"trl=={version}"], check=True)
        tmp.rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _run_side(kind: str, spec: dict, out: Path, extra_path: str | None) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    spec_path, result_path = out / f"{kind}.spec.json", out / f"{kind}.result.json"
    log_path = out / "logs" / f"{kind}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    spec_path.write_text(json.dumps(spec), encoding="utf-8")
    result_path.unlink(missing_ok=True)
    env = dict(os.environ)
    paths = [p for p in (extra_path, spec["workflow"], str(REPO), env.get("PYTHONPATH")) if p]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    start = _now()
    with open(log_path, "w", encoding="utf-8") as log:
        proc = subprocess.run([sys.executable, "-m", "bench", "--child", kind,
                               "--spec", str(spec_path), "--result", str(result_path)],
                              stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    wall = _now() - start
    spec_path.unlink(missing_ok=True)
    if not result_path.is_file():
        tail = log_path.read_text(encoding="utf-8", errors="replace")[-3000:]
        return {"status": "error", "error": f"subprocess exited {proc.returncode}:\n{tail}",
                "log": str(log_path)}
    result = json.loads(result_path.read_text(encoding="utf-8"))
    result_path.unlink()
    result.update(process_seconds=wall, log=str(log_path))
    return result


def bench_ppo(args, device: str, shape: ModelShape, matmul: dict | None) -> dict:
    spec = _ppo_spec(args, device)
    out = Path(args.out)
    print(f"[bench] PPO: project side ({len(spec['rows'])} prompts × {spec['response_length']} "
          "tokens) in a subprocess", file=sys.stderr, flush=True)
    project = _run_side("ppo-project", spec, out, None)
    try:
        trl_dir = ensure_trl(Path(args.cache_dir))
    except Exception as err:  # e.g. no package index reachable
        baseline = {"status": "error", "error": f"could not install trl=={TRL_BASELINE_VERSION} "
                                                f"into {args.cache_dir}: {err}"}
    else:
        print(f"[bench] PPO: TRL {TRL_BASELINE_VERSION} side (from {trl_dir}) in a subprocess",
              file=sys.stderr, flush=True)
        baseline = _run_side("ppo-trl", spec, out, str(trl_dir))
        baseline["trl_path"] = str(trl_dir)

    from rlnlu.generation import needs_special_tokens
    from rlnlu.models import load_tokenizer

    tokenizer = load_tokenizer(args.model)
    prompt_lens = [len(tokenizer(r["prompt"], add_special_tokens=needs_special_tokens(
        tokenizer, r["prompt"]))["input_ids"]) for r in spec["rows"]]
    lora = shape.lora_params(spec["lora"]["lora_r"], QKVO)
    flops = ppo_step_flops(shape, prompt_lens, spec["response_length"], 1, lora)
    for side in (project, baseline):
        if side.get("status") == "ok" and side.get("step_seconds") and matmul:
            side["achieved_flops_per_s"] = flops["total"] / side["step_seconds"]
            side["matmul_fraction"] = side["achieved_flops_per_s"] / matmul["flops_per_s"]
    result = {"status": "ok" if project.get("status") == "ok" else "error",
              "prompts": len(spec["rows"]), "response_length": spec["response_length"],
              "mean_prompt_tokens": sum(prompt_lens) / len(prompt_lens),
              "ppo_epochs": 1, "mini_batch": len(spec["rows"]), "lora": spec["lora"],
              "warmup_steps": spec["warmup_steps"], "measured_steps": spec["steps"],
              "flops_per_step": flops, "project": project, "baseline": baseline}
    if project.get("status") == "ok" and baseline.get("status") == "ok":
        result["time_ratio"] = project["step_seconds"] / baseline["step_seconds"]
        result["memory_ratio"] = project["peak_rss_mib"] / baseline["peak_rss_mib"]
    return result


def step_timer(device: str, marks: list[float], cpu_marks: list[float] | None = None):
    """A Trainer callback appending a synchronised timestamp (and, given `cpu_marks`, the
    process's CPU time) at the start and after each step, so both trainers' steps are timed
    the same way."""
    from transformers import TrainerCallback

    def mark():
        _sync(device)
        marks.append(_now())
        if cpu_marks is not None:
            cpu_marks.append(_cpu_seconds())

    class StepTimer(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            mark()

        def on_step_end(self, args, state, control, **kwargs):
            mark()

    return StepTimer()


# ====================================================================== SFT

def bench_sft(args, device: str, shape: ModelShape, matmul: dict | None) -> dict:
    import torch
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from rlnlu.models import load_tokenizer, resolve_dtype
    from rlnlu.settings import SFTSettings
    from rlnlu.sft import build_trainer

    batch, warmup, steps = args.sft_batch, args.sft_warmup, args.sft_steps
    tokenizer = load_tokenizer(args.model)
    rows = _sst2_rows(args.data, "train", tokenizer, batch * (warmup + steps), args.seed)
    project_sft = load_config("config.yaml")["sft"]
    settings = SFTSettings(lora_r=16, lora_target_modules=QKVO, learning_rate=1e-4,
                           micro_batch_tokens=project_sft.get("micro_batch_tokens"),
                           batch_size=batch, max_steps=warmup + steps, save_steps=10 ** 9,
                           logging_steps=1, seed=args.seed, dtype=args.dtype, device=device)
    marks: list[float] = []
    cpu_marks: list[float] = []
    batches: list[dict] = []

    import gc

    peaks = {}
    resettable = _reset_peak_rss()
    with tempfile.TemporaryDirectory(prefix="bench-sft-") as tmp:
        trainer = build_trainer(args.model, rows, tmp, settings)
        trainer.add_callback(step_timer(device, marks, cpu_marks))
        original_step = trainer.training_step

        def training_step(model, inputs, *rest, **kwargs):
            batches.append({k: v.detach().clone() for k, v in inputs.items()
                            if isinstance(v, torch.Tensor)})
            return original_step(model, inputs, *rest, **kwargs)

        trainer.training_step = training_step
        trainer.train()
        del trainer
    peaks["project"] = _peak_rss_since_reset_mib() if resettable else None
    project_steps = [b - a for a, b in zip(marks, marks[1:])][warmup:]
    project_cpu = [b - a for a, b in zip(cpu_marks, cpu_marks[1:])][warmup:]
    gc.collect()
    resettable = _reset_peak_rss()

    # The plain loop: a fresh model with the same LoRA, AdamW at the same rate, gradient
    # clipping as the Trainer does, over exactly the batches the trainer trained on.
    dtype = resolve_dtype(args.dtype, device)
    torch.manual_seed(args.seed)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(args.model, dtype=dtype),
                           settings.lora()).to(device)
    model.train()
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=settings.learning_rate, weight_decay=0.0)
    plain_steps, plain_cpu = [], []
    for inputs in batches:
        _sync(device)
        start, cpu_start = _now(), _cpu_seconds()
        labels = inputs.get("labels")
        if labels is None:  # a collator that marks completions instead of labels
            labels = inputs["input_ids"].masked_fill(inputs["completion_mask"] == 0, -100)
            labels = labels.masked_fill(inputs["attention_mask"] == 0, -100)
        loss = model(input_ids=inputs["input_ids"].to(device),
                     attention_mask=inputs["attention_mask"].to(device),
                     labels=labels.to(device)).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        _sync(device)
        plain_steps.append(_now() - start)
        plain_cpu.append(_cpu_seconds() - cpu_start)
    plain_steps, plain_cpu = plain_steps[warmup:], plain_cpu[warmup:]
    peaks["baseline"] = _peak_rss_since_reset_mib() if resettable else None

    measured = batches[warmup:]
    seq_lens = [[int(n) for n in b["attention_mask"].sum(dim=1).tolist()] for b in measured]
    loss_positions = []
    for b in measured:
        labels = b.get("labels")
        if labels is None:
            loss_positions.append(int((b["completion_mask"] * b["attention_mask"]).sum()))
        else:  # a label at position t is predicted from position t − 1
            loss_positions.append(int((labels[:, 1:] != -100).sum()))
    tokens = sum(sum(s) for s in seq_lens)
    lora = shape.lora_params(settings.lora_r, QKVO)
    flops = sum(sft_step_flops(shape, s, n, lora) for s, n in zip(seq_lens, loss_positions))

    def side(step_seconds, **extra):
        seconds = sum(step_seconds)
        d = {"tokens_per_s": tokens / seconds, "step_seconds": seconds / len(step_seconds),
             "achieved_flops_per_s": flops / seconds, **extra}
        if matmul:
            d["matmul_fraction"] = d["achieved_flops_per_s"] / matmul["flops_per_s"]
        return d

    project = side(project_steps, implementation="rlnlu.sft.build_trainer (TRL SFTTrainer, LM "
                   "head at completion positions, token-capped micro-batches)",
                   step_seconds_all=project_steps, peak_rss_mib=peaks["project"],
                   step_cpu_seconds=sum(project_cpu) / len(project_cpu),
                   micro_batch_tokens=settings.micro_batch_tokens,
                   activation_checkpointing=device != "cpu")
    baseline = side(plain_steps, step_seconds_all=plain_steps, peak_rss_mib=peaks["baseline"],
                    step_cpu_seconds=sum(plain_cpu) / len(plain_cpu),
                    implementation="PEFT get_peft_model + torch AdamW loop, "
                                   "full-vocabulary logits (model(..., labels=))")
    all_lens = [n for s in seq_lens for n in s]
    return {"status": "ok", "batch_size": batch, "warmup_steps": warmup,
            "measured_steps": len(measured), "mean_tokens": sum(all_lens) / len(all_lens),
            "tokens": tokens, "loss_positions": sum(loss_positions), "flops": flops,
            "lora": {"r": settings.lora_r, "alpha": settings.lora_alpha, "targets": QKVO},
            "project": project, "baseline": baseline,
            "speedup": project["tokens_per_s"] / baseline["tokens_per_s"]}


# ====================================================================== planning

def bench_planning(timeout: float = 600) -> dict:
    """Wall time of a dry run of the paper's whole grid, in a scratch working directory
    (`snakemake -n --configfile configs/paper.yaml --directory <tmp>`, HF_HUB_OFFLINE=1)."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    command = "snakemake -n --configfile configs/paper.yaml --directory <tmp> (HF_HUB_OFFLINE=1)"
    with tempfile.TemporaryDirectory(prefix="bench-plan-") as tmp:
        cmd = [sys.executable, "-m", "snakemake", "-n", "--snakefile", str(REPO / "Snakefile"),
               "--directory", tmp, "--configfile", "configs/paper.yaml"]
        start = _now()
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout,
                                  cwd=REPO)
        except subprocess.TimeoutExpired:
            return {"status": "error", "error": f"timed out after {timeout} s", "command": command}
        seconds = _now() - start
    output = proc.stdout + proc.stderr
    jobs = None
    for line in output.splitlines():
        if re.match(r"^\s*total\s+\d+\s*$", line):
            jobs = int(line.split()[1])
    result = {"status": "ok" if proc.returncode == 0 else "error", "seconds": seconds,
              "jobs": jobs, "returncode": proc.returncode, "command": command}
    if proc.returncode:
        lines = [line for line in output.splitlines() if line.strip()]
        errors = [line for line in lines if "Error" in line or "error" in line.lower()[:40]]
        result["error"] = "\n".join(errors[:5] + ["..."] + lines[-5:])
    return result
