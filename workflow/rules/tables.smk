# The paper's tables: a row per model x method, a column per task metric, the average;
# and a bar chart of the same cells with their bootstrap intervals.


rule tables:
    input:
        lambda wildcards: [
            cell.metrics_path for cell in GRID.cells(wildcards.benchmark)
        ],
    output:
        csv=report(
            paths.TABLE,
            caption="../report/table.rst",
            category="Tables",
            labels={"benchmark": "{benchmark}", "table": "scores"},
        ),
        markdown=paths.TABLE_MARKDOWN,
        parser_csv=report(
            paths.PARSER_EFFECT,
            caption="../report/parser_effect.rst",
            category="Tables",
            labels={"benchmark": "{benchmark}", "table": "parser effect"},
        ),
        parser_markdown=paths.PARSER_EFFECT_MARKDOWN,
        plot=report(
            paths.SCORES_PLOT,
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
