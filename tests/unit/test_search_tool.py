"""The search tool: BM25 over the shipped corpus, deterministic and dependency-free."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relaybus.tasks.tools import Document, SearchHit, SearchTool, load_corpus, tokenize

TOOL = SearchTool()


def test_the_shipped_corpus_has_about_thirty_short_tagged_documents() -> None:
    corpus = load_corpus()
    assert 30 <= len(corpus) <= 40
    assert len({d.id for d in corpus}) == len(corpus)
    for doc in corpus:
        sentences = [s for s in re.split(r"(?<=[.!?])\s+", doc.text) if s]
        assert 2 <= len(sentences) <= 4, doc.id
        assert doc.title and doc.tags, doc.id


@pytest.mark.parametrize(
    ("query", "best"),
    [
        ("RabbitMQ priority queues", "rabbitmq-priorities"),
        ("dead letter poison message", "poison-messages"),
        ("saga compensation undo", "compensation"),
        ("Celery chord callback", "celery-chords"),
        ("retry with exponential backoff and jitter", "retries-backoff"),
        ("HTTP 429 Retry-After", "rate-limits"),
        ("evaluate LLM outputs with a judge", "llm-evaluation"),
        ("transactional outbox", "outbox-pattern"),
        ("correlation id across workers", "observability"),
    ],
)
def test_the_most_relevant_document_comes_first(query: str, best: str) -> None:
    assert TOOL.search(query)[0].doc_id == best


def test_hits_are_best_first_and_at_most_k() -> None:
    hits = TOOL.search("celery queues", k=5)
    assert len(hits) == 5
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    assert all(isinstance(h, SearchHit) and h.score > 0 for h in hits)
    assert len(TOOL.search("celery queues")) == 3


def test_the_snippet_is_the_sentence_matching_most_query_words() -> None:
    [hit] = TOOL.search("prefetch count one", k=1)
    assert hit.doc_id == "prefetch-and-priority"
    assert hit.title == "Why prefetch defeats priorities"
    assert hit.snippet == (
        "To let priorities take effect, set the prefetch count to one for workers that serve "
        "prioritized queues."
    )


def test_a_title_only_match_shows_the_first_sentence() -> None:
    docs = [Document(id="a", title="Zebra facts", text="Stripes are black. They are also white.", tags=())]
    [hit] = SearchTool(docs).search("zebra")
    assert hit.snippet == "Stripes are black."


def test_plurals_match_singulars() -> None:
    assert tokenize("Queues retries sagas status process") == ["queue", "retry", "saga", "status", "process"]
    assert [h.doc_id for h in TOOL.search("saga")] == [h.doc_id for h in TOOL.search("sagas")]


def test_equal_scores_are_ordered_by_document_id_whatever_the_input_order() -> None:
    docs = [
        Document(id=doc_id, title="Same", text="Brokers route messages. Queues hold them.", tags=("x",))
        for doc_id in ("c", "a", "b")
    ] + [Document(id="d", title="Other", text="Nothing in common here. Really none.")]
    hits = SearchTool(docs).search("brokers", k=10)
    assert [h.doc_id for h in hits] == ["a", "b", "c"]
    assert len({h.score for h in hits}) == 1
    assert [h.doc_id for h in SearchTool(reversed(docs)).search("brokers", k=10)] == ["a", "b", "c"]


def test_queries_matching_nothing_return_no_hits() -> None:
    assert TOOL.search("xylophone quokka") == []
    assert TOOL.search("the and of") == []
    assert TOOL.search("") == []


def test_k_must_be_positive() -> None:
    with pytest.raises(ValueError, match="k must be at least 1"):
        TOOL.search("celery", k=0)


def test_duplicate_document_ids_are_refused() -> None:
    doc = Document(id="same", title="t", text="x. y.")
    with pytest.raises(ValueError, match="repeated: same"):
        SearchTool([doc, doc])


def test_get_returns_the_whole_document_behind_a_hit() -> None:
    hit = TOOL.search("event sourcing append-only log")[0]
    assert hit.doc_id == "event-sourcing"
    assert hit.snippet in TOOL.get(hit.doc_id).text
    with pytest.raises(KeyError):
        TOOL.get("no-such-doc")


def test_an_empty_corpus_finds_nothing() -> None:
    assert SearchTool([]).search("anything") == []


def test_rankings_are_the_same_in_other_processes_whatever_the_hash_seed() -> None:
    query = "message queues reliability idempotency"
    code = (
        "from relaybus.tasks.tools import SearchTool;"
        f"print([(h.doc_id, h.score) for h in SearchTool().search({query!r}, k=8)])"
    )
    outputs = {
        subprocess.run(
            [sys.executable, "-c", code],
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for seed in ("1", "2", "3")
    }
    assert outputs == {str([(h.doc_id, h.score) for h in TOOL.search(query, k=8)]) + "\n"}


@settings(max_examples=200, deadline=None)
@given(
    query=st.lists(
        st.sampled_from(sorted({t for d in load_corpus() for t in d.text.lower().split()}))
        | st.text(max_size=12),
        max_size=6,
    ).map(" ".join),
    k=st.integers(min_value=1, max_value=40),
)
def test_any_query_gives_stable_well_ordered_hits(query: str, k: int) -> None:
    hits = TOOL.search(query, k)
    assert hits == TOOL.search(query, k)
    assert len(hits) <= k
    assert all(h.score > 0 for h in hits)
    assert [(-h.score, h.doc_id) for h in hits] == sorted((-h.score, h.doc_id) for h in hits)
    if not tokenize(query):
        assert hits == []
