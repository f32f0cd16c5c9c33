"""Methods-text templates and references, shipped as ``bids_parcellate.boilerplate``."""
