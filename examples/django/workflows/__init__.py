"""Start relaybus workflows from a Django view, and show their status from the event log."""
