"""Keyword search over a small document corpus, ranked with BM25.

No dependencies and no randomness: the same query over the same corpus always returns the same
hits in the same order (equal scores are ordered by document id). Words are lower-cased runs of
letters and digits; common English words are dropped and a plural ``s`` is folded (``queues`` and
``queue``, ``retries`` and ``retry`` match), which is all the stemming a corpus this size needs.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Iterable
from functools import lru_cache
from importlib import resources

from pydantic import BaseModel, ConfigDict, Field

_TOKEN = re.compile(r"[a-z0-9]+")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_SNIPPET_CHARS = 200
#: Scores are compared after rounding so that float noise never decides an order; ties go to ids.
_SCORE_DIGITS = 9
_STOP_WORDS = frozenset(
    str.split(
        """
        a an and are as at be but by can do does for from has have how i if in into is it its no not
        of on or so such than that the their them then there these they this to was we were what when
        which who why will with without you your
        """
    )
)


class Document(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(min_length=1)
    title: str
    text: str
    tags: tuple[str, ...] = ()


class SearchHit(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    doc_id: str
    title: str
    #: The document's sentence that matches most query words (its first sentence if none does).
    snippet: str
    score: float


def tokenize(text: str) -> list[str]:
    """Lower-cased words with stop words dropped and plurals folded."""
    return [_fold_plural(t) for t in _TOKEN.findall(text.lower()) if t not in _STOP_WORDS]


def _fold_plural(token: str) -> str:
    if len(token) > 4 and token.endswith("ies"):
        return token[:-3] + "y"
    if len(token) > 3 and token.endswith("s") and not token.endswith(("ss", "us", "is")):
        return token[:-1]
    return token


@lru_cache(maxsize=1)
def load_corpus() -> tuple[Document, ...]:
    """The documents shipped with this package (``tasks/tools/corpus.json``)."""
    raw = resources.files("relaybus.tasks.tools").joinpath("corpus.json").read_text(encoding="utf-8")
    return tuple(Document.model_validate(item) for item in json.loads(raw))


class SearchTool:
    """BM25 over title, text and tags of each document; ``k1`` and ``b`` are the usual parameters."""

    name: str = "search"

    def __init__(
        self, documents: Iterable[Document] | None = None, *, k1: float = 1.5, b: float = 0.75
    ) -> None:
        if k1 < 0 or not 0 <= b <= 1:
            raise ValueError(f"BM25 needs k1 >= 0 and 0 <= b <= 1, got k1={k1}, b={b}")
        docs = tuple(load_corpus() if documents is None else documents)
        ids = Counter(d.id for d in docs)
        duplicated = sorted(i for i, n in ids.items() if n > 1)
        if duplicated:
            raise ValueError(f"document ids must be unique; repeated: {', '.join(duplicated)}")
        self._docs = {d.id: d for d in docs}
        self._k1 = k1
        self._b = b
        self._term_counts = {d.id: Counter(tokenize(" ".join((d.title, d.text, *d.tags)))) for d in docs}
        self._lengths = {i: sum(c.values()) for i, c in self._term_counts.items()}
        self._avg_length = (sum(self._lengths.values()) / len(docs)) if docs else 0.0
        document_frequency: Counter[str] = Counter()
        for counts in self._term_counts.values():
            document_frequency.update(counts.keys())
        n = len(docs)
        self._idf = {
            term: math.log(1 + (n - df + 0.5) / (df + 0.5)) for term, df in document_frequency.items()
        }

    def __repr__(self) -> str:
        return f"SearchTool(documents={len(self._docs)})"

    @property
    def documents(self) -> tuple[Document, ...]:
        return tuple(self._docs.values())

    def get(self, doc_id: str) -> Document:
        """The whole document behind a hit; ``KeyError`` for an unknown id."""
        return self._docs[doc_id]

    def search(self, query: str, k: int = 3) -> list[SearchHit]:
        """The ``k`` best matching documents, best first; documents matching no query word are left out."""
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        terms = list(dict.fromkeys(tokenize(query)))  # unique, in query order: a stable summation order
        if not terms:
            return []
        scored: list[tuple[float, str]] = []
        for doc_id, counts in self._term_counts.items():
            score = self._score(terms, counts, self._lengths[doc_id])
            if score > 0:
                scored.append((round(score, _SCORE_DIGITS), doc_id))
        scored.sort(key=lambda item: (-item[0], item[1]))
        return [
            SearchHit(
                doc_id=doc_id,
                title=self._docs[doc_id].title,
                snippet=_snippet(self._docs[doc_id].text, terms),
                score=score,
            )
            for score, doc_id in scored[:k]
        ]

    def _score(self, terms: list[str], counts: Counter[str], length: int) -> float:
        if length == 0:
            return 0.0
        score = 0.0
        norm = self._k1 * (1 - self._b + self._b * length / self._avg_length)
        for term in terms:
            tf = counts.get(term, 0)
            if tf:
                score += self._idf[term] * tf * (self._k1 + 1) / (tf + norm)
        return score


def _snippet(text: str, terms: list[str]) -> str:
    wanted = set(terms)
    sentences = [s for s in _SENTENCE_END.split(" ".join(text.split())) if s] or [""]
    best = max(sentences, key=lambda s: len(wanted.intersection(tokenize(s))))  # max keeps the first
    if len(best) <= _SNIPPET_CHARS:
        return best
    return best[:_SNIPPET_CHARS].rsplit(" ", 1)[0] + "…"
