"""``python -m relaybus.tasks.runtime.recording.writer_process NAME``: the host writer's process (the
configuration on standard input). Its own module, imported by nothing, so running it does not load
:mod:`.hostwriter` twice."""

from __future__ import annotations

import logging
import sys

from relaybus.tasks.runtime.recording.hostwriter import main

if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="[%(asctime)s: %(levelname)s/host-writer] %(message)s")
    main(sys.argv[1])
