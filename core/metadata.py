"""Every metadata key genzip writes into ONNX models, and the numbers those keys carry.

One definition each: passes write these keys, backends and the runtime read them.
Node keys live in ``node.metadata_props``, model keys in ``model.metadata_props``.
"""

from __future__ import annotations

# --- model keys ----------------------------------------------------------------------
FACTS_KEY = "genzip.facts"  # comma-separated facts the passes established
SHARE_LAYOUT_KEY = "genzip.share_attn"  # JSON layout of share-attn's mode switches
INT8_SCORES_KEY = "genzip.quant.attention_int8"  # number of attentions with int8 scores
SENSITIVITY_KEY = "genzip.sensitivity"  # JSON sensitivity table
PRECISION_PLAN_KEY = "genzip.mixed_precision"  # JSON mixed-precision allocation
KV_QUANT_KEY = "genzip.kv_quant"  # JSON int8 KV-cache layout (passes/quant/kv_quant.py)
KV_CAPACITY_KEY = "genzip.kv_capacity"  # JSON {past input: tokens kept} of an evicting cache (span-attn)
CSKV_KEY = "genzip.cskv"  # JSON low-rank bi-branch KV-cache layout (passes/quant/cskv.py)
KV_SHARED_KEY = "genzip.kv_shared_buffer"  # JSON: past/present share one buffer (passes/lowering/ort_gqa.py)

# --- node keys -----------------------------------------------------------------------
ATTN_KIND_KEY = "genzip.attn.kind"  # "self" | "cross" | "unknown" (passes/attention/_classify.py)
ATTN_KIND_REASON_KEY = "genzip.attn.kind_reason"  # why a node is "unknown"
ATTN_INDEX_KEY = "genzip.attn.index"  # 0, 1, ... in attention-site order
ATTN_SCOPE_KEY = "genzip.attn.scope"  # torch module path of the attention
ATTN_WINDOW_KEY = "genzip.attn.window"  # window-attn's window size
QUANT_KEY = "genzip.quant"  # JSON QuantSpec (annotate-precision)
QUANT_CALIB_KEY = "genzip.quant.calib"  # JSON activation range (calibrate)

# Written by torch.onnx's dynamo exporter on each node.
TORCH_NAME_SCOPES_KEY = "pkg.torch.onnx.name_scopes"
TORCH_CLASS_HIERARCHY_KEY = "pkg.torch.onnx.class_hierarchy"
NAMESPACE_KEY = "namespace"

# --- share-attn modes ----------------------------------------------------------------
# The int64 fed per layer to a share-attn artifact's ``attn_modes`` input.
# MODE_FULL_RESIDUAL is full attention that also refreshes the WA-RS residual cache;
# MODE_FULL_CFG_RESIDUAL is ASC's full attention (conditional half) that refreshes it too,
# the half's residual copied to both halves, as DiTFastAttn's reference does.
MODE_FULL, MODE_FULL_RESIDUAL, MODE_WINDOW, MODE_SHARE_STEP, MODE_FULL_CFG, MODE_WINDOW_CFG = range(6)
MODE_FULL_CFG_RESIDUAL = 6
SHARE_MODES_INPUT = "attn_modes"
