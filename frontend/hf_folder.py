"""Load a local Hugging Face model folder (diffusers model or transformers causal LM).

Never touches a hub (``local_files_only=True``), never unpickles
(``use_safetensors=True``), never runs remote code. Weights load as float32 so
the eager reference runs on CPU. A diffusers *pipeline* folder
(``model_index.json``) resolves to its ``transformer`` or ``unet`` component.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from genzip.errors import GenzipError, did_you_mean
from genzip.frontend.source import SourceModel

logger = logging.getLogger(__name__)

DIFFUSERS_BATCH = 2  # a classifier-free-guidance pair
LLM_BATCH = 1
TEXT_LEN = 77  # caption tokens of a diffusers folder's export (CLIP's length) unless --text-len
SEQ_LEN = 32  # tokens of a causal-LM folder's export unless --seq-len
_DENOISER_COMPONENTS = ("transformer", "unet")


def _read_config(folder: Path) -> tuple[Path, dict[str, Any]]:
    if not (folder / "config.json").is_file() and (folder / "model_index.json").is_file():
        for component in _DENOISER_COMPONENTS:
            if (folder / component / "config.json").is_file():
                logger.info("%s is a diffusers pipeline; loading its '%s' component", folder, component)
                folder = folder / component
                break
        else:
            raise GenzipError(
                f"'{folder}' is a diffusers pipeline without a transformer/unet component",
                "pass the folder of the denoiser component itself",
            )
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise GenzipError(
            f"'{folder}' has no config.json, so it is not a Hugging Face model folder",
            "pass a folder written by save_pretrained(), an .onnx file, or a preset",
        )
    try:
        return folder, json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise GenzipError(f"'{config_path}' is not valid JSON ({e})", "fix or re-create config.json") from e


def _load_failed(folder: Path, e: BaseException) -> GenzipError:
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return GenzipError(
        f"could not load '{folder}': {first}",
        "genzip loads only local safetensors weights; re-save with "
        "save_pretrained(path, safe_serialization=True)",
    )


def _load_diffusers(folder: Path, class_name: str):
    import diffusers
    import torch

    cls = getattr(diffusers, class_name, None)
    if cls is None or not hasattr(cls, "from_pretrained"):
        known = [n for n in dir(diffusers) if n.endswith("Model")]
        raise GenzipError(
            f"diffusers has no model class '{class_name}'{did_you_mean(class_name, known)}",
            "check _class_name in config.json or upgrade diffusers",
        )
    try:
        return cls.from_pretrained(folder, local_files_only=True, use_safetensors=True, torch_dtype=torch.float32)
    except (OSError, ValueError, KeyError) as e:
        raise _load_failed(folder, e) from e


def _load_causal_lm(folder: Path):
    import torch
    import transformers

    try:
        return transformers.AutoModelForCausalLM.from_pretrained(
            folder,
            local_files_only=True,
            use_safetensors=True,
            trust_remote_code=False,
            dtype=torch.float32,
            attn_implementation="sdpa",
        )
    except ValueError as e:
        if "Unrecognized configuration class" in str(e):
            raise GenzipError(
                f"'{folder}' is not a causal language model (architectures: "
                f"{', '.join(json.loads((folder / 'config.json').read_text()).get('architectures') or [])})",
                "genzip loads transformers causal LMs; wrap other models in a package.module:function ref",
            ) from e
        raise _load_failed(folder, e) from e
    except (OSError, KeyError) as e:
        raise _load_failed(folder, e) from e


def load_causal_lm_folder(folder: str | Path):
    """The transformers causal LM saved in ``folder`` (FP32, eval mode, not exported);
    a folder that is not one is a one-line GenzipError."""
    folder = Path(folder)
    _read_config(folder)
    return _load_causal_lm(folder).eval()


def exportable_experts(module) -> bool:
    """Switch a transformers mixture-of-experts model to its ``batched_mm`` experts.

    The default ("grouped_mm"/eager) loops over the experts some token was routed to,
    a data-dependent loop torch.export cannot trace. ``batched_mm`` gathers each
    token's top-k expert weights and runs them as one batched matmul: the same
    function (top-k routing stays exact, no expert runs for tokens not routed to it),
    and it exports. Returns whether the module has experts."""
    if not hasattr(module, "set_experts_implementation"):
        return False
    if not any(type(m).__name__.endswith("Experts") for m in module.modules()):
        return False
    module.set_experts_implementation("batched_mm")
    return True


# Files an LLM artifact carries so it can tokenize and generate on its own.
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
    "vocab.json", "merges.txt", "added_tokens.json", "chat_template.jinja", "generation_config.json",
)
ARTIFACT_HF_DIR = "hf"  # where they land inside the artifact


def _kv_cache_source(folder: Path, module, class_name: str, seed: int) -> SourceModel:
    """The ``--kv-cache`` decoder export (see :mod:`genzip.frontend.hf_kv_cache`)."""
    import time

    from genzip.frontend.hf_kv_cache import export_kv_cache

    start = time.perf_counter()
    out = export_kv_cache(module, seed=seed, what=f"'{folder}'")
    files = {f"{ARTIFACT_HF_DIR}/{n}": str(folder / n) for n in TOKENIZER_FILES if (folder / n).is_file()}
    gen = getattr(module, "generation_config", None)
    cache = dict(out["cache"], eos_token_id=getattr(gen, "eos_token_id", None),
                 files=sorted(files), hf_dir=ARTIFACT_HF_DIR, model_type=getattr(module.config, "model_type", ""))
    info = {
        "family": "llm", "class": class_name, "path": str(folder), "batch": 2, "seed": seed,
        "module": module, "reference_outputs": out["reference_outputs"], "dynamic": True,
        "export_s": round(time.perf_counter() - start, 2), "kv_cache": cache, "extra_files": files,
    }
    from genzip.frontend.calibration import kv_cache_calibration

    info["calibration"] = kv_cache_calibration(folder, seed=seed, cache=out["cache"])
    return SourceModel(model=out["model"], source=str(folder), kind="transformers",
                       example_inputs=out["example_inputs"], fidelity=out["fidelity"], info=info)


SCHEDULER_CONFIG = "scheduler/scheduler_config.json"  # in a diffusers pipeline folder, and in the artifact


def pipeline_scheduler(root: Path) -> dict[str, Any]:
    """``extra_files`` and ``scheduler_config`` entries that ship a pipeline folder's own
    scheduler config in the artifact (the sampler then uses it); empty for any other folder."""
    path = root / SCHEDULER_CONFIG
    if not (root / "model_index.json").is_file() or not path.is_file():
        return {}
    return {"extra_files": {SCHEDULER_CONFIG: str(path)}, "scheduler_config": SCHEDULER_CONFIG}


def folder_family(folder: Path) -> str | None:
    """The family of a local HF folder from its config.json alone (no weights read):
    "dit", "unet", "diffusers", "llm", or None when the config says neither."""
    try:
        _, config = _read_config(folder)
    except GenzipError:
        return None
    if config.get("_class_name"):
        from genzip.frontend.hf_inputs import diffusers_family

        return diffusers_family(config["_class_name"])
    return "llm" if config.get("architectures") else None


def load_hf_folder(folder: Path, *, seed: int, batch: int | None, kv_cache: bool = False,
                   user=None, sizes=None, axes=None) -> SourceModel:
    """Load, export and verify a local Hugging Face model folder; ``kv_cache`` exports a
    causal LM as the prefill/decode graph with past/present key-values; ``sizes``
    (:class:`~genzip.frontend.export_sizes.ExportSizes`) set the traced text length,
    latent size or sequence length, and ``axes`` (``DynamicAxes``) which of them stay dynamic."""
    import inspect

    from genzip.frontend import export_sizes, hf_inputs
    from genzip.frontend.from_torch import source_from_torch

    root = folder
    folder, config = _read_config(folder)
    if kv_cache and (config.get("_class_name") or not config.get("architectures")):
        raise GenzipError(
            f"'{folder}' is not a transformers causal LM, so it has no KV cache to export",
            "drop --kv-cache",
        )
    if kv_cache:
        export_sizes.refuse(sizes, "a --kv-cache export (its prefill and decode lengths are dynamic)",
                            "drop the size flags, or drop --kv-cache")
        module = _load_causal_lm(folder).eval()
        exportable_experts(module)
        return _kv_cache_source(folder, module, type(module).__name__, seed)
    if config.get("_class_name"):
        class_name = config["_class_name"]
        module = _load_diffusers(folder, class_name).eval()
        batch = batch or DIFFUSERS_BATCH
        has_text = "encoder_hidden_states" in inspect.signature(module.forward).parameters
        sizes = export_sizes.check_diffusers(sizes, module, has_text=has_text)
        call = hf_inputs.diffusers_call(module, batch=batch, seed=seed, text_len=sizes.text_len or TEXT_LEN,
                                        height=sizes.height, width=sizes.width)
        kind, family, outputs = "diffusers", hf_inputs.diffusers_family(class_name), hf_inputs.DIFFUSERS_OUTPUTS
    elif config.get("architectures"):
        module = _load_causal_lm(folder).eval()
        exportable_experts(module)
        class_name = type(module).__name__
        batch = batch or LLM_BATCH
        sizes = export_sizes.check_causal_lm(sizes, module)
        call = hf_inputs.causal_lm_call(module, batch=batch, seed=seed, seq_len=sizes.seq_len or SEQ_LEN)
        kind, family, outputs = "transformers", "llm", hf_inputs.CAUSAL_LM_OUTPUTS
    else:
        raise GenzipError(
            f"'{folder / 'config.json'}' has neither _class_name (diffusers) nor architectures (transformers)",
            "pass a folder written by a diffusers or transformers save_pretrained()",
        )
    info = {"family": family, "class": class_name, "path": str(folder), "batch": batch, "seed": seed}
    info.update(pipeline_scheduler(root))
    if sizes.record():
        info["export_sizes"] = sizes.record()
    source = source_from_torch(module, call, source=str(folder), kind=kind, output_names=outputs, info=info,
                               user=user, axes=axes)
    if family == "dit":  # no data given: record the model's own denoising trajectory, as presets do
        from genzip.frontend.calibration import example_sizes, preset_calibration

        shapes = example_sizes(source.example_inputs, batch=batch, text_len=TEXT_LEN)
        del shapes["seq_len"]
        source.info.setdefault("calibration", preset_calibration(module, "dit", like=source.example_inputs,
                                                                 seed=seed, **shapes))
    return source
