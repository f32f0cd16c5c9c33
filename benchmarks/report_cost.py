"""Cost of the reports relative to the participant's processing (issue 4 target: <= 20 %).

Runs the participant level on the real 4 mm studyforrest run (156 volumes) several
times, each in a fresh process (so the plotting libraries' import is counted, as in real
use), and reads the stage timings of each run from its report record:

- processing: denoise + features + parcellate + extract + write;
- report: figures (including importing matplotlib) + record, plus the assembly of
  ``sub-<label>.html`` and ``logs/CITATION.*`` (from the run's log).

Usage: ``python benchmarks/report_cost.py [--repeats 3] [--data PATH] [--n-parcels ...]``.
Prints one line per repeat and the median ratio. Wall-clock figures depend on the load
of the machine; the load average is printed with them.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "studyforrest"
PROCESSING = ("denoise", "features", "parcellate", "extract", "write")
REPORT = ("report_figures", "report_record")

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--n-parcels", nargs="+", default=["100", "200", "400"])
    args = parser.parse_args()
    ratios = []
    for repeat in range(args.repeats):
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "out"
            start = time.perf_counter()
            proc = subprocess.run(
                [sys.executable, "-m", "bids_parcellate", str(args.data), str(out),
                 "participant", "--n-parcels", *args.n_parcels],
                check=True, capture_output=True, text=True)
            wall = time.perf_counter() - start
            record = json.loads(next(out.glob("sub-*/figures/*_report.json")).read_text())
            timings = record["timings"]
            assemble = float(re.search(r"CITATION\.\* assembled in ([0-9.]+) s",
                                       proc.stderr).group(1))
        processing = sum(timings[k] for k in PROCESSING)
        report = sum(timings[k] for k in REPORT) + assemble
        ratios.append(report / processing)
        print(f"repeat {repeat + 1}: processing {processing:.2f} s "
              f"({', '.join(f'{k} {timings[k]:.2f}' for k in PROCESSING)}); report "
              f"{report:.2f} s (figures {timings['report_figures']:.2f}, record "
              f"{timings['report_record']:.2f}, assembly {assemble:.2f}) = "
              f"{100 * report / processing:.1f} % | whole invocation {wall:.1f} s | "
              f"load {os.getloadavg()[0]:.1f}", flush=True)
    print(f"median report cost: {100 * statistics.median(ratios):.1f} % of processing "
          f"(target <= 20 %)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
