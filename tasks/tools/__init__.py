"""Tools agents call while they work; plain Python, no Celery.

:class:`SearchTool` searches the small corpus shipped with this package (``corpus.json``), so the
demo pipeline's researchers have something real to find without a network.
"""

from relaybus.tasks.tools._search import Document, SearchHit, SearchTool, load_corpus, tokenize

__all__ = ["Document", "SearchHit", "SearchTool", "load_corpus", "tokenize"]
