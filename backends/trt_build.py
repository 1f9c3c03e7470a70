"""Build a TensorRT engine for an artifact. ``tensorrt`` is imported only inside ``build_engine``.

Parser-prepared copy (what TensorRT's ONNX parser reads instead of ``model.onnx``):
a fresh load of the artifact's model, changed so every ``genzip`` plugin node becomes
a TensorRT plugin layer instead of being inlined:

* the node keeps its op type (the plugin name) and domain ``genzip`` and gains the
  string attribute ``plugin_namespace="genzip"`` (how parsers before 10.10 find a
  plugin's namespace; 10.10+ also read the domain), plus ``aot=1`` when AOT plugins
  are asked for;
* a ``WindowAttention`` with its residual output becomes ``WindowAttentionResidual``,
  because a plugin has a fixed number of outputs;
* the node's model-local function is deleted and its ``overload`` cleared. Parsers
  inline any local function they find (9.0+), and only 10.7+ prefer a registered
  plugin over it; without the body every supported parser has to take the plugin,
  and a missing plugin fails the build loudly instead of silently running the slow
  standard-op body;
* ``Attention`` loses ``softcap``/``qk_matmul_output_mode`` attributes that hold
  their default 0, which operators.md lists as unsupported attributes.

Parsers older than 10.6 cannot map nodes to Python plugins; for them nothing is
mapped and the bodies are inlined. ``model.onnx`` itself is never modified.

Invariant: ``build_engine`` writes ``model.engine`` into the artifact folder, updates the
timing cache (``trt_timing_cache``: the user's cache dir, keyed by GPU and TensorRT
version, or ``--timing-cache FILE``) and returns the manifest's ``trt`` section, or
raises ``GenzipError`` (parse or build failure) having written neither.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import onnx_ir as ir

from genzip.errors import GenzipError
from genzip.passes.lowering import _trt_support as sup
from genzip.passes.lowering._trt_rules import attn_graphs, is_plugin_node

logger = logging.getLogger(__name__)

ENGINE_NAME = "model.engine"
_PARSER_MODEL = "model.trt.onnx"


@dataclasses.dataclass(frozen=True)
class TrtBuildOptions:
    precision: Literal["fp32", "fp16", "bf16"] = "fp16"  # ignored when the graph carries Q/DQ (strongly typed)
    shapes: tuple[str, ...] = ()  # --shapes values, one optimization profile each (trt_profiles)
    workspace_gib: float = 8.0
    hardware_compatible: bool = False  # Ampere+ portable engine
    version_compatible: bool = False  # runs on later TensorRT 10.x runtimes
    timing_cache: str | None = None  # read before and written after; default: trt_timing_cache.default_path
    plugin_form: Literal["auto", "aot", "jit"] = "auto"  # auto: AOT where TensorRT and triton allow
    optimization_level: int = 3


def resolve_plugin_form(form: str, version: sup.Version) -> str:
    """``aot`` (engine runs without Python) where this TensorRT has AOT Python plugins and
    triton can compile the kernels, else ``jit``; an explicit ``aot`` that cannot work is an error."""
    from genzip.plugins.trt_plugins import triton_available

    possible = version >= sup.AOT_PLUGINS_FROM and triton_available()
    if form == "aot" and not possible:
        raise GenzipError(f"--plugin-form aot needs TensorRT >= {'.'.join(map(str, sup.AOT_PLUGINS_FROM))} "
                          "and the triton package", "pip install genzip[gpu] or use --plugin-form jit")
    if form == "auto":
        return "aot" if possible else "jit"
    return form


def prepare_parser_model(model: ir.Model, version: sup.Version, aot: bool = False) -> dict[str, int]:
    """Turn ``model`` (a copy) into the parser-prepared copy described above; returns counts."""
    stats = {"plugin_nodes": 0, "functions_removed": 0, "attention_attrs_dropped": 0}
    drop = set()
    for graph in attn_graphs(model, version):
        for node in graph:
            if node.op_type == "Attention" and node.domain in ("", "ai.onnx"):
                for name in ("softcap", "qk_matmul_output_mode"):
                    attr = node.attributes.get(name)
                    if attr is not None and not attr.value:
                        del node.attributes[name]
                        stats["attention_attrs_dropped"] += 1
            if not is_plugin_node(node, version):
                continue
            drop.add((node.domain, node.op_type, node.overload))
            node.overload = ""
            if node.op_type == "WindowAttention" and len(node.outputs) == 2:
                node.op_type = "WindowAttentionResidual"
            node.attributes["plugin_namespace"] = ir.Attr("plugin_namespace", ir.AttributeType.STRING,
                                                          sup.PLUGIN_DOMAIN)
            if aot:
                node.attributes["aot"] = ir.Attr("aot", ir.AttributeType.INT, 1)
            stats["plugin_nodes"] += 1
    for key in drop:
        if model.functions.pop(key, None) is not None:
            stats["functions_removed"] += 1
    return stats


def _has_qdq(model: ir.Model) -> bool:
    return any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for g in attn_graphs(model) for n in g)


def _gpu() -> tuple[str, str | None]:
    """(device name, compute capability "major.minor") of CUDA device 0, as torch sees it."""
    import torch

    if not torch.cuda.is_available():
        return "no-cuda", None
    major, minor = torch.cuda.get_device_capability()
    return torch.cuda.get_device_name(0), f"{major}.{minor}"


def _parse(trt, network, path: str) -> None:
    parser = trt.OnnxParser(network, trt.Logger(trt.Logger.WARNING))
    if parser.parse_from_file(path):
        return
    errors = [parser.get_error(i) for i in range(parser.num_errors)]
    first = errors[0] if errors else None
    where = f" at node '{first.node_name()}'" if first is not None and first.node_name() else ""
    desc = first.desc() if first is not None else "no error message"
    raise GenzipError(f"TensorRT's ONNX parser rejected the model{where}: {desc}",
                      "run `genzip lint --target trt ARTIFACT` to list every TensorRT problem")


def build_engine(folder: str, model_name: str, inputs: Sequence[Mapping[str, Any]],
                 example_shapes: Mapping[str, Sequence[int]], options: TrtBuildOptions | None = None,
                 progress: Callable[[str], None] | None = None,
                 ranges: Mapping[str, Mapping[str, int]] | None = None) -> tuple[list[str], dict[str, Any]]:
    """Write the engine for ``folder/model_name`` and update the timing cache; return (file
    names, manifest section). ``progress`` gets TensorRT's build phases as lines."""
    import tensorrt as trt

    from genzip.backends import trt_timing_cache
    from genzip.backends.onnx_files import save_model
    from genzip.backends.trt_profiles import resolve_profiles

    opts = options or TrtBuildOptions()
    version = sup.parse_version(trt.__version__)
    profiles = resolve_profiles(opts.shapes, inputs, example_shapes, ranges)
    model = ir.load(os.path.join(folder, model_name))
    form = resolve_plugin_form(opts.plugin_form, version)
    stats = prepare_parser_model(model, version, form == "aot")
    plugins: list[str] = []
    if stats["plugin_nodes"]:
        from genzip.plugins.trt_plugins import register

        plugins = register()
    strongly_typed = _has_qdq(model)
    builder = trt.Builder(trt.Logger(trt.Logger.WARNING))
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if strongly_typed else 0
    network = builder.create_network(flags)
    with tempfile.TemporaryDirectory(prefix="genzip-trt-") as tmp:
        save_model(model, tmp, _PARSER_MODEL)
        _parse(trt, network, os.path.join(tmp, _PARSER_MODEL))
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(opts.workspace_gib * (1 << 30)))
    config.builder_optimization_level = opts.optimization_level
    if not strongly_typed and opts.precision != "fp32":
        config.set_flag(trt.BuilderFlag.FP16 if opts.precision == "fp16" else trt.BuilderFlag.BF16)
    if opts.hardware_compatible:
        config.hardware_compatibility_level = trt.HardwareCompatibilityLevel.AMPERE_PLUS
    if opts.version_compatible:
        config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
    gpu_name, capability = _gpu()
    cache_path = opts.timing_cache or trt_timing_cache.default_path(trt.__version__, gpu_name, capability)
    cache_bytes = trt_timing_cache.read(cache_path)
    config.set_timing_cache(config.create_timing_cache(cache_bytes), False)
    if progress is not None and hasattr(trt, "IProgressMonitor"):  # TensorRT >= 10.0
        from genzip.backends.trt_progress import monitor

        config.progress_monitor = monitor(trt, progress)
    for profile in profiles:
        trt_profile = builder.create_optimization_profile()
        for name, r in profile.items():
            trt_profile.set_shape(name, r.min, r.opt, r.max)
        config.add_optimization_profile(trt_profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise GenzipError("TensorRT could not build an engine for this model",
                          "rerun with --debug to see TensorRT's log, or try --target ort")
    with open(os.path.join(folder, ENGINE_NAME), "wb") as f:
        f.write(serialized)
    trt_timing_cache.write(cache_path, bytes(config.get_timing_cache().serialize()))
    names = [ENGINE_NAME]
    section = {
        "engine": ENGINE_NAME,
        "tensorrt_version": trt.__version__,
        "gpu": gpu_name,
        "compute_capability": capability,
        "strongly_typed": strongly_typed,
        "precision": "from Q/DQ" if strongly_typed else opts.precision,
        "hardware_compatibility": "ampere+" if opts.hardware_compatible else "none",
        "version_compatible": opts.version_compatible,
        "workspace_bytes": int(opts.workspace_gib * (1 << 30)),
        "profiles": [{name: r.as_json() for name, r in p.items()} for p in profiles],
        "timing_cache": {"path": cache_path, "reused_bytes": len(cache_bytes)},
        "plugins": plugins,
        "plugin_form": form if plugins else None,
        "parser_copy": stats,
    }
    logger.info("built TensorRT %s engine with %d profile(s)", trt.__version__, len(profiles))
    return names, section
