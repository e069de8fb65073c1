"""Pipelines: their registry, how they are started and followed, how they end (outcomes, and the deadline sweep
that ends the silent ones ``timed_out``), and canvas helpers."""
