"""Batched greedy generation: reusing the prompts' shared opening and padding between it and
the rest must give what each prompt alone gives."""
import pytest
import torch

from rlnlu.generation import MIN_SHARED_TOKENS, generate_answers, shared_prefix_length

OPENING = ("Human: You are an expert annotator. Is the sentence grammatical? "
           "Allowed answers: Yes, No.\n\nSentence: ")
ENDINGS = ["The cat sat.", "A man plays on the mat with the dog.", "Someone", "the dog sat on the mat"]


def test_shared_prefix_leaves_every_prompt_a_token():
    assert shared_prefix_length([[1, 2, 3], [1, 2, 4, 5]]) == 2
    assert shared_prefix_length([[1, 2], [1, 2, 3]]) == 1
    assert shared_prefix_length([[7, 8], [9]]) == 0


@pytest.mark.parametrize("opening", [OPENING, ""])
def test_batched_answers_equal_each_prompts_own(random_lora_model, tiny_model_dir, opening):
    from rlnlu.models import load_tokenizer

    tokenizer = load_tokenizer(tiny_model_dir)
    model = random_lora_model().merge_and_unload().eval()
    prompts = [opening + ending + "\n\nAssistant: <Judgement>" for ending in ENDINGS]
    encoded = [tokenizer(p)["input_ids"] for p in prompts]
    assert (shared_prefix_length(encoded) >= MIN_SHARED_TOKENS) == bool(opening)

    alone = []
    for prompt in prompts:
        ids = tokenizer(prompt, return_tensors="pt")
        with torch.no_grad():
            out = model.generate(**ids, do_sample=False, max_new_tokens=6,
                                 pad_token_id=tokenizer.pad_token_id)
        alone.append(tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True))
    batched = generate_answers(model, tokenizer, prompts, batch_size=3, max_new_tokens=6)
    # Batched answers stop at </Judgement>; the ones generated alone run to the cap.
    assert batched == [a.split("</Judgement>")[0] + ("</Judgement>" if "</Judgement>" in a else "")
                       for a in alone]
