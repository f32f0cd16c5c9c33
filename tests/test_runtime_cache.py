"""Unit tests of bids_parcellate.cache: keys, entries stored/loaded/evicted, denoised units."""

from __future__ import annotations

import json
import logging
import os
import time

import numpy as np
import pytest

from bids_parcellate import denoise
from bids_parcellate.inputs import bold as bold_io
from bids_parcellate.inputs import query
from bids_parcellate.runtime import cache
from tests import helpers


# --------------------------------------------------------------------------- keys
def test_make_key():
    key = cache.make_key("features", {"a": 1, "b": [1, 2]})
    assert len(key) == 32 and int(key, 16) >= 0
    assert cache.make_key("features", {"b": [1, 2], "a": 1}) == key  # key order
    assert cache.make_key("features", {"a": 2, "b": [1, 2]}) != key
    assert cache.make_key("tree", {"a": 1, "b": [1, 2]}) != key


def test_file_fingerprint(tmp_path):
    assert cache.file_fingerprint(None) is None
    missing = tmp_path / "absent.json"
    assert cache.file_fingerprint(missing) == [str(missing), None, None]
    path = tmp_path / "f.json"
    path.write_text("12345")
    os.utime(path, ns=(1_000_000_123, 2_000_000_456))
    assert cache.file_fingerprint(path) == [str(path.resolve()), 5, 2_000_000_456]


@pytest.fixture
def unit(tmp_path):
    """One run on disk (BOLD, sidecar, mask, confounds) and its Run."""
    paths = helpers.add_run(tmp_path / "prep", "01")
    return paths, helpers.make_run(paths)


def config(tmp_path, **kwargs):
    return helpers.make_config(tmp_path, **kwargs)


@pytest.mark.parametrize("name, value", [
    ("high_pass", 0.01), ("detrend", False), ("min_volumes", 25), ("denoise_strategy", "none"),
    ("mask_strategy", "epi"), ("target_resolution", 4.0),
])
def test_denoised_key_changes_with_denoising_parameters(tmp_path, unit, name, value):
    _, run = unit
    base = cache.denoised_key(config(tmp_path), [run])
    assert cache.denoised_key(config(tmp_path, **{name: value}), [run]) != base


@pytest.mark.parametrize("kwargs", [
    {"n_parcels": (7, 9)}, {"method": "kmeans"}, {"random_seed": 3}, {"smoothing_fwhm": 6.0},
    {"n_components": 20}, {"standardize": "psc"}, {"quality": False}, {"bootstrap": 5},
    {"connectivity": ("correlation",)}, {"nprocs": 2}, {"cache_limit_gb": 1.0},
    {"overwrite": True},
])
def test_denoised_key_ignores_later_stages_and_resources(tmp_path, unit, kwargs):
    _, run = unit
    base = cache.denoised_key(config(tmp_path), [run])
    moved = config(tmp_path, output_dir=tmp_path / "elsewhere", work_dir=tmp_path / "w",
                   **kwargs)
    assert cache.denoised_key(moved, [run]) == base


def test_denoised_key_changes_with_the_input_files(tmp_path, unit):
    paths, run = unit
    cfg = config(tmp_path)
    base = cache.denoised_key(cfg, [run])
    assert cache.denoised_key(cfg, [run]) == base

    stat = paths["bold"].stat()
    os.utime(paths["bold"], ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    touched = cache.denoised_key(cfg, [run])
    assert touched != base

    sidecar = paths["bold"].with_name(paths["bold"].name.replace(".nii.gz", ".json"))
    sidecar.write_text(json.dumps({"RepetitionTime": 2.0, "TaskName": "rest", "x": 1}))
    edited = cache.denoised_key(cfg, [run])
    assert edited != touched

    confounds_sidecar = paths["confounds"].with_suffix(".json")
    confounds_sidecar.write_text("{}")
    assert cache.denoised_key(cfg, [run]) != edited
    assert cache.denoised_key(cfg, [run]) == cache.denoised_key(cfg, [run])


def test_denoised_key_changes_with_runs_and_user_mask(tmp_path, unit):
    paths, run = unit
    cfg = config(tmp_path)
    base = cache.denoised_key(cfg, [run])
    slower = query.Run(run.entities, run.bold, run.mask, run.confounds, tr=2.5)
    assert cache.denoised_key(cfg, [slower]) != base
    other = helpers.make_run(helpers.add_run(tmp_path / "prep", "01", run=2), run="2")
    assert cache.denoised_key(cfg, [run, other]) != base

    mask = helpers.save_nifti(tmp_path / "roi.nii.gz", helpers.box_mask().astype(np.uint8))
    with_mask = cache.denoised_key(config(tmp_path, mask=mask), [run])
    assert with_mask != base
    helpers.save_nifti(mask, helpers.box_mask(margin=2).astype(np.uint8))
    assert cache.denoised_key(config(tmp_path, mask=mask), [run]) != with_mask


def test_features_key(tmp_path):
    base = cache.features_key(config(tmp_path), "denoised-a")
    assert cache.features_key(config(tmp_path), "denoised-b") != base
    for kwargs in ({"smoothing_fwhm": 6.0}, {"n_components": 20}, {"detrend": False}):
        assert cache.features_key(config(tmp_path, **kwargs), "denoised-a") != base, kwargs
    for kwargs in ({"n_parcels": (7,)}, {"method": "complete"}, {"random_seed": 4},
                   {"standardize": "psc"}, {"split_half": False}):
        assert cache.features_key(config(tmp_path, **kwargs), "denoised-a") == base, kwargs


# --------------------------------------------------------------------------- store
def test_disabled_cache_always_computes(tmp_path):
    store = cache.Cache(None)
    assert not store.enabled
    assert store.load("features", "k") is None
    store.store("features", "k", {"value": np.ones(2)})
    calls = []
    for _ in range(2):
        value = store.array("features", "k", lambda: calls.append(1) or np.arange(3))
        np.testing.assert_array_equal(value, np.arange(3))
    assert len(calls) == 2
    assert store.size_bytes() == 0


def test_from_config(tmp_path):
    assert not cache.Cache.from_config(config(tmp_path)).enabled  # no work dir
    assert not cache.Cache.from_config(config(tmp_path, work_dir=tmp_path / "w",
                                              use_cache=False)).enabled
    store = cache.Cache.from_config(config(tmp_path, work_dir=tmp_path / "w",
                                           cache_limit_gb=1.5))
    assert store.root == tmp_path / "w" / "cache"
    assert store.limit_bytes == int(1.5 * 2**30)


def test_store_and_load_round_trip(tmp_path):
    store = cache.Cache(tmp_path / "cache")
    arrays = {"x": np.arange(12, dtype=np.float32).reshape(3, 4), "m": np.eye(3, dtype=bool)}
    assert store.load("features", "k1") is None
    store.store("features", "k1", arrays, {"n": np.int64(3), "names": ["a"]})
    entry = tmp_path / "cache" / "features" / "k1"
    assert sorted(p.name for p in entry.iterdir()) == ["m.npy", "meta.json", "x.npy"]
    assert [p.name for p in entry.parent.iterdir()] == ["k1"]  # no temporary folder left

    meta, loaded = cache.Cache(tmp_path / "cache").load("features", "k1")
    assert meta == {"n": 3, "names": ["a"]}
    assert sorted(loaded) == ["m", "x"]
    for name, value in arrays.items():
        np.testing.assert_array_equal(loaded[name], value)
        assert loaded[name].dtype == value.dtype
    # memory-mapped copy-on-write: changing the loaded array leaves the entry alone
    assert isinstance(loaded["x"], np.memmap)
    loaded["x"][:] = -1
    np.testing.assert_array_equal(store.load("features", "k1")[1]["x"], arrays["x"])
    assert store.hits == {"features": 1}
    assert store.misses == {"features": 1}


def test_store_keeps_the_first_entry(tmp_path):
    store = cache.Cache(tmp_path / "cache")
    store.store("tree", "k", {"value": np.zeros(3)})
    store.store("tree", "k", {"value": np.ones(3)})
    np.testing.assert_array_equal(store.load("tree", "k")[1]["value"], np.zeros(3))


def test_array_computes_once(tmp_path):
    calls = []

    def compute():
        calls.append(1)
        return np.linspace(0, 1, 5)

    first = cache.Cache(tmp_path / "cache").array("tree", "k", compute)
    again = cache.Cache(tmp_path / "cache").array("tree", "k", compute)
    assert len(calls) == 1
    np.testing.assert_array_equal(again, first)


def test_unwritable_root_only_warns(tmp_path, caplog):
    blocker = tmp_path / "cache"
    blocker.write_text("a file where the cache folder should be")
    store = cache.Cache(blocker)
    with caplog.at_level(logging.WARNING, logger="bids_parcellate"):
        store.store("features", "k", {"value": np.ones(2)})
    assert [r.getMessage().split(" (")[0] for r in caplog.records] == [
        f"cache: cannot write under {blocker}"]
    assert blocker.read_text() == "a file where the cache folder should be"


# --------------------------------------------------------------------------- eviction
def entry_size(entry) -> int:
    return sum(p.stat().st_size for p in entry.iterdir())


def three_entries(root):
    store = cache.Cache(root)
    for i, key in enumerate(("old", "middle", "new")):
        store.store("features", key, {"value": np.full(1000, i, dtype=np.float64)})
        entry = root / "features" / key
        os.utime(entry, (1_000_000 + i * 1000, 1_000_000 + i * 1000))
    return [root / "features" / key for key in ("old", "middle", "new")]


def test_evict_removes_the_least_recently_used(tmp_path):
    root = tmp_path / "cache"
    old, middle, new = three_entries(root)
    store = cache.Cache(root, limit_gb=(entry_size(middle) + entry_size(new)) / 2**30)
    assert store.size_bytes() == sum(entry_size(e) for e in (old, middle, new))
    store.evict()
    assert not old.exists()
    assert middle.is_dir() and new.is_dir()
    # removed by renaming away: no trash left behind
    assert sorted(p.name for p in root.iterdir()) == ["features"]


def test_evict_spares_entries_in_use(tmp_path, caplog):
    root = tmp_path / "cache"
    old, middle, new = three_entries(root)
    store = cache.Cache(root, limit_gb=entry_size(old) / 2**30)
    assert store.load("features", "old") is not None
    assert old.stat().st_mtime > 1_000_000 + 2000  # a hit refreshes its last use
    os.utime(old, (1, 1))  # the least recently used again, but this process uses it
    store.evict()
    assert old.is_dir()
    assert not middle.exists() and not new.exists()

    small = cache.Cache(root, limit_gb=1 / 2**30)
    small.load("features", "old")
    with caplog.at_level(logging.WARNING, logger="bids_parcellate"):
        small.evict()
    assert old.is_dir()
    assert any(r.getMessage().startswith("cache: ") and "exceed --cache-limit-gb" in
               r.getMessage() for r in caplog.records)


def test_store_evicts_beyond_the_limit(tmp_path):
    root = tmp_path / "cache"
    old, middle, new = three_entries(root)
    store = cache.Cache(root, limit_gb=(2 * entry_size(new) + 100) / 2**30)
    store.store("features", "newest", {"value": np.full(1000, 9.0)})
    assert sorted(p.name for p in (root / "features").iterdir()) == ["new", "newest"]


def test_stale_temporary_folders_are_removed(tmp_path):
    root = tmp_path / "cache"
    three_entries(root)
    stale = root / "features" / ".tmp-dead-writer"
    fresh = root / "features" / ".tmp-live-writer"
    for folder in (stale, fresh):
        folder.mkdir()
        (folder / "x.npy").write_bytes(b"0" * 100)
    day_ago = time.time() - 25 * 3600
    os.utime(stale, (day_ago, day_ago))
    size = cache.Cache(root).size_bytes()
    assert not stale.exists()
    assert fresh.is_dir()
    assert size == sum(entry_size(root / "features" / k) for k in ("old", "middle", "new"))


# --------------------------------------------------------------------------- denoised
def cleaned_unit(tmp_path):
    runs = [helpers.make_run(helpers.add_run(tmp_path / "prep", "01", run=r), run=str(r))
            for r in (1, 2)]
    mask = helpers.box_mask()
    unit_mask = bold_io.UnitMask(mask=mask, affine=helpers.affine(),
                         n_voxels_per_run={r.bold.name: int(mask.sum()) for r in runs},
                         description="test mask", grid={"label": "2mm"})
    rng = np.random.default_rng(0)
    cleaned = [
        denoise.CleanRun(run=runs[0], data=rng.standard_normal((28, 24)).astype(np.float32),
                 sample_mask=np.arange(2, 30), n_volumes=30, confounds=["trans_x"],
                 mean_img=rng.random((5, 6, 4)).astype(np.float32),
                 framewise_displacement=rng.random(30)),
        denoise.CleanRun(run=runs[1], data=rng.standard_normal((30, 24)).astype(np.float32),
                 sample_mask=np.arange(30), n_volumes=30, confounds=[],
                 mean_img=rng.random((5, 6, 4)).astype(np.float32)),
    ]
    skipped = [query.Skipped(tmp_path / "sub-01_run-3_bold.nii.gz", "too short")]
    return runs, unit_mask, cleaned, skipped


def test_denoised_round_trip(tmp_path):
    runs, unit_mask, cleaned, skipped = cleaned_unit(tmp_path)
    store = cache.Cache(tmp_path / "cache")
    cache.store_denoised(store, "key", unit_mask, cleaned, skipped)
    out_mask, out_cleaned, out_skipped = cache.load_denoised(
        cache.Cache(tmp_path / "cache"), "key", runs)

    np.testing.assert_array_equal(out_mask.mask, unit_mask.mask)
    np.testing.assert_array_equal(out_mask.affine, unit_mask.affine)
    assert out_mask.n_voxels_per_run == unit_mask.n_voxels_per_run
    assert out_mask.description == "test mask"
    assert out_mask.grid == {"label": "2mm"}
    assert out_skipped == skipped
    assert len(out_cleaned) == 2
    for got, want in zip(out_cleaned, cleaned, strict=True):
        assert got.run is want.run
        np.testing.assert_array_equal(got.data, want.data)
        assert got.data.dtype == np.float32
        np.testing.assert_array_equal(got.sample_mask, want.sample_mask)
        assert got.n_volumes == want.n_volumes
        assert got.confounds == want.confounds
        np.testing.assert_array_equal(got.mean_img, want.mean_img)
    np.testing.assert_array_equal(out_cleaned[0].framewise_displacement,
                                  cleaned[0].framewise_displacement)
    assert out_cleaned[1].framewise_displacement is None


def test_load_denoised_for_other_runs_misses(tmp_path):
    runs, unit_mask, cleaned, skipped = cleaned_unit(tmp_path)
    store = cache.Cache(tmp_path / "cache")
    cache.store_denoised(store, "key", unit_mask, cleaned, skipped)
    assert cache.load_denoised(store, "key", runs[:1]) is None
    assert cache.load_denoised(store, "other", runs) is None

    disabled = cache.Cache(None)
    cache.store_denoised(disabled, "key2", unit_mask, cleaned, skipped)
    assert not (tmp_path / "cache" / "denoised" / "key2").exists()
    assert cache.load_denoised(disabled, "key", runs) is None
