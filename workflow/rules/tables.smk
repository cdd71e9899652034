# The paper's tables: a row per model x method, a column per task metric, the average;
# and a bar chart of the same cells with their bootstrap intervals.


rule tables:
    input:
        lambda wildcards: [
            cell.metrics_path for cell in GRID.cells(wildcards.benchmark)
        ],
    output:
        csv=report(
            "results/tables/{benchmark}.csv",
            caption="../report/table.rst",
            category="Tables",
            labels={"benchmark": "{benchmark}", "table": "scores"},
        ),
        markdown="results/tables/{benchmark}.md",
        parser_csv=report(
            "results/tables/{benchmark}_parser_effect.csv",
            caption="../report/parser_effect.rst",
            category="Tables",
            labels={"benchmark": "{benchmark}", "table": "parser effect"},
        ),
        parser_markdown="results/tables/{benchmark}_parser_effect.md",
        plot=report(
            "results/plots/{benchmark}_scores.png",
            caption="../report/scores.rst",
            category="Scores",
            labels={"benchmark": "{benchmark}"},
        ),
    log:
        "logs/tables/{benchmark}.log",
    conda:
        "../../envs/conda.yaml"
    shell:
        NUMBER_THE_LOG
        + "python -m rlnlu tables --benchmark {wildcards.benchmark} --csv {output.csv} "
        "--markdown {output.markdown} --plot {output.plot} --parser-csv {output.parser_csv} "
        "--parser-markdown {output.parser_markdown} {input} > {log} 2>&1"
