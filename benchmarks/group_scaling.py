"""Time and memory of the group level's reduce step with up to 1,000 participants.

    python benchmarks/group_scaling.py [--work DIR] [--sizes 10 100 300 1000] \
        [--n-components 200] [--n-parcels 100 400] [--no-learn] [--in-memory] \
        [--tsv benchmarks/results/group_scaling.tsv] [--json FILE]

Simulates ``max(--sizes)`` participants' summaries on the 4 mm MNI152 brain mask of the
demo generator (29,398 voxels) and writes them once, cached in ``--work``, with the
package's own writer (:func:`bids_parcellate.summary.write_summary`: uncompressed
``.npz`` + JSON sidecar, about 24 MB each at K = 200). Every participant has

- a brain mask: the MNI mask plus about 2 % of the voxels of its one-voxel outer shell,
  drawn per participant (the reduce selects the group mask's rows of every summary as
  with real masks; the group mask, their intersection, is the MNI mask at every N);
- ``n_volumes`` drawn in 240..480 and ``k = --n-components`` features (the default 200:
  a participant with more volumes than components keeps K of them);
- features = a shared low-rank structure (100 compact parcels of the demo generator's
  ground truth, each with its own 20-dimensional pattern) mixed by a participant's own
  random (20 x k) matrix with decaying column weights, plus Gaussian noise (signal 2 %
  of the variance: Ward at 100 parcels finds the simulated parcels with an ARI of about
  0.2 from one participant, 0.8 from 10), scaled so that a row's squared norm is
  0.8 x n_volumes (z-scored time series with 80 % of their variance kept); shell voxels
  are noise only. Everything is seeded by (seed, participant index): deterministic.

Then, for each N of ``--sizes``, a fresh process reads the first N summaries exactly as
the group level does after its map step (``bids_parcellate.pipeline``):
``read_header`` for each file, ``group_mask``, ``reduce_summaries`` (the streamed
rank-K merge, :class:`~bids_parcellate.group.reduce.ComponentMerger`), and, unless
``--no-learn``, Ward at ``--n-parcels`` on the merged (voxels x K) features
(:func:`bids_parcellate.learn.methods.parcellate`, which does not depend on N). Each
stage's wall time and the child's own peak RSS (``VmHWM``, after the reduce and after the
learn) are recorded, and the ARI of the coarsest scale to the 100 simulated parcels
(computed after the peak RSS is read: scikit-learn is imported for it).

``--in-memory`` writes no file: each summary is generated when the reduce asks for it
(``read_mask`` / ``read_features`` of the reduce module replaced by the generator; the
generation time is measured and subtracted). Use it when the disk cannot hold
``max(--sizes)`` x 24 MB.

Prints a markdown table, a least-squares fit ``reduce time = a + b N`` and the peak RSS
at the largest N against 1 GB, and writes one row per N to ``--tsv`` (and ``--json``).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import inspect
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

SEED = 20260517
N_TRUE = 100
RANK = 20
SHELL_FRACTION = 0.02
SIGNAL_VARIANCE = 0.02
RESOLUTION = 4


def _peak_rss_mb() -> float:
    """This process's peak resident set size (``VmHWM``; ``ru_maxrss`` survives exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


# --------------------------------------------------------------------------- simulation
class Simulator:
    """The shared structure and each participant's summary, deterministic."""

    def __init__(self, n_components: int) -> None:
        import numpy as np
        from scipy import ndimage

        from bids_parcellate.demo.grid import load_grid
        from bids_parcellate.demo.truth import make_parcellation

        self.n_components = n_components
        mask, affine = load_grid(RESOLUTION)
        self.mask = np.array(mask, dtype=bool)
        self.affine = np.array(affine, dtype=float)
        self.shell = ndimage.binary_dilation(self.mask) & ~self.mask
        rng = np.random.default_rng([SEED, 0])
        self.truth = make_parcellation(self.mask, N_TRUE, rng)
        patterns = rng.standard_normal((N_TRUE, RANK)).astype(np.float32)
        # (brain voxels x RANK), C order of the mask: the shared low-rank structure
        self.structure = patterns[self.truth[self.mask] - 1]

    def unit(self, index: int):
        """Participant ``index`` (1-based): (features, mask, n_volumes)."""
        import numpy as np

        rng = np.random.default_rng([SEED, index])
        n_volumes = _n_volumes(index, rng)
        k = min(self.n_components, n_volumes)
        extra = self.shell & (rng.random(self.mask.shape) < SHELL_FRACTION)
        unit_mask = self.mask | extra
        in_brain = self.mask[unit_mask]  # the unit's rows that are brain voxels
        weights = (1.0 / np.sqrt(1.0 + np.arange(k) / 10.0)).astype(np.float32)
        mixing = rng.standard_normal((RANK, k), dtype=np.float32) * (
            weights / np.float32(np.sqrt(RANK)))
        features = rng.standard_normal((int(unit_mask.sum()), k), dtype=np.float32)
        noise_scale = np.float32(np.sqrt((1 - SIGNAL_VARIANCE) / SIGNAL_VARIANCE))
        features *= weights * noise_scale
        features[in_brain] += self.structure @ mixing
        # a row's squared norm: 0.8 x n_volumes (z-scored series, 80 % of variance kept)
        scale = np.sqrt(0.8 * n_volumes / np.mean(np.einsum("ij,ij->i", features, features)))
        features *= np.float32(scale)
        return features, unit_mask, n_volumes


def _n_volumes(index: int, rng=None) -> int:
    """Participant ``index``'s volumes: the first draw of its generator."""
    import numpy as np

    rng = np.random.default_rng([SEED, index]) if rng is None else rng
    return int(rng.integers(240, 481))


def _config(work: Path):
    from bids_parcellate.config import Config

    return Config(bids_dir=work / "bids", output_dir=work / "summaries",
                  analysis_levels=("group",))


def _label(index: int) -> str:
    return f"{index:04d}"


def _params(n: int, n_components: int) -> dict:
    from bids_parcellate import summary
    from bids_parcellate.demo import grid, truth

    code = "".join(inspect.getsource(m) for m in (Simulator, summary, grid, truth))
    return {"participants": n, "n_components": n_components, "seed": SEED,
            "constants": [N_TRUE, RANK, SHELL_FRACTION, SIGNAL_VARIANCE, RESOLUTION],
            "code": hashlib.sha256(code.encode()).hexdigest()[:16]}


ENTITIES = {"space": "MNI152NLin2009cAsym", "res": str(RESOLUTION)}


def _summary_paths(work: Path, n: int) -> list[Path]:
    """Where participants 1..n's summaries are (the package's own file names)."""
    from bids_parcellate.summary import summary_path

    config = _config(work)
    return [summary_path(config, _label(i), None, ENTITIES) for i in range(1, n + 1)]


def _disk_read_mb() -> float:
    """Bytes this process made the kernel fetch from storage (not the page cache)."""
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("read_bytes:"):
            return int(line.split()[1]) / 2**20
    return float("nan")


def _write_summaries(work: Path, n: int, n_components: int) -> list[Path]:
    """Write participants 1..n's summaries (once; reused while the parameters hold)."""
    from bids_parcellate.summary import (
        Summary,
        summary_hash,
        summary_parameters,
        write_summary,
    )

    config = _config(work)
    entities = ENTITIES
    paths = _summary_paths(work, n)
    marker = work / "summaries.json"
    params = _params(n, n_components)
    if marker.is_file():
        old = json.loads(marker.read_text())
        if (old["participants"] >= n and {**old, "participants": n} == params
                and all(p.is_file() for p in paths)):
            return paths
    shutil.rmtree(config.output_dir, ignore_errors=True)
    marker.unlink(missing_ok=True)
    need_gb = n * 30_000 * n_components * 4 / 1e9
    free_gb = shutil.disk_usage(work).free / 1e9
    if need_gb > free_gb - 5:
        raise SystemExit(f"{n} summaries need about {need_gb:.0f} GB, {free_gb:.0f} GB free "
                         f"in {work}: use --in-memory or another --work")
    sim = Simulator(n_components)
    tic = time.monotonic()
    for i in range(1, n + 1):
        features, mask, n_volumes = sim.unit(i)
        summary = Summary(subject=_label(i), session=None, features=features, mask=mask,
                          affine=sim.affine, n_volumes=n_volumes,
                          parameters=summary_parameters(config, []),
                          hash=summary_hash(config, []), entities=entities, runs_used=[])
        write_summary(config, summary, [], [])
        if i % 100 == 0:
            print(f"  {i} summaries written ({time.monotonic() - tic:.0f} s)",
                  file=sys.stderr)
    marker.write_text(json.dumps(params))
    return paths


# --------------------------------------------------------------------------- child
def _child(argv: list[str]) -> None:
    """One measurement: ``_child MODE N K WORK SCALES...`` (MODE: files or memory)."""
    import numpy as np

    from bids_parcellate.group import reduce
    from bids_parcellate.learn.methods import parcellate
    from bids_parcellate.summary import SummaryHeader, read_header

    mode, n, n_components, work, *scales = argv
    n, n_components, work = int(n), int(n_components), Path(work)
    scales = [int(s) for s in scales]
    rss_start = _peak_rss_mb()
    result = {"n": n, "mode": mode}
    generation = [0.0]
    tic = time.monotonic()
    if mode == "files":
        paths = _summary_paths(work, n)  # written by the parent
        if not all(p.is_file() for p in paths):
            raise SystemExit(f"summaries missing in {work}")
        result["check_s"] = round(time.monotonic() - tic, 3)
        disk_start = _disk_read_mb()
        tic = time.monotonic()
        headers = {p.name: read_header(p) for p in paths}
        shape = next(iter(headers.values())).shape
        affine = next(iter(headers.values())).affine
    else:
        sim = Simulator(n_components)
        result["check_s"] = round(time.monotonic() - tic, 3)
        cache: dict[str, tuple] = {}

        def generated(path: Path):
            start = time.monotonic()
            if path.name not in cache:  # the mask pass, then the features pass
                cache.clear()
                cache[path.name] = sim.unit(int(path.name))
            generation[0] += time.monotonic() - start
            return cache[path.name]

        reduce.read_mask = lambda path: generated(path)[1]
        reduce.read_features = lambda path: generated(path)[:2]
        tic = time.monotonic()
        headers = {}
        for i in range(1, n + 1):
            path = Path(str(i))
            headers[path.name] = SummaryHeader(path=path, hash="", n_volumes=_n_volumes(i),
                                               shape=sim.mask.shape, affine=sim.affine)
        shape, affine = sim.mask.shape, sim.affine
        disk_start = _disk_read_mb()
    result["headers_s"] = time.monotonic() - tic
    assert all(h is not None and h.shape == shape for h in headers.values())

    generation[0] = 0.0
    tic = time.monotonic()
    gmask = reduce.group_mask(headers, affine)
    result["group_mask_s"] = time.monotonic() - tic - generation[0]
    generation[0] = 0.0
    tic = time.monotonic()
    features = reduce.reduce_summaries(headers.values(), gmask.mask, n_components)
    result["reduce_s"] = time.monotonic() - tic - generation[0]
    result["generation_s"] = generation[0]
    result["n_voxels"], result["k"] = (int(x) for x in features.shape)
    result["rss_reduce_mb"] = _peak_rss_mb()
    result["disk_read_mb"] = round(_disk_read_mb() - disk_start, 1)
    if scales:
        tic = time.monotonic()
        labels = parcellate(features, gmask.mask, "ward", scales, 0, warn_pieces=False)
        result["learn_s"] = time.monotonic() - tic
        result["rss_learn_mb"] = _peak_rss_mb()
        from sklearn.metrics import adjusted_rand_score

        rng = np.random.default_rng([SEED, 0])
        from bids_parcellate.demo.truth import make_parcellation

        truth = make_parcellation(gmask.mask, N_TRUE, rng)
        coarse = min(scales)
        result["ari"] = round(float(adjusted_rand_score(truth[gmask.mask],
                                                        labels[coarse])), 3)
    result["rss_start_mb"] = rss_start
    print(json.dumps(result))


def _measure(args: list[str]) -> dict:
    proc = subprocess.run([sys.executable, __file__, "_child", *args], capture_output=True,
                          text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        sys.stderr.write(proc.stderr[-3000:])
        raise SystemExit(f"benchmark step failed: {' '.join(args[:3])}")
    return json.loads(lines[-1])


def _busy() -> list[str]:
    found = []
    for pattern in (".ci/run", "pytest"):
        proc = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True)
        found += [f"{pattern} ({pid})" for pid in proc.stdout.split()]
    return found


def _fit(rows: list[dict]) -> tuple[float, float, float]:
    """Least squares reduce_s = a + b N; returns (a, b, R^2)."""
    import numpy as np

    n = np.array([r["n"] for r in rows], dtype=float)
    t = np.array([r["reduce_s"] for r in rows])
    design = np.column_stack([np.ones_like(n), n])
    (a, b), *_ = np.linalg.lstsq(design, t, rcond=None)
    pred = design @ np.array([a, b])
    r2 = 1 - ((t - pred) ** 2).sum() / max(((t - t.mean()) ** 2).sum(), 1e-12)
    return float(a), float(b), float(r2)


COLUMNS = ["n", "mode", "n_voxels", "k", "headers_s", "group_mask_s", "reduce_s",
           "reduce_s_per_participant", "learn_s", "ari", "rss_start_mb", "rss_reduce_mb",
           "rss_learn_mb", "disk_read_mb", "generation_s", "load1"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/bids_parcellate_bench_scaling"))
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 100, 300, 1000])
    parser.add_argument("--n-components", type=int, default=200)
    parser.add_argument("--n-parcels", type=int, nargs="+", default=[100, 400])
    parser.add_argument("--no-learn", action="store_true")
    parser.add_argument("--in-memory", action="store_true")
    parser.add_argument("--tsv", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    import os

    work = args.work.absolute()
    work.mkdir(parents=True, exist_ok=True)
    sizes = sorted(set(args.sizes))
    if busy := _busy():
        print("warning: running beside " + ", ".join(busy) + ": wall times are inflated",
              file=sys.stderr)
    mode = "memory" if args.in_memory else "files"
    if mode == "files":
        tic = time.monotonic()
        _write_summaries(work, sizes[-1], args.n_components)
        print(f"{sizes[-1]} summaries ready in {work} ({time.monotonic() - tic:.0f} s)",
              file=sys.stderr)
    scales = [] if args.no_learn else [str(s) for s in args.n_parcels]
    rows = []
    for n in sizes:
        load = os.getloadavg()[0]
        row = _measure([mode, str(n), str(args.n_components), str(work), *scales])
        row["load1"] = round(load, 2)
        row["reduce_s_per_participant"] = row["reduce_s"] / n
        rows.append(row)
        print(json.dumps(row), file=sys.stderr)

    print(f"\n{sizes[-1]} simulated summaries ({mode}), {rows[0]['n_voxels']} group-mask "
          f"voxels x K = {args.n_components}; Ward at {' '.join(scales) or '-'} on the "
          "merged features\n")
    print("| N | headers + mask (s) | reduce (s) | reduce per participant (s) | Ward (s) "
          "| ARI | peak RSS after reduce (MB) | peak RSS, Ward included (MB) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['n']} | {r['headers_s'] + r['group_mask_s']:.1f} | {r['reduce_s']:.1f} "
              f"| {r['reduce_s_per_participant']:.3f} | {r.get('learn_s', float('nan')):.1f} "
              f"| {r.get('ari', float('nan')):.3f} | {r['rss_reduce_mb']:.0f} "
              f"| {r.get('rss_learn_mb', float('nan')):.0f} |")
    a, b, r2 = _fit(rows)
    peak = max(r.get("rss_learn_mb", r["rss_reduce_mb"]) for r in rows)
    print(f"\n- reduce time = {a:.2f} s + {b:.3f} s x N (least squares, R^2 = {r2:.4f})")
    print(f"- per participant at N = {rows[0]['n']}: {rows[0]['reduce_s_per_participant']:.3f} s,"
          f" at N = {rows[-1]['n']}: {rows[-1]['reduce_s_per_participant']:.3f} s")
    print(f"- peak RSS at N = {rows[-1]['n']}: {rows[-1]['rss_reduce_mb']:.0f} MB after the "
          f"reduce, {peak:.0f} MB at most over the runs "
          f"({'below' if peak < 1024 else 'ABOVE'} 1 GB)")
    if args.tsv:
        args.tsv.parent.mkdir(parents=True, exist_ok=True)
        with args.tsv.open("w", newline="") as f:
            writer = csv.DictWriter(f, COLUMNS, delimiter="\t", extrasaction="ignore",
                                    lineterminator="\n")
            writer.writeheader()
            for r in rows:
                writer.writerow({c: (f"{r[c]:.4f}" if isinstance(r.get(c), float) else
                                     r.get(c, "n/a")) for c in COLUMNS})
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_child":
        _child(sys.argv[2:])
    else:
        main()
