"""Quantization passes: ``annotate-precision``, ``calibrate``, ``smooth``, ``quant``.

Modules named after a pass hold that pass; ``_name.py`` modules are helpers (specs,
scales, Q/DQ building, formats, precision plans)."""
