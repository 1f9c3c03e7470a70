"""Load an ``.onnx`` file (external data allowed) as an onnx_ir.Model."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import onnx_ir as ir
from google.protobuf.message import DecodeError

from genzip.errors import GenzipError
from genzip.frontend.onnx_inputs import synthesize_inputs
from genzip.frontend.source import SourceModel
from genzip.frontend.user_inputs import UserData, calibration_samples, check_inputs, specs_of_graph

logger = logging.getLogger(__name__)


def _invalid(path: Path, why: str) -> GenzipError:
    return GenzipError(
        f"'{path}' is not a valid ONNX model ({why})",
        "re-export or re-download the file; a truncated copy is a common cause",
    )


def _check_external_data(path: Path, model: ir.Model) -> None:
    for value in model.graph.initializers.values():
        tensor = value.const_value
        if isinstance(tensor, ir.ExternalTensor) and not os.path.isfile(tensor.path):
            raise GenzipError(
                f"'{path}' stores weight '{value.name}' in '{tensor.location}', which is missing",
                f"put the external data file next to the model (expected {tensor.path})",
            )


def source_from_onnx(model: ir.Model, *, source: str, seed: int, batch: int | None, user: UserData | None = None,
                     info: dict | None = None) -> SourceModel:
    """Wrap an ONNX model: the user's example inputs (checked against the graph inputs) or
    ones synthesized from the input types; the user's calibration set, checked the same way."""
    specs = specs_of_graph(model.graph)
    dims: dict[str, int] = {}
    if user is not None and user.inputs is not None:
        feeds = check_inputs(specs, user.inputs)
    else:
        feeds, dims = synthesize_inputs(model.graph, seed=seed, batch=batch)
    if dims:
        logger.info("%s: symbolic dims for example inputs: %s", source, dims)
    synthesized = user is None or user.inputs is None
    info = {"family": None, **(info or {}), "dims": dims, "inputs_synthesized": synthesized}
    if user is not None and user.calib is not None:
        info["calibration"] = calibration_samples(specs, user.calib)
    return SourceModel(model=model, source=source, kind="onnx", example_inputs=feeds, fidelity=None, info=info)


def load_onnx_file(path: Path, *, seed: int, batch: int | None, user: UserData | None = None) -> SourceModel:
    """Load ``path``; example inputs are the user's or synthesized from the graph input types."""
    if not path.is_file():
        raise GenzipError(f"ONNX file '{path}' does not exist", "check the path")
    try:
        model = ir.load(path)
    except OSError as e:
        raise GenzipError(
            f"cannot read ONNX file '{path}': {e.strerror or e}", "check the file's permissions"
        ) from e
    except (DecodeError, ValueError, TypeError) as e:
        raise _invalid(path, str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__) from e
    if model.ir_version < 3 or not model.opset_imports or not model.graph.outputs:
        raise _invalid(path, "no IR version, opset or graph outputs")
    _check_external_data(path, model)
    return source_from_onnx(model, source=str(path), seed=seed, batch=batch, user=user, info={"path": str(path)})
