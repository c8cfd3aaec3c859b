"""Issue 14, item 1: the switchable uncertainty head end to end. A debug-configuration training on the tiny phantom with
`--set model.uncertainty=gaussian` (the `cardiac-dreamer train` command, papermill report included; with `sequence.enabled` its
training notebook also trains the sequence model, whose head then predicts scales too), evaluated on its held-out
patients with `cardiac-dreamer evaluate`: the coverage metrics land in metrics.json (re-derivable from predictions.csv), the
reliability figure in plots/ and the report; the checkpoint gives per-axis scales in mm / degrees. A bad value of the key is a
ConfigError that names it."""
import json

import nbformat
import numpy as np
import pytest
import yaml

from conftest import DEBUG_CONFIG, cli

from cardiac_dreamer.config import ConfigError, load_config

AXES = ["x", "y", "z", "roll", "pitch", "yaw"]


def test_bad_value_names_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"--set: model\.uncertainty: 'normal' is not one of none, gaussian, laplace"):
        load_config(overrides=["model.uncertainty=normal"])
    p = tmp_path / "c.yaml"
    p.write_text("model:\n  uncertainty: student\n")
    with pytest.raises(ConfigError, match=rf"{p}: model\.uncertainty: 'student' is not one of none, gaussian, laplace"):
        load_config(p)
    assert load_config(overrides=["model.uncertainty=laplace"]).model.uncertainty == "laplace"
    assert load_config().model.uncertainty == "none"  # off by default


def test_train_and_evaluate_with_uncertainty(tiny_phantom, tmp_path):
    from cardiac_dreamer.cli import build_parser
    from cardiac_dreamer.evaluate import compute_metrics, read_predictions
    from cardiac_dreamer.model import CardiacDreamer
    out = tmp_path / "outputs"
    r = cli("train", "--config", DEBUG_CONFIG, "--data_dir", tiny_phantom, "--output_dir", out, "--no_progress",
            "--set", "model.uncertainty=gaussian", "--set", "training.max_epochs=1",
            "--set", "sequence.enabled=true", "--set", "sequence.max_epochs=2", "--set", "sequence.window=4")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    run_dir, = out.glob("run_*")
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["model"]["uncertainty"] == "gaussian"
    # sequence.enabled: the second stage ran in the training notebook, with a Gaussian head of its own, and is in the training report
    from cardiac_dreamer.sequence import load_sequence_model
    _, head, scfg = load_sequence_model(run_dir)
    assert head.uncertainty == "gaussian" and scfg.window == 4
    seq = json.loads((run_dir / "sequence_metrics.json").read_text())
    assert seq["training"]["epochs"] == 2 and set(seq["metrics"]) == {"val", "test"}
    assert "<strong>Sequence head:</strong> best epoch" in (run_dir / "train_report.html").read_text()
    cell = next(c for c in nbformat.read(run_dir / "train_report.ipynb", as_version=4).cells if "if cfg.sequence.enabled:" in c.source)
    assert [o.output_type for o in cell.outputs if o.output_type == "error"] == []
    assert sum("image/png" in o.get("data", {}) for o in cell.outputs) == 3  # the head's training curves, validation and test sweeps
    best = run_dir / "checkpoints" / "best.ckpt"
    model = CardiacDreamer.from_checkpoint(best)
    assert model.cfg.uncertainty == "gaussian"
    move, scale = model.predict_action_with_scale(np.zeros((2, 1, 64, 64), np.uint8))
    assert move.shape == scale.shape == (2, 6) and bool((scale > 0).all())

    args = build_parser().parse_args(["evaluate", "--checkpoint", str(best), "--no_progress"])
    assert args.func(args) == 0
    m = json.loads((run_dir / "metrics.json").read_text())
    df = read_predictions(run_dir / "predictions.csv")
    assert set(df.uncertainty) == {"gaussian"} and all(f"scale_{p}_{a}" in df for p in ("single", "composed") for a in AXES)
    cal = m["calibration"]
    assert set(cal) == {"single", "composed"}
    for p in cal:
        assert cal[p]["distribution"] == "gaussian" and cal[p]["n_frames"] == m["n_frames"]
        for a in AXES:
            assert 0 <= cal[p][f"coverage50_{a}"] <= cal[p][f"coverage90_{a}"] <= 1
            assert cal[p][f"mean_scale_{a}"] > 0
        assert len(cal[p]["reliability"]["nominal"]) == 19 and all(len(cal[p]["reliability"][a]) == 19 for a in AXES)
    recomputed = compute_metrics(df)["calibration"]  # metrics.json can be re-derived from predictions.csv
    for p in cal:
        assert set(recomputed[p]) == set(cal[p]) and recomputed[p]["distribution"] == cal[p]["distribution"]
        for k, v in cal[p].items():
            if k == "reliability": assert all(recomputed[p][k][a] == pytest.approx(v[a], rel=1e-9) for a in v), k
            elif k != "distribution": assert recomputed[p][k] == pytest.approx(v, rel=1e-9), k
    assert (run_dir / "plots" / "eval_reliability.png").is_file()
    html = (run_dir / "eval_report.html").read_text()
    assert "Calibration of the predicted uncertainty" in html and "coverage 90 %" in html
