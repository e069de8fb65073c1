if __name__ != "relaybus.tasks":  # imported by its folder name from the repository root
    raise ImportError(
        f"the tasks/ folder is installed as relaybus.tasks: import relaybus.tasks, not {__name__}"
        " (a second copy of its modules would bring a second registry and app)"
    )

