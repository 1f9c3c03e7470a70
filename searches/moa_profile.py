"""MoA profiling: the first-order loss increase of each (layer, head, span rule).

For every calibration window of length N, the eager causal LM is run with its
attention probabilities ``A[l]`` ([B, H, N, N], softmax outputs) kept in the
autograd graph, and the LM loss is back-propagated to get ``G[l] = dL/dA[l]``.
Restricting head h to a span rule keeps the entries ``K`` (j <= i and
(j < sinks or i - j < span)) and renormalizes each row (what the sparse softmax
does), ``A' = A·K / rowsum(A·K)``; the first-order loss change is
``sum(G · (A' - A))`` (``influence``). Metric ``gradient`` is MoA's attention
influence instead: dropping one entry (i, j) alone and renormalizing its row
changes the loss by ``ΔL_ij = -A_ij (G_ij - Σ_n G_in A_in) / (1 - A_ij)``, and a
rule costs the sum over the entries it drops of ``|ΔL_ij|`` (each entry's absolute
effect, so effects of opposite sign cannot cancel, and a minimizer cannot exploit
the signed sum where the model fits the text poorly). Metric ``mass`` is the attention probability the rule drops (mean over
rows), a gradient-free proxy. Both are >= 0 and exactly 0 for a rule whose span
covers N.

Invariant: ``Profile.loss[k, l, h, c]`` is that cost averaged over the
calibration windows of length ``lengths[k]``, for rule ``configs[c]``, with spans
resolved by ``span_attn.resolve_span`` (the rule the pass applies), and
``Profile.density[k, c]`` is the fraction of causal (query, key) pairs that
rule keeps at that length (same for every head).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence

import numpy as np

from genzip.errors import GenzipError
from genzip.passes.attention import _flops as af
from genzip.passes.attention.span_attn import resolve_span

logger = logging.getLogger(__name__)

# Default calibration text: plain English prose, tokenized with the model's tokenizer when
# it has one, else as UTF-8 bytes (the tiny-llama preset has a 256-token vocabulary).
CALIBRATION_TEXT = (
    "The river bends twice before it reaches the town, and in spring the water rises over the low "
    "meadow where the children play. Old stone walls divide the fields, and each wall has a gate that "
    "the farmers close at night. In the market square there is a clock that has not kept time for "
    "years, yet everyone still looks at it when they pass. The baker opens before dawn; the smell of "
    "bread reaches the bridge. Travellers who stop for a night often stay a week, because the inn is "
    "warm, the food is simple and good, and the evenings are long and quiet. When the rains come in "
    "autumn, the road to the city floods, and the town keeps to itself until the water goes down."
)


@dataclasses.dataclass(frozen=True)
class Profile:
    lengths: list[int]
    configs: list[tuple[float, float]]  # (alpha, beta) candidates
    sinks: int
    loss: np.ndarray  # [len(lengths), layers, heads, len(configs)]
    density: np.ndarray  # [len(lengths), len(configs)]
    windows: list[int]  # calibration windows used per length

    def spans(self, k: int) -> list[int]:
        n = self.lengths[k]
        return [resolve_span(a, b, n, self.sinks) for a, b in self.configs]


def keep_mask(n: int, span: int, sinks: int) -> np.ndarray:
    """[n, n] bool: the (query i, key j) pairs SpanAttention keeps."""
    i, j = np.arange(n)[:, None], np.arange(n)[None]
    return (j <= i) & ((j < sinks) | (i - j < span))


def span_density(n: int, span: int, sinks: int) -> float:
    return af.span_pairs(n, span, sinks) / af.dense_pairs(n, n, causal=True)


METRICS = ("gradient", "mass")


def density_table(lengths: Sequence[int], configs: Sequence[tuple[float, float]], sinks: int) -> np.ndarray:
    """[len(lengths), len(configs)] density of each rule at each length (no model needed)."""
    return np.array([[span_density(n, resolve_span(a, b, n, sinks), sinks) for a, b in configs] for n in lengths])


def influence(attn: np.ndarray, grad: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Per head first-order loss change of keeping only ``keep``: [B, H, N, N] x2 -> [H] (batch-summed)."""
    kept = attn * keep
    # Every kept row holds its diagonal (softmax > 0), so the row sum is never 0.
    renorm = kept / kept.sum(-1, keepdims=True)
    return ((renorm - attn) * grad).sum(axis=(0, 2, 3))


def moa_influence(attn: np.ndarray, grad: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Per head MoA influence of dropping the entries outside ``keep``: the sum over dropped
    entries of ``|A (G - ΣGA) / (1 - A)|`` ([B, H, N, N] x2 -> [H], batch-summed)."""
    row = (grad * attn).sum(-1, keepdims=True)
    # An entry with A = 1 is its row's whole mass: a kept diagonal in every rule, never dropped.
    effect = np.abs(attn * (grad - row) / np.maximum(1.0 - attn, 1e-12))
    return (effect * ~keep).sum(axis=(0, 2, 3))


def dropped_mass(attn: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Per head attention probability outside ``keep``, mean over batch and rows: -> [H]."""
    return (attn * ~keep).sum(-1).mean(axis=(0, 2))


def head_cost(metric: str, attn: np.ndarray, grad: np.ndarray, keep: np.ndarray) -> np.ndarray:
    if metric == "mass":
        return dropped_mass(attn, keep)
    return moa_influence(attn, grad, keep)


# Query rows per block of head_costs: float64 copies of A and G stay ~ ROW_BLOCK · N · heads.
ROW_BLOCK = 256


def head_costs(metric: str, attn, grad, masks: dict[int, np.ndarray], rows: int = ROW_BLOCK) -> dict[int, np.ndarray]:
    """``{span: head_cost(metric, A, G, masks[span])}`` for float32 torch/NumPy ``attn`` and
    ``grad`` ``[B, H, N, N]``, computed ``rows`` query rows at a time in float64 (every
    cost is a sum over rows; ``mass`` a mean, rescaled), so a long N never needs the
    whole [B, H, N, N] in float64 at once."""
    n = attn.shape[2]
    totals = {span: np.zeros(attn.shape[1]) for span in masks}
    for start in range(0, n, rows):
        stop = min(n, start + rows)
        a = np.asarray(attn[:, :, start:stop], np.float64)
        g = np.asarray(grad[:, :, start:stop], np.float64)
        for span, mask in masks.items():
            totals[span] += head_cost(metric, a, g, mask[start:stop]) * ((stop - start) / n if metric == "mass" else 1)
    return totals


def token_windows(text: str, n: int, vocab: int, max_windows: int, tokenizer=None) -> np.ndarray:
    """Non-overlapping [W, n] windows of the text tokenized by the model's own ``tokenizer``
    (a transformers tokenizer); without one, of its UTF-8 bytes (ids mod ``vocab``)."""
    if tokenizer is not None:
        ids = np.asarray(tokenizer(text, add_special_tokens=False)["input_ids"], np.int64)
        if len(ids) and (ids.min() < 0 or ids.max() >= vocab):
            raise GenzipError(f"moa-search: the tokenizer gives ids up to {ids.max()}, outside the model's "
                              f"{vocab}-token vocabulary", "use the tokenizer saved with this model")
    else:
        ids = np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int64) % vocab
    count = min(max_windows, len(ids) // n)
    if count < 1:
        raise GenzipError(f"moa-search: calibration text has {len(ids)} tokens, fewer than one window of {n}",
                          "give a longer --text file or smaller --lengths")
    return ids[: count * n].reshape(count, n)


@dataclasses.dataclass(frozen=True)
class ModuleState:
    """A transformers causal LM as its class, config and weights: what a remote worker
    rebuilds it from (the live module holds unpicklable state, e.g. a ContextVar)."""

    cls: type
    config: object
    weights: dict

    @classmethod
    def of(cls, module) -> ModuleState:
        return cls(type(module), module.config, {k: v.detach().clone() for k, v in module.state_dict().items()})

    def build(self, eager_attention: bool = True):
        """The module again; ``eager_attention``: switched to the eager attention kernel (the
        profile needs its probabilities), else on the config's own kernel."""
        module = self.cls(self.config)
        module.load_state_dict(self.weights)
        if eager_attention and hasattr(module, "set_attn_implementation"):
            module.set_attn_implementation("eager")
        return module.eval()


class WindowWorker:
    """One work unit of the profile (``genzip.parallel``): the per-(layer, head, rule) cost
    of one calibration window. A worker holds the eager module, shipped to it once."""

    def __init__(self, module, metric: str, sinks: int, *, threads: int | None = None):
        import torch

        if threads:
            torch.set_num_threads(threads)
        module = module.build() if isinstance(module, ModuleState) else module
        self.module, self.metric, self.sinks = module, metric, sinks
        self.layers = int(module.config.num_hidden_layers)

    def cost(self, unit: tuple[np.ndarray, tuple[int, ...]]) -> np.ndarray:
        """``unit`` = (token ids [N], span of each rule at N); returns cost [layers, heads, rules]."""
        import torch

        row, spans = unit
        n = len(row)
        masks = {s: keep_mask(n, s, self.sinks) for s in set(spans)}
        ids = torch.from_numpy(np.ascontiguousarray(row)[None])
        with torch.enable_grad():
            out = self.module(ids, labels=ids, output_attentions=True, use_cache=False)
        attentions = list(out.attentions)
        if len(attentions) != self.layers or any(a is None or not a.requires_grad for a in attentions):
            raise GenzipError("moa-search: the model did not return differentiable attention probabilities",
                              "use a transformers causal LM with eager attention support")
        grads = torch.autograd.grad(out.loss, attentions)  # only dL/dA: no parameter grads
        cost = None
        for layer, (a, g) in enumerate(zip(attentions, grads)):
            per_span = head_costs(self.metric, a.detach().numpy(), g.numpy(), masks)
            if cost is None:
                cost = np.zeros((self.layers, len(per_span[spans[0]]), len(spans)))
            for c, s in enumerate(spans):
                cost[layer, :, c] = per_span[s]
        return cost


def profile_module(
    module, *, lengths: Sequence[int], configs: Sequence[tuple[float, float]], sinks: int,
    text: str = CALIBRATION_TEXT, max_windows: int = 8, metric: str = "gradient", tokenizer=None,
    executor=None,
) -> Profile:
    """Profile an eager causal LM (transformers ``*ForCausalLM``) on ``text``.

    ``tokenizer``: the model's own (a trained model only behaves as it learned on its own
    tokens); without one, the text's UTF-8 bytes mod vocab. ``executor``
    (``genzip.parallel``): where the windows (one unit each) run; the costs are summed
    here in window order, so the profile equals the serial one.

    Side effect: the module is switched to eager attention (the only kernel that
    returns attention probabilities); its weights are not touched.
    """
    from genzip.parallel import SerialExecutor

    if metric not in METRICS:
        raise GenzipError(f"moa-search: unknown metric '{metric}'", f"use one of {', '.join(METRICS)}")

    if hasattr(module, "set_attn_implementation"):
        # Only the eager kernel materializes the probabilities the profile needs.
        module.set_attn_implementation("eager")
    vocab = int(module.config.vocab_size)
    lengths, configs = [int(n) for n in lengths], [(float(a), float(b)) for a, b in configs]
    max_pos = getattr(module.config, "max_position_embeddings", None)
    if max_pos is not None and max(lengths) > max_pos:
        raise GenzipError(f"moa-search: length {max(lengths)} exceeds the model's {max_pos} positions",
                          f"use --lengths up to {max_pos}")
    layers = int(module.config.num_hidden_layers)
    heads = int(module.config.num_attention_heads)
    loss = np.zeros((len(lengths), layers, heads, len(configs)))
    density = density_table(lengths, configs, sinks)
    module.eval()
    units, owner = [], []
    for k, n in enumerate(lengths):
        spans = tuple(resolve_span(a, b, n, sinks) for a, b in configs)
        windows = token_windows(text, n, vocab, max_windows, tokenizer)
        units += [(row, spans) for row in windows]
        owner += [k] * len(windows)
    used = [owner.count(k) for k in range(len(lengths))]
    executor = executor or SerialExecutor()
    shipped = ModuleState.of(module) if executor.distributed else module
    with executor.pool(WindowWorker, shipped, metric, sinks) as pool:
        costs = pool.map("cost", units)
    for k, cost in zip(owner, costs):  # window order, as the serial loop summed them
        loss[k] += cost / used[k]
    for k, n in enumerate(lengths):
        logger.info("moa-search: profiled N=%d on %d windows", n, used[k])
    return Profile(lengths, configs, sinks, loss, density, used)
