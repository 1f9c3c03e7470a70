"""genzip.frontend: turn a model reference into an ``onnx_ir.Model`` plus what checks it.

Public API:

* :func:`load_model` -- preset / .onnx file / local HF folder / ``module:function``;
* :data:`PRESETS` -- preset name -> one-line description;
* :class:`SourceModel` -- what a frontend returns;
* :func:`cosine`, :func:`max_abs_err` -- the fidelity metrics every layer uses.
"""

from __future__ import annotations

from genzip.frontend.loader import load_model
from genzip.frontend.presets import PRESETS
from genzip.frontend.source import SourceModel
from genzip.metrics import cosine, max_abs_err

__all__ = ["PRESETS", "SourceModel", "cosine", "load_model", "max_abs_err"]
