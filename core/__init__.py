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

__all__ = ["GenzipError", "__version__", "load"]


def load(artifact: str, plan=None, threads: int | None = None, cfg: str | None = None):
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
    """
    from genzip.backends.artifact import read_manifest
    from genzip.backends.runner import load_artifact

    manifest = read_manifest(artifact)
    if isinstance(manifest.get("kv_cache"), dict) and plan is None:  # genzip-compile --kv-cache
        from genzip.runtime.generate import CausalLM

        return CausalLM(artifact, threads=threads)
    names = {s.get("name") for s in manifest.get("inputs", [])}
    if {"hidden_states", "timestep"} <= names and names & {"encoder_hidden_states", "class_labels"}:
        from genzip.runtime.diffusers_adapter import DiffusersTransformer
        from genzip.runtime.plan import load_plan

        return DiffusersTransformer(artifact, load_plan(plan) if isinstance(plan, str) else plan, threads=threads,
                                    cfg=cfg)
    if cfg is not None:
        raise GenzipError(f"artifact {artifact} is not a DiT artifact, so cfg= does not apply", "drop cfg=")
    if plan is not None:
        raise GenzipError(f"artifact {artifact} is not a DiT artifact, so a plan cannot apply", "drop the plan")
    return load_artifact(artifact, threads=threads)
