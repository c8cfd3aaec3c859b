"""Evaluation acceptance: evaluate, cross-validation (2 folds), sweep (2 points) and closed-loop navigation on the tiny phantom
(modules `evaluate`, `navigate`, `studies`; one file, because they share the trained cross-validation folds of `cv_run`, which
the Ray executor's test compares with its own run).

Every command runs in this process through the `cardiac-dreamer` argument parser (training and reports still execute their
notebooks with papermill); each output file is checked, and `metrics.json` must equal the metrics recomputed from `predictions.csv`.
"""
import json
import math
from pathlib import Path

import pandas as pd
import pytest

from conftest import DEBUG_CONFIG

from cardiac_dreamer.config import CardiacDreamerError

AXES = ["x", "y", "z", "roll", "pitch", "yaw"]
ONE_EPOCH = ["--set", "training.max_epochs=1"]


def run(*argv):
    """Parse and run one command with the real `cardiac-dreamer` parser; it must return 0."""
    from cardiac_dreamer.cli import build_parser
    args = build_parser().parse_args([str(a) for a in argv])
    assert args.func(args) == 0


def assert_close(a, b, path="metrics", rel=1e-9, abs_=1e-9):
    """Nested dicts/lists equal, floats within tolerance."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), f"{path}: keys {sorted(set(a) ^ set(b))}"
        for k in a: assert_close(a[k], b[k], f"{path}.{k}", rel, abs_)
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)): assert_close(x, y, f"{path}[{i}]", rel, abs_)
    elif isinstance(a, float) or isinstance(b, float):
        assert a is not None and b is not None and math.isclose(a, b, rel_tol=rel, abs_tol=abs_), f"{path}: {a} != {b}"
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


def check_metrics_match_predictions(folder: Path) -> dict:
    """metrics.json (without the `evaluation` record) == compute_metrics(predictions.csv)."""
    from cardiac_dreamer.evaluate import compute_metrics, read_predictions
    m = json.loads((folder / "metrics.json").read_text())
    recomputed = json.loads(json.dumps(compute_metrics(read_predictions(folder / "predictions.csv"))))
    assert_close({k: v for k, v in m.items() if k != "evaluation"}, recomputed)
    return m


def check_report(folder: Path, name: str):
    assert (folder / f"{name}.ipynb").is_file() and (folder / f"{name}.html").is_file(), name
    html = (folder / f"{name}.html").read_text()
    assert "data:image/png;base64" in html, f"{name}.html has no figure"
    nb = json.loads((folder / f"{name}.ipynb").read_text())
    errors = [o for c in nb["cells"] for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, errors


def test_evaluate_other_data_set(tmp_path):
    """A data set without the run's test split (a new site's scans): the error names a few missing folders and suggests
    `--patients all`, which evaluates every patient folder in --data_dir."""
    import torch
    from cardiac_dreamer.config import ModelConfig
    from cardiac_dreamer.data import index_dataset, write_seed_patient
    from cardiac_dreamer.labels import NormStats
    from cardiac_dreamer.evaluate import evaluate_run
    from cardiac_dreamer.model import CardiacDreamer, model_checkpoint_payload
    train, site = tmp_path / "train", tmp_path / "site_b"
    write_seed_patient(train / "pat0", n=4, image_size=32, seed=0)
    for i in range(3): write_seed_patient(site / f"scan{i}", n=2, image_size=32, seed=1 + i)
    model = CardiacDreamer(ModelConfig(backbone="resnet18", image_size=32, d_model=32, num_heads=2, num_layers=1, guidance_hidden=[32]),
                           NormStats.from_transitions(index_dataset(train).transitions)).eval()
    run_dir = tmp_path / "run"; (run_dir / "checkpoints").mkdir(parents=True)
    ckpt = run_dir / "checkpoints" / "best.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
                "cardiac_dreamer": model_checkpoint_payload(model, {"data": {"data_dir": str(train)}})}, ckpt)
    test_split = [f"test{i:02d}" for i in range(12)]
    (run_dir / "experiment_config.json").write_text(json.dumps({"splits": {"train": ["pat0"], "val": [], "test": test_split}}))
    with pytest.raises(CardiacDreamerError) as e:
        run("evaluate", "--checkpoint", ckpt, "--data_dir", site, "--output_dir", tmp_path / "out", "--no_progress")
    msg = str(e.value)
    assert "--patients all" in msg and "test00, test01, test02, test03, test04 … and 7 more" in msg and "test11" not in msg, msg
    assert not (tmp_path / "out").exists()
    df, m = evaluate_run(ckpt, tmp_path / "out", data_dir=site, patients=["all"], figures=False)
    assert m["patients"] == ["scan0", "scan1", "scan2"] and m["n_frames"] == 6 == len(df)
    assert m["evaluation"]["patients_from"] == "all patients of the data set"
    check_metrics_match_predictions(tmp_path / "out")


def test_data_kfold_bad_input(tiny_phantom, tmp_path):
    """Bad study requests fail before any folder is created."""
    out = tmp_path / "outs"
    with pytest.raises(CardiacDreamerError, match="num_folds"):
        run("cv", "--config", DEBUG_CONFIG, "--data_dir", tiny_phantom, "--folds", "1", "--output_dir", out, "--no_progress")
    with pytest.raises(CardiacDreamerError, match="0..1"):
        run("cv", "--config", DEBUG_CONFIG, "--data_dir", tiny_phantom, "--folds", "2", "--fold_ids", "2", "--output_dir", out)
    with pytest.raises(CardiacDreamerError, match="--config is required"):
        run("cv", "--data_dir", tiny_phantom, "--output_dir", out)
    with pytest.raises(CardiacDreamerError, match="--grid"):
        run("sweep", "--config", DEBUG_CONFIG, "--grid", "training.lr", "--output_dir", out)
    with pytest.raises(CardiacDreamerError, match="not_a_key"):
        run("sweep", "--config", DEBUG_CONFIG, "--data_dir", tiny_phantom, "--grid", "training.not_a_key=1,2", "--output_dir", out)
    with pytest.raises(CardiacDreamerError, match="everything"):
        run("ablation", "--config", DEBUG_CONFIG, "--arms", "everything", "--output_dir", out)
    assert not out.exists() or not any(out.iterdir())


@pytest.fixture(scope="module")
def cv_run(cv_folds):
    """A 2-fold cross-validation, one epoch per fold (`conftest.cv_folds`: `cardiac-dreamer cv`, shared with the Ray test)."""
    return cv_folds[0]


def test_cv_outputs(cv_run):
    cv = cv_run
    assert (cv / "cv_request.json").is_file()
    assert sorted(p.name for p in cv.glob("fold_*")) == ["fold_0", "fold_1"]
    tested = []
    for k in (0, 1):
        fd = cv / f"fold_{k}"
        assert json.loads((fd / "status.json").read_text())["state"] == "finished"
        for rel in ("train_report.ipynb", "train_report.html", "config.yaml", "experiment_config.json", "final_model.ckpt",
                    "metrics.json", "predictions.csv", "plots/eval_error_distributions.png", "plots/eval_pred_vs_true_single.png",
                    "plots/eval_error_vs_distance.png", "plots/eval_error_along_trajectory.png"):
            assert (fd / rel).is_file(), f"fold_{k}/{rel}"
        splits = json.loads((fd / "experiment_config.json").read_text())["splits"]
        m = check_metrics_match_predictions(fd)
        assert m["patients"] == sorted(splits["test"]) and not set(splits["test"]) & set(splits["train"])
        tested += splits["test"]
    assert len(tested) == len(set(tested)) == 4  # every patient tested by exactly one fold
    res = pd.read_csv(cv / "cv_results.csv")
    assert res.fold.tolist() == [0, 1]
    for p in ("single", "composed", "baseline"):
        assert all(f"{p}_mae_{a}" in res for a in AXES), p
    s = json.loads((cv / "cv_summary.json").read_text())
    assert s["folds_finished"] == [0, 1] and s["complete"] is True
    assert s["per_axis"]["single"]["x"]["mean"] == pytest.approx(res.single_mae_x.mean())
    assert s["per_axis"]["single"]["x"]["std"] == pytest.approx(res.single_mae_x.std(ddof=1))
    assert s["pooled"]["n_frames"] == int(res.n_frames.sum())
    assert sorted({r["patient"] for r in s["per_patient"]}) == sorted(tested)
    assert (cv / "cv_per_patient.csv").is_file()
    check_report(cv, "cv_report")


def test_cv_continue_skips_finished(cv_run):
    """Repeating the cross-validation on its folder trains nothing again; different settings are refused."""
    from cardiac_dreamer.studies import run_cv
    stamps = {p: p.stat().st_mtime_ns for k in (0, 1) for p in (cv_run / f"fold_{k}" / "status.json",
                                                             cv_run / f"fold_{k}" / "train_report.ipynb",
                                                             cv_run / f"fold_{k}" / "metrics.json")}
    assert run_cv(cv_dir=cv_run, progress=False, report=False) == cv_run
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    with pytest.raises(CardiacDreamerError, match="folds"):
        run_cv(cv_dir=cv_run, folds=4, report=False)


def test_evaluate_command(cv_run, tiny_phantom, capsys):
    """`evaluate --checkpoint RUN/checkpoints/best.ckpt` (the guide's command) writes the report, metrics and predictions into
    the checkpoint's run folder by default."""
    from cardiac_dreamer.studies import best_checkpoint
    fd = cv_run / "fold_1"
    best = fd / "checkpoints" / "best.ckpt"
    assert best.read_bytes() == Path(best_checkpoint(fd)).read_bytes()  # the run's best top-k checkpoint
    (fd / "metrics.json").unlink(); (fd / "predictions.csv").unlink()
    run("evaluate", "--checkpoint", best, "--no_progress")
    assert "Report:" in capsys.readouterr().out
    check_report(fd, "eval_report")
    m = check_metrics_match_predictions(fd)
    test = json.loads((fd / "experiment_config.json").read_text())["splits"]["test"]
    df = pd.read_csv(fd / "predictions.csv", dtype={"patient": str})
    assert len(df) == m["n_frames"] == 12 * len(test) and sorted(df.patient.unique()) == sorted(test)
    for c in ["patient", "entry"] + [f"{w}_{a}" for w in ("true", "single", "composed", "baseline") for a in AXES] \
            + [f"err_single_{a}" for a in AXES] + ["trans_err_single", "rot_err_single", "dist_mm"]:
        assert c in df, c
    assert m["evaluation"]["patients_from"] == "test split of the run"
    for p in ("single", "composed", "baseline"):
        for stat in ("mae", "median", "rmse", "p90", "within_2mm", "within_5mm", "within_10mm"):
            assert stat in m["paths"][p]["axes"]["x"] and stat in m["paths"][p]["translation_mm"], (p, stat)
        for stat in ("within_5deg", "within_10deg"):
            assert stat in m["paths"][p]["axes"]["yaw"] and stat in m["paths"][p]["rotation_geodesic_deg"], (p, stat)
    assert set(m["per_patient"]) == set(test)
    base = m["paths"]["baseline"]["axes"]["x"]["mae"]
    assert m["ratio_to_baseline"]["single"]["x"] == pytest.approx(m["paths"]["single"]["axes"]["x"]["mae"] / base)


def test_evaluate_bad_input(cv_run, tmp_path):
    from cardiac_dreamer.studies import best_checkpoint
    ckpt = best_checkpoint(cv_run / "fold_0")
    with pytest.raises(CardiacDreamerError, match="nobody"):
        run("evaluate", "--checkpoint", ckpt, "--patients", "nobody", "--output_dir", tmp_path)
    with pytest.raises(CardiacDreamerError, match="not found"):
        run("evaluate", "--checkpoint", tmp_path / "missing.ckpt")
    assert not any(tmp_path.iterdir())


def test_navigate_command(cv_run, tmp_path, capsys):
    """Closed loop: the oracle reaches the target in >= 95% of episodes, the mean predictor in clearly fewer."""
    from cardiac_dreamer.studies import best_checkpoint
    out = tmp_path / "nav"
    run("navigate", "--checkpoint", best_checkpoint(cv_run / "fold_0"), "--episodes", 10, "--max_steps", 20, "--spread", 5,
        "--output_dir", out, "--no_progress")
    assert "oracle" in capsys.readouterr().out
    for rel in ("navigation_episodes.csv", "navigation_trajectories.csv", "navigation_summary.json", "plots/navigation.png",
                "plots/navigation_paths.png"):
        assert (out / rel).is_file(), rel
    check_report(out, "navigation_report")
    s = json.loads((out / "navigation_summary.json").read_text())["summary"]
    assert set(s) == {"model", "fused", "mean", "oracle"}  # the single-frame model, the same model fused over frames, baselines
    assert s["oracle"]["success_rate"] >= 0.95, s["oracle"]
    assert s["mean"]["success_rate"] <= s["oracle"]["success_rate"] - 0.5, s["mean"]
    ep = pd.read_csv(out / "navigation_episodes.csv")
    assert len(ep) == 40 and (ep.start_trans_err.gt(5) | ep.start_rot_err.gt(5)).all()  # no episode starts at the target
    first = ep.groupby("policy").start_trans_err.apply(list)
    assert first["fused"] == first["model"] == first["oracle"]  # every policy plays the same start poses


def test_sweep(tiny_phantom, tmp_path_factory, capsys):
    from cardiac_dreamer.config import load_config
    out = tmp_path_factory.mktemp("sweep_outputs")
    run("sweep", "--config", DEBUG_CONFIG, "--data_dir", tiny_phantom, "--grid", "model.token_type=channel,spatial", *ONE_EPOCH,
        "--output_dir", out, "--no_progress")
    assert "Winner:" in capsys.readouterr().out
    sw = next(out.glob("sweep_*"))
    for k in (0, 1):
        pd_ = sw / f"point_{k:02d}"
        assert json.loads((pd_ / "status.json").read_text())["state"] == "finished"
        assert (pd_ / "train_report.html").is_file() and (pd_ / "config.yaml").is_file()
        assert load_config(pd_ / "config.yaml").model.token_type == ["channel", "spatial"][k]
    res = pd.read_csv(sw / "sweep_results.csv")
    assert res.point.tolist() == ["point_00", "point_01"] and res["model.token_type"].tolist() == ["channel", "spatial"]
    assert res.best_val_main_task_loss.notna().all()
    assert all(res[f"val_single_mae_{a}"].notna().all() for a in AXES)
    s = json.loads((sw / "sweep_summary.json").read_text())
    win = res.loc[res.best_val_main_task_loss.idxmin()]
    assert s["winner"]["point"] == win.point
    assert load_config(sw / "best_config.yaml").model.token_type == win["model.token_type"]
    check_report(sw, "sweep_report")
