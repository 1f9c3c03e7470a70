"""genzip: compile generative models into small, fast ONNX Runtime / TensorRT artifacts.

Layers, top to bottom (each imports only those below it; pyproject's import-linter
contracts): ``genzip.tools`` (command lines); ``genzip.compile`` (the driver) and
``genzip.searches`` (plan searches); ``genzip.runtime`` (diffusion sampling);
``genzip.backends`` (artifacts, ORT, TensorRT); ``genzip.passes`` (rewrites over
``onnx_ir.Model``); ``genzip.frontend`` (model references to ONNX); ``genzip.plugins``
(the ``genzip`` custom ops); and the base modules (``errors``, ``metadata``,
``metrics``, ``ort_session``, ``jsonfile``, ``describe``).
"""

from __future__ import annotations

from genzip._version import __version__
from genzip.errors import GenzipError

__all__ = ["GenzipError", "__version__", "compile", "compile_pipeline", "load", "load_pipeline"]


def load(artifact: str, plan=None, threads: int | None = None, cfg: str | None = None, providers=None):
    """Open a compiled artifact folder for inference: its TensorRT engine where tensorrt and
    a GPU are present, else ONNX Runtime (``model.backend`` says which; DiT artifacts: ORT).

    ``model(**feeds)`` returns a dict of outputs. A DiT artifact (inputs
    ``hidden_states``, ``timestep`` and ``encoder_hidden_states`` or ``class_labels``)
    comes back as ``genzip.runtime.diffusers_adapter.DiffusersTransformer``, which also
    works as a diffusers pipeline's ``transformer`` (PixArt-style text pipelines and
    the class-conditional ``DiTPipeline``); ``plan`` (a path or ``runtime.plan.Plan``)
    applies an attention-sharing plan to a share-attn artifact, and ``cfg`` says which of its
    calls are CFG pairs (``"uncond-cond"``, ``"cond-uncond"``, ``"none"``; default: read off
    class labels, else none; see the adapter's docstring). A KV-cache LLM artifact
    (``genzip-compile FOLDER --kv-cache``) comes back as ``genzip.runtime.generate.CausalLM``,
    with ``generate(prompt or input_ids, max_new_tokens, ...)``.

    ``providers``: ONNX Runtime execution providers, highest priority first: a string
    (``"cuda,cpu"``, ``"CUDAExecutionProvider{device_id=1},CPUExecutionProvider"``), a
    list of names, or ONNX Runtime's ``(name, options)`` pairs; default CPU. A provider
    this onnxruntime build lacks raises ``GenzipError`` listing the ones it has.
    """
    from genzip.runtime.open import open_artifact

    return open_artifact(artifact, plan=plan, threads=threads, cfg=cfg, providers=providers)


def load_pipeline(artifact: str, plan=None, providers=None, threads: int | None = None):
    """Open a pipeline artifact (``genzip-compile PIPELINE_FOLDER``) as the diffusers pipeline
    it was compiled from, every neural component on ONNX Runtime (``providers``, as for
    ``genzip.load``); ``plan`` applies an attention-sharing plan to the denoiser. Call it like
    the original: ``pipe(class_labels=[207], num_inference_steps=25, generator=...)``."""
    from genzip.runtime.pipeline import load_pipeline as open_pipeline

    return open_pipeline(artifact, plan=plan, providers=providers, threads=threads)


def compile_pipeline(folder, *, passes=None, recipe=None, target=None, out=None, config=None, progress=False,
                     **options):
    """Compile a diffusers pipeline folder whole (every component, one artifact folder), as
    ``genzip-compile PIPELINE_FOLDER`` does, and return its ``Artifact``. ``passes``: a spec,
    or a list whose ``"NAME=SPEC"`` entries give a component its own (``transformer``/``unet``,
    ``text_encoder`` (SD3, SDXL: ``text_encoder_2``; SD3: ``text_encoder_3``), ``vae``); a bare
    spec is the denoiser's. Other keywords as for ``genzip.compile``; ``load()`` on the result
    returns the diffusers pipeline."""
    from genzip.compile import prepare
    from genzip.pipeline import compile_pipeline as compile_whole
    from genzip.pipeline import pipeline_class

    prep = prepare(folder, passes=passes, recipe=recipe, target=target, out=out, config=config, progress=progress,
                   api="genzip.compile_pipeline", **options)
    if pipeline_class(prep.resolved.model) is None:
        raise GenzipError(f"{prep.resolved.model} is not a diffusers pipeline folder genzip compiles whole",
                          "pass a folder with model_index.json (DiT, PixArt, Stable Diffusion, SD3, SDXL pipelines), "
                          "or use genzip.compile for one model")
    return prep.run(lambda out_dir: compile_whole(prep.resolved.model, out_dir, prep.resolved.options, prep.report,
                                                  config=prep.record,
                                                  component_passes=prep.resolved.component_passes))


def __getattr__(name: str):
    # ``genzip.compile`` is the driver module, callable as ``genzip.compile(model, ...)``
    # (see genzip.compile.compile); imported on first use so ``import genzip`` stays light.
    if name == "compile":
        import importlib

        return importlib.import_module("genzip.compile")
    raise AttributeError(f"module 'genzip' has no attribute '{name}'")
