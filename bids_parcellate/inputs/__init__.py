"""The input layer: the pybids query (:mod:`.query`), BOLD and brain-mask reading
(:mod:`.bold`), grids, resampling and mask strategies (:mod:`.grids`). The only code
that opens input files.
"""
