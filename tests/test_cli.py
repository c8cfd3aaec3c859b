"""The command line as a newcomer meets it (issue 18): every argument described, an example per subcommand, fast `--help`, one
wording for a missing checkpoint, the config loader's notes and Python warnings as one line each, the shipped defaults."""
import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import ROOT, cli

from cardiac_dreamer.cli import DEFAULT_CONFIG, build_parser, main


def _subcommands() -> dict:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def test_every_argument_has_help_and_every_subcommand_an_example():
    cmds = _subcommands()
    assert {"check-data", "make-phantom", "train", "fit", "demo", "evaluate", "navigate", "cv", "sweep", "ablation", "bench",
            "import"} <= set(cmds)
    bare = {name: [a.option_strings[0] if a.option_strings else a.dest for a in p._actions
                   if not a.help and not isinstance(a, argparse._HelpAction)] for name, p in cmds.items()}
    assert not {k: v for k, v in bare.items() if v}, bare
    no_example = [name for name, p in cmds.items() if "example" not in (p.epilog or "") or "cardiac-dreamer" not in p.epilog
                  and "cardiac_dreamer" not in p.epilog]
    assert not no_example, no_example
    top = build_parser()
    assert all(a.help for a in top._actions if not isinstance(a, argparse._HelpAction)), "top-level arguments without help"


@pytest.mark.parametrize("name", sorted(_subcommands()))
def test_subcommand_help_shows_description_and_example(name, capsys):
    with pytest.raises(SystemExit) as e: build_parser().parse_args([name, "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: cardiac-dreamer {name}") and "example:" in out, out[-800:]
    example = out.split("example:", 1)[1]
    assert "\n  " in example and ("cardiac-dreamer" in example or "cardiac_dreamer" in example)  # kept as written (RawDescription)


def test_top_level_help_is_fast():
    "`cardiac-dreamer --help` in a fresh process: exit 0, every subcommand listed, torch not imported (the bench records the time)."
    code = ("import sys, time, contextlib, io; t = time.perf_counter()\n"
            "from cardiac_dreamer.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()) as out:\n"
            "    try: main(['--help'])\n"
            "    except SystemExit as e: assert e.code == 0\n"
            "print(time.perf_counter() - t, 'torch' in sys.modules, 'evaluate' in out.getvalue() and 'check-data' in out.getvalue())")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stderr
    seconds, torch_loaded, listed = r.stdout.split()
    assert torch_loaded == "False" and listed == "True"
    assert float(seconds) < 10, seconds  # < 1 s on an idle machine; generous here, the machine is shared


def test_missing_checkpoint_is_worded_the_same_everywhere(tmp_path, capsys):
    "evaluate, navigate and a resume (train and fit) give one message naming the file, before any slow import."
    missing = tmp_path / "run_x" / "checkpoints" / "best.ckpt"
    errors = {}
    for argv in (["evaluate", "--checkpoint", missing], ["navigate", "--checkpoint", missing],
                 ["train", "--resume_from_checkpoint", missing], ["fit", "--resume_from_checkpoint", missing]):
        assert main(argv) == 2
        errors[argv[0]] = capsys.readouterr().err.strip()
    assert len(set(errors.values())) == 1, errors
    msg = errors["evaluate"]
    assert msg == (f"error: {missing}: checkpoint file not found (a run keeps RUN/checkpoints/last.ckpt to resume from and "
                   "RUN/checkpoints/best.ckpt, its best weights, to evaluate)")
    missing.parent.mkdir(parents=True); (missing.parent / "last.ckpt").write_bytes(b"x")
    assert main(["evaluate", "--checkpoint", missing]) == 2
    assert capsys.readouterr().err.strip().endswith(f"; {missing.parent} holds last.ckpt)")


def test_missing_checkpoint_before_torch(tmp_path):
    code = ("import sys; from cardiac_dreamer.cli import main\n"
            f"rc = main(['evaluate', '--checkpoint', {str(tmp_path / 'nope.ckpt')!r}])\n"
            "print(rc, 'torch' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.stdout.split() == ["2", "False"], (r.stdout, r.stderr)


def test_defaults_a_laptop_can_run():
    "train, fit and demo default to the shipped demo configuration, found by name from any working directory."
    assert DEFAULT_CONFIG == "demo"
    for cmd in ("train", "fit", "demo"):
        assert build_parser().parse_args([cmd]).config == "demo"
    assert build_parser().parse_args(["check-data", "d"]).config == "demo"
    helps = {a.dest: a.help for a in _subcommands()["train"]._actions}
    assert "demo" in helps["config"] and "production" in helps["config"] and "YAML" in helps["config"]


def test_notebook_default_agrees_with_the_cli():
    nb = json.loads((ROOT / "nbs" / "train.ipynb").read_text())
    params = next("".join(c["source"]) for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", []))
    line = next(l for l in params.splitlines() if l.startswith("config_path"))
    assert Path(line.split("=", 1)[1].split("#")[0].strip().strip('"')).stem == DEFAULT_CONFIG, line


def test_check_data_checklist_notes_and_warnings(dataset, tmp_path):
    """check-data goes through the guide's checklist (accelerator, disk, package pins); a config note is one `note:` line on
    stderr, and no raw warning (with its source line) reaches the terminal."""
    cfg = tmp_path / "guide.yaml"
    cfg.write_text("training:\n  precision: 16\n  num_workers: 0\n")
    r = cli("check-data", dataset, "--config", cfg, "--output_dir", tmp_path / "outputs", cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    acc = next(l for l in lines if "accelerator:" in l)
    assert acc.startswith("  [ok] accelerator: ") and ("CPU only:" in acc and "cores" in acc or "CUDA" in acc), acc
    disk = next(l for l in lines if "disk:" in l)
    assert f"free for {tmp_path / 'outputs'};" in disk and "top-3 + last.ckpt" in disk and "final_model.ckpt" in disk, disk
    assert any("packages:" in l for l in lines) and lines[-1] == "Ready to train."
    err = r.stderr.splitlines()
    assert f"note: {cfg}: training.precision 16 is read as '16-mixed'" in err, r.stderr
    assert any(l.startswith("note: ") and "training.num_workers" in l and "data.num_workers" in l for l in err), r.stderr
    assert "Warning" not in r.stderr and "warnings.warn" not in r.stderr, r.stderr
    assert all(l.startswith(("note: ", "warning: ")) for l in err), r.stderr


def test_check_data_refuses_a_full_disk(dataset, tmp_path, monkeypatch, capsys):
    import cardiac_dreamer.runs as runs
    monkeypatch.setattr(runs, "free_disk_bytes", lambda folder: (Path(folder), 1_000_000))
    assert main(["check-data", str(dataset), "--config", "demo", "--output_dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path}: 1 MB free, but a run keeps about" in err and "training.save_top_k=1" in err, err


def test_check_data_warns_about_pins(dataset, tmp_path, monkeypatch, capsys):
    import cardiac_dreamer.runs as runs
    (tmp_path / "constraints.txt").write_text("torch==0.0.1\nno-such-package==1.0\n")
    monkeypatch.setattr(runs, "workbook_root", lambda: tmp_path)
    assert main(["check-data", str(dataset), "--config", "debug", "--output_dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    line = next(l for l in out.splitlines() if "packages:" in l)
    assert line.startswith("  [warn] packages: 1 of 2 differ") and "(pinned 0.0.1)" in line, line
    assert out.rstrip().endswith("Ready to train.")  # a version difference is a warning, not an error
