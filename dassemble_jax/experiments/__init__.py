"""Runners for the paper's tables: many small runs per compiled program (dassemble_jax.multirun)."""
