# LoRA fine-tuning. Each adapter is a standard PEFT folder and the rule's output; checkpoints
# live under resources/checkpoints/ (not a declared output), so a killed job's rerun resumes
# there instead of Snakemake deleting them with the incomplete output.


rule train_sft:
    input:
        train=lambda wildcards: train_prompts(
            wildcards.benchmark, wildcards.task, wildcards.model
        ),
        dev=sft_dev_prompts,
        model=model_input,
    output:
        adapter=directory(paths.adapter("sft")),
        curve=paths.curve("sft"),
        plot=report(
            paths.curve_plot("sft"),
            caption="../report/curve.rst",
            category="Training curves",
            subcategory="sft",
        ),
    log:
        "logs/train_sft/{model}/{benchmark}/{task}/seed{seed}.log",
    benchmark:
        "benchmarks/train_sft/{model}/{benchmark}/{task}/seed{seed}.tsv"
    conda:
        "../../envs/conda.yaml"
    threads: 4
    params:
        location=model_location,
        gpu=GPU,  # the GPU-slot claimer under profiles/gpu, else empty
        settings=sft_task_settings,
        dev=sft_dev_options,
        work_dir=paths.checkpoints("sft"),
    shell:
        NUMBER_THE_LOG
        + "OMP_NUM_THREADS={threads} {params.gpu}python -m rlnlu train-sft --train {input.train} {params.dev} "
        "--model-location {params.location} --settings {params.settings} --seed {wildcards.seed} "
        "--adapter {output.adapter} --work-dir {params.work_dir} --curve-csv {output.curve} "
        "--curve-png {output.plot} > {log} 2>&1"


rule train_sft_multi:
    input:
        train=lambda wildcards: [
            train_prompts(wildcards.benchmark, task.name, wildcards.model)
            for task in GRID.multi_task_train_tasks(wildcards.benchmark)
        ],
        model=model_input,
    output:
        adapter=directory(paths.adapter("sft_multi")),
        curve=paths.curve("sft_multi"),
        plot=report(
            paths.curve_plot("sft_multi"),
            caption="../report/curve.rst",
            category="Training curves",
            subcategory="sft_multi",
        ),
    log:
        "logs/train_sft_multi/{model}/{benchmark}/seed{seed}.log",
    benchmark:
        "benchmarks/train_sft_multi/{model}/{benchmark}/seed{seed}.tsv"
    conda:
        "../../envs/conda.yaml"
    threads: 4
    params:
        location=model_location,
        gpu=GPU,  # the GPU-slot claimer under profiles/gpu, else empty
        settings=json_arg(GRID.training_settings("sft_multi")),
        train=lambda wildcards, input: " ".join(
            f"--train {path}" for path in input.train
        ),
        work_dir=paths.checkpoints("sft_multi"),
    shell:
        NUMBER_THE_LOG
        + "OMP_NUM_THREADS={threads} {params.gpu}python -m rlnlu train-sft {params.train} "
        "--model-location {params.location} --settings {params.settings} --seed {wildcards.seed} "
        "--adapter {output.adapter} --work-dir {params.work_dir} --curve-csv {output.curve} "
        "--curve-png {output.plot} > {log} 2>&1"


rule train_ppo:
    input:
        unpack(lambda wildcards: rl_inputs(wildcards, "ppo")),
        model=model_input,
    output:
        adapter=directory(paths.adapter("ppo")),
        curve=paths.curve("ppo"),
        plot=report(
            paths.curve_plot("ppo"),
            caption="../report/curve.rst",
            category="Training curves",
            subcategory="ppo",
        ),
    log:
        "logs/train_ppo/{model}/{benchmark}/{task}/seed{seed}.log",
    benchmark:
        "benchmarks/train_ppo/{model}/{benchmark}/{task}/seed{seed}.tsv"
    conda:
        "../../envs/conda.yaml"
    threads: 4
    params:
        location=model_location,
        gpu=GPU,  # the GPU-slot claimer under profiles/gpu, else empty
        algorithm="ppo",
        options=lambda wildcards, input: rl_train_options(wildcards, input, "ppo"),
        settings=json_arg(GRID.training_settings("ppo")),
        reward=reward_settings(),
        work_dir=paths.checkpoints("ppo"),
    shell:
        NUMBER_THE_LOG
        + "OMP_NUM_THREADS={threads} {params.gpu}python -m rlnlu train-rl --algorithm {params.algorithm} {params.options} "
        "--model-location {params.location} --settings {params.settings} "
        "--reward {params.reward} --seed {wildcards.seed} --adapter {output.adapter} "
        "--work-dir {params.work_dir} --curve-csv {output.curve} --curve-png {output.plot} "
        "> {log} 2>&1"


use rule train_ppo as train_ppo_multi with:
    input:
        unpack(lambda wildcards: rl_inputs(wildcards, "ppo_multi")),
        model=model_input,
    output:
        adapter=directory(paths.adapter("ppo_multi")),
        curve=paths.curve("ppo_multi"),
        plot=report(
            paths.curve_plot("ppo_multi"),
            caption="../report/curve.rst",
            category="Training curves",
            subcategory="ppo_multi",
        ),
    log:
        "logs/train_ppo_multi/{model}/{benchmark}/seed{seed}.log",
    benchmark:
        "benchmarks/train_ppo_multi/{model}/{benchmark}/seed{seed}.tsv"
    params:  # with train_ppo's other params
        options=lambda wildcards, input: rl_train_options(wildcards, input, "ppo_multi"),
        settings=json_arg(GRID.training_settings("ppo_multi")),
        work_dir=paths.checkpoints("ppo_multi"),


use rule train_ppo as train_grpo with:
    input:
        unpack(lambda wildcards: rl_inputs(wildcards, "grpo")),
        model=model_input,
    output:
        adapter=directory(paths.adapter("grpo")),
        curve=paths.curve("grpo"),
        plot=report(
            paths.curve_plot("grpo"),
            caption="../report/curve.rst",
            category="Training curves",
            subcategory="grpo",
        ),
    log:
        "logs/train_grpo/{model}/{benchmark}/{task}/seed{seed}.log",
    benchmark:
        "benchmarks/train_grpo/{model}/{benchmark}/{task}/seed{seed}.tsv"
    params:  # with train_ppo's other params
        algorithm="grpo",
        options=lambda wildcards, input: rl_train_options(wildcards, input, "grpo"),
        settings=json_arg(GRID.training_settings("grpo")),
        work_dir=paths.checkpoints("grpo"),
