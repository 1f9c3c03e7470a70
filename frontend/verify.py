"""Check an exported ONNX model against eager PyTorch on the same inputs."""

from __future__ import annotations

import logging
import math
import os
import tempfile
from collections.abc import Sequence

import numpy as np
import onnx_ir as ir

from genzip.errors import GenzipError
from genzip.metrics import EXPORT_MIN_COSINE, cosine, is_faithful, max_abs_err
from genzip.ort_session import ORT_ERRORS, make_session, ort_failure

logger = logging.getLogger(__name__)


REFERENCE = "pytorch-eager"

def run_onnx(model: ir.Model, feeds: dict[str, np.ndarray], what: str) -> list[np.ndarray]:
    """Run ``model`` in onnxruntime (CPU) and return all outputs.

    The model is written with external data to a temporary folder, so models over
    the 2 GB protobuf limit work; ``model`` itself is left unchanged.
    """
    with tempfile.TemporaryDirectory(prefix="genzip-verify-") as tmp:
        path = os.path.join(tmp, "model.onnx")
        ir.save(model, path, external_data="model.onnx.data")
        try:
            session = make_session(path)  # genzip's session settings, as every later run uses
            return session.run(None, feeds)
        except ORT_ERRORS as e:
            raise GenzipError(
                f"the ONNX export of {what} does not run in onnxruntime: {ort_failure(e)}",
                "this is an exporter bug; please report it with the model reference",
            ) from e


def fidelity(
    got: Sequence[np.ndarray], expected: Sequence[np.ndarray], names: Sequence[str], what: str
) -> dict:
    """Compare ORT outputs with eager ones; raise GenzipError below ``EXPORT_MIN_COSINE``.

    Returns ``{"reference", "cosine", "max_abs_err"}`` with the worst cosine and the
    largest error over all outputs.
    """
    if len(got) != len(expected):
        raise GenzipError(
            f"the ONNX export of {what} has {len(got)} outputs but eager PyTorch returns "
            f"{len(expected)}",
            "this is an exporter bug; please report it with the model reference",
        )
    worst_cos, worst_err = 1.0, 0.0
    for name, a, b in zip(names, got, expected):
        if tuple(a.shape) != tuple(b.shape):
            raise GenzipError(
                f"the ONNX export of {what}: output '{name}' has shape {tuple(a.shape)}, "
                f"eager PyTorch gives {tuple(b.shape)}",
                "this is an exporter bug; please report it with the model reference",
            )
        cos, err = cosine(a, b), max_abs_err(a, b)
        logger.debug("%s output %s: cosine %.6f max_abs_err %.3g", what, name, cos, err)
        if not is_faithful(cos, EXPORT_MIN_COSINE):
            raise GenzipError(
                f"the ONNX export of {what} does not match eager PyTorch on output '{name}' "
                f"(cosine {cos:.6f} < {EXPORT_MIN_COSINE}, max abs error {err:.3g})",
                "check the model for data-dependent control flow or randomness in eval mode, "
                "or export it to ONNX yourself and pass the .onnx file",
            )
        worst_cos = min(worst_cos, cos)
        worst_err = err if math.isnan(err) else max(worst_err, err)
    return {"reference": REFERENCE, "cosine": worst_cos, "max_abs_err": worst_err}
