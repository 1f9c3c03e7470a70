"""``evaluate``: generation quality of a compiled DiT or causal-LM artifact (``genzip eval``).

Figures (details in ``_eval_dit`` / ``_eval_llm``):

* DiT: ``accuracy`` and ``frechet_distance`` (trained-dit only: held-out labels, the
  committed digit classifier and its feature space), ``psnr_db`` / ``ssim`` of the final
  latents against ``vs`` at the same seed, and an optional PNG ``grid``;
* LLM: ``perplexity`` (trained-llama / trained-moe only: the KJV held-out split),
  ``kl_divergence`` and ``top1_agreement`` against ``vs``.

Invariants: the result always has every figure key of its family; a figure that cannot
be measured is ``None`` and ``why[figure]`` says why. ``vs`` must be the same family with
the same inputs (names, dtypes, fixed dimensions) and main-output shape, else nothing runs.
``plan`` applies to ``artifact`` only (the reference runs all-full) and needs a share-attn
DiT. ``psnr_db`` is ``inf`` when the latents are identical.
"""

from __future__ import annotations

from typing import Any

from genzip.backends.artifact import read_manifest
from genzip.errors import GenzipError
from genzip.runtime import _eval_data
from genzip.runtime import plan as plans

DIT, LLM = "dit", "llm"
_KIND = {DIT: "a DiT", LLM: "a causal LM"}


def family(folder: str, manifest: dict[str, Any]) -> str:
    """``dit`` or ``llm`` from the artifact's inputs (the manifest's family only breaks no tie)."""
    names = {s["name"] for s in manifest["inputs"]}
    if {"hidden_states", "timestep"} <= names:
        return DIT
    if "input_ids" in names:
        return LLM
    raise GenzipError(
        f"artifact {folder} is neither a DiT (hidden_states, timestep) nor a causal LM (input_ids); its inputs "
        f"are {', '.join(sorted(names))}", "evaluate a DiT or LLM artifact (e.g. genzip-compile tiny-dit)",
    )


def _signature(manifest: dict[str, Any]) -> tuple:
    main = manifest["outputs"][0]
    inputs = tuple(sorted((s["name"], s["dtype"], tuple(d if isinstance(d, int) else "?" for d in s["shape"]))
                          for s in manifest["inputs"] if not s["name"].startswith("attn_")))
    return inputs, tuple(d if isinstance(d, int) else "?" for d in main["shape"])


def check_pair(artifact: str, manifest: dict[str, Any], vs: str, ref_manifest: dict[str, Any]) -> None:
    """Refuse a reference that is not the same model interface (family, inputs, main output)."""
    fam, ref_fam = family(artifact, manifest), family(vs, ref_manifest)
    if fam != ref_fam:
        raise GenzipError(f"artifact {artifact} is {_KIND[fam]} but --vs {vs} is {_KIND[ref_fam]}",
                          "compare two compiles of the same model")
    (inputs, out), (ref_inputs, ref_out) = _signature(manifest), _signature(ref_manifest)
    if inputs != ref_inputs or out != ref_out:
        raise GenzipError(f"artifacts {artifact} and {vs} have different inputs or output shapes "
                          f"({list(inputs)} -> {list(out)} vs {list(ref_inputs)} -> {list(ref_out)})",
                          "compare two compiles of the same model (same preset or folder)")


def _source_preset(manifest: dict[str, Any]) -> str | None:
    return _eval_data.trained_preset(manifest) or (manifest.get("source_info") or {}).get("preset")


def evaluate(artifact: str, vs: str | None = None, plan: str | plans.Plan | None = None, samples: int = 16,
             seed: int = 0, grid: str | None = None, *, steps: int = 20, cfg: float = 4.0,
             scheduler: str | None = None, threads: int | None = None, progress: bool = False,
             providers=None) -> dict[str, Any]:
    """Quality figures of ``artifact`` (and against ``vs``); see the module docstring.

    ``samples``: images (DiT) or text windows (LLM). ``steps`` / ``cfg`` / ``scheduler``:
    DiT sampling settings, the same for both artifacts. ``progress``: a tqdm bar on stderr.
    ``providers``: ONNX Runtime execution providers of both artifacts (``genzip.load``).
    """
    if samples < 1:
        raise GenzipError(f"--samples {samples} must be >= 1", "pass a positive sample count")
    manifest = read_manifest(artifact)
    fam = family(artifact, manifest)
    ref_manifest = read_manifest(vs) if vs else None
    if vs:
        check_pair(artifact, manifest, vs, ref_manifest)
    preset = _source_preset(manifest)
    result: dict[str, Any] = {"artifact": artifact, "reference": vs, "family": fam, "preset": preset,
                              "plan": plan if isinstance(plan, str) or plan is None else "(Plan object)",
                              "samples": samples, "seed": seed}
    if fam == LLM:
        if plan is not None:
            raise GenzipError(f"--plan is an attention-sharing plan for DiTs, but {artifact} is a causal LM",
                              "drop --plan")
        if grid:
            raise GenzipError("--grid draws diffusion samples, but the artifact is a causal LM", "drop --grid")
        from genzip.backends.runner import load_artifact
        from genzip.runtime._eval_llm import evaluate_llm

        model = load_artifact(artifact, threads=threads, providers=providers)
        reference = load_artifact(vs, threads=threads, providers=providers) if vs else None
        figures, why = evaluate_llm(model, reference, samples=samples, seed=seed, preset=preset, progress=progress)
    else:
        from genzip.runtime._eval_dit import evaluate_dit
        from genzip.runtime.model import PlannedModel

        loaded = plans.load_plan(plan) if isinstance(plan, str) else plan
        model = PlannedModel(artifact, loaded, threads=threads, providers=providers)
        reference = PlannedModel(vs, None, threads=threads, providers=providers) if vs else None
        figures, why = evaluate_dit(model, reference, samples=samples, seed=seed, steps=steps, cfg=cfg,
                                    scheduler=scheduler, preset=preset, grid=grid, progress=progress)
    result.update(figures)
    result["why"] = why
    return result
