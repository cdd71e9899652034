"""The suite's prompts: a system part, the task instruction, the input, and the assistant
turn opened with `<Judgement>`; the model answers a label word and closes `</Judgement>`.
Under `protocol: paper` rows are rendered with the paper's own templates instead
(`paper_prompts`); drawing few-shot demonstrations is shared.

Input text is inserted by concatenation, never through `str.format`, so braces, quotes or
a literal `</Judgement>` in the data cannot break rendering.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

from . import paper_prompts
from .answers import CLOSE_TAG, OPEN_TAG
from .tasks import Task

SYSTEM = ("You are an expert annotator. Give your judgement as exactly one of the allowed "
          f"answers, between {OPEN_TAG} and {CLOSE_TAG}.")

FIELD_NAMES = {
    "sentence": "Sentence", "sentence1": "Sentence 1", "sentence2": "Sentence 2",
    "question1": "Question 1", "question2": "Question 2", "question": "Question",
    "premise": "Premise", "hypothesis": "Hypothesis", "passage": "Passage",
    "paragraph": "Paragraph", "answer": "Candidate answer", "query": "Query",
    "entity": "Candidate entity", "word": "Word", "text": "Text",
    "span1_text": "Noun phrase", "span2_text": "Pronoun",
    "choice1": "Option one", "choice2": "Option two",
}


# How few-shot demonstrations are drawn from the train split, with the cell's seed:
SHOT_SELECTIONS = {
    "random": "a fresh random draw for every prompt",
    "random_set": "one random draw shared by every prompt of the cell (a new set per seed): "
                  "the evaluator then encodes the demonstrations once",
    "first": "the first k rows (the paper's code)",
}


@dataclass(frozen=True)
class PromptStyle:
    shots: int = 0  # 0 for zero-shot; the paper's few-shot uses 5
    chat_template: bool = True  # wrap in the model's own chat template
    shot_selection: str = "random"  # one of SHOT_SELECTIONS
    seed: int = 0
    paper_templates: dict | None = None  # protocol: paper: the templates of its prompt.py


def allowed_answers(task: Task) -> str:
    if task.is_regression:
        return "a number from 0 to 5"
    words = task.label_words
    return " or ".join(words) if len(words) < 3 else ", ".join(words[:-1]) + " or " + words[-1]


def user_turn(task: Task, fields: dict) -> str:
    """The input first, then the question: small models follow an instruction they read last."""
    lines = []
    for name in task.fields:
        if task.name == "copa" and name == "question":
            lines.append("Asked for: the " + fields[name])  # "cause" or "effect"
        else:
            lines.append(FIELD_NAMES[name] + ": " + fields[name])
    lines += ["", task.instruction, "Answer with exactly one of: " + allowed_answers(task) + "."]
    return "\n".join(lines)


def answer_word(task: Task, label) -> str:
    if task.is_regression:
        return f"{float(label):.1f}"
    return task.label_word(label)


def completion(task: Task, label) -> str:
    """What a correct answer looks like after the rendered prompt (SFT's target)."""
    return answer_word(task, label) + CLOSE_TAG


def render(task: Task, record: dict, shots: list[dict], style: PromptStyle, tokenizer=None) -> str:
    """The full prompt text for one record, ending right after the opening `<Judgement>`."""
    turns = [(user_turn(task, s["fields"]), OPEN_TAG + completion(task, s["label"])) for s in shots]
    question = user_turn(task, record["fields"])
    if style.chat_template and tokenizer is not None and tokenizer.chat_template:
        messages = [{"role": "system", "content": SYSTEM}]
        for user, assistant in turns:
            messages += [{"role": "user", "content": user},
                         {"role": "assistant", "content": assistant}]
        messages.append({"role": "user", "content": question})
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return text + OPEN_TAG
    parts = [SYSTEM]
    for user, assistant in turns:
        parts += ["Human: " + user, "Assistant: " + assistant]
    parts += ["Human: " + question, "Assistant: " + OPEN_TAG]
    return "\n\n".join(parts)


def choose_shots(pool: list[dict], k: int, selection: str, rng: random.Random,
                 exclude_idx=None) -> list[dict]:
    candidates = [r for r in pool if r["idx"] != exclude_idx and r["label"] is not None]
    if k > len(candidates):
        raise ValueError(f"few-shot needs {k} labelled train examples, only {len(candidates)} exist")
    if selection == "first":
        return candidates[:k]
    return rng.sample(candidates, k)


def shot_chooser(pool: list[dict] | None, style: PromptStyle, pool_is_eval_split: bool):
    """A function record -> its demonstrations, drawn as `style.shot_selection` says."""
    rng = random.Random(style.seed)
    if style.shot_selection == "random_set":
        # one spare row: a record drawn into the set is shown the spare instead of itself
        drawn = choose_shots(pool or [], style.shots + pool_is_eval_split, "random", rng)
        if not pool_is_eval_split:  # another split's idx says nothing about these rows
            return lambda record: drawn
        return lambda record: [r for r in drawn if r["idx"] != record["idx"]][:style.shots]
    return lambda record: choose_shots(
        pool or [], style.shots, style.shot_selection, rng,
        exclude_idx=record["idx"] if pool_is_eval_split else None)


def render_split(task: Task, records: list[dict], train_pool: list[dict] | None,
                 style: PromptStyle, tokenizer=None):
    """Yield prompt rows: the record's identity and gold label plus the rendered prompt."""
    shots_for = shot_chooser(train_pool, style, train_pool is records)
    for record in records:
        shots = shots_for(record) if style.shots else []
        row = {key: record[key] for key in ("idx", "label", "group", "answers", "fields") if key in record}
        if style.paper_templates:
            yield dict(row, **_paper_texts(task, record, shots, style.paper_templates))
            continue
        row["prompt"] = render(task, record, shots, style, tokenizer)
        if record["label"] is not None:
            row["completion"] = completion(task, record["label"])
        yield row


def _paper_texts(task: Task, record: dict, shots: list[dict], templates: dict) -> dict:
    """The paper's evaluation/PPO prompt, and for labelled rows its SFT prompt (worded
    differently) and target."""
    fields = record["fields"]
    texts = {"prompt": (paper_prompts.few_shot_prompt(templates, task, fields, shots) if shots
                        else paper_prompts.eval_prompt(templates, task, fields))}
    if record["label"] is not None:
        texts["sft_prompt"], texts["completion"] = paper_prompts.sft_example(
            templates, task, fields, record["label"])
    return texts
