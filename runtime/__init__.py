"""genzip.runtime: executing compiled diffusion artifacts step by step (samplers, caches, plans).

* ``plan``: the attention-sharing plan schema (JSON, validated on load);
* ``model``: ``PlannedModel``, one ORT session of a share-attn artifact driven by a plan;
* ``caches``: cache slots keyed by call identity, and the step clock;
* ``conditioning``: text embeddings or class labels (null class for CFG);
* ``sampler``: CFG sampling through a diffusers scheduler;
* ``diffusers_adapter``: ``pipe.transformer = genzip.load(artifact)``;
* ``evaluate``: generation quality of a DiT or LLM artifact (``genzip eval``): class accuracy,
  Fréchet distance, PSNR / SSIM vs a reference; perplexity, KL divergence, top-1 agreement;

"""
