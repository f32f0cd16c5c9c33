"""Allow ``python -m bids_parcellate``."""

from bids_parcellate.cli import main

raise SystemExit(main())
