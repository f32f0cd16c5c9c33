"""Declarative data: denoising strategies, BIDS path patterns, report layout."""
