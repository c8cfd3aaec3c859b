"""Widgets driven programmatically: the hyperparameter panel (validation, YAML, a launched debug run with its live plot and report,
a clean stop), the inference explorer (prediction table, navigation step) and the run browser, on a tiny phantom."""
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import DEBUG_CONFIG
from cardiac_dreamer.config import config_to_dict, load_config
from cardiac_dreamer.data import index_dataset
from cardiac_dreamer.model import CardiacDreamer
from cardiac_dreamer.explorer import InferenceExplorer, RunBrowser, find_checkpoints, runs_table
from cardiac_dreamer.runs import read_status
from cardiac_dreamer.widgets import PANEL_FIELDS, HyperparameterPanel

PNG = b"\x89PNG"
ISSUE_FIELDS = ["model.token_type", "model.d_model", "model.num_heads", "model.num_layers", "model.dropout",
                "model.freeze_backbone_layers", "loss.lambda_latent", "loss.lambda_t2_action", "loss.smooth_l1_beta",
                "loss.primary_task_only", "training.lr", "training.weight_decay", "training.scheduler", "training.batch_size",
                "training.max_epochs", "training.early_stop_patience", "training.precision", "training.accumulate_grad_batches",
                "data.split_mode", "data.train_patients", "data.val_patients", "data.test_patients"]


def _until(cond, timeout, what, step=0.5):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond(): return
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def _tail(panel) -> str:
    return "\n".join(panel.job.lines[-40:]) if panel.job else "(no job)"


@pytest.fixture(scope="module")
def outputs(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("widget_outputs")


@pytest.fixture(scope="module")
def launched(tiny_phantom, outputs):
    """Two runs launched with the panels' run buttons at once (they train while the quick tests run):
    a 1-epoch debug run that finishes, and a 30-epoch run that the stop test interrupts."""
    panels = {}
    for name, epochs in (("finish", 1), ("stop", 30)):
        p = HyperparameterPanel(DEBUG_CONFIG, output_dir=outputs, data_dir=tiny_phantom, poll_s=1.0)
        p.controls["training.max_epochs"].value = epochs
        t0 = time.monotonic()
        p.run_button.click()
        assert time.monotonic() - t0 < 5, "launching must not block the notebook"
        assert p.job is not None and p.job.running, p.message.value
        assert p.run_button.disabled and not p.stop_button.disabled
        panels[name] = p
    yield panels
    for p in panels.values():
        if p.job.running: p.job.stop(timeout=30)


def test_launch_returns_at_once(launched):
    for p in launched.values():
        assert p.job.cmd[1:4] == ["-m", "cardiac_dreamer", "train"]   # the CLI's papermill path
    _until(lambda: all(p.job.run_dir for p in launched.values()), 120, "the run folders (their status.json)")
    assert launched["finish"].job.run_dir != launched["stop"].job.run_dir


# ---- quick panel tests (they run while the launched runs train) ----

def test_panel_starts_from_yaml(tiny_phantom, tmp_path):
    p = HyperparameterPanel(DEBUG_CONFIG, output_dir=tmp_path, data_dir=tiny_phantom)
    assert p.tabs.titles == ("Model", "Loss", "Training", "Data")
    assert all(k in p.controls for k in ISSUE_FIELDS)
    assert [k for ks in PANEL_FIELDS.values() for k in ks] == list(p.controls)
    expected = config_to_dict(load_config(DEBUG_CONFIG, [f"data.data_dir={tiny_phantom}"]))
    assert config_to_dict(p.config()) == expected
    assert p.errors() == [] and not p.run_button.disabled and not p.save_button.disabled
    assert "4 patients" in p.patients_html.value
    assert type(p.controls["training.precision"]).__name__ == "Dropdown"
    assert list(p.controls["model.token_type"].options) == ["channel", "spatial"]


def test_panel_values_make_the_config(tiny_phantom, tmp_path):
    p = HyperparameterPanel(DEBUG_CONFIG, output_dir=tmp_path, data_dir=tiny_phantom)
    c = p.controls
    c["model.token_type"].value = "spatial"; c["model.d_model"].value = 32; c["model.num_heads"].value = 8
    c["loss.lambda_latent"].value = 0.5; c["loss.primary_task_only"].value = True
    c["training.lr"].value = 3e-4; c["training.scheduler"].value = "plateau"; c["training.precision"].value = "bf16-mixed"
    c["training.accumulate_grad_batches"].value = 2
    c["data.split_mode"].value = "manual"
    c["data.train_patients"].value = "phantom_00, phantom_01"; c["data.val_patients"].value = "phantom_02"
    c["data.test_patients"].value = "phantom_03"
    cfg = p.config()
    assert (cfg.model.token_type, cfg.model.d_model, cfg.model.num_heads) == ("spatial", 32, 8)
    assert (cfg.loss.lambda_latent, cfg.loss.primary_task_only) == (0.5, True)
    assert (cfg.training.lr, cfg.training.scheduler, cfg.training.precision, cfg.training.accumulate_grad_batches) == (3e-4, "plateau", "bf16-mixed", 2)
    assert (cfg.data.split_mode, cfg.data.train_patients, cfg.data.val_patients) == ("manual", ["phantom_00", "phantom_01"], ["phantom_02"])
    assert cfg.model.backbone == "resnet18" and cfg.model.image_size == 64   # fields the panel does not show come from the YAML
    assert p.errors() == [] and not p.run_button.disabled


def test_panel_validation_errors_disable_run(tiny_phantom, tmp_path):
    p = HyperparameterPanel(DEBUG_CONFIG, output_dir=tmp_path, data_dir=tiny_phantom)
    c = p.controls
    c["model.num_heads"].value = 5                               # 64 is not divisible by 5
    assert any("not divisible by model.num_heads=5" in e for e in p.errors())
    assert p.run_button.disabled and p.save_button.disabled and "not divisible" in p.errors_html.value
    c["model.num_heads"].value = 8
    assert p.errors() == [] and not p.run_button.disabled
    c["data.split_mode"].value = "manual"; c["data.train_patients"].value = "phantom_00, phantom_01"
    assert any("validation split would be empty" in e for e in p.errors()) and p.run_button.disabled     # empty validation split
    c["data.val_patients"].value = "phantom_01, phantom_02"
    assert any("'phantom_01' is in both data.train_patients and data.val_patients" in e for e in p.errors())   # overlap
    assert p.run_button.disabled
    c["data.val_patients"].value = "phantom_02, ghost"
    assert any("unknown patient(s) ghost" in e for e in p.errors())
    c["data.val_patients"].value = "phantom_02"
    assert p.errors() == [] and not p.run_button.disabled
    c["training.lr"].value = 0.0; c["model.dropout"].value = 1.5
    errs = p.errors()
    assert any("training.lr" in e for e in errs) and any("model.dropout" in e for e in errs) and p.run_button.disabled
    p.run_button.click()                                            # disabled in the browser; a programmatic click explains why
    assert p.job is None and "not valid" in p.message.value


def test_panel_auto_split_needs_enough_patients(tmp_path, tiny_phantom):
    import shutil
    few = tmp_path / "two"
    for name in ("phantom_00", "phantom_01"): shutil.copytree(tiny_phantom / name, few / name)
    p = HyperparameterPanel(DEBUG_CONFIG, output_dir=tmp_path, data_dir=few)
    assert any("needs at least 3 patients" in e for e in p.errors()) and p.run_button.disabled
    p.controls["data.data_dir"].value = str(tmp_path / "missing")
    assert any("no patient folders" in e for e in p.errors())


def test_panel_save_and_load_yaml(tiny_phantom, tmp_path):
    p = HyperparameterPanel(DEBUG_CONFIG, output_dir=tmp_path, data_dir=tiny_phantom)
    p.controls["model.num_layers"].value = 2; p.controls["training.batch_size"].value = 4
    p.save_path.value = str(tmp_path / "tuned.yaml")
    p.save_button.click()
    saved = load_config(tmp_path / "tuned.yaml")
    assert config_to_dict(saved) == config_to_dict(p.config())
    assert (saved.model.num_layers, saved.training.batch_size) == (2, 4) and "Saved" in p.message.value
    q = HyperparameterPanel(DEBUG_CONFIG, output_dir=tmp_path)   # start from the saved YAML with the Load button
    q.config_path.value = str(tmp_path / "tuned.yaml"); q.load_button.click()
    assert config_to_dict(q.config()) == config_to_dict(saved)
    q.config_path.value = str(tmp_path / "absent.yaml"); q.load_button.click()
    assert "config file not found" in q.message.value


# ---- the launched runs ----

def test_stop_keeps_checkpoint(launched):
    p = launched["stop"]
    _until(lambda: p.job.epochs >= 1 or not p.job.running, 420, "the first epoch of the run to stop")
    assert p.job.running, _tail(p)
    p.stop_button.click()                                           # returns at once; stops from a background thread
    assert p.job.wait(timeout=240) is not None, "the run did not stop"
    run = p.job.run_dir
    assert read_status(run)["state"] == "interrupted", (read_status(run), _tail(p))
    assert (run / "checkpoints" / "last.ckpt").is_file(), sorted(x.name for x in (run / "checkpoints").iterdir())
    assert p.job.state == "interrupted" and p.job.returncode != 0 and p.job.epochs < 30
    assert "interrupted" in p.status.value and p.stop_button.disabled and not p.run_button.disabled
    ck = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ck["epoch"] >= 0
    CardiacDreamer.from_checkpoint(run / "checkpoints" / "last.ckpt")   # the checkpoint so far is usable (and resumable)


def test_launched_debug_run_finishes_with_report(launched):
    p = launched["finish"]
    rc = p.job.wait(timeout=600)
    assert rc == 0, _tail(p)
    run = p.job.run_dir
    assert read_status(run)["state"] == "finished"
    assert (run / "train_report.html").is_file() and (run / "final_model.ckpt").is_file()
    assert "train_report.html" in p.report_link.value and p.job.report == run / "train_report.html"
    assert p.progress.value == p.progress.max == 1 and p.progress.bar_style == "success"
    assert 1 in p.plot_epochs and p.live_plot.value[:4] == PNG     # the live plot was redrawn for epoch 1
    assert config_to_dict(load_config(run / "panel_config.yaml")) == config_to_dict(p.config())
    assert load_config(run / "config.yaml").training.max_epochs == 1
    assert "finished" in p.status.value and not p.run_button.disabled and p.stop_button.disabled


# ---- explorer and browser on the runs the panel made ----

@pytest.fixture(scope="module")
def done(launched, outputs):
    for p in launched.values(): p.job.wait(timeout=600)
    return {k: p.job.run_dir for k, p in launched.items()}


def test_inference_explorer(done, outputs, tiny_phantom):
    ex = InferenceExplorer(outputs)
    options = [v for _, v in ex.checkpoint.options]
    assert str(done["finish"] / "final_model.ckpt") in options and str(done["stop"] / "checkpoints" / "last.ckpt") in options
    assert options == [str(c) for c in find_checkpoints(outputs)]
    ex.checkpoint.value = str(done["finish"] / "final_model.ckpt")
    assert len(ex.patient.options) == 4 and "(test)" in ex.patient.options[0][0]   # test patients first
    patient = ex.patient.value
    ts = index_dataset(tiny_phantom, check_images=False).by_patient()[patient]
    assert ex.frame.max == len(ts) - 1 == 11
    ex.frame.value = 5
    t = ex.table
    assert list(t.index) == ["x", "y", "z", "roll", "pitch", "yaw"] and list(t.unit) == ["mm"] * 3 + ["deg"] * 3
    np.testing.assert_allclose(t["true"].to_numpy(), ts[5].at1)
    np.testing.assert_allclose(t["error"].to_numpy(), t["predicted"].to_numpy() - ts[5].at1)
    assert np.isfinite(t["predicted"]).all() and ex.view.value[:4] == PNG and "rotation error" in ex.table_html.value
    assert ex.image.shape == (64, 64) and len(ex.figure.axes) == 3
    # closed-loop navigation on the phantom, one move at a time
    assert ex.nav_box.layout.display is None
    pose0 = ex.nav_pose.copy()
    ex.nav_button.click(); ex.nav_button.click()
    assert len(ex.nav_history) == 3 and not np.allclose(ex.nav_pose, pose0)
    np.testing.assert_allclose(ex.truth, ex.phantom.target_pose - ex.nav_pose)
    assert "pose error (mm)" in ex.nav_html.value
    ex.patient.value = ex.patient.options[1][1]                   # another patient: back to its frame
    assert len(ex.nav_history) == 1 and ex.table.shape == (6, 5)


def test_run_browser(done, outputs):
    rb = RunBrowser(outputs)
    t = rb.table
    assert len(t) == 2 and set(t.state) == {"finished", "interrupted"}
    assert set(t.token_type) == {"channel"} and set(t.d_model) == {64} and sorted(t.max_epochs) == [1, 30]
    assert t.best_val_main_task_loss.notna().all() and t.val_single_mae_mm.notna().all() and t.val_single_mae_deg.notna().all()
    assert list(t.run) == sorted(t.run, key=dict(zip(t.run, t.best_val_main_task_loss)).get)   # sorted by best loss
    rb.sort_by.value = "max_epochs"; rb.ascending.value = False
    assert list(rb.table.max_epochs) == [30, 1] and list(rb.select.options) == list(rb.table.run)
    rb.select.value = tuple(rb.table.run)
    assert len(rb.curves_figure.axes[0].lines) == 2 and rb.curves.value[:4] == PNG
    rb.metric.value = "val_single_mae_x"
    assert "val_single_mae_x" in rb.curves_figure.axes[0].get_title()
    assert len(runs_table(outputs)) == 2
