"""Acceptance checks for cardiac_dreamer.phantom: byte-determinism, the seed format and its variants, refusal to overwrite."""
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cardiac_dreamer import phantom
from cardiac_dreamer.phantom import load_phantom_patient, make_phantom, render

KW = dict(patients=2, transitions=10, sweep=4, image_size=64, progress=False)  # sweeps of 4, 4 and 2 transitions
PAIRS = [(0, 1), (1, 2), (2, 3), (3, 4), (5, 6), (6, 7), (7, 8), (8, 9), (10, 11), (11, 12)]  # frame pairs of the entries
ENTRY_KEYS = {"ft1_image_path", "ft2_image_path", "at1_6dof", "action_change_6dof", "at2_6dof", "frame_t1", "frame_t2"}


def digest(root: Path) -> dict:
    "sha256 of every file under root, by relative path."
    return {str(f.relative_to(root)): hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(root.rglob("*")) if f.is_file()}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ph") / "seed0"
    make_phantom(out, seed=0, **KW)
    return out


def test_same_seed_same_bytes(tiny, tmp_path):
    phantom._cached_volume.cache_clear()  # rebuild the volumes: determinism, not caching
    np.random.seed(123); torch.manual_seed(123)  # global random state must not matter
    out = tmp_path / "again"
    make_phantom(out, seed=0, **KW)
    a, b = digest(tiny), digest(out)
    assert len(a) == 2 * (2 * 10 + 2) + 1  # per patient: 10 ft1 + 10 ft2 frames, 2 JSON files; plus the manifest
    assert a == b


def test_other_seed_other_data(tiny, tmp_path):
    make_phantom(tmp_path / "seed1", seed=1, **KW)
    a, b = digest(tiny), digest(tmp_path / "seed1")
    assert a.keys() == b.keys()
    assert all(a[k] != b[k] for k in a if k.endswith(".png"))
    t0 = json.loads((tiny / "phantom_00/phantom.json").read_text())["target_pose"]
    t1 = json.loads((tmp_path / "seed1/phantom_00/phantom.json").read_text())["target_pose"]
    assert t0 != t1


def test_seed_format_and_variants(tiny):
    manifest = json.loads((tiny / "phantom_manifest.json").read_text())
    assert manifest["patients"] == ["phantom_00", "phantom_01"] and manifest["transitions"] == 10 and manifest["sweep"] == 4 and manifest["image_size"] == 64
    assert manifest["seed"] == 0 and manifest["version"] == phantom.GENERATOR_VERSION
    seps, modes = set(), set()
    for pdir in sorted(p for p in tiny.iterdir() if p.is_dir()):
        entries = json.loads((pdir / "transitions_dataset.json").read_text())
        assert len(entries) == 10 and all(set(e) == ENTRY_KEYS for e in entries)
        for i, e in enumerate(entries):
            assert all(type(v) is float for k in ("at1_6dof", "action_change_6dof", "at2_6dof") for v in e[k])
            assert max(abs(a + c - b) for a, c, b in zip(e["at1_6dof"], e["action_change_6dof"], e["at2_6dof"])) < 1e-9
            assert (e["frame_t1"], e["frame_t2"]) == PAIRS[i]
            if i and PAIRS[i][0] == PAIRS[i - 1][1]: assert e["at1_6dof"] == entries[i - 1]["at2_6dof"]  # chained, same floats
            elif i: assert e["at1_6dof"] != entries[i - 1]["at2_6dof"]  # a new sweep starts from a new pose
            for k in ("ft1_image_path", "ft2_image_path"):
                rel = e[k].replace("\\", "/")
                assert (pdir / rel).is_file(), rel
                with Image.open(pdir / rel) as im: assert im.size == (64, 64); modes.add(im.mode)
            seps.add("\\" if "\\" in e["ft1_image_path"] else "/")
        # inside a sweep entry i's t2 frame is entry i+1's t1 frame, the same bytes in both folders
        assert (pdir / "ft2/frame_0006.png").read_bytes() == (pdir / "ft1/frame_0006.png").read_bytes()
        # a sweep's first frame is only a t1 frame, its last only a t2 frame
        assert sorted(f.name for f in (pdir / "ft1").iterdir()) == [f"frame_{a:04d}.png" for a, _ in PAIRS]
        assert sorted(f.name for f in (pdir / "ft2").iterdir()) == [f"frame_{b:04d}.png" for _, b in PAIRS]
    assert seps == {"\\", "/"} and modes == {"RGB", "L"}
    e0 = json.loads((tiny / "phantom_00/transitions_dataset.json").read_text())[0]
    assert e0["ft1_image_path"] == "ft1\\frame_0000.png" and e0["ft2_image_path"] == "ft2\\frame_0001.png"


def test_rgb_frames_are_grey(tiny):
    a = np.asarray(Image.open(tiny / "phantom_00/ft1/frame_0003.png"))
    assert a.shape == (64, 64, 3) and (a[..., 0] == a[..., 1]).all() and (a[..., 0] == a[..., 2]).all()


def test_load_phantom_patient_rerenders_the_frames(tiny):
    p = load_phantom_patient(tiny / "phantom_01")
    entries = json.loads((tiny / "phantom_01/transitions_dataset.json").read_text())
    pose = p.target_pose - np.array(entries[7]["at1_6dof"])  # at = target - probe
    frame = tiny / "phantom_01" / entries[7]["ft1_image_path"].replace("\\", "/")  # ft1/frame_0008.png: the third sweep
    assert (render(p, pose, 64) == np.asarray(Image.open(frame).convert("L"))).all()


def test_refuses_to_overwrite(tiny, tmp_path):
    with pytest.raises(FileExistsError, match="phantom_00"):
        make_phantom(tiny, seed=3, **KW)
    empty = tmp_path / "existing"
    (empty / "phantom_00").mkdir(parents=True)  # an existing empty folder is fine
    make_phantom(empty, patients=1, transitions=2, image_size=32, progress=False)
    assert (empty / "phantom_00/transitions_dataset.json").is_file()


def test_interrupted_run_leaves_nothing(tmp_path, monkeypatch):
    def boom(*a, **k): raise KeyboardInterrupt
    monkeypatch.setattr(phantom, "_entries", boom)
    with pytest.raises(KeyboardInterrupt):
        make_phantom(tmp_path / "out", **KW)
    assert list(tmp_path.iterdir()) == []


def test_data_module_reads_it_without_problems(tiny):
    data = pytest.importorskip("cardiac_dreamer.data")
    idx = data.index_dataset(tiny, image_size=64)
    assert idx.patients == ["phantom_00", "phantom_01"] and len(idx.transitions) == 20 and not idx.problems
