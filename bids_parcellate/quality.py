"""Quality figures of a parcellation (after Thirion et al. 2014, Front. Neurosci. 8:167).

For every scale of a unit's parcellation:

- **accuracy**: compression R², the share of the variance of the cleaned voxel signal
  kept when every voxel is replaced by the mean of its parcel. In-sample for the
  written parcellation, and held-out: the unit's data are split in two halves, a
  parcellation is learned on each half with the same method and scored on the other half.
- **reproducibility**: adjusted Rand index and normalised mutual information between the
  two halves' parcellations (scikit-learn).
- **homogeneity**: mean correlation between the voxel timeseries of a parcel, averaged
  over parcels weighted by their size (as Schaefer et al. 2018), against a null of random
  spatially contiguous parcellations with the same number of parcels (value, null mean
  and standard deviation, z-score).
- **shape**: parcel sizes (min / median / max voxels, Gini coefficient) and the number of
  parcels made of more than one 6-connected piece.

Every figure is computed from the cleaned (denoised, unsmoothed) voxel timeseries that
the participant level holds in memory, standardised per voxel within each run (or half
run), so that every voxel weighs the same. Parcel sums of the standardised signal for a
whole parcellation come from one sparse product, without a standardised copy of the data.

Halves
------
With two or more runs the runs are dealt alternately to the two halves (runs 1, 3, ... and
2, 4, ...), so that slow drifts over the session are shared by both. With a single run,
its kept volumes are split in time at the middle, and the volumes within
:data:`GAP_SECONDS` / 2 of the split point are left out of both halves: cleaned BOLD
signal is autocorrelated over a few seconds (the haemodynamic response lasts ~15 s), so
volumes next to the split would otherwise tie the halves together.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import sparse
from scipy.sparse import csgraph

from bids_parcellate.learn.features import standardize_columns
from bids_parcellate.runtime import helper_process

#: Width (s) of the band around a single run's split point left out of both halves.
GAP_SECONDS = 10.0
#: Volumes left out around the split when the repetition time is unknown.
GAP_VOLUMES_NO_TR = 5
#: Fewest kept volumes in each half for the held-out figures.
MIN_HALF_VOLUMES = 10
#: Random contiguous parcellations drawn per scale for the homogeneity null.
NULL_DRAWS = 10

LabelsByScale = dict[int, np.ndarray]
#: ``learn(segments, take) -> {scale: labels}``: the unit's parcellation method applied
#: to a list of (time x voxels) cleaned segments (runs or parts of runs). ``take(arrays)``
#: gives the same half of any per-run arrays standardised per run (the smoothed,
#: z-scored runs of the full fit), z-scored again per segment: the learner can reuse
#: them instead of smoothing the segments again (smoothing acts volume by volume).
Learner = Callable[[Sequence[np.ndarray], Callable], LabelsByScale]

class TooShort(ValueError):
    """The unit's data are too short to be halved."""


# --------------------------------------------------------------------------- halves
@dataclass(frozen=True)
class Halves:
    """Two halves of a unit's cleaned data, each a list of (time x voxels) segments."""

    first: list[np.ndarray]
    second: list[np.ndarray]
    kind: str  # "runs" or "time"
    gap: int = 0  # volumes left out around a time split
    #: time split: the first half is rows [:stop], the second [start:] of the one run
    stop: int = 0
    start: int = 0

    @property
    def n_volumes(self) -> tuple[int, int]:
        """Kept volumes in the first and the second half."""
        return (sum(s.shape[0] for s in self.first), sum(s.shape[0] for s in self.second))

    def take(self, arrays: Sequence[np.ndarray], half: int) -> list[np.ndarray]:
        """Half ``half`` (0 or 1) of per-run arrays laid out like the split runs, each
        piece z-scored per column: runs standardised per run are used as they are (a
        run split keeps whole runs); slices of a run (time split) are standardised
        copies.

        Parameters
        ----------
        arrays : sequence of ndarray, shape (n_kept, n_voxels)
            One array per run, in the order of the split runs.
        half : {0, 1}

        Returns
        -------
        list of ndarray
        """
        if self.kind == "runs":
            return list(arrays[half::2])
        piece = arrays[0][:self.stop] if half == 0 else arrays[0][self.start:]
        return [standardize_columns(np.array(piece, dtype=np.float32))]


def split_halves(runs_data: Sequence[np.ndarray], sample_masks: Sequence[np.ndarray],
                 trs: Sequence[float | None]) -> Halves:
    """Split a unit's cleaned runs in two halves for held-out figures.

    Parameters
    ----------
    runs_data : sequence of ndarray, shape (n_kept, n_voxels)
        Cleaned runs (kept volumes only), in acquisition order.
    sample_masks : sequence of ndarray of int
        Indices of the kept volumes in each run's original series.
    trs : sequence of float or None
        Repetition time of each run (s).

    Returns
    -------
    Halves
        Runs dealt alternately when there are two or more, else one run split at the
        middle of its original series with a gap around the split point (views, no copy).
    """
    if len(runs_data) >= 2:
        return Halves(list(runs_data[0::2]), list(runs_data[1::2]), "runs")
    data, kept, tr = runs_data[0], np.asarray(sample_masks[0]), trs[0]
    gap = math.ceil(GAP_SECONDS / tr) if tr else GAP_VOLUMES_NO_TR
    middle = (int(kept[0]) + int(kept[-1]) + 1) / 2.0
    # kept volumes are sorted: the halves are two contiguous row ranges (views)
    stop = int(np.searchsorted(kept, middle - gap / 2.0, side="left"))
    start = int(np.searchsorted(kept, middle + gap / 2.0, side="left"))
    return Halves([data[:stop]], [data[start:]], "time", gap, stop, start)


# --------------------------------------------------------------------------- scoring
class Scorer:
    """Parcel sums of the per-segment standardised signal, without a standardised copy.

    For a segment ``X`` (time x voxels) with voxel means ``mu`` and standard deviations
    ``sd`` (ddof=1), the standardised signal summed over a parcel is
    ``X @ W - mu @ W`` with ``W`` the (voxels x parcels) indicator scaled by ``1 / sd``:
    one sparse product per segment and parcellation. Constant voxels count as zero.

    Parameters
    ----------
    segments : sequence of ndarray, shape (n_times, n_voxels)
    """

    def __init__(self, segments: Sequence[np.ndarray]) -> None:
        self.segments = list(segments)
        self.n_voxels = self.segments[0].shape[1]
        self.inv_sd = []
        self.mean = []
        self.voxel_ss = np.zeros(self.n_voxels)  # sum of squares of each standardised voxel
        #: sum of squares of a voxel that varies in every segment
        self.full_ss = float(sum(seg.shape[0] - 1 for seg in self.segments))
        for seg in self.segments:
            mean = seg.mean(axis=0, dtype=np.float64)
            sd = seg.std(axis=0, ddof=1, dtype=np.float64) if seg.shape[0] > 1 \
                else np.zeros(self.n_voxels)
            live = sd > np.finfo(np.float32).eps * np.maximum(np.abs(mean), 1.0)
            inv = np.where(live, 1.0 / np.where(live, sd, 1.0), 0.0)
            self.mean.append(mean)
            self.inv_sd.append(inv)
            self.voxel_ss += live * (seg.shape[0] - 1)
        self.total_ss = float(self.voxel_ss.sum())

    def parcel_energy(self, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Squared norm of the summed standardised signal of every parcel.

        Returns
        -------
        energy : ndarray, shape (n_parcels,)
            ``sum_t (sum_{v in p} z_v(t))²`` over all segments.
        sizes : ndarray, shape (n_parcels,)
            Voxels per parcel.
        diag : ndarray, shape (n_parcels,)
            ``sum_{v in p} |z_v|²`` (the diagonal part of the energy).
        """
        return self._energies([labels])[0]

    def _energies(self, parcellations: Sequence[np.ndarray]) -> list[tuple]:
        """:meth:`parcel_energy` of several parcellations with one sparse product per
        segment (one pass over the data)."""
        # label 0 (a voxel in no parcel) is left out of every parcel
        indices = [np.asarray(labels) - 1 for labels in parcellations]
        counts = [max(int(index.max()) + 1, 1) for index in indices]
        offsets = np.concatenate([[0], np.cumsum(counts)])
        voxels = [np.flatnonzero(index >= 0) for index in indices]
        rows = np.concatenate(voxels)
        cols = np.concatenate([index[v] + off for index, v, off in zip(indices, voxels,
                                                                        offsets,
                                                                        strict=False)])
        energy = np.zeros(offsets[-1])
        for seg, mean, inv in zip(self.segments, self.mean, self.inv_sd, strict=True):
            # float32 weights: the product stays in float32 (3x faster than upcasting the
            # segment); parcel sums are then accumulated in float64
            weights = sparse.csc_matrix((inv[rows].astype(np.float32), (rows, cols)),
                                        shape=(self.n_voxels, offsets[-1]))
            sums = np.asarray(seg @ weights, dtype=np.float64)
            sums -= (mean @ weights)[None, :]
            energy += np.einsum("tp,tp->p", sums, sums)
        out = []
        for index, v, n, start in zip(indices, voxels, counts, offsets, strict=False):
            out.append((energy[start:start + n], np.bincount(index[v], minlength=n),
                        np.bincount(index[v], weights=self.voxel_ss[v], minlength=n)))
        return out

    def accuracy(self, labels: np.ndarray) -> float:
        """Compression R² of ``labels`` on these segments (voxels in no parcel keep
        none of their variance)."""
        energy, sizes, _ = self.parcel_energy(labels)
        filled = sizes > 0
        return float((energy[filled] / sizes[filled]).sum() / self.total_ss)

    def homogeneity(self, *parcellations: np.ndarray) -> float | np.ndarray:
        """Size-weighted mean within-parcel correlation (parcels of >= 2 voxels); one
        value per parcellation given (a float for one)."""
        values = np.array([self._homogeneity(*e) for e in self._energies(parcellations)])
        return float(values[0]) if len(parcellations) == 1 else values

    def _homogeneity(self, energy: np.ndarray, sizes: np.ndarray, diag: np.ndarray) -> float:
        # correlation over the concatenated segments: standardised voxels scaled to norm 1
        norm = self.full_ss or 1.0
        keep = sizes >= 2
        if not keep.any():
            return float("nan")
        pairs = sizes[keep] * (sizes[keep] - 1.0)
        per_parcel = (energy[keep] - diag[keep]) / norm / pairs
        return float((per_parcel * sizes[keep]).sum() / sizes[keep].sum())


def accuracy(segments: Sequence[np.ndarray], labels: np.ndarray) -> float:
    """Compression R² of ``labels`` on cleaned ``segments`` (see :class:`Scorer`).

    Parameters
    ----------
    segments : sequence of ndarray, shape (n_kept, n_voxels)
        Cleaned runs or parts of runs (each standardised per voxel here).
    labels : ndarray of int, shape (n_voxels,)
        Labels 1..n (0: no parcel).

    Returns
    -------
    float
        Share of the variance kept by the parcel means.
    """
    return Scorer(segments).accuracy(labels)


def homogeneity(segments: Sequence[np.ndarray], labels: np.ndarray) -> float:
    """Size-weighted mean within-parcel correlation of ``labels`` on ``segments``.

    Parameters
    ----------
    segments : sequence of ndarray, shape (n_kept, n_voxels)
    labels : ndarray of int, shape (n_voxels,)

    Returns
    -------
    float
    """
    return Scorer(segments).homogeneity(labels)


# --------------------------------------------------------------------------- null
def random_parcellation(connectivity: sparse.spmatrix, n_parcels: int,
                        rng: np.random.Generator) -> np.ndarray:
    """A random parcellation into ``n_parcels`` contiguous parcels.

    ``n_parcels`` seeds are drawn uniformly (at least one in every connected piece of the
    graph) and every node joins the seed nearest to it along the graph, with random edge
    lengths (uniform in [0.5, 1.5]) so that borders are irregular. A node's shortest path
    to its seed runs through nodes of the same seed, so every parcel is connected.

    Parameters
    ----------
    connectivity : sparse matrix, shape (n_nodes, n_nodes)
        Symmetric neighbour graph (e.g. the 6-neighbour voxel grid).
    n_parcels : int
    rng : numpy.random.Generator

    Returns
    -------
    ndarray of int32, shape (n_nodes,)
        Labels 1..n_parcels.
    """
    graph = sparse.triu(connectivity, k=1, format="coo")
    n = graph.shape[0]
    lengths = rng.uniform(0.5, 1.5, size=graph.nnz)
    weighted = sparse.csr_matrix((lengths, (graph.row, graph.col)), shape=(n, n))
    n_pieces, piece = csgraph.connected_components(weighted, directed=False)
    if n_pieces > n_parcels:
        raise ValueError(f"{n_parcels} parcels cannot cover {n_pieces} disconnected pieces")
    # one seed in every piece, the others uniformly among the remaining nodes
    order = rng.permutation(n)
    _, first = np.unique(piece[order], return_index=True)
    seeds = order[first]
    rest = np.setdiff1d(order, seeds, assume_unique=True)
    seeds = np.concatenate([seeds, rng.choice(rest, n_parcels - n_pieces, replace=False)])
    _, _, sources = csgraph.dijkstra(weighted, directed=False, indices=seeds,
                                     return_predecessors=True, min_only=True)
    lookup = np.zeros(n, dtype=np.int32)
    lookup[seeds] = np.arange(1, n_parcels + 1, dtype=np.int32)
    return lookup[sources]


def homogeneity_null(scorer: Scorer, connectivity: sparse.spmatrix, n_parcels: int,
                     n_draws: int, rng: np.random.Generator,
                     support: np.ndarray | None = None) -> np.ndarray:
    """Homogeneity of ``n_draws`` random contiguous parcellations (see
    :func:`random_parcellation`), of the ``support`` voxels only when given (the voxels
    a region-based parcellation covers).

    Parameters
    ----------
    scorer : Scorer
        The data the parcellations are scored on.
    connectivity : sparse matrix
        6-neighbour graph of the in-mask voxels.
    n_parcels : int
    n_draws : int
    rng : numpy.random.Generator
    support : ndarray of bool, shape (n_voxels,), optional

    Returns
    -------
    ndarray of float, shape (n_draws,)
        NaN when the support has more connected pieces than ``n_parcels``.
    """
    if support is None or support.all():
        draws = [random_parcellation(connectivity, n_parcels, rng) for _ in range(n_draws)]
    else:
        inside = np.flatnonzero(support)
        graph = sparse.csr_matrix(connectivity)[inside][:, inside]
        if csgraph.connected_components(graph, directed=False)[0] > n_parcels:
            # parcels that are not contiguous cover more pieces than there are parcels
            return np.full(n_draws, np.nan)
        draws = []
        for _ in range(n_draws):
            labels = np.zeros(support.size, dtype=np.int32)
            labels[inside] = random_parcellation(graph, n_parcels, rng)
            draws.append(labels)
    return np.atleast_1d(scorer.homogeneity(*draws))


# --------------------------------------------------------------------------- shape
def gini(values: np.ndarray) -> float:
    """Gini coefficient of non-negative ``values`` (0 when all are equal)."""
    x = np.sort(np.asarray(values, dtype=np.float64))
    n = x.size
    if n == 0 or x.sum() == 0:
        return 0.0
    rank = np.arange(1, n + 1)
    return float((2.0 * (rank * x).sum()) / (n * x.sum()) - (n + 1.0) / n)


def pieces_per_parcel(labels: np.ndarray, connectivity: sparse.spmatrix) -> np.ndarray:
    """Number of connected pieces of every parcel.

    Parameters
    ----------
    labels : ndarray of int, shape (n_voxels,)
        Labels 1..n (0: no parcel, not counted).
    connectivity : sparse matrix
        Voxel adjacency (6-neighbour grid).

    Returns
    -------
    ndarray of int, shape (n,)
        Index 0 is parcel 1.
    """
    graph = sparse.coo_matrix(connectivity)
    same = labels[graph.row] == labels[graph.col]
    n = labels.shape[0]
    within = sparse.csr_matrix((np.ones(int(same.sum())), (graph.row[same], graph.col[same])),
                               shape=(n, n))
    _, component = csgraph.connected_components(within, directed=False)
    first_voxel = np.unique(component, return_index=True)[1]
    first_voxel = first_voxel[labels[first_voxel] > 0]
    return np.bincount(labels[first_voxel] - 1, minlength=int(labels.max()))


def shape_figures(labels: np.ndarray, connectivity: sparse.spmatrix) -> dict:
    """Size distribution and fragmentation of a parcellation.

    Parameters
    ----------
    labels : ndarray of int, shape (n_voxels,)
    connectivity : sparse matrix

    Returns
    -------
    dict
        ``n_parcels``, ``n_unassigned``, ``size_min``, ``size_median``, ``size_max``,
        ``size_gini``, ``n_fragmented`` (columns of the quality tables).
    """
    counts = np.bincount(labels)
    sizes = counts[1:][counts[1:] > 0]
    return {
        "n_parcels": int(sizes.size),
        "n_unassigned": int(counts[0]),
        "size_min": int(sizes.min()),
        "size_median": float(np.median(sizes)),
        "size_max": int(sizes.max()),
        "size_gini": gini(sizes),
        "n_fragmented": int((pieces_per_parcel(labels, connectivity) > 1).sum()),
    }


# --------------------------------------------------------------------------- all figures
def assess(runs_data: Sequence[np.ndarray], sample_masks: Sequence[np.ndarray],
           trs: Sequence[float | None], labels_by_scale: Mapping[int, np.ndarray],
           connectivity: sparse.spmatrix, learn: Learner, random_state: int,
           n_null: int = NULL_DRAWS) -> dict[int, dict]:
    """Every quality figure of a unit's parcellation at every scale.

    Parameters
    ----------
    runs_data : sequence of ndarray, shape (n_kept, n_voxels)
        The unit's cleaned runs (kept volumes only).
    sample_masks : sequence of ndarray of int
        Kept volume indices of each run.
    trs : sequence of float or None
        Repetition times (s).
    labels_by_scale : mapping
        scale -> labels 1..n over the voxels: the parcellation that was written.
    connectivity : sparse matrix
        6-neighbour graph of the in-mask voxels.
    learn : callable
        The unit's parcellation method: ``learn(segments) -> {scale: labels}``; it is
        called once per half and must cut every scale from one fit.
    random_state : int
        Seed of the homogeneity null.
    n_null : int
        Random parcellations per scale for the null.

    Returns
    -------
    dict
        scale -> {column: value} for the columns of :data:`COLUMNS` that describe
        figures (the identifying columns are added by the caller).
    """
    scales = sorted(labels_by_scale)
    halves = split_halves(runs_data, sample_masks, trs)
    n1, n2 = halves.n_volumes
    if min(n1, n2) < MIN_HALF_VOLUMES:
        raise TooShort(f"halves of {n1} and {n2} kept volumes; at least "
                       f"{MIN_HALF_VOLUMES} each are needed")
    fits = (learn(halves.first, lambda arrays: halves.take(arrays, 0)),
            learn(halves.second, lambda arrays: halves.take(arrays, 1)))
    # scikit-learn's scores, in the helper process while this one computes the rest
    agreements = helper_process.call(agreement, [(fits[0][s], fits[1][s]) for s in scales])
    scorers = (Scorer(halves.first), Scorer(halves.second))
    out = fixed_figures(runs_data, labels_by_scale, connectivity, random_state, n_null)
    for scale, (ari, nmi) in zip(scales, agreements(), strict=True):
        first, second = fits[0][scale], fits[1][scale]
        out[scale].update({
            "split": halves.kind,
            "n_volumes_half1": n1,
            "n_volumes_half2": n2,
            "accuracy_heldout": 0.5 * (scorers[1].accuracy(first)
                                       + scorers[0].accuracy(second)),
            "ari": ari,
            "nmi": nmi,
        })
    return out


def agreement(pairs: Sequence[tuple[np.ndarray, np.ndarray]]) -> list[tuple[float, float]]:
    """scikit-learn's adjusted Rand index and normalised mutual information of each
    pair of labelings."""
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    return [(float(adjusted_rand_score(a, b)), float(normalized_mutual_info_score(a, b)))
            for a, b in pairs]


def fixed_figures(runs_data: Sequence[np.ndarray], labels_by_scale: Mapping[int, np.ndarray],
                  connectivity: sparse.spmatrix, random_state: int,
                  n_null: int = NULL_DRAWS) -> dict[int, dict]:
    """The figures of a given parcellation on given data: in-sample accuracy,
    homogeneity against its null, shape (no refitting).

    :func:`assess` adds the split-half figures; this alone scores a parcellation that
    was not learned from ``runs_data`` (e.g. a group atlas on a participant's runs, where
    ``accuracy`` is then held-out).

    Parameters
    ----------
    runs_data : sequence of ndarray, shape (n_kept, n_voxels)
        Cleaned runs.
    labels_by_scale : mapping
        scale -> labels 1..n over the voxels.
    connectivity : sparse matrix
        6-neighbour graph of the in-mask voxels.
    random_state : int
        Seed of the homogeneity null.
    n_null : int
        Random parcellations per scale for the null.

    Returns
    -------
    dict
        scale -> {column: value}.
    """
    everything = Scorer(runs_data)
    seeds = np.random.SeedSequence(random_state).spawn(len(labels_by_scale))
    out = {}
    for scale, seed in zip(sorted(labels_by_scale), seeds, strict=True):
        labels = labels_by_scale[scale]
        value = everything.homogeneity(labels)
        null = homogeneity_null(everything, connectivity, int((np.bincount(labels)[1:] > 0)
                                                               .sum()), n_null,
                                np.random.default_rng(seed), support=labels > 0)
        null_sd = float(null.std(ddof=1)) if null.size > 1 else float("nan")
        out[scale] = {
            "n_volumes": sum(r.shape[0] for r in runs_data),
            "accuracy": everything.accuracy(labels),
            "homogeneity": value,
            "homogeneity_null_mean": float(null.mean()),
            "homogeneity_null_sd": null_sd,
            "homogeneity_z": (value - float(null.mean())) / null_sd
            if null_sd and np.isfinite(null_sd) else float("nan"),
            **shape_figures(labels, connectivity),
        }
    return out
