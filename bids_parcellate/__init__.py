"""bids_parcellate: data-driven brain parcellations from fMRIPrep derivatives (a BIDS-App)."""

from pathlib import Path

__version__ = "0.1.0"
__all__ = ["__version__", "pybids_config"]


def pybids_config() -> Path:
    """Path of the pybids configuration that reads bids_parcellate's outputs right.

    It adds to pybids' ``bids`` and ``derivatives`` configurations the entities they
    lack: ``template`` (``tpl-``), ``scale``, ``stat``, ``meas``, and ``level``
    (``group`` for the ``group_*`` files at the root, so that their sidecars are not
    inherited by the participants' files). See ``docs/outputs.md``, "Reading the outputs
    with pybids"::

        from bids import BIDSLayout
        import bids_parcellate
        layout = BIDSLayout(out, validate=False,
                            config=["bids", "derivatives", bids_parcellate.pybids_config()])

    Parameters
    ----------
    None

    Returns
    -------
    Path
        ``bids_parcellate/data/pybids_config.json`` in the installed package.
    """
    return Path(__file__).resolve().parent / "data" / "pybids_config.json"
