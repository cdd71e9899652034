# The paper's tables: a row per model x method, a column per task metric, the average.


rule tables:
    input:
        lambda wildcards: [cell.metrics_path for cell in GRID.cells(wildcards.benchmark)],
    output:
        csv="results/tables/{benchmark}.csv",
        markdown="results/tables/{benchmark}.md",
    log:
        "logs/tables/{benchmark}.log",
    shell:
        "{PY} tables --benchmark {wildcards.benchmark} --csv {output.csv} "
        "--markdown {output.markdown} {input} > {log} 2>&1"
