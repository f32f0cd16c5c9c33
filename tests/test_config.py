"""Config validation and hashing."""

import re
from dataclasses import replace
from pathlib import Path

import pytest

from bids_parcellate.config import Config, ConfigError, check_label


def make(**kw):
    return Config(bids_dir=Path("/in"), output_dir=Path("/out"), **kw)


def test_hash_ignores_paths_and_resources_but_not_parameters():
    base = make()
    assert base.config_hash() == replace(base, output_dir=Path("/x"), nprocs=4,
                                         verbosity=2).config_hash()
    assert base.config_hash() != replace(base, method="kmeans").config_hash()
    assert base.config_hash() != replace(base, n_parcels=(100,)).config_hash()
    assert len(base.config_hash()) == 16


@pytest.mark.parametrize("kwargs, message", [
    ({"method": "spectral"}, "--method 'spectral'"),
    ({"denoise_strategy": "magic"}, "--denoise-strategy 'magic'"),
    ({"n_parcels": (1,)}, ">= 2"),
    ({"n_parcels": (10, 10)}, "repeat"),
    ({"high_pass": 0.1, "low_pass": 0.01}, "below --low-pass"),
    ({"space": "MNI/../x"}, "--space"),
    ({"method": "canica", "n_parcels": (50,)}, "--n-parcels does not apply to --method "
                                               "canica: the number of regions is an outcome"),
    ({"method": "ward", "n_maps": (10,)}, "--n-maps applies to --method dictlearning or "
                                          "canica only"),
    ({"method": "canica", "dictlearning_alpha": 3.0}, "--dictlearning-alpha applies to "
                                                      "--method dictlearning only"),
    ({"method": "ward", "split_disconnected": True}, "--split-disconnected applies to "
                                                     "--method kmeans or hierarchical_kmeans"),
    ({"method": "ward", "min_region_size": 10.0}, "--min-region-size applies"),
    ({"method": "canica", "n_maps": (5,), "region_threshold": 6.0}, "ratio in (0, 5]"),
    ({"method": "canica", "region_thresholding": "percentile", "region_threshold": 100.0},
     "percentile must be in [0, 100)"),
    ({"method": "canica", "n_maps": (1,)}, "--n-maps 1: every scale must be >= 2"),
    ({"connectivity": ("pearson",)}, "--connectivity 'pearson': choose from correlation, "
                                     "partial_correlation"),
    ({"connectivity": ("tangent",)}, "--connectivity tangent needs several participants"),
    ({"feature_weighting": 1.5}, "--feature-weighting 1.5: give a number from 0"),
    ({"feature_weighting": -0.1}, "--feature-weighting -0.1: give a number from 0"),
])
def test_invalid_parameters(kwargs, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        make(**kwargs)


def test_method_specific_parameters_only_hashed_for_their_method():
    ward = make()
    assert ward.scales == (100, 200, 400)
    # options of other methods left at their defaults do not enter the hash
    assert "n_maps" not in ward.hashed_parameters()
    assert "min_region_size" not in ward.hashed_parameters()
    split = make(method="kmeans", split_disconnected=True)
    assert split.hashed_parameters()["min_region_size"] == 1350.0
    dl = make(method="dictlearning", n_maps=(10, 20))
    assert dl.scales == (10, 20) and dl.is_decomposition
    assert "n_parcels" not in dl.hashed_parameters()
    assert dl.config_hash() != replace(dl, dictlearning_alpha=2.0).config_hash()
    assert dl.config_hash() != replace(dl, region_extractor="connected_components"
                                       ).config_hash()
    assert make(connectivity=("correlation",)).config_hash() != ward.config_hash()
    tangent = make(analysis_levels=("participant", "group"), connectivity=("tangent",))
    assert tangent.connectivity == ("tangent",)


@pytest.mark.parametrize("value, expected", [("01", "01"), ("sub-01", "01"), ("abc9", "abc9")])
def test_labels(value, expected):
    assert check_label(value, "--participant-label", "sub") == expected


@pytest.mark.parametrize("value", ["../x", "sub-01/..", "/abs/path", "0 1", "a_b", ""])
def test_bad_labels(value):
    with pytest.raises(ConfigError, match="not a BIDS label"):
        check_label(value, "--participant-label", "sub")
