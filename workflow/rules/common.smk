import json
import re
import shlex
import sys
from pathlib import Path

from snakemake.utils import validate

sys.path.insert(0, str(Path(workflow.basedir) / "workflow"))

from rlnlu import grid  # noqa: E402
from rlnlu.tasks import get_task  # noqa: E402

validate(config, schema="../schemas/config.schema.yaml")
GRID = grid.Grid.from_config(config)
GRID.check()  # unknown model keys, missing data (unless data.missing is no_data): fail now

PY = f"PYTHONPATH={shlex.quote(str(Path(workflow.basedir) / 'workflow'))} python -m rlnlu"


wildcard_constraints:
    model="|".join(map(re.escape, config["model_registry"])),
    benchmark="glue|superglue",
    task="[a-z0-9_]+",
    method="|".join(grid.METHODS),
    style="zero_shot|few_shot",
    split="train|validation|test",
    seed=r"\d+",


def model_location(wildcards):
    return GRID.model_location(wildcards.model)


def model_input(wildcards):
    """The converted folder for an embedded model; hub models load from the hub cache."""
    location = GRID.model_location(wildcards.model)
    return [location] if GRID.is_embedded(wildcards.model) else []
