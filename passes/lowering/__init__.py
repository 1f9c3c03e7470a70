"""Lowering passes: ``legalize-trt``, plus the TensorRT parser tables and rules it shares
with ``genzip lint``."""
