"""Command line: the BIDS-Apps interface, ``bids_parcellate BIDS_DIR OUTPUT_DIR LEVEL``.

- :mod:`~bids_parcellate.cli.parser`: the argparse surface -> one validated, frozen
  :class:`~bids_parcellate.config.Config`;
- :mod:`~bids_parcellate.cli.run`: logging, exit codes, signals, and the call of
  :mod:`bids_parcellate.pipeline` for the requested levels;
- :mod:`~bids_parcellate.cli.slurm`: ``--print-slurm`` (an array job script);
- :mod:`~bids_parcellate.cli.demo`: ``--demo`` (the quick start on generated data).
"""

from bids_parcellate.cli.parser import build_parser, config_from_args
from bids_parcellate.cli.run import console_main, main

__all__ = ["build_parser", "config_from_args", "console_main", "main"]
