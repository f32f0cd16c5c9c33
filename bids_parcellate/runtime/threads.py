"""Thread limits: BLAS and OpenMP pools capped at ``--nprocs`` (containers report the
host's CPU count, not the job's share)."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager

#: Variables read by BLAS and OpenMP runtimes when they load (and by child processes).
LOGGER = logging.getLogger("bids_parcellate")

THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                    "BLIS_NUM_THREADS", "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")


@contextmanager
def limit_threads(nprocs: int) -> Iterator[None]:
    """Cap BLAS and OpenMP threads at ``nprocs`` (``--nprocs``) for the duration.

    Sets :data:`THREAD_VARIABLES` (read by libraries loaded later and by child
    processes) and limits the native libraries already loaded with threadpoolctl (the
    variables have no effect on those). numpy's and scipy's BLAS are loaded here;
    scikit-learn's OpenMP runtime is not (importing scikit-learn takes 1-2 s, which the
    participant level leaves to its helper process
    (:mod:`bids_parcellate.runtime.helper_process`), or
    overlaps with the first BOLD read): when it loads later it reads
    ``OMP_NUM_THREADS``. Everything is restored on exit, libraries loaded meanwhile
    included, so in-process callers (tests) see no global change. Containers rely on
    this: they report the host's CPU count, not the job's share.

    Parameters
    ----------
    nprocs : int
        Maximum number of threads of each BLAS / OpenMP pool.
    """
    from threadpoolctl import ThreadpoolController, threadpool_limits

    loaded = {lib.filepath for lib in ThreadpoolController().lib_controllers}
    with thread_variables(nprocs) as saved:
        import numpy  # noqa: F401  (loads numpy's OpenBLAS)
        import scipy.linalg  # noqa: F401  (loads scipy's OpenBLAS)

        try:
            with threadpool_limits(limits=nprocs):
                LOGGER.debug("BLAS/OpenMP threads capped at %d", nprocs)
                yield
        finally:
            for lib in ThreadpoolController().lib_controllers:
                if lib.filepath not in loaded:  # loaded under our variables: undo them
                    lib.set_num_threads(_default_threads(lib.user_api, saved))


@contextmanager
def thread_variables(threads: int) -> Iterator[dict[str, str | None]]:
    """Set :data:`THREAD_VARIABLES` to ``threads`` for the duration (read by native
    libraries loaded meanwhile and by child processes started meanwhile); yields their
    previous values, which are restored on exit."""
    saved = {name: os.environ.get(name) for name in THREAD_VARIABLES}
    os.environ.update({name: str(threads) for name in THREAD_VARIABLES})
    try:
        yield saved
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _default_threads(user_api: str, environ: dict[str, str | None]) -> int:
    """Threads a BLAS / OpenMP library takes by itself under the environment ``environ``."""
    names = (["OMP_NUM_THREADS"] if user_api == "openmp"
             else ["OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS",
                   "OMP_NUM_THREADS"])
    for name in names:
        value = environ.get(name)
        if value and value.split(",")[0].strip().isdigit():
            return max(1, int(value.split(",")[0]))
    return os.cpu_count() or 1
