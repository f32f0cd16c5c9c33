"""The output layer: BIDS names (:mod:`.naming`), atomic writers (:mod:`.writers`), the
dataset's own files and manifest (:mod:`.dataset`), completion markers (:mod:`.markers`).
Nothing else in the package builds an output name or writes an output file."""
