"""The agent runtime: the task base and what every agent task does around its code, as its ordered hooks
(recording, dead-lettering, chords; :mod:`.hooks`), with the context it runs in and the worker's consumer."""
