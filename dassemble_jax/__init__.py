"""dassemble_jax: Data, Assemble in JAX/Flax."""

__version__ = "0.1.0"
