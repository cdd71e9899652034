# Reproduce arXiv 2410.11020 on GLUE and SuperGLUE: zero-shot, few-shot, LoRA SFT and LoRA
# PPO cells, one target file each, aggregated into the paper's tables.
#
#   snakemake --cores all results/tables/glue.csv
#   snakemake --cores all results/metrics/smollm2-135m/glue/rte/zero_shot/seed0.json

from snakemake.utils import min_version

min_version("9.0")


# The defaults beside this Snakefile, wherever the working directory (--directory) is;
# `--configfile more.yaml` merges more settings over them.
configfile: f"{workflow.basedir}/config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/models.smk"
include: "workflow/rules/prompts.smk"
include: "workflow/rules/training.smk"
include: "workflow/rules/evaluation.smk"
include: "workflow/rules/tables.smk"


rule all:
    default_target: True
    input:
        expand(paths.TABLE, benchmark=config["benchmarks"]),
