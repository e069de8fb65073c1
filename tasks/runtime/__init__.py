"""The agent runtime: the task base and what every agent task does around its code (context, recording,
dead-lettering, chords, the worker's consumer)."""
