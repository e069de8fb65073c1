"""``relaybus web``: a small server-rendered operations console over the event log and AMQP.

::

    auth.py      who may look (token, basic auth, signed login cookie), CSRF on every POST, read-only mode
    pages.py     the pages: workflows (filters), one workflow, dead letters, queues, agents
    integrity.py the last verify and checkpoint (the log's own records), and "verify now"
    metrics.py   /metrics in Prometheus' text format
    app.py       the Starlette app that puts them together

It reads through the library's own query API (:class:`~relaybus.eventstore.EventStore`, the workflow
status projection, :mod:`relaybus.tasks.saga`, :mod:`relaybus.status`, :mod:`relaybus.dlq`): no SQL of
its own. Starlette, Jinja2 and uvicorn come with the ``web`` extra.
"""

from relaybus.web.app import create_web_app
from relaybus.web.auth import WebAuth

__all__ = ["WebAuth", "create_web_app"]
