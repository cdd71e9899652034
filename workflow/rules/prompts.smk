# Rendered prompts per (model, task, split): the protocol's template around each input (the
# suite's, wrapped in the model's chat template when the registry says so, or the paper's own
# from its prompt.py). Zero-shot prompts serve every seed and method but few_shot; few-shot
# prompts are rendered per seed, since the seed draws their demonstrations. The rules render
# every row; evaluation takes its seeded subsample from these files.


# The paper's prompt.py at its pinned commit, checked by sha256 (read, never executed).
rule obtain_paper_code:
    output:
        paths.PAPER_CODE,
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
        records=paths.RECORDS,
        model=model_input,
        paper_code=paper_code_input,
    output:
        paths.ZERO_SHOT_PROMPTS,
    log:
        "logs/render_prompts/{model}/{benchmark}/{task}/zero_shot/{split}.log",
    conda:
        "../../envs/conda.yaml"
    params:
        location=model_location,
        chat_template=chat_template_option,
        few_shot="",
        paper_code=lambda wildcards, input: (
            f"--paper-prompts {input.paper_code}" if input.paper_code else ""
        ),
    shell:
        NUMBER_THE_LOG
        + "python -m rlnlu render-prompts --benchmark {wildcards.benchmark} --task {wildcards.task} "
        "--records {input.records} --model-location {params.location} {params.chat_template} "
        "{params.few_shot} {params.paper_code} --out {output} > {log} 2>&1"


use rule render_prompts as render_few_shot_prompts with:
    input:
        records=paths.RECORDS,
        train=few_shot_pool,
        model=model_input,
        paper_code=paper_code_input,
    output:
        paths.FEW_SHOT_PROMPTS,
    log:
        "logs/render_prompts/{model}/{benchmark}/{task}/few_shot/seed{seed}/{split}.log",
    params:
        few_shot=few_shot_options,
