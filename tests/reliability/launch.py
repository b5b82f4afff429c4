"""``python -m tests.reliability.launch ARGS``: ``mmf ARGS`` with the fault hook of
:mod:`tests.reliability.faults` installed from the environment (``MMF_TEST_KILL_AT``,
``MMF_TEST_PAUSE_AT``). Run from the repository root."""

from __future__ import annotations

import os

from tests.reliability.faults import Faults
from training import checkpoints
from training.cli import main

if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    checkpoints.set_hook(Faults.from_env())
    main()
