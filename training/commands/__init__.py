"""The ``mmf`` commands, one module per command (or per few related ones).

:mod:`training.cli` lists them in its table and imports a command's module only when
the command runs or shows its help, so a command pays only for what it uses (``mmf
ingest`` never imports MLflow). :mod:`training.commands.common` holds what they share.
"""

from __future__ import annotations


class State:
    """Of the running ``mmf`` process: read by :func:`training.cli.explain`'s caller."""

    verbose = False
    config = None  # of the running command, for error messages
