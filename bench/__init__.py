"""relaybus benchmarks: ``python -m bench`` runs them all, prints a table and writes JSON.

Every figure that matters is a ratio against a baseline measured in the same run on the same
broker (plain Celery tasks), because the machine is shared and noisy.
"""
