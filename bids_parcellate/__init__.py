"""bids_parcellate: data-driven brain parcellations from fMRIPrep derivatives (a BIDS-App)."""

__version__ = "0.1.0"
__all__ = ["__version__"]
