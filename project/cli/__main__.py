"""``python -m relaybus.cli``: the ``relaybus`` command."""

from relaybus.cli import main

main()
