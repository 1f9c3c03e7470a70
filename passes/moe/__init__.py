"""Mixture-of-experts passes: ``expert-prune``.

Modules named after a pass hold that pass; ``_name.py`` modules are helpers."""
