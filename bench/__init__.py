"""The relay's benchmark: `python -m bench` (see bench/README.md)."""

# Bump when the generated data or the store's schema changes: cached datasets are keyed by it.
DATA_VERSION = 4
