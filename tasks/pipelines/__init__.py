"""Pipelines: their registry, how they are started and followed, how they end, and canvas helpers."""
