"""Acceptance checks of `cardiac_dreamer.datamodule`: frame loading and the cache, training-split statistics, the data module's
loaders, data set statistics and fingerprint of its index (the `dataset` fixture is in conftest)."""
import json
import shutil

import numpy as np
import pytest
import torch

from cardiac_dreamer.config import ConfigError, DataConfig
from cardiac_dreamer.data import data_fingerprint, dataset_statistics, index_dataset, load_image
from cardiac_dreamer.datamodule import CardiacDataModule, ImageCache, TransitionDataset
from cardiac_dreamer.labels import NormStats


def test_windows_paths_and_rgb_load_as_one_channel(dataset):
    idx = index_dataset(dataset, image_size=32, label_convention="additive")
    assert idx.patients == ["p0", "p1", "p2", "p3"] and idx.ignored == ["notes"] and len(idx.transitions) == 20
    t = idx.transitions[0]
    assert t.ft1 == dataset / "p0" / "ft1" / "frame_0000.png" and t.extra == {"frame_t1": 0, "frame_t2": 1}
    for size in (32, 20):
        x = load_image(t.ft1, size)
        assert x.shape == (1, size, size) and x.dtype == torch.uint8
    ds = TransitionDataset(idx.transitions, image_size=20)
    item = ds[0]
    assert item["image_t1"].shape == (1, 20, 20) and item["image_t1"].dtype == torch.float32
    assert 0 <= float(item["image_t1"].min()) and float(item["image_t2"].max()) <= 1
    for k in ("at1", "at2", "action_change"): assert item[k].shape == (6,) and item[k].dtype == torch.float32
    assert (item["patient"], item["entry"]) == ("p0", 0)
    torch.testing.assert_close(item["at1"] + item["action_change"], item["at2"])  # physical units


def test_cache_budget_and_fallback(dataset):
    idx = index_dataset(dataset)
    cache = ImageCache(budget_mb=3 * 16 * 16 / 2**20)
    frames = [t.ft1 for t in idx.transitions[:5]]
    for f in frames * 2: cache.get(f, 16)
    assert len(cache) == 3 and cache.nbytes == 3 * 256 and cache.misses == 7 and cache.hits == 3
    assert torch.equal(cache.get(frames[4], 16), load_image(frames[4], 16))


# ---- statistics and the data module ----

def _module(dataset, **kw) -> CardiacDataModule:
    cfg = DataConfig(data_dir=str(dataset), **{"cache_budget_mb": 16, **kw})
    dm = CardiacDataModule(cfg, batch_size=3, image_size=16, seed=1)
    dm.setup("fit")
    return dm


def test_norm_stats_from_training_split_only(dataset):
    dm = _module(dataset)
    train = dm.train_ds.transitions
    assert {t.patient for t in train} == set(dm.splits.train)
    np.testing.assert_allclose(dm.stats.at1_mean, np.mean([t.at1 for t in train], 0))
    np.testing.assert_allclose(dm.stats.change_std, np.std([t.change for t in train], 0))
    assert dm.stats != NormStats.from_transitions(dm.index.transitions)
    assert NormStats.from_dict(json.loads(json.dumps(dm.stats.to_dict()))) == dm.stats
    assert sorted(p.name for p in dataset.iterdir()) == ["notes", "p0", "p1", "p2", "p3"]  # nothing written into the data folder
    x = torch.randn(5, 6)
    torch.testing.assert_close(dm.stats.destandardize(dm.stats.standardize(x, "at2"), "at2"), x)


def test_datamodule_batches_and_loaders(dataset):
    dm = _module(dataset, max_transitions_per_patient=4)
    assert (len(dm.train_ds), len(dm.val_ds), len(dm.test_ds)) == (8, 4, 4)
    assert [t.entry for t in dm.val_ds.transitions] == [0, 1, 3, 4]  # evenly spaced, deterministic
    b = next(iter(dm.train_dataloader()))
    assert b["image_t1"].shape == (3, 1, 16, 16) and b["image_t2"].shape == (3, 1, 16, 16)
    assert b["at1"].shape == (3, 6) and b["action_change"].dtype == torch.float32 and len(b["patient"]) == 3
    assert [x["entry"].tolist() for x in dm.train_dataloader()] == [x["entry"].tolist() for x in dm.train_dataloader()]
    loader = dm.val_dataloader()
    assert (loader.drop_last, loader.persistent_workers, loader.pin_memory) == (False, False, torch.cuda.is_available())
    assert len(list(loader)) == 2  # 4 transitions, batch 3, last batch kept
    assert dm.train_ds.transform is not None and dm.val_ds.transform is None and dm.test_ds.transform is None
    with pytest.raises(ConfigError, match="mirrored action"): CardiacDataModule(DataConfig(geometric_augment=True))


def test_datamodule_with_worker_process(dataset):
    dm = _module(dataset, num_workers=1)
    loader = dm.train_dataloader()
    assert loader.persistent_workers and loader.num_workers == 1
    assert sum(len(b["entry"]) for b in loader) == len(dm.train_ds)


def test_statistics_and_fingerprint(dataset, tmp_path):
    dm = _module(dataset)
    info = dataset_statistics(dm.index, dm.splits, dm.stats)
    assert json.loads(json.dumps(info)) == info
    assert info["units"] == {"translation": "mm", "rotation": "deg"} and info["ignored"] == ["notes"]
    assert info["entries"] == {"total": 20, "per_patient": {f"p{k}": 5 for k in range(4)}}
    assert info["splits"]["train"]["patients"] == dm.splits.train and info["label_convention"]["convention"] == "additive"
    for split in ("train", "val", "test"):
        for key in ("at1", "action_change", "at2"): assert set(info["statistics"][split][key]) == {"mean", "std", "min", "max"}
    fp = data_fingerprint(dm.index)
    copy = tmp_path / "copy"; shutil.copytree(dataset, copy)
    assert data_fingerprint(index_dataset(copy)) == fp
    with open(copy / "p1" / "ft1" / "frame_0002.png", "ab") as f: f.write(b"\0")  # same name, other size
    assert data_fingerprint(index_dataset(copy, check_images=False)) != fp
