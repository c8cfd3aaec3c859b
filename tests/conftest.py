"""Shared fixtures: a tiny phantom data set made once per test session, a small seed-format data set per test module."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DEBUG_CONFIG = ROOT / "configs" / "debug.yaml"


@pytest.fixture(scope="session")
def tiny_phantom(tmp_path_factory) -> Path:
    """4 phantom patients x 12 transitions at 64x64 (enough for an automatic 70/15/15 patient split)."""
    from cardiac_dreamer.phantom import make_phantom

    out = tmp_path_factory.mktemp("phantom") / "data"
    make_phantom(out, patients=4, transitions=12, seed=0, image_size=64, progress=False)
    return out


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    "Four valid patients (Windows paths + RGB frames for two of them), 5 transitions each, and a folder without JSON."
    from cardiac_dreamer.data import write_seed_patient

    root = tmp_path_factory.mktemp("ds")
    for k in range(4): write_seed_patient(root / f"p{k}", n=5, image_size=32, windows_paths=k < 2, rgb=k < 2, seed=k)
    (root / "notes").mkdir()
    return root


def cli(*args, cwd=None, timeout=900, env=None) -> subprocess.CompletedProcess:
    """Run `python -m cardiac_dreamer ARGS` and return the completed process (stdout/stderr as text)."""
    e = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "cardiac_dreamer", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd or ROOT, timeout=timeout, env=e)


@pytest.fixture(scope="session")
def trained_run(tiny_phantom, tmp_path_factory) -> Path:
    """One `cardiac-dreamer train --config configs/debug.yaml` run on the tiny phantom, shared by the training and report tests
    (the CLI's stdout / stderr are kept beside the run folder as cli_stdout.txt / cli_stderr.txt)."""
    out = tmp_path_factory.mktemp("outputs")
    r = cli("train", "--config", DEBUG_CONFIG, "--data_dir", tiny_phantom, "--output_dir", out, "--no_progress")
    (out / "cli_stdout.txt").write_text(r.stdout); (out / "cli_stderr.txt").write_text(r.stderr)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    runs = sorted(out.glob("run_*"))
    assert len(runs) == 1, runs
    assert "Report:" in r.stdout and "train_report.html" in r.stdout
    return runs[0]


@pytest.fixture(scope="session")
def cv_folds(tiny_phantom, tmp_path_factory) -> tuple:
    """One 2-fold cross-validation of the debug configuration (one epoch per fold, reports included), run through the
    `cardiac-dreamer cv` parser in this process, for the evaluation tests and the Ray executor's comparison. It computes on one
    thread, the notebook kernels (OMP_NUM_THREADS) and the evaluation in this process alike, as a Ray trial with one CPU does, so
    the two can be compared digit for digit. Returns (the study folder, a copy made as soon as it finished): tests may write into
    the first; the second keeps what the study wrote."""
    import shutil
    import torch
    from cardiac_dreamer.cli import build_parser
    out = tmp_path_factory.mktemp("cv_outputs")
    argv = ["cv", "--config", DEBUG_CONFIG, "--data_dir", tiny_phantom, "--folds", 2, "--set", "training.max_epochs=1",
            "--output_dir", out, "--no_progress"]
    mp, threads = pytest.MonkeyPatch(), torch.get_num_threads(); mp.setenv("OMP_NUM_THREADS", "1"); torch.set_num_threads(1)
    try:
        args = build_parser().parse_args([str(a) for a in argv])
        assert args.func(args) == 0
    finally: mp.undo(); torch.set_num_threads(threads)
    folders = sorted(out.glob("cv_*"))
    assert len(folders) == 1, folders
    pristine = tmp_path_factory.mktemp("cv_pristine") / folders[0].name
    shutil.copytree(folders[0], pristine)
    return folders[0], pristine
