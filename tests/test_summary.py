"""Unit tests of bids_parcellate.summary: hashes, files written and read back, and the
features computed from a unit's runs."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from scipy import signal

from bids_parcellate import __version__, summary
from bids_parcellate.config import UserError
from tests import helpers

SPACE = helpers.SPACE


@pytest.fixture
def runs(tmp_path):
    root = helpers.derivative_dataset(tmp_path / "prep")
    return [helpers.make_run(helpers.add_run(root, "01", run=r, shape=(6, 6, 6), seed=r,
                                             mask=helpers.box_mask((6, 6, 6))),
                             run=str(r), res="2")
            for r in (2, 1)]


def config(tmp_path, **kwargs):
    return helpers.make_config(tmp_path, bids_dir=tmp_path / "prep", **kwargs)


# --------------------------------------------------------------------------- hashes
def test_summary_parameters(tmp_path, runs):
    cfg = config(tmp_path, method="kmeans", n_parcels=(5,), smoothing_fwhm=5.0)
    params = summary.summary_parameters(cfg, runs)
    assert params["format"] == summary.FORMAT_VERSION
    assert params["version"] == ".".join(__version__.split(".")[:2])
    assert params["runs"] == sorted(r.bold.name for r in runs)
    assert params["runs"][0].startswith("sub-01_task-rest_run-1_")
    assert params["parameters"]["smoothing_fwhm"] == 5.0
    assert params["parameters"]["denoise_strategy"] == "simple"
    for name in ("method", "n_parcels", "random_seed", "space", "kmeans_n_init"):
        assert name not in params["parameters"]


def test_summary_hash_follows_what_changes_the_features(tmp_path, runs):
    base = summary.summary_hash(config(tmp_path), runs)
    assert len(base) == 16
    assert summary.summary_hash(config(tmp_path), list(reversed(runs))) == base
    for kwargs in ({"smoothing_fwhm": 6.0}, {"n_components": 20}, {"high_pass": 0.01},
                   {"denoise_strategy": "none"}, {"mask_strategy": "epi"},
                   {"feature_weighting": 0.5}):
        assert summary.summary_hash(config(tmp_path, **kwargs), runs) != base, kwargs
    for kwargs in ({"n_parcels": (3,)}, {"method": "average"}, {"random_seed": 9},
                   {"task": ("rest",)}, {"standardize": "psc"}, {"overwrite": True},
                   {"connectivity": ("correlation",)}, {"quality": False},
                   {"split_half": False}, {"bootstrap": 5}):
        assert summary.summary_hash(config(tmp_path, **kwargs), runs) == base, kwargs
    assert summary.summary_hash(config(tmp_path), runs[:1]) != base


# --------------------------------------------------------------------------- summaries
def a_summary(tmp_path, runs, **kwargs):
    mask = helpers.box_mask((6, 6, 6))
    rng = np.random.default_rng(0)
    features = rng.standard_normal((int(mask.sum()), 3))
    return summary.make_summary(config(tmp_path, **kwargs), runs, runs[:1], mask,
                                helpers.affine(), features, 57)


def test_make_summary(tmp_path, runs):
    made = a_summary(tmp_path, runs)
    assert (made.subject, made.session, made.name) == ("01", None, "sub-01")
    assert made.features.dtype == np.float32
    assert made.features.shape == (64, 3)
    assert made.mask.dtype == bool
    assert made.affine.dtype == np.float64
    assert made.n_volumes == 57
    assert made.runs_used == [runs[0].bold.name]
    assert made.entities == {"space": SPACE, "res": "2"}
    assert made.hash == summary.summary_hash(config(tmp_path), runs)
    # a target grid names the resolution of the outputs
    assert a_summary(tmp_path, runs, target_resolution=3.0).entities["res"] == "3mm"


def test_summary_path(tmp_path):
    cfg = config(tmp_path)
    assert summary.summary_path(cfg, "01", None, {"space": SPACE, "res": "2"}) == (
        cfg.output_dir / "sub-01" / "func" /
        f"sub-01_space-{SPACE}_res-2_desc-summary_features.npz")
    assert summary.summary_path(cfg, "01", "b", {"space": SPACE, "res": None}) == (
        cfg.output_dir / "sub-01" / "ses-b" / "func" /
        f"sub-01_ses-b_space-{SPACE}_desc-summary_features.npz")


def test_write_and_read_round_trip(tmp_path, runs):
    cfg = config(tmp_path)
    made = a_summary(tmp_path, runs)
    written = summary.write_summary(cfg, made, [tmp_path / "prep"], runs)
    path = summary.summary_path(cfg, "01", None, made.entities)
    assert written == [path, path.with_suffix(".json")]
    assert sorted(p.name for p in path.parent.iterdir()) == sorted(p.name for p in written)

    header = summary.read_header(path)
    assert header.path == path
    assert header.hash == made.hash
    assert header.n_volumes == 57
    assert header.shape == (6, 6, 6)
    np.testing.assert_array_equal(header.affine, helpers.affine())
    np.testing.assert_array_equal(summary.read_mask(path), made.mask)
    features, mask = summary.read_features(path)
    np.testing.assert_array_equal(features, made.features)
    assert features.dtype == np.float32
    np.testing.assert_array_equal(mask, made.mask)

    sidecar = json.loads(written[1].read_text())
    assert sidecar["SummaryHash"] == made.hash
    assert sidecar["NumberOfVoxels"] == 64
    assert sidecar["NumberOfComponents"] == 3
    assert sidecar["NumberOfVolumes"] == 57
    assert sidecar["ConfigHash"] == cfg.config_hash()
    assert sidecar["Parameters"] == json.loads(json.dumps(made.parameters["parameters"]))
    # the runs the features were built from, not every selected run
    rel = runs[0].bold.relative_to(tmp_path / "prep").as_posix()
    assert sidecar["Sources"] == [f"bids:prep:{rel}"]


def test_read_header_of_a_broken_file(tmp_path, caplog):
    broken = tmp_path / "sub-01_desc-summary_features.npz"
    broken.write_bytes(b"PK\x03\x04 truncated")
    with caplog.at_level(logging.WARNING, logger="bids_parcellate"):
        assert summary.read_header(broken) is None
    assert caplog.records[0].getMessage().startswith(
        f"{broken.name}: unreadable summary, recomputing it (")

    foreign = tmp_path / "foreign.npz"
    np.savez(foreign, features=np.ones((2, 2)))
    assert summary.read_header(foreign) is None


# --------------------------------------------------------------------------- computing
def test_compute_summary_keeps_the_top_components(tmp_path, runs):
    """Features: the top temporal components of the z-scored runs, scaled by their
    singular values (so voxel distances in the kept components are the data's)."""
    import nibabel as nib

    cfg = config(tmp_path, denoise_strategy="none", smoothing_fwhm=0.0, n_components=5)
    made = summary.compute_summary(cfg, runs)
    mask = helpers.box_mask((6, 6, 6))
    np.testing.assert_array_equal(made.mask, mask)
    assert made.n_volumes == 60
    assert sorted(made.runs_used) == sorted(r.bold.name for r in runs)
    assert made.features.shape == (int(mask.sum()), 5)

    # independently: detrend (the only cleaning of --denoise-strategy none), z-score
    # every voxel in each run, concatenate, and keep the top 5 singular directions
    blocks = []
    for run in runs:
        data = np.asarray(nib.load(run.bold).dataobj, dtype=np.float64)[mask].T
        data = signal.detrend(data, axis=0)
        blocks.append((data - data.mean(axis=0)) / data.std(axis=0))
    x = np.concatenate(blocks, axis=0).T  # voxels x time
    u, s, _ = np.linalg.svd(x, full_matrices=False)
    expected = (u[:, :5] * s[:5]) @ (u[:, :5] * s[:5]).T
    got = made.features.astype(np.float64) @ made.features.T.astype(np.float64)
    # the same up to the scale of the z-score (ddof)
    scale = np.trace(got) / np.trace(expected)
    assert 0.9 < scale < 1.1
    np.testing.assert_allclose(got / scale, expected, atol=1e-3 * np.abs(expected).max())


def test_compute_summary_without_usable_runs(tmp_path):
    root = helpers.derivative_dataset(tmp_path / "prep")
    short = [helpers.make_run(helpers.add_run(root, "01", run=r, n_volumes=10), run=str(r))
             for r in (1, 2)]
    cfg = config(tmp_path, denoise_strategy="none")
    with pytest.raises(UserError) as err:
        summary.compute_summary(cfg, short)
    reason = "10 of 10 volumes kept after censoring (< --min-volumes 20)"
    assert str(err.value) == (f"sub-01: no usable runs ({short[0].bold.name}: {reason}; "
                              f"{short[1].bold.name}: {reason})")
