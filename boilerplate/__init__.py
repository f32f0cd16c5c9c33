"""Methods-text templates (jinja2) and references.bib, shipped as
``bids_parcellate.boilerplate``."""
