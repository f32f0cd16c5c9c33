"""Running a command line: logging, exit codes, signals, and the levels in order.

Turns the parsed arguments (:mod:`bids_parcellate.cli.parser`) into a
:class:`~bids_parcellate.config.Config`, sets up logging (stderr, plus a log file under
``OUTPUT_DIR/logs/`` once the inputs are known to be usable) and runs the requested
analysis levels.

Exit codes: 0 success; 1 bad input (a missing or unusable file or folder) or some
participants failed; 2 usage error (argparse's own, and every
:class:`~bids_parcellate.config.ConfigError`: an invalid option value or combination);
3 internal error (a bug: rerun with ``-v`` for the traceback and report it);
130 interrupted (Ctrl-C); 143 terminated by SIGTERM (rerun the command to resume).
"""

from __future__ import annotations

import gc
import logging
import logging.handlers
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

from bids_parcellate import __version__
from bids_parcellate.cli import demo
from bids_parcellate.cli.parser import PROG, build_parser, config_from_args
from bids_parcellate.config import Config, ConfigError, UserError
from bids_parcellate.runtime.threads import limit_threads
from bids_parcellate.words import plural

LOGGER = logging.getLogger("bids_parcellate")


# --------------------------------------------------------------------------- logging
def setup_logging(verbosity: int) -> logging.handlers.MemoryHandler:
    """Log to stderr; buffer records until the log file exists (see :func:`attach_log_file`)."""
    level = logging.DEBUG if verbosity else logging.INFO
    LOGGER.setLevel(logging.DEBUG)
    for handler in list(LOGGER.handlers):
        LOGGER.removeHandler(handler)
    stream = logging.StreamHandler(sys.stderr)
    stream.setLevel(level)
    stream.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(message)s",
                                          "%H:%M:%S"))
    LOGGER.addHandler(stream)
    memory = logging.handlers.MemoryHandler(capacity=100000, flushLevel=logging.CRITICAL + 1)
    memory.setLevel(logging.DEBUG)
    LOGGER.addHandler(memory)
    LOGGER.propagate = False
    if verbosity < 2:
        for name in ("bids", "nilearn", "py.warnings"):
            logging.getLogger(name).setLevel(logging.ERROR)
    logging.captureWarnings(True)
    return memory


def attach_log_file(memory: logging.handlers.MemoryHandler, output_dir: Path,
                    levels: tuple[str, ...]) -> Path:
    """Open ``OUTPUT_DIR/logs/<level>-<time>-<host>-<pid>.log``; replay buffered records.

    Parameters
    ----------
    memory : logging.handlers.MemoryHandler
        From :func:`setup_logging`: flushed to the file, then replaced by it.
    output_dir : Path
    levels : tuple of str
        The analysis levels, named in the file name.

    Returns
    -------
    Path
        The log file.

    Raises
    ------
    UserError
        When the file cannot be created.
    """
    from bids_parcellate.derivatives.naming import log_path

    path = log_path(output_dir, levels, time.strftime("%Y%m%d-%H%M%S"))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(path, encoding="utf-8")
    except OSError as exc:
        raise UserError(f"{path.parent}: cannot write the log file ({exc.strerror})") from None
    handler.setLevel(logging.DEBUG)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(message)s"))
    memory.setTarget(handler)
    memory.flush()
    LOGGER.removeHandler(memory)
    LOGGER.addHandler(handler)
    return path


# --------------------------------------------------------------------------- main
def run(config: Config, memory: logging.handlers.MemoryHandler) -> int:
    """Run the analysis levels of ``config``; return the exit code.

    Parameters
    ----------
    config : Config
    memory : logging.handlers.MemoryHandler
        From :func:`setup_logging`: its records go to the log file once the inputs are
        known to be usable (:func:`attach_log_file`).

    Returns
    -------
    int
        0 on success (also for ``--print-slurm``, ``--boilerplate-only`` and
        ``--reports-only``); 1 when a unit failed or skipped a run with a missing input,
        or the group level left out a unit or a run; 3 when a unit failed with an
        internal error.

    Raises
    ------
    ConfigError
        When a denoising option does not apply to the strategy (a usage error).
    UserError
        On unusable inputs (before anything is computed), or when the group level
        cannot run.
    """
    from bids_parcellate import report
    from bids_parcellate.denoise import check_strategy_options
    from bids_parcellate.derivatives.dataset import check_output_dir, write_manifest
    from bids_parcellate.derivatives.markers import plan_units
    from bids_parcellate.inputs.query import collect_runs
    from bids_parcellate.pipeline import run_group_level, run_participant_level
    from bids_parcellate.runtime.resources import check_memory

    check_strategy_options(config)  # ConfigError: a usage error
    if config.reports_only:
        log_path = attach_log_file(memory, _existing_output_dir(config),
                                   config.analysis_levels)
        LOGGER.debug("log file %s", log_path)
        written = report.reports_only(config)
        LOGGER.info("reports rebuilt from %s: %s", config.output_dir,
                    ", ".join(p.name for p in written))
        return 0
    start = time.monotonic()
    LOGGER.info("%s %s: %s", PROG, __version__, " ".join(config.command_line))
    check_output_dir(config.output_dir)
    with report.UnitLog() as selection_log:
        selection = collect_runs(config)
    units = selection.units()
    LOGGER.info("found %s in %s (%s); %d skipped", plural(len(selection.runs), "run"),
                plural(len(units), "unit"), ", ".join(f"sub-{s}" + (f"_ses-{x}" if x else "")
                                                      for s, x in units),
                len(selection.skipped))
    if config.print_slurm:
        from bids_parcellate.cli.slurm import batch_script
        from bids_parcellate.derivatives.dataset import in_container

        labels = sorted({run.entities["subject"] for run in selection.runs})
        sys.stdout.write(batch_script(config, labels, in_container()))
        return 0
    if config.boilerplate_only:
        written = report.boilerplate_only(config, selection)
        LOGGER.info("methods text written: %s", ", ".join(str(p) for p in written))
        return 0
    participant_level = "participant" in config.analysis_levels
    group_level = "group" in config.analysis_levels
    if group_level:
        from bids_parcellate.group.checks import check_grids, check_tangent

        check_grids(units)  # before anything is written
        check_tangent(config, units)
    plans = None
    unit_gb = None
    if participant_level:
        plans = plan_units(config, selection)
        unit_gb = check_memory(config, {k: r for k, r in units.items()
                                        if plans[k].action != "skip"})
    log_path = attach_log_file(memory, config.output_dir, config.analysis_levels)
    LOGGER.debug("log file %s, config hash %s", log_path, config.config_hash())
    code = 0
    failed_units: set = set()
    try:
        if participant_level:
            results = run_participant_level(config, selection, plans, unit_gb,
                                            selection_warnings=selection_log.messages)
            report.finish_participant_level(config, results)
            failed = [r for r in results if r.error]
            failed_units = {(r.subject, r.session) for r in failed}
            reused = sum(r.reused for r in results)
            LOGGER.info("participant level done in %.1f s: %s succeeded (%d complete from "
                        "an earlier run), %d failed", time.monotonic() - start,
                        plural(len(results) - len(failed), "unit"), reused, len(failed))
            # each reason was logged once, when it happened: here the units' names only
            if failed:
                LOGGER.error("%s failed: %s (see above)", plural(len(failed), "unit"),
                             ", ".join(r.name for r in failed))
            incomplete = [r for r in results if not r.error and r.missing_inputs]
            if incomplete:
                LOGGER.error("%s incomplete: %s (runs skipped for a missing input, see "
                             "above)", plural(len(incomplete), "unit"),
                             ", ".join(r.name for r in incomplete))
            if any(r.error.startswith("internal error") for r in failed):
                code = 3
            elif failed or incomplete:
                code = 1
        if group_level:
            tic = time.monotonic()
            group = run_group_level(config, selection, exclude=failed_units)
            LOGGER.info("group level done in %.1f s: atlas-%s from %s (%s reused, %d "
                        "computed), %s written", time.monotonic() - tic, group.label,
                        plural(len(group.units), "unit"),
                        plural(len(group.reused), "summary", zero="0"),
                        len(group.computed), plural(len(group.files), "file"))
            if group.errors:
                LOGGER.error("group level: %s left out: %s (see above)",
                             plural(len(group.errors), "unit"), ", ".join(group.errors))
            if (group.errors or group.incomplete) and code == 0:
                code = 1
            report.finish_group_level(config, selection, group)
    finally:
        write_manifest(config.output_dir)
    return code


def _existing_output_dir(config: Config) -> Path:
    if not config.output_dir.is_dir():
        raise UserError(f"{config.output_dir}: OUTPUT_DIR does not exist (nothing to "
                        "report on)")
    return config.output_dir


def console_main() -> int:
    """The ``bids_parcellate`` command: :func:`main`, then a quick interpreter exit.

    Every file is written and closed when :func:`main` returns. Python's exit then walks
    every object of every module for the garbage collector (0.35-0.55 s with
    scikit-learn, scipy and pandas imported); freezing them first skips that walk and
    nothing else (atexit handlers, thread joins and module teardown still run).
    """
    code = main()
    gc.freeze()
    return code


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``bids_parcellate`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "--demo":
        demo_run = demo.prepare(argv[1:])
        if isinstance(demo_run, int):
            return demo_run
        return main(demo_run.argv) or demo.score(demo_run)
    parser = build_parser()
    args = parser.parse_args(argv)
    memory = setup_logging(args.verbose)
    temp_work = None
    previous_term = _terminate_on_sigterm()
    try:
        config = config_from_args(args, [PROG, *argv])
        if ("participant" in config.analysis_levels and config.nprocs > 1
                and not (config.print_slurm or config.boilerplate_only or config.reports_only)):
            from bids_parcellate.runtime import helper_process

            helper_process.start()  # imports nilearn on another core while pybids indexes
        if config.work_dir is None:
            temp_work = Path(tempfile.mkdtemp(prefix="bids_parcellate_work_"))
            # a cache in a folder removed at exit would only cost time
            config = _replace_work_dir(config, temp_work, use_cache=False)
        with limit_threads(config.nprocs):
            return run(config, memory)
    except ConfigError as exc:  # an invalid option value: a usage error, as argparse's
        LOGGER.debug("traceback", exc_info=True)
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except UserError as exc:
        LOGGER.debug("traceback", exc_info=True)
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except Terminated:
        print(f"{PROG}: terminated (SIGTERM); rerun the same command to resume",
              file=sys.stderr)
        return 143
    except Exception as exc:  # a bug: one line unless -v
        if args.verbose:
            LOGGER.exception("internal error")
        print(f"{PROG}: internal error: {type(exc).__name__}: {exc} (rerun with -v for the "
              "traceback)", file=sys.stderr)
        return 3
    finally:
        from bids_parcellate.runtime import helper_process

        helper_process.stop()
        if previous_term is not None:
            signal.signal(signal.SIGTERM, previous_term)
        if temp_work is not None:
            shutil.rmtree(temp_work, ignore_errors=True)
        logging.shutdown()


class Terminated(BaseException):
    """Raised on SIGTERM (a scheduler's time limit) so that temporary files are removed."""


def _terminate_on_sigterm():
    """Turn SIGTERM into :class:`Terminated` in the main thread; return the old handler."""
    def handler(signum, frame):
        raise Terminated()

    try:
        return signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread (embedded use): leave signals alone
        return None


def _replace_work_dir(config: Config, work_dir: Path, use_cache: bool) -> Config:
    from dataclasses import replace

    return replace(config, work_dir=work_dir, use_cache=use_cache and config.use_cache)


