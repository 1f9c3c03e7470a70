"""Cleanup passes: thin, named wrappers over onnx-ir / onnxscript passes."""
