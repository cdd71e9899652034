# Canonical records per (benchmark, task, split), from the hub or a local mirror.


rule prepare_data:
    output:
        paths.RECORDS,
    log:
        "logs/prepare_data/{benchmark}/{task}/{split}.log",
    conda:
        "../../envs/conda.yaml"
    params:
        source=config["data"]["source"],
        local_dir=lambda wildcards: shlex.quote(str(config["data"]["local_dir"] or "")),
    shell:
        NUMBER_THE_LOG
        + "python -m rlnlu prepare-data --benchmark {wildcards.benchmark} --task {wildcards.task} "
        "--split {wildcards.split} --source {params.source} --local-dir {params.local_dir} "
        "--out {output} > {log} 2>&1"
