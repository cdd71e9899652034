# Rendered prompts per (model, task, style, split): the protocol's template around each
# input (the suite's, wrapped in the model's chat template when the registry says so, or the
# paper's own from its prompt.py). Evaluation applies its seeded subsample to these files.


# The paper's prompt.py at its pinned commit, checked by sha256 (read, never executed).
rule obtain_paper_code:
    output:
        "resources/paper_code/prompt.py",
    log:
        "logs/obtain_paper_code.log",
    conda:
        "../../envs/conda.yaml"
    params:
        local_copy=paper_code_option,
    shell:
        NUMBER_THE_LOG
        + "python -m rlnlu obtain-paper-code {params.local_copy} --out {output} > {log} 2>&1"


rule render_prompts:
    input:
        records=prompt_records,
        train=few_shot_pool,
        model=model_input,
        paper_code=paper_code_input,
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
        paper_code=lambda wildcards, input: (
            f"--paper-prompts {input.paper_code}" if input.paper_code else ""
        ),
    shell:
        NUMBER_THE_LOG
        + "python -m rlnlu render-prompts --benchmark {wildcards.benchmark} --task {wildcards.task} "
        "--records {input.records} {params.train} --model-location {params.location} "
        "{params.options} {params.paper_code} --out {output} > {log} 2>&1"
