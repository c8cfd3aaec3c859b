"""`cardiac-dreamer tune` (issue 16): a 4-trial Optuna search with pruning on the debug configuration, run as 2 trials and then
continued from its SQLite storage to 4 (the second half on a local Ray cluster), with its report."""
import json
from pathlib import Path

import pytest
import yaml

from conftest import DEBUG_CONFIG
from cardiac_dreamer.config import load_config

optuna = pytest.importorskip("optuna")
pytest.importorskip("ray")


def test_tune_resumes_from_sqlite(tiny_phantom, tmp_path):
    from cardiac_dreamer.cli import build_parser
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({"training.lr": {"type": "float", "low": 1e-4, "high": 3e-3, "log": True},
                                     "model.token_type": {"type": "categorical", "choices": ["channel", "spatial"]}}))
    argv = ["tune", "--config", DEBUG_CONFIG, "--space", space, "--data_dir", tiny_phantom, "--output_dir", tmp_path / "out",
            "--set", "training.max_epochs=2", "--set", "data.max_transitions_per_patient=8", "--no_progress"]
    run = lambda *more: (a := build_parser().parse_args([str(x) for x in argv + list(more)])).func(a)
    assert run("--trials", "2", "--no_report") == 0
    folder = tmp_path / "out" / "tune_debug-space"
    study = optuna.load_study(study_name="debug-space", storage=f"sqlite:///{folder / 'optuna.db'}")
    first = {t.number: (t.params, t.value) for t in study.trials}
    assert len(first) == 2 and all(t.state.name in ("COMPLETE", "PRUNED") for t in study.trials)
    assert all(len(t.intermediate_values) >= 1 for t in study.trials)  # the pruning callback reported each validation epoch

    assert run("--trials", "4", "--executor", "ray", "--cpus_per_trial", "1") == 0  # continues the same study: 2 more trials
    study = optuna.load_study(study_name="debug-space", storage=f"sqlite:///{folder / 'optuna.db'}")
    assert len(study.trials) == 4 and {t.number: (t.params, t.value) for t in study.trials[:2]} == first
    assert all(t.state.name in ("COMPLETE", "PRUNED") and t.intermediate_values for t in study.trials)
    trials = json.loads((folder / "trials.json").read_text())["trials"]
    assert [trials[f"trial_{n:04d}"]["executor"] for n in range(4)] == ["local", "local", "ray", "ray"]
    s = json.loads((folder / "tune_summary.json").read_text())
    assert s["best"]["trial"] == study.best_trial.number and "--set training.lr=" in s["best"]["set_line"]
    assert len({tuple(sorted(t.params.items())) for t in study.trials}) == 4  # a continued search does not repeat earlier trials
    best = load_config(folder / "best_config.yaml")
    assert best.model.token_type == study.best_params["model.token_type"] and best.training.max_epochs == 2
    assert (folder / "tune_report.html").is_file()
    for n in range(4): assert (folder / f"trial_{n:04d}" / "status.json").is_file()


def test_trials_table_only_reads(tmp_path):
    "The panel's table reader never creates the search's tables: a reader racing the search's schema creation made it fail."
    import sqlite3
    from cardiac_dreamer.widgets import trials_table
    db = tmp_path / "optuna.db"
    sqlite3.connect(db).close()  # the file exists, the search has not created its tables yet
    df = trials_table(f"sqlite:///{db}", "panel-x")
    assert df.empty and list(df.columns) == ["trial", "state", "value"]
    with sqlite3.connect(db) as c: assert c.execute("select name from sqlite_master").fetchall() == []


def test_panel_search_shows_trials(tiny_phantom, tmp_path):
    """The hyperparameter panel's Search button runs a small search in the background; its table fills from the Optuna storage."""
    import time
    from cardiac_dreamer.widgets import HyperparameterPanel
    p = HyperparameterPanel(DEBUG_CONFIG, output_dir=tmp_path, data_dir=tiny_phantom, poll_s=1.0)
    p.controls["training.max_epochs"].value = 1
    p.controls["data.max_transitions_per_patient"].value = "8"
    p.search_trials.value = 1
    t0 = time.monotonic(); p.search_button.click()
    assert time.monotonic() - t0 < 5 and p.search_proc is not None and p.search_button.disabled, p.message.value
    end = time.monotonic() + 600
    while not (p.search_proc.poll() is not None and not p.search_button.disabled) and time.monotonic() < end: time.sleep(1)
    assert p.search_proc.returncode == 0, p.search_status.value + "\n" + p.search_log.read_text()[-4000:]
    df = p.search_trials_df
    assert df.state.tolist() == ["complete"] and {"training.lr", "model.dropout"} <= set(df.columns), df
    assert "complete" in p.search_table.value and "tune_report.html" in p.search_status.value


def test_shipped_search_space_is_valid_for_the_demo():
    "The README's `tune --space configs/search_spaces/demo.yaml` works: every range end and choice is a valid demo configuration."
    from cardiac_dreamer.tune import check_space, load_space
    root = Path(__file__).resolve().parents[1]
    space = load_space(root / "configs" / "search_spaces" / "demo.yaml")
    assert {"training.lr", "model.dropout"} <= set(space) and space["training.lr"]["log"]
    check_space(space, root / "configs" / "demo.yaml")
    from cardiac_dreamer.config import shipped_configs
    assert "demo" in shipped_configs() and not any("space" in n for n in shipped_configs())  # a search space is no configuration
