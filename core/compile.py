"""``genzip.compile``: model reference -> passes -> verified artifact folder.

Everything that can be checked without the model (target, spec, output folder)
is checked before the model is loaded, so bad input fails fast and writes nothing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import sys
import types
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from genzip.backends.artifact import check_out_dir
from genzip.backends.trt_backend import require_tensorrt
from genzip.backends.write import Compiled, write_artifact
from genzip.errors import GenzipError
from genzip.frontend import load_model
from genzip.frontend.dynamic_axes import DynamicAxes
from genzip.frontend.export_sizes import ExportSizes
from genzip.frontend.hf_folder import folder_family
from genzip.frontend.loader import classify_object, classify_ref, load_object, object_family
from genzip.frontend.user_inputs import UserData, read_calib_path, read_npz
from genzip.metrics import MIN_COSINE
from genzip.ort_session import ORT_ERRORS, ort_failure, run_model, run_user_model
from genzip.parallel import executor as search_executor
from genzip.passes import Instrumentation, build_pipeline, run_pipeline
from genzip.passes.attention._span_kv_heads import split_head_feeds
from genzip.passes.infra.context import (
    CALIBRATION,
    EXAMPLE_INPUTS,
    STATIC_AXES,
    TORCH_MODULE,
    PassContext,
    check_needs,
    static_axis_conflicts,
)
from genzip.passes.precision.cast_float import cast_feeds
from genzip.passes.quant._cskv_layout import compress_feeds
from genzip.passes.quant._kv_layout import quantize_feeds
from genzip.providers import describe, resolve_providers

logger = logging.getLogger(__name__)

TARGETS = ("onnx", "ort", "trt")
DTYPES = ("fp32", "fp16", "bf16")


@dataclasses.dataclass
class CompileOptions:
    target: str = "ort"
    passes: str = ""
    force: bool = False
    seed: int = 0
    verify: str = "full"
    print_ir_after: frozenset[str] = frozenset()
    print_ir_after_change: bool = False
    pass_timing: bool = False
    reproducer_dir: str | None = None
    trt: Any = None  # backends.trt_build.TrtBuildOptions for target trt
    min_cosine: float = MIN_COSINE  # fidelity gate vs the reference; lossy passes may need less
    kv_cache: bool = False  # causal-LM folders: export the prefill/decode graph with past/present KV
    # The user's example inputs (--inputs: a .npz path, or feeds by input name) and calibration
    # set (--calib-data: .npz, folder, feed dicts, a callable); see genzip.frontend.user_inputs.
    inputs: Any = None
    calib_data: Any = None
    # ONNX Runtime providers of the fidelity gate (genzip.providers syntax; --device is the
    # shorthand). Default CPU. The export check and calibration always run on CPU.
    providers: str = ""
    device: str = ""
    # Precision of the artifact: fp16/bf16 append cast-float{dtype=...} after the other passes
    # (the export and every pass stay float32; see passes/precision/cast_float.py).
    dtype: str = "fp32"
    # Where searching passes (sensitivity) run their units (genzip.parallel): a local Ray
    # cluster of this many single-threaded workers, or an existing one at this address
    # (default $RAY_ADDRESS); neither: in this process. Results never depend on it.
    workers: int | None = None
    ray_address: str | None = None
    # Sizes of the non-batch axes the export traces (genzip.frontend.export_sizes): caption
    # tokens, latent height/width (sample_size: both), LLM tokens. None: the model's default.
    text_len: int | None = None
    height: int | None = None
    width: int | None = None
    sample_size: int | None = None
    seq_len: int | None = None
    # Which of those axes the export keeps dynamic (genzip.frontend.dynamic_axes): "none"
    # (static, the default), "auto" (where the model and the passes allow), or a list of
    # text, size, seq with optional =MIN:MAX ranges; the traced sizes are the opt sizes.
    dynamic_axes: str = "none"

    def export_sizes(self) -> ExportSizes:
        """The size settings, checked (positive integers; sample_size not with height/width)."""
        return ExportSizes.from_settings(text_len=self.text_len, height=self.height, width=self.width,
                                         sample_size=self.sample_size, seq_len=self.seq_len)


# What each kind of source hands the passes (see frontend.loader): presets attach a
# seeded calibration set, every PyTorch source its eager module. Known before loading,
# so a pipeline that needs more fails in seconds, not after the export.
_PROVIDES = {
    "preset": frozenset({CALIBRATION, TORCH_MODULE, EXAMPLE_INPUTS}),
    "folder": frozenset({TORCH_MODULE, EXAMPLE_INPUTS}),
    "callable": frozenset({TORCH_MODULE, EXAMPLE_INPUTS}),
    "onnx": frozenset({EXAMPLE_INPUTS}),
}
_PROVIDES["object"] = frozenset({TORCH_MODULE, EXAMPLE_INPUTS})  # in-memory torch model (genzip.compile)
_PROVIDES["onnx-object"] = frozenset({EXAMPLE_INPUTS})  # in-memory ONNX model
_SOURCE_WORDS = {"preset": "this preset", "folder": "a Hugging Face folder", "callable": "a module:function source",
                 "onnx": "an ONNX file", "object": "an in-memory PyTorch model", "onnx-object": "an in-memory ONNX model"}


def _stage(progress: Callable[[str], None] | None, message: str) -> None:
    if progress:
        progress(message)
    logger.info(message)


class _ProgressHandler(logging.Handler):
    """Shows the frontend's INFO records (export, verification) as progress lines and
    passes warnings on to the root logger's handlers, as propagation would."""

    def __init__(self, progress: Callable[[str], None]):
        super().__init__(logging.INFO)
        self.progress = progress

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno < logging.WARNING:
            self.progress(record.getMessage())
            return
        for handler in logging.getLogger().handlers:
            if record.levelno >= handler.level:
                handler.handle(record)


@contextlib.contextmanager
def _frontend_progress(progress: Callable[[str], None] | None) -> Iterator[None]:
    """While the model loads (an export takes ~10 s), show what the frontend is doing.

    Only when its INFO records would not be logged anyway (no duplicates under --debug);
    the logger's level and handlers are restored afterwards.
    """
    log = logging.getLogger("genzip.frontend")
    if progress is None or log.isEnabledFor(logging.INFO):
        yield
        return
    handler, level, propagate = _ProgressHandler(progress), log.level, log.propagate
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False  # the handler forwards warnings itself; INFO must not reach the root's
    try:
        yield
    finally:
        log.removeHandler(handler)
        log.setLevel(level)
        log.propagate = propagate


def pass_context(source, seed: int, progress: Callable[[str], None] | None, executor: Any = None) -> PassContext:
    """The context every pass of this compile receives, from what the frontend loaded."""
    return PassContext(
        example_inputs=source.example_inputs,
        calibration=source.info.get("calibration"),
        torch_module=source.info.get("module"),
        seed=seed,
        progress=progress,
        executor=executor,
    )


def _user_data(opts: CompileOptions) -> UserData | None:
    """Read --inputs / --calib-data files now (cheap), so a missing or malformed file fails
    before the model loads; their shapes are checked against the model before its export."""
    if opts.inputs is None and opts.calib_data is None:
        return None
    inputs, calib = opts.inputs, opts.calib_data
    if isinstance(inputs, (str, os.PathLike)):
        inputs = read_npz(os.fspath(inputs), "--inputs")
    elif inputs is not None and not isinstance(inputs, Mapping):
        raise GenzipError(f"example inputs of type {type(inputs).__name__} cannot be matched to input names",
                          "give a .npz path or a dict mapping input names to arrays")
    if isinstance(calib, (str, os.PathLike)):
        calib = read_calib_path(os.fspath(calib))
    return UserData(inputs=inputs, calib=calib)


def _provided(kind: str, model_ref: Any, user: UserData | None, kv_cache: bool = False) -> frozenset[str]:
    """What this source hands the passes, known before loading it."""
    provided = _PROVIDES[kind]
    if kind == "folder" and kv_cache:
        provided |= {CALIBRATION}  # prefill token windows (frontend.calibration.kv_cache_calibration)
    if user is not None and user.calib is not None:
        provided |= {CALIBRATION}
    if kind == "folder" and folder_family(Path(model_ref).expanduser()) == "dit":
        provided |= {CALIBRATION}  # the folder's DiT records its own denoising trajectory
    if kind == "object" and object_family(model_ref) == "dit":
        provided |= {CALIBRATION}
    return provided


def compile_model(
    model_ref: Any,
    out_dir: str,
    options: CompileOptions | None = None,
    progress: Callable[[str], None] | None = None,
    *,
    example_call: Any = None,
    config: dict[str, Any] | None = None,
    calibration: Callable[[], list[dict[str, Any]]] | None = None,
) -> dict[str, Any]:
    """Compile ``model_ref`` into the artifact folder ``out_dir``; return its manifest.

    ``model_ref`` is a reference string, or an in-memory model (``nn.Module``,
    ``onnx.ModelProto``, ``onnx_ir.Model``; ``example_call`` is then its example inputs).
    ``config`` is the resolved configuration the manifest records (``genzip.compile``).
    ``calibration``: the source's own calibration set when it records none itself (a
    zero-argument callable returning feed dicts by graph input name, called only when a
    pass calibrates; the whole-pipeline compile gives PixArt's masked transformer its
    denoising trajectory); the user's ``calib_data`` takes precedence.
    """
    opts = options or CompileOptions()
    if opts.target not in TARGETS:
        raise GenzipError(f"unknown target '{opts.target}'", f"use one of {', '.join(TARGETS)}")
    if opts.target == "trt":
        require_tensorrt()
    pipeline = build_pipeline(with_dtype(opts.passes, opts.dtype))
    resolve_providers(opts.providers or None, opts.device or None)  # a provider this ORT lacks fails first
    check_out_dir(out_dir, opts.force)
    kind = classify_ref(model_ref) if isinstance(model_ref, str) else classify_object(model_ref)
    sizes = opts.export_sizes()
    user = _user_data(opts)
    if sizes.given() and user is not None and user.inputs is not None:
        raise GenzipError(f"{', '.join(sizes.given())} and --inputs both set the export's shapes",
                          "drop the size flags (the inputs' shapes are traced) or drop --inputs")
    provided = _provided(kind, model_ref, user, opts.kv_cache) | ({CALIBRATION} if calibration else set())
    check_needs(pipeline.passes, provided, _SOURCE_WORDS[kind])
    axes = dynamic_request(opts.dynamic_axes, pipeline.passes)

    label = model_ref if isinstance(model_ref, str) else f"a {type(model_ref).__name__}"
    # Before loading: a missing Ray or an unreachable cluster fails in seconds.
    with search_executor(opts.workers, opts.ray_address) as executor:
        _stage(progress, f"loading {label}")
        with _frontend_progress(progress):
            if isinstance(model_ref, str):
                source = load_model(model_ref, seed=opts.seed, kv_cache=opts.kv_cache, user=user, sizes=sizes,
                                    axes=axes)
            else:
                source = load_object(model_ref, example_call, seed=opts.seed, user=user, sizes=sizes, axes=axes)
        if calibration is not None:
            source.info.setdefault("calibration", calibration)
        return compile_source(source, out_dir, opts, progress, pipeline, config=config, executor=executor)


def dynamic_request(spec: str, passes) -> DynamicAxes:
    """``--dynamic-axes`` parsed and checked against the pipeline before any export: an axis
    asked dynamic that a pass needs static is a one-line error; ``auto`` keeps it static."""
    request = DynamicAxes.parse(spec)
    conflicts = static_axis_conflicts(passes, request.kinds())
    if conflicts and request.explicit:
        name, kind, why = conflicts[0]
        raise GenzipError(f"pass '{name}' needs the {STATIC_AXES[kind]} static ({why}), and --dynamic-axes "
                          f"asks for it dynamic", f"drop {kind} from --dynamic-axes (export it static), or use "
                          "--dynamic-axes auto")
    return request.keep_static(kind for _, kind, _ in conflicts)


def compile_source(source, out_dir: str, options: CompileOptions, progress: Callable[[str], None] | None = None,
                   pipeline=None, *, config: dict[str, Any] | None = None, executor: Any = None) -> dict[str, Any]:
    """Run ``options.passes`` over a loaded ``SourceModel`` (its model is rewritten in
    place) and write the artifact: several artifacts can share one export this way.
    ``executor``: where searching passes run their units (``genzip.parallel``; None: here)."""
    opts = options
    pipeline = pipeline if pipeline is not None else build_pipeline(with_dtype(opts.passes, opts.dtype))
    check_out_dir(out_dir, opts.force)
    feeds = source.example_inputs
    reference = source.info.get("reference_outputs")
    reference_label = "pytorch-eager"
    if reference is None:
        _stage(progress, "running the unmodified model for the fidelity reference")
        # ORT failing on the user's own model is the user's problem to fix (one line, exit 2),
        # not a genzip bug; the file is opened by path, so its external data stays on disk.
        reference = run_user_model(source.info.get("path") or source.model, feeds, f"'{source.source}'",
                                   synthesized=source.info.get("inputs_synthesized", False))
        reference_label = "source-onnx"

    model = source.model
    inst = Instrumentation(
        verify=opts.verify,
        print_ir_after=opts.print_ir_after,
        print_ir_after_change=opts.print_ir_after_change,
        pass_timing=opts.pass_timing,
        reproducer_dir=opts.reproducer_dir,
        progress=(lambda i, n, name: _stage(progress, f"pass {i + 1}/{n}: {name}")) if progress else None,
    )
    # Quantized artifacts also record fidelity vs the FP32 export (before any pass).
    fp32_outputs = None
    if any(p.name == "quant" for p in pipeline.passes):
        # For an ONNX file the reference already is this model's ORT output.
        fp32_outputs = reference if reference_label == "source-onnx" else run_model(model, feeds)
    records = run_pipeline(model, pipeline, inst, pass_context(source, opts.seed, progress, executor))
    # kv-quant turns the float past inputs into int8 + scales, cskv into low-rank features
    # plus a window, span-attn{evict=head} splits the cache per KV head, cast-float float
    # inputs into fp16/bf16: the example inputs follow.
    feeds = compress_feeds(model, quantize_feeds(model, split_head_feeds(model, source.example_inputs)))
    source = dataclasses.replace(source, example_inputs=cast_feeds(model, feeds))
    _stage(progress, f"writing {opts.target} artifact to {out_dir}")
    compiled = Compiled(model, source, str(pipeline), records, reference, reference_label, fp32_outputs, config)
    providers = resolve_providers(opts.providers or None, opts.device or None)
    try:
        return write_artifact(compiled, out_dir, target=opts.target, force=opts.force, trt_options=opts.trt,
                              min_cosine=opts.min_cosine, providers=providers, progress=progress)
    except ORT_ERRORS as e:
        if opts.dtype == "fp32":
            raise
        # ORT's CPU provider lacks most bf16 kernels: a dtype the providers cannot run is
        # the user's choice to change, not a genzip bug.
        raise GenzipError(
            f"ONNX Runtime on {', '.join(describe(providers))} cannot run the {opts.dtype} model: {ort_failure(e)}",
            f"use --dtype fp16 (ONNX Runtime's CPU provider runs it) or verify on a provider with {opts.dtype} "
            "kernels (--device cuda)",
        ) from e


def with_dtype(spec: str, dtype: str) -> str:
    """The pipeline ``spec`` with ``cast-float`` appended for an fp16/bf16 ``dtype``."""
    if dtype not in DTYPES:
        raise GenzipError(f"--dtype {dtype} is not one of {', '.join(DTYPES)}", "pass --dtype fp32, fp16 or bf16")
    if dtype == "fp32":
        return spec
    return ",".join(s for s in (spec.strip(), f"cast-float{{dtype={dtype}}}") if s)


# --- genzip.compile(model, ...): settings from keywords, config files and flags -------------

# Settings that are not CompileOptions fields. Every setting is at once a genzip.compile
# keyword, a config-file key and (same name, dashes) a genzip-compile flag; tests check it.
_EXTRA_SETTINGS = {"model": str, "out": str, "recipe": str | dict}
_INTERNAL_FIELDS = {"trt"}  # built from the TensorRT settings below
# Not recorded in an artifact's configuration: where and how it was written, not what it is.
_NOT_RECORDED = {"out", "force", "reproducer_dir", "recipe", "print_ir_after", "print_ir_after_change",
                 "pass_timing", "providers", "device", "workers", "ray_address"}


def _trt_fields() -> dict[str, Any]:
    import typing

    from genzip.backends.trt_build import TrtBuildOptions

    return {k: v for k, v in typing.get_type_hints(TrtBuildOptions).items() if k != "optimization_level"}


def setting_hints(*, in_file: bool) -> dict[str, Any]:
    """Every setting -> its type hint. ``in_file``: as a config file may give it (inputs and
    calibration data are paths there; from Python they may also be arrays or callables)."""
    import typing

    hints = {k: v for k, v in typing.get_type_hints(CompileOptions).items() if k not in _INTERNAL_FIELDS}
    hints.update(_trt_fields())
    hints.update(_EXTRA_SETTINGS)
    hints["target"] = typing.Literal["onnx", "ort", "trt"]
    hints["verify"] = typing.Literal["full", "structure", "none"]
    hints["dtype"] = typing.Literal["fp32", "fp16", "bf16"]
    # Several values: the bare ones are the denoiser's, NAME=SPEC a pipeline component's (genzip.pipeline).
    hints["passes"] = str | list[str]
    if in_file:
        hints["inputs"] = hints["calib_data"] = str
    return hints


def resolve_settings(config: Any = None, explicit: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Defaults < the config file (a path, or a dict of settings) < ``explicit`` settings
    (command-line flags the user typed, or Python keywords); every key and type checked."""
    from genzip.config import check_settings, read_config

    merged: dict[str, Any] = {}
    if config is not None:
        where = f"config file '{config}'" if isinstance(config, (str, os.PathLike)) else "config"
        data = read_config(os.fspath(config)) if isinstance(config, (str, os.PathLike)) else dict(config)
        merged.update(check_settings(data, setting_hints(in_file=True), where))
    merged.update(check_settings({k: v for k, v in (explicit or {}).items() if v is not None},
                                 setting_hints(in_file=False), "genzip.compile"))
    return merged


def default_out(model: Any, target: str) -> str:
    """``./<model>.<target>`` for a reference; ``./<ClassName>.<target>`` for an object."""
    if not isinstance(model, str):
        return f"{type(model).__name__}.{target}"
    base = os.path.basename(os.path.normpath(model.split(":")[0]))
    base = base[:-5] if base.endswith(".onnx") else base
    return f"{base or 'model'}.{target}"


@dataclasses.dataclass
class Resolved:
    """A compile, fully resolved: what to compile, where, how, and what the manifest records."""

    model: Any
    out: str | None
    options: CompileOptions
    record: dict[str, Any]
    # --passes NAME=SPEC: a pipeline folder's per-component specs (genzip.pipeline)
    component_passes: dict[str, str] = dataclasses.field(default_factory=dict)


def _recipe_spec(recipe: Any, passes: str) -> str:
    from genzip.recipes import expand_recipe

    if recipe is None:
        return passes
    if isinstance(recipe, Mapping):
        params = dict(recipe)
        name = params.pop("name", None)
        if not isinstance(name, str):
            raise GenzipError("a recipe table needs a 'name' string", 'write recipe = {name = "w8a8", ...}')
        return expand_recipe(name, passes, params)
    return expand_recipe(recipe, passes)


def build_compile(settings: Mapping[str, Any]) -> Resolved:
    """Turn resolved settings into a compile (the model, the out folder, CompileOptions)."""
    s = dict(settings)
    if s.get("model") is None:
        raise GenzipError("no model to compile", "name one: a preset, an .onnx file, a folder or "
                                                 "package.module:function (or model = ... in the config file)")
    from genzip.recipes import split_component_passes

    target = s.get("target", "ort")
    bare, component_passes = split_component_passes(s.get("passes", ""))
    spec = _recipe_spec(s.get("recipe"), bare)
    trt = None
    if target == "trt":
        from genzip.backends.trt_build import TrtBuildOptions
        from genzip.backends.trt_profiles import parse_shapes

        for flag in s.get("shapes", ()):
            parse_shapes(flag)  # a malformed --shapes fails before the model loads
        trt = TrtBuildOptions(**{k: s[k] for k in _trt_fields() if k in s})
    DynamicAxes.parse(s.get("dynamic_axes"))  # a malformed --dynamic-axes fails before the model loads too
    min_cosine = s.get("min_cosine", MIN_COSINE)
    if not 0.0 <= min_cosine <= 1.0:
        raise GenzipError(f"--min-cosine {min_cosine} is outside [0, 1]", "pass a cosine such as 0.99 or 0.9")
    fields = {f.name for f in dataclasses.fields(CompileOptions)} - _INTERNAL_FIELDS
    opts = CompileOptions(**{k: v for k, v in s.items() if k in fields and k != "passes"}, passes=spec, trt=trt)
    # Every resolved value, defaults included, so a rebuild does not depend on later defaults.
    record = {k: getattr(opts, k) for k in fields if k not in _NOT_RECORDED and k not in ("inputs", "calib_data")}
    if trt is not None:
        record.update({k: getattr(trt, k) for k in _trt_fields()})
    if component_passes:
        record["passes"] = [opts.passes, *(f"{k}={v}" for k, v in component_passes.items())]
    model = s["model"]
    if isinstance(model, str):
        record["model"] = os.path.abspath(os.path.expanduser(model)) if os.path.exists(os.path.expanduser(model)) else model
    if s.get("inputs") is not None:
        record["inputs"] = "inputs.npz"  # the artifact keeps its example inputs: the manifest's folder
    if isinstance(s.get("calib_data"), (str, os.PathLike)):
        record["calib_data"] = os.path.abspath(os.fspath(s["calib_data"]))
    # JSON-ready: sets sorted (their order means nothing), tuples kept in order (--shapes profiles).
    record = {k: sorted(v) if isinstance(v, (frozenset, set)) else list(v) if isinstance(v, tuple) else v
              for k, v in sorted(record.items())}
    return Resolved(model, s.get("out"), opts, record, component_passes)


class Artifact:
    """A compiled artifact folder: ``folder``, ``manifest``, ``fidelity``, ``load()``, ``eval()``.

    Invariant: an artifact written without ``out`` lives in a temporary folder this object
    owns; it is removed by ``close()``, on leaving a ``with`` block, or when the object is
    garbage-collected (or the interpreter exits). One written to ``out`` is never removed.
    """

    def __init__(self, folder: str, manifest: dict[str, Any], owned_root: str | None = None):
        import shutil
        import weakref

        self.folder = folder
        self.manifest = manifest
        self._cleanup = weakref.finalize(self, shutil.rmtree, owned_root, True) if owned_root else None

    @property
    def fidelity(self) -> dict[str, Any]:
        return self.manifest["fidelity"]

    @property
    def temporary(self) -> bool:
        return self._cleanup is not None

    def load(self, plan=None, threads: int | None = None, cfg: str | None = None, providers=None):
        """The artifact ready to run (see ``genzip.load``); a pipeline artifact as its diffusers
        pipeline (see ``genzip.load_pipeline``)."""
        from genzip.runtime.open import open_artifact
        from genzip.runtime.pipeline import PIPELINE_KIND, load_pipeline

        if self.manifest.get("kind") == PIPELINE_KIND:
            return load_pipeline(self.folder, plan=plan, providers=providers, threads=threads)
        return open_artifact(self.folder, plan=plan, threads=threads, cfg=cfg, providers=providers)

    def eval(self, **kwargs) -> dict[str, Any]:
        """Generation quality (``genzip.runtime.evaluate.evaluate``; ``genzip eval``)."""
        from genzip.runtime.evaluate import evaluate

        return evaluate(self.folder, **kwargs)

    def close(self) -> None:
        if self._cleanup is not None:
            self._cleanup()

    def __enter__(self) -> Artifact:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Artifact({self.folder!r}, target={self.manifest.get('target')!r}, cosine={self.fidelity['cosine']:.6f})"


# Named parameters of compile() besides **options, with the settings they stand for.
_KEYWORD_SETTINGS = {"example_inputs": "inputs", "passes": "passes", "recipe": "recipe", "target": "target",
                     "out": "out", "calib_data": "calib_data"}


def option_keywords() -> set[str]:
    """Every keyword ``genzip.compile`` takes (named parameters and ``**options``)."""
    hints = setting_hints(in_file=False)
    return (set(hints) - set(_KEYWORD_SETTINGS.values()) - {"model"}) | set(_KEYWORD_SETTINGS) | {"config", "progress"}


def prepare(model: Any = None, example_inputs: Any = None, *, passes=None, recipe=None, target=None,
            out=None, calib_data=None, config=None, progress=False, api: str = "genzip.compile",
            **options: Any) -> Prepared:
    """The keyword checks and settings resolution ``genzip.compile`` and
    ``genzip.compile_pipeline`` share: the resolved compile, where it goes, and how it reports."""
    import tempfile

    in_memory = model is not None and not isinstance(model, (str, os.PathLike))
    explicit: dict[str, Any] = {"passes": passes, "recipe": recipe, "target": target, "out": out}
    explicit.update(options)
    if model is not None and not in_memory:
        explicit["model"] = os.fspath(model)
    if not in_memory and example_inputs is not None:
        explicit["inputs"] = example_inputs
    unknown = set(options) - (option_keywords() - set(_KEYWORD_SETTINGS) - {"config", "progress"})
    if unknown:
        from genzip.errors import did_you_mean

        key = sorted(unknown)[0]
        raise GenzipError(f"{api} got an unknown keyword '{key}'{did_you_mean(key, option_keywords())}",
                          f"its keywords are: {', '.join(sorted(option_keywords()))}")
    settings = resolve_settings(config, explicit)
    if calib_data is not None:
        settings["calib_data"] = calib_data
    if in_memory:
        settings["model"] = model
    resolved = build_compile(settings)
    owned = None
    out_dir = resolved.out
    if out_dir is None:
        owned = tempfile.mkdtemp(prefix="genzip-")
        out_dir = os.path.join(owned, "artifact")
    record = dict(resolved.record)
    if in_memory:
        record["model"] = None  # an in-memory model cannot be named; rebuild with model= given again
    report = progress if callable(progress) else (_notebook_progress() if progress else None)
    return Prepared(resolved, in_memory, out_dir, owned, record, report)


@dataclasses.dataclass(frozen=True)
class Prepared:
    """A resolved Python-API compile: ``owned`` is the temporary root to remove on failure."""

    resolved: Any  # Resolved
    in_memory: bool
    out_dir: str
    owned: str | None
    record: dict[str, Any]
    report: Callable[[str], None] | None

    def run(self, write: Callable[[str], dict[str, Any]]) -> Artifact:
        """``write(out_dir)`` -> manifest, as an :class:`Artifact`; the temporary root goes on failure."""
        try:
            manifest = write(self.out_dir)
        except BaseException:
            if self.owned:
                import shutil

                shutil.rmtree(self.owned, ignore_errors=True)
            raise
        return Artifact(os.path.abspath(self.out_dir), manifest, self.owned)


def compile(  # genzip.compile(...): the public name; shadows the builtin only in this module
    model: Any = None,
    example_inputs: Any = None,
    *,
    passes: str | list[str] | None = None,
    recipe: str | Mapping[str, Any] | None = None,
    target: str | None = None,
    out: str | None = None,
    calib_data: Any = None,
    config: Any = None,
    progress: bool | Callable[[str], None] = False,
    **options: Any,
) -> Artifact:
    """Compile ``model`` and return its :class:`Artifact`. Python's ``genzip-compile``.

    ``model``: an ``nn.Module`` (diffusers and transformers models too), an
    ``onnx.ModelProto``, an ``onnx_ir.Model``, or any reference string the CLI takes
    (None: the config's ``model``). ``example_inputs``: for a module, its call (tensor or
    array, tuple or dict); otherwise feeds by input name or an ``.npz`` path (``--inputs``).
    ``calib_data``: an ``.npz`` path or folder, a list or iterable of feed dicts, a
    callable returning one, or ModelOpt's ``forward_loop(model)``. ``target`` defaults to
    the config's, else ``"ort"``. ``config``: a TOML/YAML/JSON file or an artifact's
    ``genzip.json`` (keywords override it). ``**options``: every other ``genzip-compile``
    flag by its name (``seed``, ``min_cosine``, ``verify``, ``force``, ``shapes``, ...).
    Without ``out`` the artifact goes to a temporary folder the returned object owns. A
    diffusers pipeline folder's denoiser is compiled alone here; ``genzip.compile_pipeline``
    compiles the whole pipeline, as ``genzip-compile PIPELINE_FOLDER`` does.
    """
    prep = prepare(model, example_inputs, passes=passes, recipe=recipe, target=target, out=out,
                   calib_data=calib_data, config=config, progress=progress, **options)
    if prep.resolved.component_passes:
        name = next(iter(prep.resolved.component_passes))
        raise GenzipError(f"passes=['{name}=...'] names a pipeline component, and genzip.compile compiles one model",
                          "use genzip.compile_pipeline(PIPELINE_FOLDER, passes=[...]) for per-component specs")
    return prep.run(lambda out_dir: compile_model(
        prep.resolved.model, out_dir, prep.resolved.options, prep.report,
        example_call=example_inputs if prep.in_memory else None, config=prep.record))


def _notebook_progress() -> Callable[[str], None]:
    """Progress as a tqdm bar (``tqdm.auto``: a widget in a notebook, text in a terminal)
    whose description is the current stage."""
    from tqdm.auto import tqdm

    bar = tqdm(total=None, bar_format="genzip {desc} [{elapsed}]", leave=False)

    def report(message: str) -> None:
        bar.set_description_str(message)
        bar.update(1)

    return report


class _CallableModule(types.ModuleType):
    """``genzip.compile`` stays the driver module (``genzip.compile.compile_model``,
    ``CompileOptions`` import from it) and is callable: ``genzip.compile(model, ...)``."""

    def __call__(self, *args: Any, **kwargs: Any) -> Artifact:
        return compile(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
