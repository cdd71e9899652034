# One cell = one metrics file. `evaluate` generates and parses answers (the heavy step);
# `score` turns predictions into the official metrics, or records a 'no data' cell.


rule evaluate:
    input:
        prompts=eval_prompts,
        model=model_input,
        adapters=eval_adapters,
    output:
        predictions=paths.PREDICTIONS,
        run_record=paths.RUN_RECORD,
    log:
        "logs/evaluate/{model}/{benchmark}/{task}/{method}/seed{seed}.log",
    benchmark:
        "benchmarks/evaluate/{model}/{benchmark}/{task}/{method}/seed{seed}.tsv"
    conda:
        "../../envs/conda.yaml"
    threads: 4
    params:
        location=model_location,
        gpu=GPU,  # the GPU-slot claimer under profiles/gpu, else empty
        inference=config["inference"],
        adapters=lambda wildcards, input: " ".join(
            f"--adapter {a}" for a in input.adapters
        ),
        sample=sample_options,
        protocol=config["protocol"],
    shell:
        NUMBER_THE_LOG
        + "OMP_NUM_THREADS={threads} {params.gpu}python -m rlnlu evaluate --benchmark {wildcards.benchmark} "
        "--task {wildcards.task} --prompts {input.prompts} --model-location {params.location} "
        "{params.adapters} "
        "--dtype {params.inference[dtype]} --device {params.inference[device]} "
        "--batch-size {params.inference[batch_size]} "
        "--max-new-tokens {params.inference[max_new_tokens]} --seed {wildcards.seed} "
        "--protocol {params.protocol} "
        "{params.sample} --out {output.predictions} --run-record {output.run_record} > {log} 2>&1"


rule score:
    input:
        unpack(score_input),
    output:
        paths.METRICS,
    log:
        "logs/score/{model}/{benchmark}/{task}/{method}/seed{seed}.log",
    conda:
        "../../envs/conda.yaml"
    params:
        options=score_options,
        evaluation=config["evaluation"],
        cell_settings=lambda wildcards: json_arg(GRID.cell_settings(cell_of(wildcards))),
        protocol=config["protocol"],
    shell:
        NUMBER_THE_LOG
        + "python -m rlnlu score --benchmark {wildcards.benchmark} --task {wildcards.task} "
        "--model {wildcards.model} --method {wildcards.method} --seed {wildcards.seed} "
        "{params.options} --invalid-policy {params.evaluation[invalid_policy]} "
        "--protocol {params.protocol} "
        "--bootstrap-resamples {params.evaluation[bootstrap_resamples]} "
        "--cell-settings {params.cell_settings} --out {output} > {log} 2>&1"


# Leaderboard submissions: every test example of every task, answered by one (model, method).
use rule evaluate as evaluate_test with:
    input:
        prompts=test_prompts,
        model=model_input,
        adapters=eval_adapters,
    output:
        predictions=paths.TEST_PREDICTIONS,
        run_record=paths.TEST_RUN_RECORD,
    log:
        "logs/evaluate_test/{model}/{benchmark}/{task}/{method}/seed{seed}.log",
    benchmark:
        "benchmarks/evaluate_test/{model}/{benchmark}/{task}/{method}/seed{seed}.tsv"
    params:
        sample="",  # every test example (the other params are evaluate's)


rule submission:
    input:
        submission_predictions,
    output:
        paths.SUBMISSION,
    log:
        "logs/submission/{model}/{method}/seed{seed}/{benchmark}.log",
    conda:
        "../../envs/conda.yaml"
    params:
        tasks=lambda wildcards: " ".join(t.name for t in submission_tasks(wildcards)),
    shell:
        NUMBER_THE_LOG
        + "python -m rlnlu submission --benchmark {wildcards.benchmark} --tasks {params.tasks} "
        "--predictions {input} --seed {wildcards.seed} --out {output} > {log} 2>&1"
