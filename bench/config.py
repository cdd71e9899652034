"""Where the benchmark finds the project: the repository and its YAML config files, merged
the way Snakemake merges a `--configfile` over config.yaml."""
from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def deep_merge(base: dict, over: dict) -> dict:
    """`over` merged into a copy of `base`: mappings key by key, any other value replaces."""
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_config(*names: str) -> dict:
    """The repository's YAML files `names` (relative to it), each merged over the ones before."""
    import yaml

    config: dict = {}
    for name in names:
        config = deep_merge(config, yaml.safe_load((REPO / name).read_text(encoding="utf-8")) or {})
    return config
