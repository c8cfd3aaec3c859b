"""Tests of the learned sequence model and the dreamer at inference (cardiac_dreamer.sequence): windows, training as a run's second
stage, the files it writes, its errors, and the sequential navigation policies."""
import json
import shutil

import numpy as np
import pytest
import torch

from cardiac_dreamer.config import CardiacDreamerError, ConfigError, SequenceConfig, config_from_dict
from cardiac_dreamer.data import index_dataset
from cardiac_dreamer.model import CheckpointError
from cardiac_dreamer.sequence import SEQUENCE_FILE, carried_windows, load_sequence_model, sweep_frames
from conftest import cli


def test_windows_never_cross_sweeps_or_patients(tiny_phantom):
    idx = index_dataset(tiny_phantom)
    sf = sweep_frames(idx.transitions)
    meta = {p: json.loads((tiny_phantom / p / "phantom.json").read_text()) for p in idx.patients}
    # every patient's 12 transitions in sweeps of meta["sweep"] transitions: one frame more per sweep than transitions
    n_sweeps = {p: int(np.ceil(m["transitions"] / m["sweep"])) for p, m in meta.items()}
    assert len(sf) == sum(m["transitions"] + n_sweeps[p] for p, m in meta.items())
    K = 5
    _, _, valid = carried_windows(np.zeros((len(sf), 6)), sf.motion, sf.position, K)
    lag = np.arange(K - 1, -1, -1)
    for i in range(len(sf)):
        for j in np.flatnonzero(valid[i].numpy()):
            k = i - lag[j]
            assert sf.patient[k] == sf.patient[i] and sf.sweep[k] == sf.sweep[i] and sf.position[k] == sf.position[i] - lag[j]
    # the first frame of every sweep has no history; a frame at position p has min(p, K-1) earlier frames
    np.testing.assert_array_equal(valid.sum(1).numpy(), np.minimum(sf.position, K - 1) + 1)


def test_labels_chain_through_the_motions_inside_a_sweep(tiny_phantom):
    sf = sweep_frames(index_dataset(tiny_phantom).transitions)
    carried, _, valid = carried_windows(sf.at, sf.motion, sf.position, 7)  # exact estimates, carried: the present truth
    err = (carried - torch.as_tensor(sf.at)[:, None]).abs()[valid]
    assert err.max() < 1e-6


def test_sequence_config_is_validated():
    assert config_from_dict({"sequence": {"window": 5}}).sequence.window == 5
    with pytest.raises(ConfigError, match="windw"):
        config_from_dict({"sequence": {"windw": 5}})
    with pytest.raises(ConfigError, match="divisible"):
        SequenceConfig(d_model=30, num_heads=4)
    with pytest.raises(ConfigError, match="window"):
        SequenceConfig(window=0)


@pytest.fixture(scope="module")
def sequence_run(trained_run, tmp_path_factory):
    "A copy of the debug run with a sequence head trained by `cardiac-dreamer train-sequence`."
    run = tmp_path_factory.mktemp("seq") / trained_run.name
    shutil.copytree(trained_run, run)
    r = cli("train-sequence", "--run_dir", run, "--set", "sequence.max_epochs=3", "--set", "sequence.window=4", "--no_progress")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "chosen on validation: fusion window" in r.stdout and f"Report: {run.resolve() / 'sequence_report.html'}" in r.stdout
    return run


def test_train_sequence_writes_its_files(sequence_run):
    for name in (SEQUENCE_FILE, "sequence_metrics.json", "sequence_predictions.csv", "plots/sequence_val.png", "plots/sequence_test.png",
                 "logs/sequence/metrics.csv", "checkpoints/sequence/best.ckpt"):
        assert (sequence_run / name).is_file(), name
    s = json.loads((sequence_run / "sequence_metrics.json").read_text())
    assert s["sequence"]["window"] == 4 and s["training"]["epochs"] == 3
    c = s["chosen_on_validation"]
    assert c["fusion_scores"][str(c["fusion_window"])] == min(c["fusion_scores"].values())  # the best window on validation
    for split in ("val", "test"):
        m = s["metrics"][split]
        assert set(m["paths"]) >= {"single", "fused", "sequence", "baseline"}
        assert all(0 < v < 10 for p in m["paths"].values() for v in p["ratio"].values())
    model, head, cfg = load_sequence_model(sequence_run)
    assert cfg.window == 4 and head.window == 4 and not head.training


def test_train_sequence_report(sequence_run):
    "The stage's papermill report: executed in the run folder, its settings, training curves, validation choices and per-split tables."
    import nbformat
    nb = nbformat.read(sequence_run / "sequence_report.ipynb", as_version=4)
    params = next(c.source for c in nb.cells if "injected-parameters" in c.metadata.get("tags", []))
    ns = {}; exec(params, ns)
    assert ns["overrides"] == {"max_epochs": 3, "window": 4} and ns["run_dir"] == str(sequence_run.resolve()), params
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.output_type == "error"]
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 3  # training curves, validation and test along the sweeps
    html = (sequence_run / "sequence_report.html").read_text()
    s = json.loads((sequence_run / "sequence_metrics.json").read_text())
    assert "trained now, best epoch" in html and f"fusion window chosen: {s['chosen_on_validation']['fusion_window']}" in html
    for text in ("validation patients (", "test patients (", "sweep-average floor", "sequence_predictions.csv"):
        assert text in html, text


def test_train_sequence_keeps_an_existing_head(sequence_run, tmp_path):
    before, report = (sequence_run / SEQUENCE_FILE).read_bytes(), (sequence_run / "sequence_report.html").read_bytes()
    # a call that fails (a data folder without the run's patients) leaves the earlier report and head as they were
    r = cli("train-sequence", "--run_dir", sequence_run, "--data_dir", tmp_path, "--no_progress")
    assert r.returncode != 0 and str(tmp_path) in r.stderr and "sequence_report_rerun.html" in r.stderr and "Traceback" not in r.stderr
    assert (sequence_run / "sequence_report.html").read_bytes() == report and (sequence_run / SEQUENCE_FILE).read_bytes() == before
    r = cli("train-sequence", "--run_dir", sequence_run, "--set", "sequence.max_epochs=1", "--no_progress")
    assert r.returncode == 0, r.stderr[-2000:]
    assert (sequence_run / SEQUENCE_FILE).read_bytes() == before
    assert "kept from" in (sequence_run / "sequence_report.html").read_text()  # the report says the head was not trained again
    assert not list(sequence_run.glob("sequence_report_rerun.*"))


@pytest.mark.parametrize("args, message", [
    (["--set", "sequence.windw=3"], "valid keys: sequence.enabled"),
    (["--set", "model.d_model=3"], "not a sequence setting"),
    (["--set", "sequence.window=0"], "window"),
])
def test_train_sequence_bad_settings(trained_run, tmp_path, args, message):
    run = tmp_path / "run"; shutil.copytree(trained_run, run)
    r = cli("train-sequence", "--run_dir", run, *args, "--no_progress")
    assert r.returncode != 0 and message in r.stderr + r.stdout
    assert not (run / SEQUENCE_FILE).exists() and not (run / "sequence_report.ipynb").exists()


def test_train_sequence_needs_a_finished_run(tmp_path):
    r = cli("train-sequence", "--run_dir", tmp_path, "--no_progress")
    assert r.returncode != 0 and "final_model.ckpt" in r.stderr + r.stdout and "Traceback" not in r.stderr


def test_corrupt_sequence_model_is_refused(sequence_run, tmp_path):
    bad = tmp_path / SEQUENCE_FILE
    bad.write_bytes((sequence_run / SEQUENCE_FILE).read_bytes()[:200])
    with pytest.raises(CheckpointError, match=str(bad)):
        load_sequence_model(bad)


def test_sequential_navigation_policies(sequence_run):
    from cardiac_dreamer.navigate import navigation_inputs, run_navigation
    model, dirs, _ = navigation_inputs(sequence_run / "final_model.ckpt")
    res = run_navigation(model, dirs, episodes=3, max_steps=4, policies=["model", "sequence", "dream"], sequence_model=sequence_run,
                         fusion_window=3)
    assert list(res.summary.index) == ["model", "sequence", "dream"]
    assert res.settings["dream_tau"] == json.loads((sequence_run / "sequence_metrics.json").read_text())["chosen_on_validation"]["dream_tau"]
    with pytest.raises(CardiacDreamerError, match="no sequence model"):
        run_navigation(model, dirs, episodes=1, max_steps=1, policies=["sequence"])


def test_guide_with_the_sequence_head(sequence_run, tmp_path):
    "`cardiac-dreamer guide ... --motions CSV --sequence_model RUN`: the moves are the streaming head's; a mismatched model is refused."
    import pandas as pd
    from cardiac_dreamer.geometry import POSE_AXES, POSE_UNITS
    from cardiac_dreamer.guide import MOVE_COLUMNS, phantom_sweep, strided_changes
    from cardiac_dreamer.recordings import write_frame_folder
    from cardiac_dreamer.sequence import SequenceTracker
    model, head, _ = load_sequence_model(sequence_run)
    sw = phantom_sweep(10, model.cfg.image_size)
    rec = write_frame_folder(sw["frames"], tmp_path / "sweep")
    pd.DataFrame(sw["changes"], columns=[f"{a}_{u}" for a, u in zip(POSE_AXES, POSE_UNITS)]).to_csv(tmp_path / "motions.csv", index=False)
    ckpt = sequence_run / "final_model.ckpt"
    r = cli("guide", ckpt, rec, "--motions", tmp_path / "motions.csv", "--sequence_model", sequence_run, "--every", "2", "--out", tmp_path / "g",
            "--batch_size", "2", "--no_video", "--no_gif", "--no_progress")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    got = pd.read_csv(tmp_path / "g" / "guidance.csv")
    tr, ch = SequenceTracker(model, head), strided_changes(sw["changes"], range(0, 10, 2))
    want = torch.cat([tr.update(f[None, None], None if k == 0 else ch[k][None]) for k, f in enumerate(sw["frames"][::2])]).numpy()
    np.testing.assert_allclose(got[MOVE_COLUMNS].to_numpy(), want, atol=2e-3)  # guidance.csv keeps 4 decimals
    s = json.loads((tmp_path / "g" / "summary.json").read_text())["settings"]
    assert s["fusion"] == "sequence_head" and s["window"] == head.window and s["sequence_model"] == str(sequence_run)
    r = cli("guide", ckpt, rec, "--sequence_model", sequence_run, "--out", tmp_path / "g2", "--no_progress")
    assert r.returncode != 0 and "pass motions too" in r.stderr and "Traceback" not in r.stderr and not (tmp_path / "g2").exists()


def test_world_model_study_needs_an_ablation(tmp_path):
    r = cli("world-model-study", "--ablation_dir", tmp_path, "--no_progress")
    assert r.returncode != 0 and "ablation_request.json: not found" in r.stderr + r.stdout and "Traceback" not in r.stderr


def _synthetic_study(ad):
    "An ablation folder as `world-model-study` leaves it: 2 seeds; validation chose tau = inf, so arm e has no closed loop of its own."
    import pandas as pd
    from cardiac_dreamer.config import atomic_write_json
    from cardiac_dreamer.geometry import POSE_AXES
    from cardiac_dreamer.wm_study import NAV_FILE
    ad.mkdir()
    atomic_write_json(ad / "ablation_request.json", dict(seeds=[0, 1], arms=["full", "no_world_model"], navigation=dict(episodes=4)))
    for seed in (0, 1):
        for run, pols in (("no_world_model", ["model"]), ("full", ["model", "fused", "sequence"])):
            rd = ad / f"{run}_seed{seed}"; rd.mkdir()
            ok = {"model": [1, 0, 0, 0], "fused": [1, 1, 0, 0], "sequence": [1, 1, 1, 0]}
            pd.DataFrame([dict(policy=p, episode=e, success=bool(ok[p][e]), steps_to_success=3.0 if ok[p][e] else np.nan,
                               final_trans_err=2.0, final_rot_err=3.0) for p in pols for e in range(4)]).to_csv(rd / NAV_FILE, index=False)
            paths = {p: dict(ratio={a: 0.6 for a in POSE_AXES}, mae={a: 1.0 for a in POSE_AXES}) for p in ("single", "fused", "sequence", "dream")}
            atomic_write_json(rd / "sequence_metrics.json", dict(metrics=dict(test=dict(paths=paths, min_history=1)),
                                                                 chosen_on_validation=dict(fusion_window=3, dream_tau=float("inf"))))
            pd.DataFrame(dict(split="test", patient="p", sweep=0, history=[1, 2],
                              **{f"err_{p}_{a}": [v + 0.1, -v + 0.1] for p, v in (("single", 1.0), ("baseline", 2.0)) for a in POSE_AXES})
                         ).to_csv(rd / "sequence_predictions.csv", index=False)


def test_results_notebook_reports_the_study(tmp_path):
    "nbs/results.ipynb with a study folder: the arms table, the figure, the verdict (arm e without a closed loop) and the averaging floor."
    import papermill as pm
    from conftest import ROOT
    from cardiac_dreamer.wm_study import summarize_world_model_study
    _synthetic_study(tmp_path / "ab")
    s = summarize_world_model_study(tmp_path / "ab")
    assert s["per_arm"]["e"]["success_rate"]["mean"] is None and abs(s["per_arm"]["b"]["floor_x"]["mean"] - 0.05) < 1e-9
    nb = pm.execute_notebook(str(ROOT / "nbs" / "results.ipynb"), str(tmp_path / "results.ipynb"), kernel_name="python3",
                             progress_bar=False, parameters=dict(study_dir=str(tmp_path / "ab")))
    text = "\n".join(str(o.get("data", {}).get("text/plain", "")) + str(o.get("data", {}).get("text/markdown", ""))
                     for c in nb.cells for o in c.get("outputs", []))
    assert "floor x" in text and "0.05" in text
    html = "\n".join(str(o.get("data", {}).get("text/html", "")) for c in nb.cells for o in c.get("outputs", []))
    assert "closed-loop success" in html and "missed" in html and "not reproduced" in html


def test_world_model_study_report(tmp_path):
    "nbs/world_model_study.ipynb renders a study folder as world_model_study_report.html: the arms, the floor, the runs, the verdict."
    from cardiac_dreamer.runs import run_notebook
    from cardiac_dreamer.wm_study import REPORT_NAME
    _synthetic_study(tmp_path / "ab")
    html = run_notebook("world_model_study", tmp_path / "ab", REPORT_NAME, dict(ablation_dir=str(tmp_path / "ab")), progress=False)
    assert html == tmp_path / "ab" / f"{REPORT_NAME}.html"
    page = html.read_text()
    for want in ("c: temporal fusion on b", "floor x", "not reproduced", "closed-loop success &gt;= 90% (best arm)", "<img"):
        assert want in page, want
