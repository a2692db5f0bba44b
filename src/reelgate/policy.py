"""Content policy: checked on the prompt and the negative prompt before anything is stored
or spent.

Three sources, in order: term lists by category (whole words or phrases, case- and
accent-insensitive), regular-expression rules by category, and an optional classifier
plug-in (``module:callable`` taking ``(field, text)`` and returning a category or None).
A block answers with the category, never the matched words: echoing them back teaches
people how to get around the list. Every block is recorded by the caller (intake.py).
"""

from __future__ import annotations

import importlib
import json
import re
import unicodedata
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from reelgate.errors import PolicyBlocked

Classifier = Callable[[str, str], "str | None"]


def _normalise(text: str) -> str:
    # Fold accents and case so "NÜDE" and "nude" match the same entry.
    text = unicodedata.normalize("NFKD", text)
    text = "".join(ch for ch in text if not unicodedata.combining(ch))
    # Collapse whitespace so "bad   phrase" and a line break inside it still match.
    return " ".join(text.casefold().split())


class ContentBlocked(PolicyBlocked):
    def __init__(self, category: str, field: str, status: int) -> None:
        super().__init__(
            f"The {field.replace('_', ' ')} was blocked by the content policy "
            f"(category: {category}). Change the wording and try again.",
            status=status,
        )
        self.category = category
        self.field = field


def load_classifier(spec: str) -> Classifier | None:
    if not spec:
        return None
    module, _, name = spec.partition(":")
    if not name:
        raise ValueError(f"policy classifier must be 'module:callable', got {spec!r}")
    return getattr(importlib.import_module(module), name)  # type: ignore[no-any-return]


class ContentPolicy:
    def __init__(
        self,
        categories: Mapping[str, Iterable[str]] | None = None,
        patterns: Mapping[str, Iterable[str]] | None = None,
        classifier: Classifier | None = None,
        *,
        block_status: int = 400,
    ) -> None:
        self.block_status = block_status
        self.classifier = classifier
        self._rules: list[tuple[str, re.Pattern[str]]] = []
        for category, terms in (categories or {}).items():
            cleaned = sorted({_normalise(t) for t in terms if t.strip()})
            if cleaned:
                # Whole words only, so a term does not block every word containing it.
                alternatives = "|".join(re.escape(t) for t in cleaned)
                self._rules.append((category, re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)")))
        for category, regexes in (patterns or {}).items():
            for rx in regexes:
                self._rules.append((category, re.compile(rx, re.IGNORECASE)))

    @classmethod
    def from_settings(cls, settings: object) -> ContentPolicy:
        categories: dict[str, list[str]] = {}
        patterns: dict[str, list[str]] = {}
        blocklist = list(getattr(settings, "policy_blocklist", []))
        if blocklist:
            categories["blocklist"] = blocklist
        policy_file: Path | None = getattr(settings, "policy_file", None)
        if policy_file:
            doc = json.loads(Path(policy_file).read_text())
            for category, terms in doc.get("categories", {}).items():
                categories.setdefault(category, []).extend(terms)
            for category, regexes in doc.get("patterns", {}).items():
                patterns.setdefault(category, []).extend(regexes)
        return cls(
            categories,
            patterns,
            load_classifier(getattr(settings, "policy_classifier", "")),
            block_status=getattr(settings, "policy_block_status", 400),
        )

    def check(self, fields: dict[str, str | None]) -> None:
        """Raise ContentBlocked naming the first category any given text falls in."""
        for name, text in fields.items():
            if not text:
                continue
            folded = _normalise(text)
            for category, rule in self._rules:
                if rule.search(folded):
                    raise ContentBlocked(category, name, self.block_status)
            if self.classifier is not None:
                verdict = self.classifier(name, text)
                if verdict:
                    raise ContentBlocked(verdict, name, self.block_status)
