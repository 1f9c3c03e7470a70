"""The genzip pass contract, built on ``onnx_ir.passes.InPlacePass``.

A pass declares:

* ``name``: kebab-case, the word used in pipeline specs;
* ``Options``: a frozen, keyword-only dataclass whose ``__post_init__`` validates;
* ``requires_facts`` / ``ensures_facts``: named facts about the graph (for
  example ``attention-canonical``). The spec parser checks them statically; the
  pass checks them again on the model in ``requires``/``ensures``;
* ``needs()``: the :class:`~genzip.passes.infra.context.PassContext` fields it
  reads (calibration data, the torch module), which the driver checks before it
  loads the model;
* ``static_axes()``: the export axis kinds (``text``, ``size``, ``seq``, see
  ``genzip.frontend.dynamic_axes``) it needs static, each with why; the driver
  refuses (or, under ``--dynamic-axes auto``, keeps static) those axes before export;
* ``run(model, context) -> GenzipPassResult`` carrying an honest ``modified``
  flag and a ``stats`` dict.

A *transforming* pass (``transforming = True``) was asked for to rewrite something:
when it changes nothing, ``noop_problem`` says why and the pass manager refuses
the pipeline (``NoOpError``, exit 2) unless the spec gave the pass
``allow-noop=true``, an option every pass accepts (parsed here, not by the pass).
``conflicts_facts`` names facts after which the pass cannot do its work; the spec
parser refuses such an order before any model loads.

``pass_(model, context)`` checks every required fact on the graph, runs the
pass, checks every ensured fact on the graph again (:mod:`~genzip.passes.infra.facts`:
a pass that breaks its promise fails here), and only then records the facts in
the model's ``metadata_props`` under ``genzip.facts``, where the spec check of a
later compile of the saved file can see them.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, ClassVar

import onnx_ir as ir

from genzip.errors import GenzipError, did_you_mean
from genzip.metadata import FACTS_KEY
from genzip.passes.infra import facts as fact_checks
from genzip.passes.infra.context import EMPTY, PassContext


@dataclasses.dataclass
class GenzipPassResult(ir.passes.PassResult):
    """``PassResult`` plus per-pass statistics (counts, FLOPs, ...)."""

    stats: dict[str, Any] = dataclasses.field(default_factory=dict)
    # Set by a transforming pass that did not do what it was asked: why (see noop_problem).
    noop_reason: str | None = None


# The option every pass accepts (handled by the infrastructure, not the pass's Options).
ALLOW_NOOP = "allow-noop"


class NoOpError(GenzipError):
    """A transforming pass that was asked for changed nothing."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class NoOptions:
    """Options of a pass that takes none."""


def model_facts(model: ir.Model) -> set[str]:
    raw = model.metadata_props.get(FACTS_KEY, "")
    return {f for f in raw.split(",") if f}


def set_model_facts(model: ir.Model, facts: set[str]) -> None:
    if facts:
        model.metadata_props[FACTS_KEY] = ",".join(sorted(facts))
    else:
        model.metadata_props.pop(FACTS_KEY, None)


class GenzipPass(ir.passes.InPlacePass):
    """Base class of every registered genzip pass."""

    name: ClassVar[str]
    Options: ClassVar[type] = NoOptions
    summary: ClassVar[str] = ""
    requires_facts: ClassVar[frozenset[str]] = frozenset()
    ensures_facts: ClassVar[frozenset[str]] = frozenset()
    # Facts that stop holding once this pass modified the graph.
    invalidates_facts: ClassVar[frozenset[str]] = frozenset()
    # fact -> why this pass cannot work after a pass that ensured it (checked at parse time).
    conflicts_facts: ClassVar[dict[str, str]] = {}
    # A rewrite the user asks for: changing nothing is an error unless allow-noop=true.
    transforming: ClassVar[bool] = False

    def __init__(self, options: Any | None = None, *, allow_noop: bool = False):
        self.allow_noop = allow_noop
        self.options = options if options is not None else self.Options()
        if not isinstance(self.options, self.Options):
            raise TypeError(f"{self.name}: options must be {self.Options.__name__}")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.options!r})"

    def needs(self) -> frozenset[str]:
        """Context fields this configured pass reads (see ``context.NEEDS``)."""
        return frozenset()

    def static_axes(self) -> dict[str, str]:
        """Export axis kinds this configured pass needs static -> why (see ``context.STATIC_AXES``)."""
        return {}

    def noop_problem(self, model: ir.Model, result: GenzipPassResult, later: tuple[GenzipPass, ...]) -> str | None:
        """Why this run did nothing it was asked to (``None``: it did its work).

        ``later`` are the passes after this one in the pipeline. The default: a
        transforming pass that reported no change, or set ``result.noop_reason``.
        """
        if not self.transforming:
            return None
        if result.noop_reason:
            return result.noop_reason
        return None if result.modified else "it found nothing to rewrite"

    def __call__(self, model: ir.Model, context: PassContext | None = None) -> GenzipPassResult:
        if not isinstance(model, ir.Model):
            raise TypeError(f"{self.name}: expected an onnx_ir.Model, got {type(model).__name__}")
        self.requires(model)
        result = self.run(model, context if context is not None else EMPTY)
        if not isinstance(result, GenzipPassResult) or result.model is not model:
            raise ir.passes.PassError(f"pass '{self.name}' must return GenzipPassResult for the model it was given")
        self.ensures(model)
        facts = model_facts(model)
        if result.modified:
            facts -= self.invalidates_facts
        set_model_facts(model, facts | self.ensures_facts)
        return result

    def requires(self, model: ir.Model) -> None:
        for fact in sorted(self.requires_facts):
            problem = fact_checks.problem(fact, model)
            if problem:
                raise ir.passes.PreconditionError(
                    f"pass '{self.name}' requires {fact}, but {problem}; run the pass that "
                    f"establishes it first (see `genzip passes`)"
                )

    def ensures(self, model: ir.Model) -> None:
        for fact in sorted(self.ensures_facts):
            problem = fact_checks.problem(fact, model)
            if problem:
                raise ir.passes.PostconditionError(f"pass '{self.name}' did not establish {fact}: {problem}")

    def call(self, model: ir.Model) -> GenzipPassResult:
        """onnx-ir's entry point: the pass with an empty context."""
        return self(model)

    def run(self, model: ir.Model, context: PassContext) -> GenzipPassResult:  # pragma: no cover - abstract
        raise NotImplementedError


# --- Options parsing -----------------------------------------------------------------


def _convert(raw: str, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if origin is typing.Literal:
        choices = [str(c) for c in typing.get_args(tp)]
        if raw not in choices:
            raise GenzipError(
                f"{where}: '{raw}' is not one of {', '.join(choices)}{did_you_mean(raw, choices)}",
                "pick one of the listed values",
            )
        return raw
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if raw in ("none", "None") and len(args) < len(typing.get_args(tp)):
            return None
        errors = []
        for a in args:
            try:
                return _convert(raw, a, where)
            except GenzipError as e:
                errors.append(str(e))
        raise GenzipError(errors[0])
    if origin is tuple:
        (item,) = {a for a in typing.get_args(tp) if a is not Ellipsis}
        return tuple(_convert(x, item, where) for x in raw.split(",") if x != "")
    if tp is bool:
        low = raw.lower()
        if low in ("true", "1", "yes", "on"):
            return True
        if low in ("false", "0", "no", "off"):
            return False
        raise GenzipError(f"{where}: '{raw}' is not a boolean", "use true or false")
    if tp is int:
        try:
            return int(raw)
        except ValueError:
            raise GenzipError(f"{where}: '{raw}' is not an integer", "give a whole number") from None
    if tp is float:
        try:
            return float(raw)
        except ValueError:
            raise GenzipError(f"{where}: '{raw}' is not a number", "give a number like 0.125") from None
    if tp is str:
        return raw
    raise TypeError(f"{where}: unsupported option type {tp!r}")


def build_options(pass_cls: type[GenzipPass], raw: dict[str, str]) -> Any:
    """Turn ``{key: raw string}`` from a spec into the pass's frozen Options."""
    opts_cls = pass_cls.Options
    hints = typing.get_type_hints(opts_cls)
    fields = {f.name: f for f in dataclasses.fields(opts_cls)}
    kwargs = {}
    for key, value in raw.items():
        attr = key.replace("-", "_")
        if attr not in fields:
            known = [f.replace("_", "-") for f in fields]
            hint = did_you_mean(key, known)
            listing = ", ".join(known) if known else "none"
            raise GenzipError(
                f"pass '{pass_cls.name}' has no option '{key}'{hint}",
                f"its options are: {listing}",
            )
        kwargs[attr] = _convert(value, hints[attr], f"{pass_cls.name}{{{key}}}")
    try:
        return opts_cls(**kwargs)
    except (ValueError, TypeError) as e:
        raise GenzipError(f"pass '{pass_cls.name}': {e}", "fix the option value") from None
