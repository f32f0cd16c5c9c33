"""Config validation and hashing."""

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
])
def test_invalid_parameters(kwargs, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        make(**kwargs)


@pytest.mark.parametrize("value, expected", [("01", "01"), ("sub-01", "01"), ("abc9", "abc9")])
def test_labels(value, expected):
    assert check_label(value, "--participant-label", "sub") == expected


@pytest.mark.parametrize("value", ["../x", "sub-01/..", "/abs/path", "0 1", "a_b", ""])
def test_bad_labels(value):
    with pytest.raises(ConfigError, match="not a BIDS label"):
        check_label(value, "--participant-label", "sub")
