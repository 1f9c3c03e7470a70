"""Attention passes: ``canonicalize-attn``, ``window-attn``, ``span-attn``, ``share-attn``.

Modules named after a pass hold that pass; ``_name.py`` modules are helpers."""
