"""The learners: clustering features (:mod:`.features`), the methods registry
(:mod:`.methods`), Ward trees on supervoxels (:mod:`.ward`), bootstrap consensus
(:mod:`.consensus`), network maps split into regions (:mod:`.regions`).
"""
