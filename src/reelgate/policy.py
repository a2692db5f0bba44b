"""Content policy, the minimal form: a configurable blocklist of terms, checked on the
prompt and the negative prompt before anything is stored or spent.

A block answers with the category, never the matched words (echoing them back teaches people
how to get around the list)."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable

from reelgate.errors import PolicyBlocked


def _normalise(text: str) -> str:
    # Fold accents and case so "NÜDE" and "nude" match the same entry.
    text = unicodedata.normalize("NFKD", text)
    text = "".join(ch for ch in text if not unicodedata.combining(ch))
    # Collapse whitespace so "bad   phrase" and a line break inside it still match.
    return " ".join(text.casefold().split())


class ContentPolicy:
    def __init__(self, blocklist: Iterable[str], *, block_status: int = 400) -> None:
        terms = sorted({_normalise(t.strip()) for t in blocklist if t.strip()})
        self.block_status = block_status
        # Whole words or phrases only, so a term does not block every word containing it.
        self._pattern = (
            re.compile(r"(?<!\w)(?:" + "|".join(re.escape(t) for t in terms) + r")(?!\w)")
            if terms
            else None
        )

    def check(self, fields: dict[str, str | None]) -> None:
        """Raise PolicyBlocked if any given text field matches the blocklist."""
        if self._pattern is None:
            return
        for name, text in fields.items():
            if text and self._pattern.search(_normalise(text)):
                raise PolicyBlocked(
                    f"The {name.replace('_', ' ')} was blocked by the content policy "
                    "(category: blocklist). Change the wording and try again.",
                    status=self.block_status,
                )
