"""A helper process that imports nilearn while this one starts, then loads confounds.

Loading a run's confounds needs ``nilearn.interfaces.fmriprep`` and building its cleaning
operator needs ``nilearn.signal``; both import scikit-learn, scipy.stats and pandas:
1.2-1.4 s of pure Python on the 2-core reference machine. A thread cannot hide it (it
holds the GIL), and on a 4 mm run it lasts three times as long as reading the BOLD.

With ``--nprocs`` of 2 or more, a command line that starts a fresh participant level
(nilearn not imported yet) starts this helper first: it imports nilearn on another core
while this process imports pybids, indexes the dataset and reads the first BOLD, and it
then computes each run's confounds, sample mask and cleaning operator
(:func:`bids_parcellate.denoise.denoising_plan`) and the quality figures' scikit-learn
scores (:func:`bids_parcellate.quality.agreement`): the same code as in-process, BLAS
single-threaded in both, so the results are identical (tested byte for byte). Warnings
and log records raised there are replayed here, exceptions raised again. This process
then never imports scikit-learn on the default path. Without the helper (``--nprocs 1``, units in
worker processes, nilearn already imported, or a helper that could not start or died)
the same function runs in this process.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import sys
import warnings
from collections.abc import Callable

from bids_parcellate.runtime.threads import thread_variables

LOGGER = logging.getLogger("bids_parcellate")

_helper: Helper | None = None
_owner: int | None = None  # the process that started it (not a forked copy of it)


class HelperGone(Exception):
    """The helper process died or could not be reached; run the call in-process."""


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        record.msg, record.args, record.exc_info = record.getMessage(), None, None
        self.records.append(record)


def _serve(conn) -> None:
    """The helper's loop: ``(function, args)`` in; out ``(value, traceback, warnings,
    log records)``, where value is the exception raised when traceback is not None."""
    try:
        import nilearn.interfaces.fmriprep  # noqa: F401  (the point of this process)
        import nilearn.signal  # noqa: F401
    except Exception:  # noqa: S110 - the calls raise it again, and it is sent back
        pass

    records = _Records()
    LOGGER.addHandler(records)
    LOGGER.setLevel(logging.DEBUG)
    LOGGER.propagate = False
    while True:
        try:
            request = conn.recv()
        except EOFError:  # the main process closed its end (or exited)
            return
        function, args = request
        records.records = []
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("default")
            try:
                value, remote = function(*args), None
            except Exception as exc:  # sent back, raised again by the caller
                value, remote = _portable(exc)
        raised = [(str(w.message), w.category) for w in caught]
        try:
            conn.send((value, remote, raised, records.records))
        except Exception as exc:  # an unpicklable result: report it rather than hang
            conn.send((HelperGone(f"cannot return the result: {exc}"), "", [], []))


class RemoteTraceback(Exception):
    """The traceback of an exception raised in the helper (its ``__cause__``, shown
    with ``-v``)."""

    def __str__(self) -> str:
        return "\n" + self.args[0]


def _portable(exc: Exception) -> tuple[Exception, str]:
    """``exc`` as it can cross the pipe (the same exception, as our RunError and
    SkipRun, or a RuntimeError with its text when it does not unpickle) and its
    traceback."""
    import pickle
    import traceback

    text = "".join(traceback.format_exception(exc))
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:
        exc = RuntimeError(f"{type(exc).__name__}: {exc}")
    return exc, text


class Helper:
    """One helper process (spawned: no copy of this process's memory or threads)."""

    def __init__(self) -> None:
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        self.process = context.Process(target=_serve, args=(child,), daemon=True,
                                       name="bids_parcellate-helper")
        # single-threaded native libraries from the start, as the main process runs
        # BLAS in a unit (run_unit): the same operations give the same bits
        try:
            with thread_variables(1):
                self.process.start()
        finally:
            child.close()
        self._pending = False

    def submit(self, function: Callable, *args) -> None:
        """Send ``function(*args)`` (one call at a time); :meth:`result` returns it."""
        try:
            if self._pending:  # the caller gave up on its last call (an error of its own)
                self._conn.recv()
            self._conn.send((function, args))
        except (EOFError, OSError) as exc:
            raise HelperGone(str(exc)) from exc
        self._pending = True

    def result(self):
        """The result of the call sent by :meth:`submit` (its exception is raised here,
        with the helper's traceback as its cause)."""
        self._pending = False
        try:
            value, remote, raised, records = self._conn.recv()
        except (EOFError, OSError) as exc:
            raise HelperGone(f"helper process ended (exit code {self.process.exitcode})"
                             ) from exc
        for message, category in raised:
            warnings.warn(message, category, stacklevel=2)
        for record in records:
            if LOGGER.isEnabledFor(record.levelno):
                LOGGER.handle(record)
        if remote is not None:
            raise value from RemoteTraceback(remote)
        return value

    def stop(self) -> None:
        """Close the pipe and end the process (terminated if still alive; a call under
        way is abandoned)."""
        self._conn.close()
        if self.process.is_alive():
            self.process.terminate()
        self.process.join(timeout=5)


def start(force: bool = False) -> None:
    """Start the helper, unless one runs or (unless ``force``) scikit-learn, and so
    nilearn's modules that need it, are imported here already."""
    global _helper, _owner
    if _helper is not None or ("sklearn" in sys.modules and not force):
        return
    try:
        _helper, _owner = Helper(), os.getpid()
        LOGGER.debug("helper process %d imports nilearn", _helper.process.pid)
    except Exception as exc:  # process limits, ...
        LOGGER.debug("no helper process (%s): confounds are loaded in-process", exc)


def stop() -> None:
    """Stop the helper (at once; a call under way is abandoned)."""
    global _helper
    if _helper is not None and _owner == os.getpid():
        _helper.stop()
    _helper = None


def running() -> bool:
    """Whether this process has a helper."""
    return _helper is not None and _owner == os.getpid()


def call(function: Callable, *args) -> Callable[[], object]:
    """Start ``function(*args)`` in the helper; return a function that waits for its
    result. Without a usable helper the call runs in-process when its result is asked
    for."""
    helper = _helper
    if running():
        try:
            helper.submit(function, *args)
        except HelperGone as exc:
            LOGGER.warning("helper process failed (%s); continuing without it", exc)
            stop()
        else:
            def wait():
                try:
                    return helper.result()
                except HelperGone as exc:
                    LOGGER.warning("helper process failed (%s); continuing without it", exc)
                    stop()
                    return function(*args)
            return wait
    return lambda: function(*args)
