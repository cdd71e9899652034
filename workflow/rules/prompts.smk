# Rendered prompts per (model, task, style, split): the paper's template around each input,
# wrapped in the model's chat template when the registry says so. Evaluation splits are
# capped by a seeded subsample shared by every method.


rule render_prompts:
    input:
        records=prompt_records,
        train=few_shot_pool,
        model=model_input,
    output:
        "results/prompts/{model}/{benchmark}/{task}/{style}/{split}.jsonl",
    log:
        "logs/render_prompts/{model}/{benchmark}/{task}/{style}/{split}.log",
    conda:
        "../../envs/conda.yaml"
    params:
        location=model_location,
        options=prompt_options,
        train=lambda wildcards, input: f"--train {input.train}" if input.train else "",
    shell:
        NUMBER_THE_LOG
        + "python -m rlnlu render-prompts --benchmark {wildcards.benchmark} --task {wildcards.task} "
        "--records {input.records} {params.train} --model-location {params.location} "
        "{params.options} --out {output} > {log} 2>&1"
