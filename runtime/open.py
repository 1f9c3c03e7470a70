"""Open a compiled artifact folder for inference (``genzip.load``, ``genzip.compile(...).load()``).

Invariant: the artifact's manifest alone decides what comes back: a KV-cache LLM
(``genzip-compile --kv-cache``) -> ``CausalLM``; a DiT (``hidden_states``, ``timestep``
and ``encoder_hidden_states`` or ``class_labels``) -> ``DiffusersTransformer``; else the
plain runner (TensorRT where it and a GPU are present, else ONNX Runtime).
"""

from __future__ import annotations

from genzip.backends.artifact import read_manifest
from genzip.backends.runner import load_artifact
from genzip.errors import GenzipError


def open_artifact(artifact: str, plan=None, threads: int | None = None, cfg: str | None = None, providers=None):
    """See ``genzip.load``."""
    manifest = read_manifest(artifact)
    if isinstance(manifest.get("kv_cache"), dict) and plan is None:  # genzip-compile --kv-cache
        from genzip.runtime.generate import CausalLM

        return CausalLM(artifact, threads=threads, providers=providers)
    names = {s.get("name") for s in manifest.get("inputs", [])}
    if {"hidden_states", "timestep"} <= names and names & {"encoder_hidden_states", "class_labels"}:
        from genzip.runtime.diffusers_adapter import DiffusersTransformer
        from genzip.runtime.plan import load_plan

        return DiffusersTransformer(artifact, load_plan(plan) if isinstance(plan, str) else plan, threads=threads,
                                    cfg=cfg, providers=providers)
    if cfg is not None:
        raise GenzipError(f"artifact {artifact} is not a DiT artifact, so cfg= does not apply", "drop cfg=")
    if plan is not None:
        raise GenzipError(f"artifact {artifact} is not a DiT artifact, so a plan cannot apply", "drop the plan")
    return load_artifact(artifact, threads=threads, providers=providers)
