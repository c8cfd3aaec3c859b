"""Training pipeline acceptance: the papermill run-folder layout, logged metric names, resume, token types, schedulers, CPU DDP."""
import json
from pathlib import Path

import pandas as pd
import pytest

from conftest import DEBUG_CONFIG, cli

LOSS_NAMES = ["train_main_task_loss", "val_main_task_loss", "train_total_loss", "val_loss", "learning_rate",
              "train_t2_action_loss", "val_t2_action_loss", "train_latent_loss", "val_latent_loss"]
AXES = ["x", "y", "z", "roll", "pitch", "yaw"]


def _metrics(run: Path) -> pd.DataFrame:
    from cardiac_dreamer.runs import csv_metrics
    return csv_metrics(run)


def test_run_folder_layout(trained_run):
    run = trained_run
    for rel in ["experiment_config.json", "dataset_stats.json", "final_model.ckpt", "checkpoints/last.ckpt", "config.yaml",
                "plots/dataset_statistics.png", "plots/training_summary.png", "train_report.ipynb", "train_report.html", "status.json"]:
        assert (run / rel).is_file(), rel
    assert list((run / "checkpoints").glob("cardiac_dreamer-epoch=*-val_main_task_loss=*.ckpt"))
    assert list((run / "logs" / "cardiac_dreamer").glob("version_0/events.out.tfevents.*"))
    assert (run / "logs" / "cardiac_dreamer_csv" / "version_0" / "metrics.csv").is_file()
    rec = json.loads((run / "experiment_config.json").read_text())
    assert {"config", "packages", "git_commit", "data_fingerprint", "splits"} <= rec.keys()
    assert rec["packages"]["torch"] and len(rec["data_fingerprint"]) >= 16
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "finished" and status["fit_seconds"] > 0
    html = (run / "train_report.html").read_text()
    assert "data:image/png;base64" in html  # figures rendered inline
    assert "epochs done;" in html and "of wall time" in html  # the report says how long training took


def test_logged_metric_names(trained_run):
    cols = set(_metrics(trained_run).columns)
    missing = [n for n in LOSS_NAMES if n not in cols]
    assert not missing, missing
    for prefix in ("val_mae_", "val_single_mae_", "val_baseline_mae_"):
        assert all(f"{prefix}{a}" in cols for a in AXES), prefix


def test_checkpoint_alone_predicts(trained_run):
    import torch
    from cardiac_dreamer.model import CardiacDreamer
    m = CardiacDreamer.from_checkpoint(trained_run / "final_model.ckpt")
    frames = torch.randint(0, 256, (2, 3, 80, 100), dtype=torch.uint8)
    out = m.predict_action(frames)
    assert out.shape == (2, 6) and torch.isfinite(out).all()


def test_best_ckpt_is_the_best_top_k_checkpoint(trained_run):
    "checkpoints/best.ckpt (the guide's evaluate path) holds the top-k checkpoint the run reports as its best, and loads."
    from cardiac_dreamer.model import CardiacDreamer
    best = trained_run / "checkpoints" / "best.ckpt"
    status = json.loads((trained_run / "status.json").read_text())
    assert best.is_file() and not best.is_symlink()
    assert best.read_bytes() == Path(status["best_checkpoint"]).read_bytes()
    assert CardiacDreamer.from_checkpoint(best).run_config["training"]["max_epochs"] == 2


def test_final_model_is_weights_config_and_normalisation_only(trained_run, capsys):
    import torch
    from cardiac_dreamer.cli import main
    from cardiac_dreamer.train import checkpoint_sizes
    from cardiac_dreamer.config import load_config
    final, last = trained_run / "final_model.ckpt", trained_run / "checkpoints" / "last.ckpt"
    d = torch.load(final, map_location="cpu", weights_only=True)
    assert set(d) == {"state_dict", "hyper_parameters", "cardiac_dreamer", "pytorch-lightning_version"}
    assert {"stats", "model_config", "config"} <= set(d["cardiac_dreamer"]) and d["hyper_parameters"]["lr"] > 0
    # AdamW keeps two moments per weight, so last.ckpt = 3 x the weights + what both files carry (BatchNorm statistics,
    # settings: ~0.1 MB); final_model.ckpt is a third of it to within that (measured 0.3336 for the debug model)
    size, last_size = final.stat().st_size, last.stat().st_size
    assert size < last_size / 3 + 200_000 and size < 0.34 * last_size, (size, last_size)
    est = checkpoint_sizes(load_config(trained_run / "config.yaml"))  # the estimate check-data uses, from parameter counts
    assert abs(est["weights"] - size) < 200_000 and abs(est["full"] - last_size) < 400_000, (est, size, last_size)
    assert main(["fit", "--resume_from_checkpoint", str(final), "--no_progress"]) == 2
    err = capsys.readouterr().err
    assert f"{final}: cannot resume training from it: final_model.ckpt holds the weights" in err and f"resume from {last}" in err, err


def test_command_line_recorded(trained_run):
    "experiment_config.json records the command the user typed, not the notebook kernel's launcher."
    cmd = json.loads((trained_run / "experiment_config.json").read_text())["command"]
    assert cmd.startswith("python -m cardiac_dreamer train --config ") and cmd.endswith("--no_progress"), cmd
    assert "ipykernel" not in cmd


def test_hparams_tab_has_the_full_config_and_final_metrics(trained_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2
    ev = EventAccumulator(str(trained_run / "logs" / "cardiac_dreamer" / "version_0")); ev.Reload()
    content = ev.PluginTagToContent("hparams")
    data = {tag: plugin_data_pb2.HParamsPluginData.FromString(c) for tag, c in content.items()}
    hp = next(d.session_start_info.hparams for d in data.values() if d.HasField("session_start_info"))
    assert {"model.d_model", "model.backbone", "data.data_dir", "data.split_ratios", "training.lr", "training.precision",
            "loss.lambda_latent"} <= set(hp), sorted(hp)
    assert hp["model.d_model"].number_value == 64 and hp["model.backbone"].string_value == "resnet18"
    metrics = {m.name.tag for d in data.values() if d.HasField("experiment") for m in d.experiment.metric_infos}
    assert {"hp/best_val_main_task_loss", "hp/last_val_main_task_loss", "hp/test_main_task_loss"} <= metrics, metrics
    assert "hp/best_val_main_task_loss" in ev.Tags()["scalars"]


def test_resume_continues_same_run(trained_run):
    run = trained_run
    val_epochs = lambda m: m.loc[m["val_main_task_loss"].notna(), "epoch"]
    last_epoch = int(val_epochs(_metrics(run)).max())
    r = cli("train", "--resume_from_checkpoint", run / "checkpoints" / "last.ckpt", "--set", f"training.max_epochs={last_epoch + 2}",
            "--no_progress")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    after = _metrics(run)
    assert int(val_epochs(after).max()) == last_epoch + 1       # continued at the next epoch
    assert sorted(val_epochs(after).astype(int)) == list(range(last_epoch + 2))  # one validation per epoch, none repeated
    assert (run / "logs" / "cardiac_dreamer_csv" / "version_1" / "metrics.csv").is_file()  # earlier curves kept
    assert (run / "logs" / "cardiac_dreamer_csv" / "version_0" / "metrics.csv").is_file()
    assert (run / "train_report_part1.ipynb").is_file() and (run / "train_report.ipynb").is_file()
    assert len(list(run.parent.glob("run_*"))) == 1             # no new run folder


@pytest.mark.parametrize("token_type", ["channel", "spatial"])
def test_token_types_fit(tiny_phantom, tmp_path, token_type):
    from cardiac_dreamer.runs import resolve_config
    from cardiac_dreamer.train import fit
    cfg = resolve_config(DEBUG_CONFIG, [f"model.token_type={token_type}", "training.max_epochs=1", "training.limit_train_batches=2"],
                         data_dir=str(tiny_phantom))
    res = fit(cfg, tmp_path / "run", progress=False)
    assert Path(res["final_checkpoint"]).is_file()
    assert res["test_metrics"] and all(v == v for v in res["test_metrics"].values())


def test_matmul_precision_and_compile_switches(tiny_phantom, tmp_path):
    "`training.matmul_precision` reaches torch; `training.compile` compiles the model in place, checkpoint keys unchanged (issue 17)."
    import torch
    from cardiac_dreamer.runs import resolve_config
    from cardiac_dreamer.train import prepare_run
    before = torch.get_float32_matmul_precision()
    try:
        plain = prepare_run(resolve_config(DEBUG_CONFIG, data_dir=str(tiny_phantom)), tmp_path / "plain", progress=False)
        assert torch.get_float32_matmul_precision() == "highest" and plain.system.model._compiled_call_impl is None
        cfg = resolve_config(DEBUG_CONFIG, ["training.matmul_precision=high", "training.compile=true"], data_dir=str(tiny_phantom))
        run = prepare_run(cfg, tmp_path / "compiled", progress=False)
        assert torch.get_float32_matmul_precision() == "high"
        assert run.system.model._compiled_call_impl is not None  # compiled lazily at the first call; not run here (minutes on 2 cores)
        assert list(run.system.model.state_dict()) == list(plain.system.model.state_dict())
    finally: torch.set_float32_matmul_precision(before)
    with pytest.raises(Exception, match="training.matmul_precision"):
        resolve_config(DEBUG_CONFIG, ["training.matmul_precision=fastest"])


@pytest.mark.parametrize("scheduler", ["cosine", "cosine_warm_restarts", "onecycle", "plateau"])
def test_schedulers(tiny_phantom, tmp_path, scheduler):
    from cardiac_dreamer.runs import resolve_config
    from cardiac_dreamer.train import fit
    cfg = resolve_config(DEBUG_CONFIG, [f"training.scheduler={scheduler}", "training.max_epochs=3", "training.warmup_epochs=1",
                                        "training.limit_train_batches=2", "training.limit_val_batches=1"], data_dir=str(tiny_phantom))
    fit(cfg, tmp_path / "run", progress=False)
    lr = _metrics(tmp_path / "run")["learning_rate"].dropna()
    assert len(lr) >= 3 and lr.nunique() > 1, lr.tolist()  # the schedule actually changes the learning rate


def test_ddp_cpu_two_processes(tiny_phantom, tmp_path):
    out = tmp_path / "outputs"
    r = cli("fit", "--config", DEBUG_CONFIG, "--data_dir", tiny_phantom, "--output_dir", out, "--no_progress",
            "--set", "training.accelerator=cpu", "--set", "training.devices=2", "--set", "training.strategy=ddp",
            "--set", "training.max_epochs=1")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    runs = list(out.glob("run_*"))
    assert len(runs) == 1, runs
    assert (runs[0] / "final_model.ckpt").is_file()
    assert json.loads((runs[0] / "status.json").read_text())["state"] == "finished"
