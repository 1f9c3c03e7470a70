"""Mixed-precision passes: ``sensitivity``, ``mixed-precision``.

Modules named after a pass hold that pass; ``_name.py`` modules are helpers."""
