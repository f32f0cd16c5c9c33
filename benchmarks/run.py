"""Participant-level speed and memory against nilearn's ``Parcellations``, side by side.

One command generates the data (the demo generator at 4 mm and 2 mm, one run each),
then runs whole processes in alternation, several times:

* ``read``:    nibabel ``get_fdata(dtype=float32)`` of the BOLD (the bare
  read + decompress time of the same file: the floor for anything that reads it);
* ``nilearn``: ``benchmarks/nilearn_parcellations.py`` (``Parcellations`` fit +
  ``transform``, same smoothing, standardisation, confounds and scale);
* ``ours``:    ``bids_parcellate BIDS OUT participant`` on the same files.

Wall time and peak RSS come from ``os.wait4`` on each child; the RSS is the larger of
its ``ru_maxrss`` and the summed RSS of its process tree sampled every 10 ms (our
participant level runs a helper process beside the main one). Medians are reported with
their ratios, together with the ARI of each parcellation to the generator's ground
truth. Also measured: 5 scales (100 200 400 700 1000) against 1 scale, and kmeans,
hierarchical_kmeans and rena against nilearn's.

Usage::

    python benchmarks/run.py            # 4 mm and 2 mm, 3 repetitions (about an hour on
                                        # a busy 2-core machine)
    python benchmarks/run.py --quick    # 4 mm, ward only, 2 repetitions (a few minutes)
    python benchmarks/run.py --profile  # py-spy profiles of our CLI (pip install py-spy)

See benchmarks/README.md for the machine, the results and the profiles.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SPACE = "space-MNI152NLin2009cAsym"
#: resolution (mm) -> demo generator arguments (sizes of the issue: 29k voxels x 168
#: volumes at 4 mm, 235k x 200 at 2 mm); 1000 true parcels so that the ARI at scale 1000
#: measures the recovery of parcels of the size being learned
DATASETS = {
    4: {"resolution": 4, "n_volumes": 168, "n_true_parcels": 1000},
    2: {"resolution": 2, "n_volumes": 200, "n_true_parcels": 1000},
}
SCALES5 = (100, 200, 400, 700, 1000)
OTHER_METHODS = ("kmeans", "hierarchical_kmeans", "rena")


# --------------------------------------------------------------------------- data
def dataset(work: Path, res: int) -> Path:
    """Generate (once) the demo dataset at ``res`` mm; return its root."""
    root = work / f"data-{res}mm"
    stamp = root / "sourcedata" / "ground_truth" / "demo_parameters.json"
    if not stamp.is_file():
        from bids_parcellate.demo import make_demo_dataset

        shutil.rmtree(root, ignore_errors=True)
        print(f"generating the {res} mm dataset in {root} ...", flush=True)
        make_demo_dataset(root, participants=("01",), runs=(1,), seed=0, **DATASETS[res])
    return root


def run_files(root: Path) -> dict[str, Path]:
    func = root / "derivatives" / "fmriprep" / "sub-01" / "func"
    prefix = f"sub-01_task-rest_run-1_{SPACE}"
    return {
        "bold": func / f"{prefix}_desc-preproc_bold.nii.gz",
        "mask": func / f"{prefix}_desc-brain_mask.nii.gz",
        "truth": root / "sourcedata" / "ground_truth"
        / f"sub-01_{SPACE}_desc-truth_dseg.nii.gz",
    }


# --------------------------------------------------------------------------- processes
#: Runs the measured command from a process that holds almost nothing: Linux keeps
#: ``ru_maxrss`` across ``exec``, so a child forked from this runner (which has imported
#: numpy, scikit-learn and, when it generated the data, held a 2 mm BOLD) would report at
#: least the runner's own peak. The launcher forks from ~10 MB and reports the child's
#: rusage as one JSON line on stderr. ``ru_maxrss`` is the peak of the largest process of
#: the tree, not of their sum (our participant level runs a helper process beside the
#: main one with ``--nprocs`` >= 2): the launcher also samples the summed RSS of the
#: child and all its descendants every 10 ms and reports the larger of the two peaks.
LAUNCHER = """
import json, os, sys, time
start = time.monotonic()
pid = os.fork()
if pid == 0:
    os.execvp(sys.argv[1], sys.argv[1:])
page = os.sysconf("SC_PAGE_SIZE")

def tree_rss(root):
    pids, total = [root], 0
    for p in pids:
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    pids += [int(c) for c in f.read().split()]
            with open(f"/proc/{p}/statm") as f:
                total += int(f.read().split()[1]) * page
        except (OSError, ValueError):
            pass
    return total

summed = 0
while True:
    done, status, usage = os.wait4(pid, os.WNOHANG)
    if done:
        break
    summed = max(summed, tree_rss(pid))
    time.sleep(0.01)
wall = time.monotonic() - start
sys.stderr.write("\\n" + json.dumps({"wall_s": wall,
                 "rss_gb": max(usage.ru_maxrss * 1024, summed) / 2**30,
                 "rss_largest_gb": usage.ru_maxrss / 2**20, "rss_sum_gb": summed / 2**30,
                 "cpu_s": usage.ru_utime + usage.ru_stime,
                 "code": os.waitstatus_to_exitcode(status)}) + "\\n")
sys.exit(0)
"""


def measure(cmd: list[str], log: Path) -> dict:
    """Run ``cmd`` as a child process; wall time (s), peak RSS (GB), CPU (s), stdout."""
    with open(log, "w") as err:
        proc = subprocess.run([sys.executable, "-S", "-c", LAUNCHER, *map(str, cmd)],
                              stdout=subprocess.PIPE, stderr=err, text=True, check=True)
    usage = json.loads(log.read_text().strip().splitlines()[-1])
    if usage.pop("code") != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))} failed; see {log}")
    return {**usage, "stdout": proc.stdout}


READ_SCRIPT = """
import json, sys, time
t = time.monotonic()
import nibabel as nib, numpy as np
if sys.argv[2] == "isal":  # the same read with ISA-L decompression, as bids_parcellate does
    from isal import igzip
    stream = igzip.open(sys.argv[1], "rb")
    img = nib.Nifti1Image.from_file_map({"image": nib.FileHolder(sys.argv[1], stream)})
else:
    img = nib.load(sys.argv[1])
t0 = time.monotonic()
data = img.get_fdata(dtype=np.float32)
print(json.dumps({"read_s": time.monotonic() - t0, "total_s": time.monotonic() - t}))
"""


def read_cmd(files: dict, how: str = "nibabel") -> list[str]:
    return [sys.executable, "-c", READ_SCRIPT, str(files["bold"]), how]


def nilearn_cmd(files: dict, method: str, scale: int, out: Path) -> list[str]:
    return [sys.executable, str(HERE / "nilearn_parcellations.py"), str(files["bold"]),
            str(files["mask"]), str(out), "--method", method, "--n-parcels", str(scale)]


def ours_cmd(root: Path, out: Path, work: Path, method: str, scales, nprocs: int,
             quality: bool = False) -> list:
    """Our participant level; without the quality figures unless ``quality`` (nilearn
    computes none), with the HTML report and every other output. ``-w`` gives each run
    its own pybids database; ``--no-cache`` keeps what the default (no ``-w``) does:
    nothing stored for a later invocation."""
    return [sys.executable, "-m", "bids_parcellate", str(root), str(out), "participant",
            "--method", method, "--n-parcels", *map(str, scales), "--nprocs", str(nprocs),
            "-w", str(work), "--no-cache", *([] if quality else ["--no-quality"])]


def has_isal() -> bool:
    import importlib.util

    return importlib.util.find_spec("isal") is not None


def our_dseg(out: Path, method: str, scale: int) -> Path:
    seg = method.replace("_", "")
    return out / "sub-01" / "anat" / f"sub-01_{SPACE}_seg-{seg}_scale-{scale}_dseg.nii.gz"


def ari(labels_path: Path, truth_path: Path) -> float:
    import nibabel as nib
    import numpy as np
    from sklearn.metrics import adjusted_rand_score

    truth = np.asarray(nib.load(truth_path).dataobj)
    found = np.asarray(nib.load(labels_path).dataobj)
    inside = truth > 0
    return float(adjusted_rand_score(truth[inside], found[inside]))


# --------------------------------------------------------------------------- cases
class Case:
    """One measured command, run ``repeats`` times in alternation with the others."""

    def __init__(self, name: str, make_cmd, labels: Path | None = None,
                 truth: Path | None = None, clean: tuple[Path, ...] = ()):
        self.name, self.make_cmd, self.labels, self.truth, self.clean = (
            name, make_cmd, labels, truth, clean)
        self.runs: list[dict] = []
        self.ari: float | None = None

    def run(self, logs: Path) -> None:
        for path in self.clean:  # outputs and pybids database: every run starts afresh
            shutil.rmtree(path, ignore_errors=True)
        result = measure(self.make_cmd(), logs / f"{self.name}-{len(self.runs)}.log")
        if self.name.startswith("read"):
            result["read_s"] = json.loads(result["stdout"])["read_s"]
        self.runs.append(result)
        if self.labels is not None and self.ari is None:
            self.ari = ari(self.labels, self.truth)

    def median(self, key: str) -> float:
        return statistics.median(r[key] for r in self.runs)


def build_cases(work: Path, resolutions, method_resolutions, nprocs: int) -> list[Case]:
    cases = []
    for res in resolutions:
        root = dataset(work, res)
        files = run_files(root)
        out = work / "out"
        cases.append(Case(f"read-{res}mm", lambda f=files: read_cmd(f)))
        if has_isal():
            cases.append(Case(f"read_isal-{res}mm", lambda f=files: read_cmd(f, "isal")))
        targets = [("ward", (1000,))]
        if res in method_resolutions:
            targets += [(m, (1000,)) for m in OTHER_METHODS]
        for method, scales in targets:
            tag = f"{method}-{res}mm"
            nl_labels = out / f"nilearn-{tag}.nii.gz"
            cases.append(Case(f"nilearn-{tag}",
                              lambda f=files, m=method, o=nl_labels: nilearn_cmd(f, m, 1000, o),
                              nl_labels, files["truth"]))
            ours_out, ours_work = out / f"ours-{tag}", work / f"work-{tag}"
            cases.append(Case(
                f"ours-{tag}",
                lambda r=root, o=ours_out, w=ours_work, m=method, s=scales: ours_cmd(
                    r, o, w, m, s, nprocs),
                our_dseg(ours_out, method, 1000), files["truth"],
                clean=(ours_out, ours_work)))
        five, five_work = out / f"ours-ward5-{res}mm", work / f"work-ward5-{res}mm"
        cases.append(Case(f"ours-ward5-{res}mm",
                          lambda r=root, o=five, w=five_work: ours_cmd(r, o, w, "ward",
                                                                       SCALES5, nprocs),
                          our_dseg(five, "ward", 1000), files["truth"],
                          clean=(five, five_work)))
        default, default_work = out / f"ours-ward-quality-{res}mm", work / f"work-wq-{res}mm"
        cases.append(Case(f"ours-ward-quality-{res}mm",
                          lambda r=root, o=default, w=default_work: ours_cmd(
                              r, o, w, "ward", (1000,), nprocs, quality=True),
                          clean=(default, default_work)))
    return cases


# --------------------------------------------------------------------------- report
def machine() -> str:
    cpu = platform.processor() or "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f", {kb / 2**20:.0f} GB RAM"
    except (OSError, ValueError, IndexError):
        pass
    import nilearn
    import numpy
    import sklearn

    return (f"{os.cpu_count()} CPUs ({cpu}){mem}, {platform.system()} {platform.release()}, "
            f"Python {platform.python_version()}, numpy {numpy.__version__}, scikit-learn "
            f"{sklearn.__version__}, nilearn {nilearn.__version__}")


def report(cases: list[Case], resolutions, method_resolutions) -> str:
    by = {c.name: c for c in cases}
    lines = []

    def fmt(c: Case) -> str:
        ari_text = f"{c.ari:.4f}" if c.ari is not None else "-"
        return (f"{c.median('wall_s'):8.1f} s {c.median('rss_gb'):6.2f} GB "
                f"cpu {c.median('cpu_s'):7.1f} s  ARI {ari_text}")

    lines.append(f"repetitions: {len(cases[0].runs)} (medians)")
    for name, c in by.items():
        lines.append(f"  {name:34s} {fmt(c)}")
    lines.append("")
    lines.append("| data | method | nilearn wall / RSS | ours wall / RSS | speed-up | RSS ratio "
                 "| ours / bare read | ARI nilearn / ours |")
    lines.append("|---|---|---|---|---|---|---|---|")
    for res in resolutions:
        read = by[f"read-{res}mm"].median("read_s")
        for method in ("ward", *(OTHER_METHODS if res in method_resolutions else ())):
            nl, us = by[f"nilearn-{method}-{res}mm"], by[f"ours-{method}-{res}mm"]
            lines.append(
                f"| {res} mm | {method} 1000 | {nl.median('wall_s'):.1f} s / "
                f"{nl.median('rss_gb'):.2f} GB | {us.median('wall_s'):.1f} s / "
                f"{us.median('rss_gb'):.2f} GB | {nl.median('wall_s') / us.median('wall_s'):.1f}x "
                f"| {us.median('rss_gb') / nl.median('rss_gb'):.2f} "
                f"| {us.median('wall_s') / read:.1f}x | {nl.ari:.4f} / {us.ari:.4f} |")
    lines.append("")
    for res in resolutions:
        one, five = by[f"ours-ward-{res}mm"], by[f"ours-ward5-{res}mm"]
        read = by[f"read-{res}mm"].median("read_s")
        isal = by.get(f"read_isal-{res}mm")
        isal_text = (f" (with ISA-L {isal.median('read_s'):.2f} s: ours / that = "
                     f"{one.median('wall_s') / isal.median('read_s'):.1f}x)" if isal else "")
        with_quality = by[f"ours-ward-quality-{res}mm"]
        lines.append(f"{res} mm: bare read {read:.2f} s{isal_text}; ward 5 scales / 1 scale = "
                     f"{five.median('wall_s'):.1f} / {one.median('wall_s'):.1f} s = "
                     f"{five.median('wall_s') / one.median('wall_s'):.2f}; with the quality "
                     f"figures (default) {with_quality.median('wall_s'):.1f} s, "
                     f"{with_quality.median('rss_gb'):.2f} GB")
    return "\n".join(lines)


# --------------------------------------------------------------------------- profile
def profile(work: Path, resolutions, nprocs: int) -> None:
    """py-spy profile of our CLI (ward, 1000) at each resolution; prints the top frames."""
    exe = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(exe).exists() and not shutil.which("py-spy"):
        sys.exit("--profile needs py-spy (pip install py-spy)")
    for res in resolutions:
        root = dataset(work, res)
        out = work / "out" / f"profile-{res}mm"
        shutil.rmtree(out, ignore_errors=True)
        shutil.rmtree(work / "work-profile", ignore_errors=True)
        speedscope = work / f"profile-{res}mm.speedscope.json"
        subprocess.run([exe, "record", "-r", "50", "-f", "speedscope", "-o", str(speedscope),
                        "--", *ours_cmd(root, out, work / "work-profile", "ward", (1000,),
                                        nprocs)],
                       check=True, capture_output=True)
        print(f"## {res} mm: {speedscope} (open in https://www.speedscope.app)")
        print(summarise_speedscope(speedscope))


def summarise_speedscope(path: Path, top: int = 15) -> str:
    """Per thread: inclusive share of bids_parcellate's functions, and the leaf functions
    (any package) where the samples land."""
    data = json.loads(path.read_text())
    frames = data["shared"]["frames"]

    def name(index: int) -> str:
        frame = frames[index]
        module = Path(frame.get("file", "")).stem
        return f"{module}.{frame['name']}"

    lines = []
    for prof in data["profiles"]:
        total = sum(prof["weights"])
        if total < 0.05 * sum(sum(p["weights"]) for p in data["profiles"]):
            continue  # short-lived helper threads
        inclusive: dict[str, float] = {}
        leaves: dict[str, float] = {}
        for stack, weight in zip(prof["samples"], prof["weights"], strict=True):
            if not stack:
                continue
            ours = {name(i) for i in stack if "bids_parcellate" in frames[i].get("file", "")}
            for key in ours:
                inclusive[key] = inclusive.get(key, 0.0) + weight
            leaf = name(stack[-1])
            leaves[leaf] = leaves.get(leaf, 0.0) + weight
        lines.append(f"thread {prof['name']}: {total:.1f} s sampled")
        for key, value in sorted(inclusive.items(), key=lambda kv: -kv[1])[:top]:
            lines.append(f"  {100 * value / total:5.1f}%  {key}")
        lines.append("  leaf functions:")
        for key, value in sorted(leaves.items(), key=lambda kv: -kv[1])[:8]:
            lines.append(f"  {100 * value / total:5.1f}%  {key}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="4 mm only, 2 repetitions, no other methods")
    parser.add_argument("--repeats", type=int, default=None, help="repetitions (default 3)")
    parser.add_argument("--resolutions", type=int, nargs="+", choices=sorted(DATASETS),
                        default=None, help="resolutions in mm (default 4 2)")
    parser.add_argument("--method-resolutions", type=int, nargs="*", default=None,
                        help="resolutions at which kmeans, hierarchical_kmeans and rena are "
                             "compared too (default 4; nilearn's k-means takes minutes at "
                             "2 mm; none with --quick)")
    parser.add_argument("--nprocs", type=int, default=os.cpu_count(),
                        help="--nprocs given to bids_parcellate (default: all CPUs, as "
                             "nilearn's BLAS uses)")
    parser.add_argument("--work", type=Path, default=Path("benchmark_work"),
                        help="data, outputs and logs (default ./benchmark_work)")
    parser.add_argument("--profile", action="store_true",
                        help="profile our CLI with py-spy instead of benchmarking")
    args = parser.parse_args()
    resolutions = args.resolutions or ([4] if args.quick else [4, 2])
    repeats = args.repeats or (2 if args.quick else 3)
    if args.method_resolutions is None:
        args.method_resolutions = [] if args.quick else [4]
    method_resolutions = [r for r in args.method_resolutions if r in resolutions]
    work = args.work.resolve()
    (work / "logs").mkdir(parents=True, exist_ok=True)
    (work / "out").mkdir(exist_ok=True)
    if args.profile:
        profile(work, resolutions, args.nprocs)
        return
    cases = build_cases(work, resolutions, method_resolutions, args.nprocs)
    print(f"machine: {machine()}")
    print(f"load average before: {os.getloadavg()}", flush=True)
    for rep in range(repeats):
        for case in cases:
            case.run(work / "logs")
            print(f"[{rep + 1}/{repeats}] {case.name:34s} {case.runs[-1]['wall_s']:7.1f} s "
                  f"{case.runs[-1]['rss_gb']:5.2f} GB", flush=True)
    print(f"load average after: {os.getloadavg()}\n")
    text = report(cases, resolutions, method_resolutions)
    print(text)
    results = {
        "machine": machine(),
        "cases": {c.name: {"runs": [{k: v for k, v in r.items() if k != "stdout"}
                                    for r in c.runs], "ari": c.ari} for c in cases},
    }
    (work / "results.json").write_text(json.dumps(results, indent=1))
    (work / "results.md").write_text(text + "\n")
    print(f"\nwritten: {work / 'results.md'}, {work / 'results.json'}")


if __name__ == "__main__":
    main()
