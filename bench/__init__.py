"""The relay's benchmark: `python -m bench` (see bench/README.md)."""

# Bump when the generated data changes: cached datasets are keyed by it.
DATA_VERSION = 1
