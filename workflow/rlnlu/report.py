"""Plots for the report: per-benchmark scores with bootstrap error bars and the paper's
reference averages; training curves are drawn by the training modules themselves."""
from __future__ import annotations

from collections import defaultdict

import numpy as np

from .files import atomic_path, read_json
from .tables import REFERENCE_FILE
from .tasks import get_task, tasks_of


def plot_scores(benchmark: str, metric_files: list[str], out_png: str) -> None:
    """Grouped bars: tasks on the x axis, one bar per (model, method) (the mean over seeds),
    95% bootstrap intervals as error bars, and with several seeds a dot per seed, so their
    spread shows; the paper's reference averages as dashed lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    scores: dict[tuple, dict] = defaultdict(dict)
    for path in metric_files:
        cell = read_json(path)
        if cell["benchmark"] == benchmark and cell["status"] == "ok":
            scores[(cell["model"], cell["method"])].setdefault(cell["task"], []).append(cell)
    tasks = sorted({t for by_task in scores.values() for t in by_task},
                   key=[t.name for t in tasks_of(benchmark)].index)
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(tasks) + 2), 4.2))
    width = 0.8 / max(1, len(scores))
    for i, (key, by_task) in enumerate(sorted(scores.items())):
        x = np.arange(len(tasks)) + (i - (len(scores) - 1) / 2) * width
        means, errors = [], [[], []]
        for task in tasks:
            cells = by_task.get(task, [])
            mean = float(np.mean([c["score"] for c in cells])) if cells else np.nan
            low = np.mean([c.get("score_ci95", [mean, mean])[0] for c in cells]) if cells else np.nan
            high = np.mean([c.get("score_ci95", [mean, mean])[1] for c in cells]) if cells else np.nan
            means.append(mean)
            errors[0].append(max(0.0, mean - low) if cells else 0)
            errors[1].append(max(0.0, high - mean) if cells else 0)
        ax.bar(x, means, width, yerr=errors, capsize=2, label=" / ".join(key))
        for position, task in zip(x, tasks):
            seeds = [c["score"] for c in by_task.get(task, [])]
            if len(seeds) > 1:
                ax.plot([position] * len(seeds), seeds, "k.", markersize=3, zorder=3)
    reference = pd.read_csv(REFERENCE_FILE)
    for _, row in reference[reference["benchmark"] == benchmark].iterrows():
        ax.axhline(row["average_paper"], ls="--", lw=0.8, color="grey")
        ax.text(len(tasks) - 0.5, row["average_paper"], f" {row['model']} {row['method']} (paper)",
                fontsize=6, va="center", ha="left", color="grey")
    ax.set_xticks(np.arange(len(tasks)), [get_task(benchmark, t).title for t in tasks])
    ax.set_ylabel("task score (mean of its metrics), 95% CI; dots: seeds")
    ax.set_title(f"{benchmark.upper()}: scores per task and method")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
