"""The agents that ship with relaybus. Each module owns its input and output models and a plain function."""
