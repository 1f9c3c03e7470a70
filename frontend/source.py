"""What a frontend hands to the compiler: the IR plus what is needed to check it."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import onnx_ir as ir


@dataclasses.dataclass
class SourceModel:
    """A loaded model reference.

    ``example_inputs`` are ORT feeds (graph input name -> array) used for fidelity
    checks and as the artifact's default inputs. ``fidelity`` is the export check
    against eager PyTorch (``reference``, ``cosine``, ``max_abs_err``), or ``None``
    for a plain ONNX file, whose reference is the unmodified file (the backend
    measures that one).
    """

    model: ir.Model
    source: str
    kind: str  # "onnx" | "diffusers" | "transformers" | "callable" | "preset"
    example_inputs: dict[str, np.ndarray]
    fidelity: dict[str, Any] | None = None
    info: dict[str, Any] = dataclasses.field(default_factory=dict)

    def copy(self) -> SourceModel:
        """This source with a deep copy of its graph, so passes run on the copy leave
        ``self.model`` untouched (the other fields are shared: they are not mutated)."""
        return dataclasses.replace(self, model=ir.from_proto(ir.to_proto(self.model)))
