"""genzip.runtime: executing compiled diffusion artifacts step by step (samplers, caches, plans)."""
