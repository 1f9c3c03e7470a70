"""Turn a spec string into configured pass instances, checking facts statically.

The fact check runs before any model is loaded: every fact a pass requires must
be ensured by an earlier pass in the same pipeline (or be listed in
``initial_facts``, for models that already carry them).
"""

from __future__ import annotations

import dataclasses

from genzip.errors import GenzipError
from genzip.passes.infra.contract import ALLOW_NOOP, GenzipPass, _convert, build_options
from genzip.passes.infra.registry import get_pass_class
from genzip.passes.infra.spec import PassSpec, parse_pipeline, print_pipeline


@dataclasses.dataclass(frozen=True)
class Pipeline:
    specs: tuple[PassSpec, ...]
    passes: tuple[GenzipPass, ...]

    def __str__(self) -> str:
        return print_pipeline(list(self.specs))


def build_pipeline(spec: str, initial_facts: frozenset[str] = frozenset()) -> Pipeline:
    specs = parse_pipeline(spec)
    passes = []
    facts = set(initial_facts)
    for item in specs:
        cls = get_pass_class(item.name)
        raw = dict(item.options)
        allow_noop = _convert(raw.pop(ALLOW_NOOP, "false"), bool, f"{item.name}{{{ALLOW_NOOP}}}")
        options = build_options(cls, raw)
        missing = cls.requires_facts - facts
        if missing:
            fact = sorted(missing)[0]
            provider = _provider_of(fact)
            fix = f"put {provider} before it" if provider else "establish it earlier in the pipeline"
            raise GenzipError(f"pass '{item.name}' requires '{fact}' but nothing before it ensures that", fix)
        for fact, why in cls.conflicts_facts.items():
            if fact in facts:
                raise GenzipError(f"pass '{item.name}' cannot run after a pass that ensures '{fact}': {why}",
                                  "drop one of them or reorder the pipeline (see `genzip passes`)")
        facts -= cls.invalidates_facts
        facts |= cls.ensures_facts
        passes.append(cls(options, allow_noop=allow_noop))
    return Pipeline(tuple(specs), tuple(passes))


def _provider_of(fact: str) -> str | None:
    from genzip.passes.infra.registry import pass_names

    for name in pass_names():
        try:
            cls = get_pass_class(name)
        except ImportError:
            # Only a hint is being looked up: a registered pass whose module is missing or
            # broken must not turn "put X before it" into an import crash.
            continue
        if fact in cls.ensures_facts:
            return name
    return None
