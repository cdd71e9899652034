# Rendered prompts per (model, task, style, split): the paper's template around each input,
# wrapped in the model's chat template when the registry says so. Evaluation splits are
# capped by a seeded subsample shared by every method.


def prompt_records(wildcards):
    return f"resources/data/{wildcards.benchmark}/{wildcards.task}/{wildcards.split}.jsonl"


def few_shot_pool(wildcards):
    if wildcards.style != "few_shot":
        return []
    train_task = get_task(wildcards.benchmark, wildcards.task).train_task
    return f"resources/data/{wildcards.benchmark}/{train_task.name}/train.jsonl"


def prompt_options(wildcards):
    options = ["--chat-template" if GRID.chat_template(wildcards.model) else "--no-chat-template"]
    if wildcards.style == "few_shot":
        options += ["--shots", str(config["prompts"]["shots"]),
                    "--shot-selection", config["prompts"]["shot_selection"]]
    if wildcards.split != "train" and config["evaluation"]["max_examples"]:
        options += ["--max-examples", str(config["evaluation"]["max_examples"]),
                    "--sample-seed", str(config["evaluation"]["sample_seed"])]
    return " ".join(options)


rule render_prompts:
    input:
        records=prompt_records,
        train=few_shot_pool,
        model=model_input,
    output:
        "results/prompts/{model}/{benchmark}/{task}/{style}/{split}.jsonl",
    params:
        location=model_location,
        options=prompt_options,
        train=lambda wildcards, input: f"--train {input.train}" if input.train else "",
    log:
        "logs/render_prompts/{model}/{benchmark}/{task}/{style}/{split}.log",
    shell:
        "{PY} render-prompts --benchmark {wildcards.benchmark} --task {wildcards.task} "
        "--records {input.records} {params.train} --model-location {params.location} "
        "{params.options} --out {output} > {log} 2>&1"
