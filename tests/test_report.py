"""The training report a researcher reads after `cardiac-dreamer train`: HTML without code or library chatter, the final/best
metrics as a table, predicted vs true and the per-patient error of the validation patients; the per-patient chart at 288 patients."""
import html as _html
import json
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd

# Lightning / PyTorch / ipykernel messages that must not reach the report or the terminal
CHATTER = ["litlogger", "GPU available", "TPU available", "_pytree", "isinstance(treespec", "`weights_only` was not set",
           "without encryption", "KeyboardInterrupt caught", "UserWarning", "FutureWarning", "site-packages/", "was configured so 100%",
           "`Trainer.fit` stopped", "Restoring states", "Loaded model weights", "configure_callbacks"]


def _report(run: Path) -> str:
    return (run / "train_report.html").read_text()


def _text(html: str) -> str:
    "The HTML's visible text (tags removed, entities decoded)."
    body = html[html.index("<body"):]
    return _html.unescape(re.sub(r"<[^>]+>", "", body))


def test_report_hides_code_and_widgets(trained_run):
    html = _report(trained_run)
    nb = json.loads((trained_run / "train_report.ipynb").read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert any("prepare_run(" in "".join(c["source"]) for c in code)  # the executed notebook keeps the code ...
    assert "prepare_run(" not in html and "hl-ipython3" not in html  # ... the HTML does not
    assert '<div class="jp-InputPrompt' not in html and '<div class="jp-OutputPrompt' not in html  # no In [ ]: / Out [ ]:
    assert html.count("jp-CodeCell jp-Notebook-cell") == html.count("jp-mod-noInput") == len(code)
    n_md = sum(c["cell_type"] == "markdown" for c in nb["cells"])
    assert html.count('<div class="jp-InputArea') == n_md  # an input area only for the rendered markdown cells
    assert "application/vnd.jupyter.widget-view+json" not in html and "HBox(children" not in html  # no widget bars


def test_report_and_terminal_without_chatter(trained_run):
    text = _text(_report(trained_run))
    assert [s for s in CHATTER if s in text] == []
    terminal = (trained_run.parent / "cli_stderr.txt").read_text() + (trained_run.parent / "cli_stdout.txt").read_text()
    assert [s for s in CHATTER if s in terminal] == [], terminal[-2000:]
    # what matters is said once, in the report's tables
    assert "accelerator" in text and "precision" in text and "stopped: max_epochs=2 reached" in text


def test_report_metrics_as_html_table(trained_run):
    tables = re.findall(r"<table.*?</table>", _report(trained_run), re.S)
    best = [t for t in tables if "Final and best values" in t]
    assert len(best) == 1
    for name in ("val_main_task_loss", "train_total_loss", "val_single_mae_x", "best_epoch"): assert name in best[0], name
    assert re.search(r"<td[^>]*>\s*\d", best[0])  # numbers as text, copyable


def test_report_validation_patients(trained_run):
    run, html = trained_run, _report(trained_run)
    section = html[html.index("Validation patients (final model)"):]
    section = section[:section.index("Test-split metrics")]
    assert section.count("data:image/png;base64") == 2  # predicted vs true, and the per-patient errors
    assert "Validation error per patient" in section and "<table" in section
    for rel in ("plots/pred_vs_true_val.png", "plots/per_patient_val.png", "per_patient_val.csv"): assert (run / rel).is_file(), rel
    pp = pd.read_csv(run / "per_patient_val.csv", index_col="patient")
    val = json.loads((run / "experiment_config.json").read_text())["splits"]["val"]
    assert sorted(pp.index) == sorted(val)
    assert {"frames", "x (mm)", "yaw (deg)", "translation (mm)", "rotation (deg)", "mean predictor translation (mm)"} <= set(pp.columns)
    assert pp["translation (mm)"].is_monotonic_decreasing and pp.notna().all().all()


def test_training_summary_and_learning_rate(trained_run):
    from cardiac_dreamer.runs import csv_metrics
    assert (trained_run / "plots" / "training_summary.png").stat().st_size > 10_000
    cols = csv_metrics(trained_run).columns
    assert "learning_rate" in cols and not [c for c in cols if c.startswith("lr-")]  # LearningRateMonitor under the guide's name


def test_patient_panels_readable_at_288_patients():
    from cardiac_dreamer.plots import plot_dataset_statistics, transitions_table
    rng = np.random.default_rng(0)
    patients = [f"patient_{i:03d}" for i in range(288)]
    splits = {"train": patients[:202], "val": patients[202:245], "test": patients[245:]}
    ts = [SimpleNamespace(patient=p, entry=e, at1=rng.normal(size=6), change=rng.normal(size=6))
          for p in patients for e in range(int(rng.integers(5, 120)))]
    fig = plot_dataset_statistics(transitions_table(ts, splits), splits)
    ax = next(a for a in fig.axes if a.get_title().startswith("Samples per patient"))
    assert "288 patients" in ax.get_title()
    assert len([t for t in ax.get_xticklabels() if t.get_text()]) <= 20  # a histogram of samples per patient, not 288 names
    assert round(sum(p.get_height() for p in ax.patches)) == 288
    heat = next(a for a in fig.axes if a.get_title().startswith("Patient membership"))
    assert len(heat.get_yticklabels()) == 0 and "288 patients" in heat.get_ylabel()
