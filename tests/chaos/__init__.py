"""Chaos tests: workers SIGKILLed in a loop, RabbitMQ restarted, PostgreSQL stopped, Redis restarted.

They run against private, throw-away service instances (:mod:`tests.chaos.services`), never the
machine's shared ones. ``python -m pytest tests/chaos`` runs the short version (CI runs it with the
rest of the suite); ``python -m tests.chaos --long`` runs the long one and prints its figures.
See docs/chaos.md.
"""
