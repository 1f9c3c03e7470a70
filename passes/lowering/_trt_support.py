"""What TensorRT's ONNX parser accepts, per TensorRT 10.x release. Data only: no tensorrt import.

Sources (re-check them when a TensorRT release is added here):

* ``onnx/onnx-tensorrt`` ``docs/operators.md``, the revision headed "TensorRT 10.15
  supports operators in the inclusive range of opset 9 to opset 24": the operator
  list (``_OPS_10_15``) and the per-op restrictions the lint checks. Its Attention
  row: supported for FP32/FP16/BF16/INT8/FP8 when ``Q``, ``K``, ``V`` and
  ``attn_mask`` are 4D; ``past_key``, ``past_value``, ``nonpad_kv_seqlen`` inputs,
  ``present_key``/``present_value``/``qk_matmul_output`` outputs, and the
  ``qk_matmul_output_mode``/``softcap`` attributes are unsupported; head counts come
  from dim 1 of Q and K/V.
* ``onnx/onnx-tensorrt`` ``docs/Changelog.md`` (10.0 ... 10.15 GA entries), which says
  which release added which operator (``ADDED_IN``). ONNX ``Attention`` (opset 23)
  arrived in **TensorRT 10.14** ("Added support for the Attention operator"; the same
  line is in ``NVIDIA/TensorRT`` ``CHANGELOG.md`` under "10.14 GA - 2025-11-7,
  Parsers"), so the 10.0-10.13 parsers lack it and need ``legalize-trt``. The same
  changelog dates Quickly Deployable (Python) plugin nodes (10.6), plugins taking
  priority over model-local functions (10.7), FP4 (10.8) and AOT Python plugins (10.9).
* The 10.0 ``operators.md`` ("opset 9 to opset 20") and the 10.15 one (opset 24) give
  ``MAX_OPSET`` at both ends; in between it is derived from the ONNX submodule the
  changelog names (1.17 in 10.6 -> opset 22, 1.18 in 10.11 -> opset 23).
* TensorRT support matrix / "Working with Quantized Types": FP8 (E4M3) needs compute
  capability 8.9+ (Ada, Hopper), FP4 (E2M1) 10.0+ (Blackwell); quantization is
  symmetric (zero points all zero); per-channel and block scales are for weights;
  INT4 is weight-only.

Invariant: every 10.x release from 10.0 to ``NEWEST`` maps to a complete operator
set; an operator in ``ADDED_IN`` is absent from every set before its release.
"""

from __future__ import annotations

import logging

import onnx_ir as ir

from genzip.errors import GenzipError

logger = logging.getLogger(__name__)

Version = tuple[int, int]

OLDEST: Version = (10, 0)
NEWEST: Version = (10, 15)
DEFAULT_TRT_VERSION = "10.15"
# Where the plugins are compiled for when the user does not say (H100).
DEFAULT_COMPUTE_CAPABILITY = "9.0"

_OPS_10_15 = frozenset("""
Abs Acos Acosh Add And ArgMax ArgMin Asin Asinh Atan Atanh Attention AveragePool
BatchNormalization BlackmanWindow Cast CastLike Ceil Celu Clip Concat Constant
ConstantOfShape Conv ConvTranspose Cos Cosh CumSum DeformConv DepthToSpace
DequantizeLinear Div Dropout Einsum Elu Equal Erf Exp Expand EyeLike Flatten Floor
Gather GatherElements GatherND Gelu Gemm GlobalAveragePool GlobalLpPool GlobalMaxPool
Greater GreaterOrEqual GridSample GroupNormalization GRU HammingWindow HannWindow
HardSigmoid HardSwish Hardmax Identity If ImageScaler InstanceNormalization IsInf IsNaN
LayerNormalization LeakyRelu Less LessOrEqual Log LogSoftmax Loop LRN LSTM
LpNormalization LpPool MatMul Max MaxPool Mean MeanVarianceNormalization Min Mish Mod
Mul Neg NonMaxSuppression NonZero Not OneHot Or Pad ParametricSoftplus Pow PRelu
QuantizeLinear RandomNormal RandomNormalLike RandomUniform RandomUniformLike Range
Reciprocal ReduceL1 ReduceL2 ReduceLogSum ReduceLogSumExp ReduceMax ReduceMean
ReduceMin ReduceProd ReduceSum ReduceSumSquare Relu Reshape Resize ReverseSequence
RMSNormalization RNN RoiAlign RotaryEmbedding Round STFT ScaledTanh Scan Scatter
ScatterElements ScatterND Selu Shape Shrink Sigmoid Sign Sin Sinh Size Slice Softmax
Softplus Softsign SpaceToDepth Split Sqrt Squeeze Sub Sum Tan Tanh TensorScatter
ThresholdedRelu Tile TopK Transpose Trilu Unsqueeze Upsample Where Xor
""".split())

ADDED_IN: dict[str, Version] = {
    "DeformConv": (10, 1),
    "BlackmanWindow": (10, 4), "HammingWindow": (10, 4), "HannWindow": (10, 4),
    "STFT": (10, 5),
    "Attention": (10, 14),
    "RMSNormalization": (10, 15), "RotaryEmbedding": (10, 15), "TensorScatter": (10, 15),
}

_MAX_OPSET_FROM: list[tuple[Version, int]] = [((10, 0), 20), ((10, 6), 22), ((10, 11), 23), ((10, 15), 24)]
MIN_OPSET = 9

# genzip-domain ops with a TensorRT plugin (plugins/trt_plugins.py registers them).
PLUGIN_DOMAIN = "genzip"
PLUGIN_OPS = frozenset({"WindowAttention", "SpanAttention"})
PLUGIN_NODES_FROM: Version = (10, 6)   # parser maps nodes to Python (QDP) plugins
AOT_PLUGINS_FROM: Version = (10, 9)
FP4_FROM: Version = (10, 8)

FP8_MIN_CC = (8, 9)
FP4_MIN_CC = (10, 0)

# Value dtypes TensorRT takes anywhere in a network.
PLAIN_DTYPES = frozenset({
    ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.BFLOAT16,
    ir.DataType.INT32, ir.DataType.INT64, ir.DataType.BOOL,
})
# "Quantized types": only as the low-precision side of Q/DQ.
QUANTIZED_DTYPES = frozenset({
    ir.DataType.INT8, ir.DataType.INT4, ir.DataType.FLOAT8E4M3FN, ir.DataType.FLOAT4E2M1,
})
# UINT8 is only a network input/output type (cast right after / right before).
IO_ONLY_DTYPES = frozenset({ir.DataType.UINT8})


def parse_version(text: str) -> Version:
    """``"10"``, ``"10.13"`` or ``"10.13.3"`` -> ``(10, 13)``; newer than NEWEST uses NEWEST's tables."""
    parts = text.strip().split(".")
    try:
        nums = [int(p) for p in parts[:2]]
    except ValueError:
        nums = []
    if not nums or any(n < 0 for n in nums):
        raise GenzipError(f"--trt-version '{text}' is not a version", "write it like 10.13")
    version = (nums[0], nums[1] if len(nums) > 1 else 0)
    if version < OLDEST:
        raise GenzipError(
            f"TensorRT {text} is older than {OLDEST[0]}.{OLDEST[1]}, the oldest parser genzip knows",
            f"target TensorRT {DEFAULT_TRT_VERSION} (pip install genzip[trt])",
        )
    if version > NEWEST:
        logger.warning("TensorRT %s is newer than genzip's tables; checking with %d.%d rules", text, *NEWEST)
        return NEWEST
    return version


def parse_compute_capability(text: str) -> tuple[int, int]:
    """``"9.0"``, ``"8.9"``, ``"90"``, ``"sm_89"`` -> ``(major, minor)``."""
    raw = text.strip().lower().removeprefix("sm_").removeprefix("sm")
    try:
        if "." in raw:
            major, minor = (int(p) for p in raw.split(".", 1))
        else:
            major, minor = int(raw[:-1]), int(raw[-1])
    except ValueError:
        raise GenzipError(f"--compute-capability '{text}' is not a compute capability",
                          "write it like 9.0 (H100) or 8.9 (L4)") from None
    if major < 7:
        raise GenzipError(f"compute capability {text} is below 7.0, which TensorRT 10 does not support",
                          "target a Volta-or-newer GPU")
    return major, minor


def supported_ops(version: Version) -> frozenset[str]:
    return frozenset(op for op in _OPS_10_15 if ADDED_IN.get(op, OLDEST) <= version)


def max_opset(version: Version) -> int:
    return max(opset for since, opset in _MAX_OPSET_FROM if since <= version)


def version_str(version: Version) -> str:
    return f"{version[0]}.{version[1]}"


def has_onnx_attention(version: Version) -> bool:
    return version >= ADDED_IN["Attention"]


def plugins_parsed(version: Version) -> bool:
    """Whether this parser maps genzip nodes to registered Python plugins."""
    return version >= PLUGIN_NODES_FROM
