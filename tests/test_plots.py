"""Acceptance checks for cardiac_dreamer.plots: CSVLogger metrics (resume, dedup), summaries, figures."""
import math
from pathlib import Path
from types import SimpleNamespace

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cardiac_dreamer.plots import (epoch_curve, metric_unit, plot_dataset_statistics, plot_training_summary,
                                   plot_validation_curves, read_metrics, save_figure, split_membership,
                                   summarize_metrics, transitions_table)

AXES = ("x", "y", "z", "roll", "pitch", "yaw")
NAN = math.nan


def _write_csv(path: Path, rows: list[dict]) -> Path:
    """Write rows the way Lightning's CSVLogger does: sorted header, empty cells for keys not logged in a row."""
    keys = sorted(set().union(*rows))
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [",".join(keys)]
    for r in rows:
        lines.append(",".join("" if (v := r.get(k)) is None or (isinstance(v, float) and math.isnan(v)) else repr(v)
                              for k in keys))
    path.write_text("\n".join(lines) + "\n")
    return path


def _epoch_rows(epoch: int, val_main: float, steps=2, lr=1e-3, baseline=True, components=True):
    rows = [{"learning_rate": lr, "step": s} for s in range(epoch * steps, (epoch + 1) * steps)]  # LR monitor: no epoch
    last = (epoch + 1) * steps - 1
    val = {"epoch": epoch, "step": last, "val_loss": val_main * 1.5, "val_main_task_loss": val_main}
    for i, a in enumerate(AXES):
        val[f"val_single_mae_{a}"] = val_main * (i + 1)
        val[f"val_mae_{a}"] = val_main * (i + 2)
        if baseline: val[f"val_baseline_mae_{a}"] = float(i + 10)
    if components: val.update(val_t2_action_loss=val_main / 2, val_latent_loss=val_main / 4)
    train = {"epoch": epoch, "step": last, "train_total_loss": val_main * 1.2, "train_main_task_loss": val_main * 0.9}
    if components: train.update(train_t2_action_loss=val_main / 3, train_latent_loss=val_main / 5)
    return rows + [val, train]


@pytest.fixture
def resumed_run(tmp_path):
    """version_0 logs epochs 0-2 (best at 1), version_1 resumes at epoch 2 (re-run, new values) and logs 3."""
    v0 = [r for e, v in [(0, 1.0), (1, 0.4), (2, 0.9)] for r in _epoch_rows(e, v)]
    v1 = [r for e, v in [(2, 0.7), (3, 0.6)] for r in _epoch_rows(e, v)]
    root = tmp_path / "logs" / "csv"
    return _write_csv(root / "version_0" / "metrics.csv", v0), _write_csv(root / "version_1" / "metrics.csv", v1), root


def test_read_metrics_concatenates_and_dedups(resumed_run):
    v0, v1, root = resumed_run
    m = read_metrics([v0, v1])
    assert not m.duplicated(["epoch", "step"]).any()
    assert sorted(m.epoch.dropna().astype(int).unique()) == [0, 1, 2, 3]
    # epoch 2 was re-run after the resume: the later file wins
    assert m.loc[m.epoch == 2, "val_main_task_loss"].dropna().tolist() == [0.7]
    assert m.learning_rate.notna().sum() == 8  # per-step rows (no epoch) survive, once per step
    assert read_metrics(root).equals(m)  # a folder is read in version order
    assert read_metrics(str(v0)).val_main_task_loss.dropna().tolist() == [1.0, 0.4, 0.9]


def test_read_metrics_version_order_is_numeric(tmp_path):
    _write_csv(tmp_path / "version_2" / "metrics.csv", [{"epoch": 0, "step": 0, "val_loss": 2.0}])
    _write_csv(tmp_path / "version_10" / "metrics.csv", [{"epoch": 0, "step": 0, "val_loss": 1.0}])
    assert read_metrics(tmp_path).val_loss.tolist() == [1.0]  # version_10 comes after version_2


def test_read_metrics_errors_and_empty(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"): read_metrics(tmp_path / "missing.csv")
    with pytest.raises(FileNotFoundError, match="no metrics.csv"): read_metrics(tmp_path)
    (tmp_path / "metrics.csv").write_text("")
    assert read_metrics(tmp_path / "metrics.csv").empty


def test_summarize_metrics_best_is_min(resumed_run):
    m = read_metrics(list(resumed_run[:2]))
    s = summarize_metrics(m)
    assert s["val_main_task_loss"] == {"final": 0.6, "best": 0.4, "best_epoch": 1}
    assert s["val_single_mae_yaw"]["best"] == pytest.approx(0.4 * 6) and s["val_single_mae_yaw"]["best_epoch"] == 1
    assert s["val_baseline_mae_x"]["final"] == 10.0
    assert "learning_rate" not in s and "epoch" not in s and "step" not in s
    assert epoch_curve(m, "train_total_loss").index.tolist() == [0, 1, 2, 3]
    assert metric_unit("val_single_mae_z") == "mm" and metric_unit("val_mae_pitch") == "deg"


def test_training_summary_full_and_missing_columns(resumed_run, tmp_path):
    fig = plot_training_summary(read_metrics(resumed_run[2]))
    assert len(fig.axes) == 7
    assert {"MAE (mm)", "MAE (deg)"} <= {ax.get_ylabel() for ax in fig.axes}
    assert len(fig.axes[4].lines) == 6 and fig.axes[4].lines[1].get_linestyle() == "--"  # baselines dashed
    # primary_task_only, one epoch, no baseline, no LR monitor
    rows = [r for r in _epoch_rows(0, 0.5, baseline=False, components=False) if "epoch" in r]
    one = read_metrics(_write_csv(tmp_path / "one" / "metrics.csv", rows))
    fig = plot_training_summary(one)
    assert len(fig.axes) == 7
    assert fig.axes[2].texts[0].get_text() == "not logged"  # learning rate
    assert fig.axes[3].texts[0].get_text() == "not logged"  # component losses
    assert len(fig.axes[4].lines) == 3
    assert plt.get_fignums() == []
    out = save_figure(fig, tmp_path / "report" / "training.png")
    with Image.open(out) as im: assert im.format == "PNG"


def test_validation_curves(resumed_run):
    m = read_metrics(resumed_run[2])
    fig = plot_validation_curves({"a": m, "b": m.drop(columns=["val_main_task_loss"])})
    assert [l.get_label() for l in fig.axes[0].lines] == ["a"]
    assert "standardised" in fig.axes[0].get_ylabel()
    assert plot_validation_curves({"a": m}, "val_mae_x").axes[0].get_ylabel() == "val_mae_x (mm)"


def test_dataset_statistics(tmp_path):
    rng = np.random.default_rng(0)
    ts = [SimpleNamespace(patient=f"p{i}", entry=e, at1=rng.normal(size=6), change=rng.normal(size=6))
          for i in range(5) for e in range(3 + i)]
    splits = {"train": ["p0", "p1", "p2"], "val": ["p3"], "test": ["p4"]}
    table = transitions_table(ts, splits)
    assert list(table.columns[:3]) == ["patient", "entry", "split"]
    assert [f"at1_{a}" for a in AXES] + [f"change_{a}" for a in AXES] == list(table.columns[3:])
    assert split_membership(splits).shape == (5, 3)
    frames = {"train": [("p0 entry 0", np.zeros((16, 16), np.uint8))] * 6, "val": [], "test": [("t", np.ones((1, 8, 8)))]}
    fig = plot_dataset_statistics(table, splits, frames)
    assert len(fig.axes) == 3 + 3 * 4 + 12
    assert sum(len(ax.images) for ax in fig.axes) == 4 + 0 + 1  # at most 4 frames per split
    heat = next(ax for ax in fig.axes if ax.get_title().startswith("Patient membership"))
    assert heat.collections[0].get_array().shape == (5, 3)
    titles = {ax.get_title() for ax in fig.axes}
    assert {"at1 roll (deg)", "change z (mm)"} <= titles
    out = save_figure(fig, tmp_path / "dataset.png", dpi=40)
    with Image.open(out) as im: assert im.size[0] > 500
