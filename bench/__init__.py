"""The project's benchmark (not part of the experiment): `python -m bench --help`, or
`bash scripts/bench.sh`. `flops` counts the work of a step, `measure` times and sizes the
project's code against the loops it replaces, `projection` turns FLOP counts into GPU hours of
the paper's grid, `summary` writes the report; `ppo_oracle.py` is a script of its own."""
