"""Pure tag core: definitions, per-user state, incremental updates and evaluation (no I/O)."""
