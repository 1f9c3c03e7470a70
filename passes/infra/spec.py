"""The textual pipeline, MLIR style: ``name{key=value key2=a,b},other-pass``.

Grammar::

    pipeline := item (',' item)*
    item     := NAME ('{' option (' ' option)* '}')?
    option   := KEY '=' VALUE         # VALUE: no spaces or braces; commas allowed
    NAME     := [a-z0-9-]+

``print_pipeline(parse_pipeline(s)) == s`` for every canonical ``s`` (single
spaces, no blanks around commas); other spellings print in canonical form.
"""

from __future__ import annotations

import dataclasses
import re

from genzip.errors import GenzipError

_NAME = re.compile(r"[a-z0-9][a-z0-9-]*")
_KEY = re.compile(r"[a-z_][a-z0-9_-]*")


@dataclasses.dataclass(frozen=True)
class PassSpec:
    name: str
    options: tuple[tuple[str, str], ...] = ()

    def __str__(self) -> str:
        if not self.options:
            return self.name
        return self.name + "{" + " ".join(f"{k}={v}" for k, v in self.options) + "}"


def _malformed(spec: str, pos: int, what: str) -> GenzipError:
    return GenzipError(
        f"malformed pass spec at column {pos + 1}: {what} in '{spec}'",
        "write it as name{key=value key2=value},next-pass",
    )


def parse_pipeline(spec: str) -> list[PassSpec]:
    """Parse a pipeline string; raises ``GenzipError`` naming the column on error."""
    items: list[PassSpec] = []
    i, n = 0, len(spec)
    if not spec.strip():
        return items
    while True:
        while i < n and spec[i] == " ":
            i += 1
        m = _NAME.match(spec, i)
        if not m:
            raise _malformed(spec, i, "expected a pass name")
        name, i = m.group(0), m.end()
        options: list[tuple[str, str]] = []
        if i < n and spec[i] == "{":
            close = spec.find("}", i)
            if close < 0:
                raise _malformed(spec, i, "'{' is never closed")
            body = spec[i + 1 : close]
            if "{" in body:
                raise _malformed(spec, i + 1 + body.index("{"), "nested '{'")
            seen = set()
            for tok in re.finditer(r"\S+", body):
                token, at = tok.group(0), i + 1 + tok.start()  # column of the option itself
                key, eq, value = token.partition("=")
                if not eq or not _KEY.fullmatch(key) or not value:
                    raise _malformed(spec, at, f"option '{token}' is not key=value")
                if key in seen:
                    raise _malformed(spec, at, f"option '{key}' given twice")
                seen.add(key)
                options.append((key, value))
            i = close + 1
        items.append(PassSpec(name, tuple(options)))
        while i < n and spec[i] == " ":
            i += 1
        if i == n:
            return items
        if spec[i] != ",":
            raise _malformed(spec, i, f"unexpected '{spec[i]}'")
        i += 1


def print_pipeline(items: list[PassSpec]) -> str:
    return ",".join(str(item) for item in items)
