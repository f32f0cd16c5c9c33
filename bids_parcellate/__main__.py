"""Allow ``python -m bids_parcellate``."""

from bids_parcellate.cli import console_main

raise SystemExit(console_main())
