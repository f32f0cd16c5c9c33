"""Group level: one parcellation learned from every unit, as a streaming map-reduce
(the stages in order: :func:`bids_parcellate.pipeline.run_group_level`).

1. Checks (:mod:`.checks`): every selected run's brain mask must be on one voxel grid,
   else a one-line error names the units that differ and nothing is written.
2. Map (:func:`.reduce.unit_summaries`, :mod:`bids_parcellate.summary`): every unit
   needs a summary in OUTPUT_DIR that matches the parameters; the participant level
   leaves them, the missing or stale ones are computed here (the only time this step
   reads BOLD files).
3. Reduce (:mod:`.reduce`): the group mask is the intersection of the units' masks
   (voxels lost are logged and recorded); the units' features, restricted to it and
   weighted equally, are merged one summary at a time into a rank-K SVD of their
   column-wise concatenation (:class:`.reduce.ComponentMerger`). Memory holds one
   summary and the (voxels x K) group state, whatever the number of units.
4. The group atlas is learned by the same learner as a participant's
   (:mod:`bids_parcellate.learn.learner`: method, ``--bootstrap`` consensus over
   participants drawn with replacement, regions, ``--split-disconnected``) and written
   as a BIDS atlas (:mod:`bids_parcellate.derivatives.atlas_files`).
5. Apply (:mod:`.apply`): unit by unit, each run's BOLD is read once, cleaned as at the
   participant level and reduced to parcel mean timeseries on the group atlas.
6. Agreement of each unit's own parcellation (same method and scale, when the
   participant level wrote it) with the group one: ARI and NMI in a group TSV.
"""
