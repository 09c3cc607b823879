"""Runners for the paper's tables: many small runs as one vmapped program (dassemble_jax.multirun)."""
