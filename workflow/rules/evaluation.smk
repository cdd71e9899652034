# One cell = one metrics file. `evaluate` generates and parses answers (the heavy step);
# `score` turns predictions into the official metrics, or records a 'no data' cell.


def cell_of(wildcards):
    return grid.Cell(wildcards.model, wildcards.benchmark, wildcards.task, wildcards.method,
                     int(wildcards.seed))


def eval_prompts(wildcards):
    task = get_task(wildcards.benchmark, wildcards.task)
    style = grid.PROMPT_STYLE[wildcards.method]
    return (f"results/prompts/{wildcards.model}/{wildcards.benchmark}/{wildcards.task}/"
            f"{style}/{task.eval_split}.jsonl")


def eval_adapters(wildcards):
    return GRID.adapter_chain(cell_of(wildcards))


rule evaluate:
    input:
        prompts=eval_prompts,
        model=model_input,
        adapters=eval_adapters,
    output:
        "results/predictions/{model}/{benchmark}/{task}/{method}/seed{seed}.jsonl",
    params:
        location=model_location,
        inference=config["inference"],
        adapters=lambda wildcards, input: " ".join(f"--adapter {a}" for a in input.adapters),
    threads: 4
    log:
        "logs/evaluate/{model}/{benchmark}/{task}/{method}/seed{seed}.log",
    benchmark:
        "benchmarks/evaluate/{model}/{benchmark}/{task}/{method}/seed{seed}.tsv"
    shell:
        "OMP_NUM_THREADS={threads} {PY} evaluate --benchmark {wildcards.benchmark} "
        "--task {wildcards.task} --prompts {input.prompts} --model-location {params.location} "
        "{params.adapters} "
        "--dtype {params.inference[dtype]} --device {params.inference[device]} "
        "--batch-size {params.inference[batch_size]} "
        "--max-new-tokens {params.inference[max_new_tokens]} --seed {wildcards.seed} "
        "--out {output} > {log} 2>&1"


def score_input(wildcards):
    if GRID.missing_data(cell_of(wildcards)):
        return []
    return rules.evaluate.output[0].format(**wildcards)


def score_options(wildcards, input):
    reason = GRID.missing_data(cell_of(wildcards))
    if reason:
        return "--no-data " + shlex.quote(reason)
    return f"--predictions {input[0]}"


rule score:
    input:
        score_input,
    output:
        "results/metrics/{model}/{benchmark}/{task}/{method}/seed{seed}.json",
    params:
        options=score_options,
        evaluation=config["evaluation"],
    log:
        "logs/score/{model}/{benchmark}/{task}/{method}/seed{seed}.log",
    shell:
        "{PY} score --benchmark {wildcards.benchmark} --task {wildcards.task} "
        "--model {wildcards.model} --method {wildcards.method} --seed {wildcards.seed} "
        "{params.options} --invalid-policy {params.evaluation[invalid_policy]} "
        "--bootstrap-resamples {params.evaluation[bootstrap_resamples]} --out {output} > {log} 2>&1"
