"""Reliability and security acceptance: runs survive SIGKILL / SIGTERM / Ctrl-C / NaN losses and resume to the uninterrupted result,
files are written atomically, every refused input (docs/refused_inputs.md) fails before training with a message naming it, and
checkpoints, configurations and papermill parameters are read as data, never run as code."""
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import pytest

from conftest import DEBUG_CONFIG, ROOT, cli

# ------------------------------------------------------------------------------------------------------------------------------
# 1. Faults: kill a training process and resume it
# ------------------------------------------------------------------------------------------------------------------------------
# Deterministic CPU training, small batches so that an epoch lasts long enough for a signal to land inside it.
FIT_ARGS = ["--config", DEBUG_CONFIG, "--no_progress", "--set", "training.deterministic=true", "--set", "training.accelerator=cpu",
            "--set", "training.max_epochs=3", "--set", "training.batch_size=2", "--set", "training.save_top_k=1"]
LEAN_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}  # same threads in every process: same floating-point results


def _val_losses(run: Path) -> dict:
    "epoch -> val_main_task_loss over every CSV version of a run."
    from cardiac_dreamer.runs import csv_metrics
    m = csv_metrics(run)
    v = m.loc[m["val_main_task_loss"].notna()]
    return {int(e): float(x) for e, x in zip(v["epoch"], v["val_main_task_loss"])}


def _ckpt(path: Path) -> dict:
    import torch
    return torch.load(path, map_location="cpu", weights_only=True)


def _start_fit(log: Path, *args) -> subprocess.Popen:
    "`cardiac-dreamer fit ARGS` in the background, its output in `log` (a pipe could fill up while nobody reads it)."
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **LEAN_ENV}
    with open(log, "w") as f:
        p = subprocess.Popen([sys.executable, "-m", "cardiac_dreamer", "fit", *map(str, args)], cwd=ROOT, env=env,
                             stdout=f, stderr=subprocess.STDOUT, text=True)
    p.log = log
    return p


def _wait_until(pred, proc: subprocess.Popen, timeout: float = 600):
    "Poll `pred` while `proc` trains; fail if training ends first."
    t0 = time.monotonic()
    while not pred():
        if proc.poll() is not None:
            pytest.fail(f"training ended (rc {proc.returncode}) before the signal could be sent:\n{proc.log.read_text()[-3000:]}")
        assert time.monotonic() - t0 < timeout, "timed out waiting for the next epoch"
        time.sleep(0.02)


@pytest.fixture(scope="module")
def uninterrupted_started(tiny_phantom, tmp_path_factory) -> tuple:
    "Start a run of 3 epochs that nothing interrupts (the reference result); it trains while the interrupted one does."
    out = tmp_path_factory.mktemp("uninterrupted")
    p = _start_fit(out.parent / f"{out.name}.log", *FIT_ARGS, "--data_dir", tiny_phantom, "--output_dir", out)
    yield p, out
    if p.poll() is None: p.kill()


@pytest.fixture(scope="module")
def uninterrupted(uninterrupted_started) -> Path:
    "The finished reference run."
    p, out = uninterrupted_started
    assert p.wait(timeout=900) == 0, p.log.read_text()[-3000:]
    (run,) = out.glob("run_*")
    assert sorted(_val_losses(run)) == [0, 1, 2]
    return run


@pytest.fixture(scope="module")
def interrupted(tiny_phantom, tmp_path_factory, uninterrupted_started) -> dict:
    """The same run SIGKILLed during epoch 1, resumed, SIGTERMed during epoch 2, resumed again to the end.
    Returns what each stage left behind."""
    out = tmp_path_factory.mktemp("interrupted")
    last = lambda: next(iter(out.glob("run_*/checkpoints/last.ckpt")), None)
    info = {}
    # stage 1: SIGKILL as soon as epoch 0 is checkpointed, i.e. in the middle of epoch 1
    p = _start_fit(out.parent / "kill.log", *FIT_ARGS, "--data_dir", tiny_phantom, "--output_dir", out)
    _wait_until(lambda: last() is not None, p)
    p.send_signal(signal.SIGKILL); p.wait()
    run = last().parent.parent
    info["kill"] = dict(rc=p.returncode, last_epoch=_ckpt(last())["epoch"], status=json.loads((run / "status.json").read_text()),
                        final_exists=(run / "final_model.ckpt").exists(), files=sorted(p.name for p in (run / "checkpoints").iterdir()))
    # stage 2: resume; SIGTERM as soon as the resumed run checkpoints its first epoch (last.ckpt is rewritten at the end of every
    # epoch, improved or not), i.e. in the middle of the next one
    before = last().stat().st_mtime_ns
    p = _start_fit(out.parent / "term.log", *FIT_ARGS, "--resume_from_checkpoint", last())
    _wait_until(lambda: last().stat().st_mtime_ns != before, p)
    p.send_signal(signal.SIGTERM)
    p.wait(timeout=600)
    info["term"] = dict(rc=p.returncode, stderr=(out.parent / "term.log").read_text(), last_ckpt={k: _ckpt(last())[k] for k in ("epoch", "global_step")},
                        status=json.loads((run / "status.json").read_text()), interrupted=run / "checkpoints" / "interrupted.ckpt")
    # stage 3: resume to the end
    r = cli("fit", *FIT_ARGS, "--resume_from_checkpoint", last(), env=LEAN_ENV)
    info["resume"] = dict(rc=r.returncode, out=r.stdout[-3000:] + r.stderr[-3000:], runs=sorted(out.glob("run_*")))
    info["run"] = run
    return info


def test_sigkill_mid_epoch_leaves_a_resumable_run(interrupted):
    k = interrupted["kill"]
    assert k["rc"] == -signal.SIGKILL
    assert k["last_epoch"] in (0, 1) and not k["final_exists"]     # killed in the middle of the run (normally in epoch 1)
    assert k["status"]["state"] == "running"                       # SIGKILL leaves no chance to write anything ...
    assert "last.ckpt" in k["files"]


def test_stale_running_status_reads_interrupted(interrupted, tmp_path):
    from cardiac_dreamer.runs import read_status
    d = tmp_path / "run"; d.mkdir()
    (d / "status.json").write_text(json.dumps(interrupted["kill"]["status"]))  # ... but the killed process is gone
    st = read_status(d)
    assert st["state"] == "interrupted" and st["stale"] and "last.ckpt" in st["reason"]


def test_sigterm_writes_a_checkpoint_and_marks_the_run_interrupted(interrupted):
    t = interrupted["term"]
    assert t["rc"] == 128 + signal.SIGTERM, t["stderr"][-3000:]
    assert "Traceback" not in t["stderr"] and "interrupted: training stopped by SIGTERM" in t["stderr"], t["stderr"][-3000:]
    assert "--resume_from_checkpoint" in t["stderr"] and "last.ckpt" in t["stderr"]
    assert t["status"]["state"] == "interrupted" and "SIGTERM" in t["status"]["reason"]
    assert t["interrupted"].is_file()                                 # the weights of the moment it stopped ...
    ick, last = _ckpt(t["interrupted"]), t["last_ckpt"]
    assert "cardiac_dreamer" in ick and ick["optimizer_states"]
    assert last["epoch"] == 1 and ick["global_step"] >= last["global_step"]  # ... during epoch 2 (or just as it began);
    # last.ckpt stays at the end of epoch 1, the last completed epoch


def test_resumed_run_equals_uninterrupted_run(interrupted, uninterrupted):
    r = interrupted["resume"]
    assert r["rc"] == 0, r["out"]
    run = interrupted["run"]
    assert r["runs"] == [run]                                         # the same run folder, no new one
    want, got = _val_losses(uninterrupted), _val_losses(run)
    assert sorted(got) == [0, 1, 2]
    assert got[2] == pytest.approx(want[2], rel=1e-6, abs=0), (got, want)   # the final val_main_task_loss
    st = json.loads((run / "status.json").read_text())
    assert st["state"] == "finished" and st["last_val_main_task_loss"] == pytest.approx(want[2], rel=1e-6, abs=0)
    assert (run / "final_model.ckpt").is_file()
    assert not list(run.rglob(".*.tmp"))                              # no temporary file of an interrupted write is left


# --- in-process faults on a copy of the finished reference run (no new data report: fast) ----------------------------------
def _copy_run(uninterrupted: Path, dest: Path) -> Path:
    run = dest / uninterrupted.name
    shutil.copytree(uninterrupted, run)
    return run


def _main(argv) -> int:
    from cardiac_dreamer.cli import main
    return main([str(a) for a in argv])


def test_non_finite_loss_fails_the_run_and_keeps_the_last_good_checkpoint(uninterrupted, tmp_path, monkeypatch, capsys):
    import torch
    from cardiac_dreamer.system import CardiacDreamerSystem
    run = _copy_run(uninterrupted, tmp_path)
    last = run / "checkpoints" / "last.ckpt"
    good = last.read_bytes()
    train_step = CardiacDreamerSystem.training_step
    monkeypatch.setattr(CardiacDreamerSystem, "training_step", lambda self, b, i: train_step(self, b, i) * torch.tensor(float("nan")))
    rc = _main(["fit", "--resume_from_checkpoint", last, "--no_progress", "--set", "training.max_epochs=5",
                "--set", "training.deterministic=false"])
    err = capsys.readouterr().err
    assert rc == 2 and "error: non-finite training loss (nan) at epoch 3" in err and "Traceback" not in err, err
    st = json.loads((run / "status.json").read_text())
    assert st["state"] == "failed" and "non-finite training loss" in st["reason"]
    assert last.read_bytes() == good                                   # the last good checkpoint is kept, untouched
    assert not (run / "checkpoints" / "interrupted.ckpt").exists()   # broken weights are never saved


def test_ctrl_c_writes_a_checkpoint_and_exits_130(uninterrupted, tmp_path, monkeypatch, capsys):
    from cardiac_dreamer.system import CardiacDreamerSystem
    run = _copy_run(uninterrupted, tmp_path)
    last = run / "checkpoints" / "last.ckpt"
    good = last.read_bytes()
    train_step = CardiacDreamerSystem.training_step
    def ctrl_c(self, batch, i):
        if i == 2: raise KeyboardInterrupt  # what Ctrl-C raises in the training process
        return train_step(self, batch, i)
    monkeypatch.setattr(CardiacDreamerSystem, "training_step", ctrl_c)
    sigint = signal.getsignal(signal.SIGINT)
    rc = _main(["fit", "--resume_from_checkpoint", last, "--no_progress", "--set", "training.max_epochs=5",
                "--set", "training.deterministic=false"])
    err = capsys.readouterr().err
    assert rc == 130 and "interrupted: training stopped by SIGINT during epoch 3" in err, err
    assert signal.getsignal(signal.SIGINT) is sigint                  # Ctrl-C works again afterwards
    st = json.loads((run / "status.json").read_text())
    assert st["state"] == "interrupted" and "SIGINT" in st["reason"]
    assert (run / "checkpoints" / "interrupted.ckpt").is_file() and last.read_bytes() == good


def test_resume_refuses_a_run_that_is_still_running(uninterrupted, tmp_path, capsys):
    from cardiac_dreamer.runs import write_status
    run = _copy_run(uninterrupted, tmp_path)
    write_status(run, "running")  # this (live) process
    rc = _main(["fit", "--resume_from_checkpoint", run / "checkpoints" / "last.ckpt", "--no_progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "is still running" in err, err


# --- atomic writes -----------------------------------------------------------------------------------------------------------
def test_lightning_writes_checkpoints_through_the_atomic_writer(tiny_phantom, tmp_path):
    from cardiac_dreamer.system import AtomicCheckpointIO
    from cardiac_dreamer.runs import resolve_config
    from cardiac_dreamer.train import build_trainer
    cfg = resolve_config(DEBUG_CONFIG, ["training.accelerator=cpu"], data_dir=str(tiny_phantom))
    assert isinstance(build_trainer(cfg, tmp_path, progress=False).strategy.checkpoint_io, AtomicCheckpointIO)


def test_failed_checkpoint_write_keeps_the_previous_file(tmp_path, monkeypatch):
    import torch
    import cardiac_dreamer.system as cds
    io, target = cds.AtomicCheckpointIO(), tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"epoch": 1, "w": torch.arange(1000.0)}, target)
    good = target.read_bytes()
    def killed_mid_write(obj, f):
        f.write(good[: len(good) // 2]); f.flush()
        raise KeyboardInterrupt("killed while saving")
    monkeypatch.setattr(cds.torch, "save", killed_mid_write)
    with pytest.raises(KeyboardInterrupt): io.save_checkpoint({"epoch": 2}, target)
    assert target.read_bytes() == good and os.listdir(target.parent) == ["last.ckpt"]


def test_sigkill_while_saving_leaves_the_previous_checkpoint(tmp_path):
    "A real SIGKILL in the middle of writing a checkpoint: no Python clean-up runs, yet last.ckpt is the previous complete file."
    target = tmp_path / "checkpoints" / "last.ckpt"
    code = f"""
import os, signal, torch
from cardiac_dreamer.system import AtomicCheckpointIO
io = AtomicCheckpointIO()
io.save_checkpoint({{"epoch": 1, "w": torch.arange(100000.0)}}, {str(target)!r})
def dies(obj, f):
    f.write(b"PK" + bytes(50000)); f.flush(); os.kill(os.getpid(), signal.SIGKILL)
torch.save = dies
io.save_checkpoint({{"epoch": 2, "w": torch.zeros(100000)}}, {str(target)!r})
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert r.returncode == -signal.SIGKILL, r.stderr[-3000:]
    ck = _ckpt(target)
    assert ck["epoch"] == 1 and float(ck["w"][-1]) == 99999.0
    leftovers = [p for p in target.parent.iterdir() if p.name != "last.ckpt"]
    assert len(leftovers) == 1 and leftovers[0].name.startswith(".last.") and leftovers[0].name.endswith(".tmp.ckpt")  # atomic_path
    from cardiac_dreamer.train import _remove_stale_temporaries  # what a resumed run does first
    _remove_stale_temporaries(tmp_path)
    assert os.listdir(target.parent) == ["last.ckpt"]


def test_status_and_config_writes_are_atomic(tmp_path, monkeypatch):
    from cardiac_dreamer.config import Config, load_config, save_config
    from cardiac_dreamer.runs import read_status, write_status
    write_status(tmp_path, "running")
    save_config(Config(), tmp_path / "config.yaml")
    before = {p: (tmp_path / p).read_bytes() for p in ("status.json", "config.yaml")}
    def killed(fd): raise KeyboardInterrupt("killed while writing")
    monkeypatch.setattr(os, "fsync", killed)
    with pytest.raises(KeyboardInterrupt): write_status(tmp_path, "finished")
    with pytest.raises(KeyboardInterrupt): save_config(Config(), tmp_path / "config.yaml")
    monkeypatch.undo()
    assert {p: (tmp_path / p).read_bytes() for p in before} == before
    assert read_status(tmp_path)["state"] == "running" and load_config(tmp_path / "config.yaml") == Config()
    assert sorted(os.listdir(tmp_path)) == ["config.yaml", "status.json"]


# --- run folders ---------------------------------------------------------------------------------------------------------------
def test_runs_started_in_the_same_second_get_different_folders(tmp_path):
    import datetime as dt
    from cardiac_dreamer.runs import new_run_dir
    now, got, lock = dt.datetime(2026, 11, 25, 20, 45, 1), [], threading.Lock()
    def start():
        d = new_run_dir(tmp_path, now=now)
        with lock: got.append(d.name)
    threads = [threading.Thread(target=start) for _ in range(16)]
    for t in threads: t.start()
    for t in threads: t.join()
    assert len(set(got)) == 16 and "run_20261125_204501" in got and "run_20261125_204501_16" in got


def test_a_new_run_never_reuses_a_run_folder(uninterrupted, tmp_path):
    from cardiac_dreamer.config import CardiacDreamerError
    from cardiac_dreamer.runs import write_status
    from cardiac_dreamer.train import _check_run_folder_free
    run = _copy_run(uninterrupted, tmp_path)
    with pytest.raises(CardiacDreamerError, match="already holds a finished run"): _check_run_folder_free(run)
    write_status(run, "failed", "boom")
    with pytest.raises(CardiacDreamerError, match="already holds the checkpoints"): _check_run_folder_free(run)
    empty = tmp_path / "left_nothing"; empty.mkdir(); write_status(empty, "failed", "data error")
    _check_run_folder_free(empty)  # a run that failed before its first checkpoint may be started again there


# ------------------------------------------------------------------------------------------------------------------------------
# 2. Bad input: every refused input of docs/refused_inputs.md, through the command line
# ------------------------------------------------------------------------------------------------------------------------------
DOC = ROOT / "docs" / "refused_inputs.md"
MARKER = "pwned_by_checkpoint"  # a file that a malicious checkpoint tries to create


def _png(w: int, h: int) -> bytes:
    "A PNG whose header declares w x h 8-bit gray pixels (the pixel data is a stub: only the header is read before decoding)."
    def chunk(kind, data): return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def _entries(folder: Path) -> list:
    return json.loads((folder / "transitions_dataset.json").read_text())


def _save(folder: Path, entries):
    (folder / "transitions_dataset.json").write_text(json.dumps(entries, indent=1))


def _set(key, value, i=1):
    def edit(p):
        es = _entries(p); es[i][key] = value; _save(p, es)
    return edit


def _drop(key, i=1):
    def edit(p):
        es = _entries(p); es[i].pop(key); _save(p, es)
    return edit


def _write(rel, data: bytes):
    return lambda p: (p / rel).write_bytes(data)


def _symlink_outside(p):
    outside = p.parent.parent / "outside.png"
    shutil.copy(p / "ft1" / "frame_0001.png", outside)
    (p / "ft1" / "frame_0001.png").unlink()
    os.symlink(outside, p / "ft1" / "frame_0001.png")


def _lab_tiff(p):
    from PIL import Image
    Image.new("LAB", (32, 32)).save(p / "ft1" / "frame_0001.tif")
    es = _entries(p); es[1]["ft1_image_path"] = "ft1\\frame_0001.tif"; _save(p, es)


def _truncate_json(p):
    (p / "transitions_dataset.json").write_text((p / "transitions_dataset.json").read_text()[:-40])


def _no_json(p):
    for q in p.parent.iterdir(): (q / "transitions_dataset.json").unlink()


def _empty(p):
    for q in list(p.parent.iterdir()): shutil.rmtree(q)


def _one_patient(p):
    for q in list(p.parent.iterdir()):
        if q != p: shutil.rmtree(q)


J = "p1/transitions_dataset.json"  # the file the data cases break
# id: (category, what is refused, edit of patient p1 or None, extra arguments, words the message must hold)
CASES = {
    "data_dir_missing": ("data", "data folder that does not exist", None, ["--data_dir", "{tmp}/nowhere"], ["nowhere", "does not exist"]),
    "data_dir_empty": ("data", "empty data folder", _empty, [], ["no patient folders"]),
    "json_missing": ("data", "no patient folder holds transitions_dataset.json", _no_json, [], ["no sub-folder holds transitions_dataset.json", "p1"]),
    "json_malformed": ("data", "malformed (truncated) JSON", _truncate_json, [], [J, "invalid JSON at line"]),
    "json_not_a_list": ("data", "JSON that is not a list of transitions", lambda p: (p / "transitions_dataset.json").write_text('{"a": 1}'), [], [J, "expected a JSON list"]),
    "nan_label": ("data", "NaN in a 6-DOF vector", _set("at1_6dof", [0, 0, float("nan"), 0, 0, 0]), [], [J, "entry 1", "field 'at1_6dof'", "not finite"]),
    "five_numbers": ("data", "5-element 6-DOF vector", _set("action_change_6dof", [0.1] * 5), [], [J, "entry 1", "field 'action_change_6dof'", "got 5"]),
    "missing_key": ("data", "entry without a required key", _drop("at2_6dof"), [], [J, "entry 1", "field 'at2_6dof'", "missing required key"]),
    "missing_image": ("data", "image file that does not exist", lambda p: (p / "ft2" / "frame_0002.png").unlink(), [], [J, "entry 1", "field 'ft2_image_path'", "not found"]),
    "dotdot_path": ("data", "image path with `..`", _set("ft1_image_path", "..\\p0\\ft1\\frame_0001.png"), [], [J, "entry 1", "field 'ft1_image_path'", "escapes the patient folder"]),
    "absolute_path": ("data", "absolute image path", _set("ft2_image_path", "/etc/passwd"), [], [J, "entry 1", "field 'ft2_image_path'", "absolute path"]),
    "symlink_outside": ("data", "image that is a symlink leaving the patient folder", _symlink_outside, [], [J, "field 'ft1_image_path'", "outside the patient folder"]),
    "zero_byte_png": ("data", "zero-byte PNG", _write("ft1/frame_0001.png", b""), [], [J, "entry 1", "field 'ft1_image_path'", "0 bytes"]),
    "not_an_image": ("data", "file that is not an image", _write("ft1/frame_0001.png", b"just some text"), [], [J, "entry 1", "field 'ft1_image_path'", "not a readable image"]),
    "image_too_large": ("data", "image of the wrong size: 30000 x 30000 px (decompression bomb)", _write("ft1/frame_0001.png", _png(30000, 30000)), [], [J, "entry 1", "field 'ft1_image_path'", "too large to decode safely"]),
    "image_wrong_mode": ("data", "image of the wrong mode (LAB colour TIFF)", _lab_tiff, [], [J, "entry 1", "field 'ft1_image_path'", "image mode 'LAB'"]),
    "labels_wrong_convention": ("data", "labels that do not follow the configured convention", None, ["--set", "data.label_convention=se3"], ["transitions_dataset.json", "'additive' convention", "data.label_convention"]),
    "one_patient_auto_split": ("data", "one patient only for the automatic split", _one_patient, [], ["split_mode=auto needs at least 3 patients", "found 1"]),
    "manual_duplicate_patient": ("data", "the same patient in two manual split lists", None, ["--manual_splits", "--train_patients", "p0,p1", "--val_patients", "p1", "--test_patients", "p2"], ["patient 'p1' is in both data.train_patients and data.val_patients"]),
    "manual_unknown_patient": ("data", "unknown patient in a manual split list", None, ["--manual_splits", "--train_patients", "p0,p1", "--val_patients", "nobody"], ["data.val_patients: unknown patient folder(s) nobody"]),
    "split_lists_without_manual": ("command line", "patient lists without --manual_splits", None, ["--train_patients", "p0"], ["need --manual_splits"]),
    "config_missing": ("config", "configuration file that does not exist", None, ["--config", "{tmp}/nope.yaml"], ["nope.yaml", "config file not found"]),
    "config_invalid_yaml": ("config", "configuration file that is not valid YAML", None, ["--config", "{tmp}/broken.yaml"], ["broken.yaml", "invalid YAML"]),
    "config_python_tag": ("config", "YAML tag that would build a Python object", None, ["--config", "{tmp}/evil.yaml"], ["evil.yaml", "invalid YAML"]),
    "config_unknown_section": ("config", "unknown section in a configuration file", None, ["--config", "{tmp}/section.yaml"], ["section.yaml", "unknown section 'optimizer'"]),
    "config_unknown_key": ("config", "unknown key", None, ["--set", "training.lrr=0.1"], ["unknown key 'training.lrr'", "did you mean 'training.lr'"]),
    "config_wrong_type": ("config", "value of the wrong type", None, ["--set", "training.max_epochs=many"], ["training.max_epochs", "expected int", "'many'"]),
    "config_negative_lr": ("config", "negative learning rate", None, ["--set", "training.lr=-0.001"], ["training.lr=-0.001", "must be > 0"]),
    "config_d_model_heads": ("config", "d_model not divisible by num_heads", None, ["--set", "model.d_model=30"], ["model.d_model=30", "model.num_heads=4", "divisible"]),
    "config_malformed_set": ("config", "--set without `=`", None, ["--set", "training.lr"], ["'training.lr' is not of the form section.key=value"]),
    "resume_missing": ("checkpoint", "checkpoint file that does not exist", None, ["--resume_from_checkpoint", "{tmp}/run_x/checkpoints/nope.ckpt"], ["nope.ckpt", "not found"]),
    "resume_truncated": ("checkpoint", "truncated checkpoint", None, ["--resume_from_checkpoint", "{tmp}/run_x/checkpoints/truncated.ckpt"], ["truncated.ckpt", "truncated or corrupt"]),
    "resume_not_a_checkpoint": ("checkpoint", "file that is not a checkpoint", None, ["--resume_from_checkpoint", "{tmp}/run_x/checkpoints/random.ckpt"], ["random.ckpt", "cannot load checkpoint"]),
    "resume_malicious": ("checkpoint", "checkpoint whose unpickling would run code", None, ["--resume_from_checkpoint", "{tmp}/run_x/checkpoints/evil.ckpt"], ["evil.ckpt", "refused to unpickle"]),
    "resume_weights_only": ("checkpoint", "checkpoint without training state", None, ["--resume_from_checkpoint", "{tmp}/run_x/checkpoints/weights.ckpt"], ["weights.ckpt", "cannot resume training from it"]),
    "run_dir_reused": ("run folder", "`fit --run_dir` naming a folder that holds a run", None, ["fit", "--run_dir", "{tmp}/run_x"], ["run_x", "already holds a finished run"]),
    "cli_unknown_subcommand": ("command line", "unknown subcommand", None, ["frobnicate"], ["invalid choice: 'frobnicate'"]),
    "cli_missing_argument": ("command line", "missing required argument", None, ["check-data"], ["the following arguments are required: data_dir"]),
    "cli_option_without_value": ("command line", "option without its value", None, ["train", "--config"], ["--config: expected one argument"]),
}
STANDALONE = ["cli_unknown_subcommand", "config_missing", "zero_byte_png", "resume_malicious"]  # also run as their own process


class _Evil:
    "Unpickling this creates a file: the classic malicious-checkpoint payload."
    def __init__(self, path): self.path = str(path)
    def __reduce__(self): return (Path.touch, (Path(self.path),))


def _write_checkpoints(run: Path):
    "A finished-looking run folder holding broken, malicious and weights-only checkpoints."
    import torch
    from cardiac_dreamer.config import ModelConfig
    from cardiac_dreamer.model import CHECKPOINT_KEY, CardiacDreamer, model_checkpoint_payload
    from cardiac_dreamer.runs import write_status
    ck = run / "checkpoints"; ck.mkdir(parents=True)
    model = CardiacDreamer(ModelConfig(backbone="resnet18", image_size=32, d_model=16, num_heads=2, num_layers=1, guidance_hidden=[8]))
    weights = {"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}, CHECKPOINT_KEY: model_checkpoint_payload(model)}
    torch.save(weights, ck / "weights.ckpt")
    good = (ck / "weights.ckpt").read_bytes()
    (ck / "truncated.ckpt").write_bytes(good[: len(good) // 3])
    (ck / "random.ckpt").write_bytes(os.urandom(4096))
    torch.save({**weights, "epoch": 0, "evil": _Evil(run.parent / MARKER)}, ck / "evil.ckpt")
    (ck / "last.ckpt").write_bytes(good)
    write_status(run, "finished")


def _prepare_case(case: str, base: Path, valid: Path) -> tuple:
    "(argv, output folder, case folder) for one refused input, built from a copy of the valid data set `valid`."
    cat, _, edit, extra, _ = CASES[case]
    tmp = base / case
    data, out = tmp / "data", tmp / "outputs"
    shutil.copytree(valid, data, symlinks=True)
    if edit: edit(data / "p1")
    (tmp / "broken.yaml").write_text("training:\n  lr: [0.1\n")
    (tmp / "evil.yaml").write_text(f"training:\n  lr: !!python/object/apply:os.system ['touch {tmp / MARKER}']\n")
    (tmp / "section.yaml").write_text("optimizer:\n  lr: 0.1\n")
    if cat in ("checkpoint", "run folder"): _write_checkpoints(tmp / "run_x")
    extra = [a.replace("{tmp}", str(tmp)) for a in extra]
    if cat == "command line" and case.startswith("cli_"): return extra, out, tmp
    cmd = [extra.pop(0)] if extra and extra[0] == "fit" else ["train"]
    return cmd + ["--config", DEBUG_CONFIG, "--data_dir", data, "--output_dir", out, "--no_progress", *extra], out, tmp


_RUNNER = r"""
import contextlib, io, json, sys, traceback
from cardiac_dreamer.cli import main
res = []
for argv in json.load(open(sys.argv[1])):
    o, e = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(o), contextlib.redirect_stderr(e):
        try: rc = main(argv)
        except SystemExit as x: rc = x.code if isinstance(x.code, int) else (0 if x.code is None else 1)
        except BaseException: traceback.print_exc(); rc = 1
    res.append({"rc": rc, "stdout": o.getvalue(), "stderr": e.getvalue()})
json.dump(res, open(sys.argv[2], "w"))
"""


@pytest.fixture(scope="module")
def refused(tmp_path_factory) -> dict:
    """Every case through the command line's `main(argv)`, in one process (importing torch once), and the STANDALONE cases each
    as its own `python -m cardiac_dreamer` process, all at the same time. Returns case -> {rc, stderr, out, tmp, [standalone]}."""
    from cardiac_dreamer.data import write_seed_patient
    base = tmp_path_factory.mktemp("refused")
    for k in range(4): write_seed_patient(base / "valid" / f"p{k}", n=4, image_size=32, windows_paths=True, seed=k)
    prepared = {c: _prepare_case(c, base / "grouped", base / "valid") for c in CASES}
    argvs = base / "argv.json"
    argvs.write_text(json.dumps([[str(a) for a in prepared[c][0]] for c in CASES]))
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **LEAN_ENV}
    grouped = subprocess.Popen([sys.executable, "-c", _RUNNER, argvs, base / "results.json"], cwd=ROOT, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    alone = {}
    for c in STANDALONE:  # their own case folders: run them on fresh copies so that both runs see an untouched input
        argv, out, tmp = _prepare_case(c, base / "standalone", base / "valid")
        alone[c] = (subprocess.Popen([sys.executable, "-m", "cardiac_dreamer", *map(str, argv)], cwd=ROOT, env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True), out, tmp)
    _, err = grouped.communicate(timeout=900)
    assert grouped.returncode == 0, err[-3000:]
    results = dict(zip(CASES, json.loads((base / "results.json").read_text())))
    for c, (p, out, tmp) in alone.items():
        stdout, stderr = p.communicate(timeout=900)
        results[c]["standalone"] = dict(rc=p.returncode, stderr=stderr, out=out, tmp=tmp)
    for c, (_, out, tmp) in prepared.items(): results[c].update(out=out, tmp=tmp)
    return results


def _check_refused(case: str, rc, stderr: str, out: Path, tmp: Path):
    words = [w.replace("p1/", f"p1{os.sep}") for w in CASES[case][4]]
    assert rc == 2, (rc, stderr)
    assert "Traceback" not in stderr, stderr
    missing = [w for w in words if w not in stderr]
    assert not missing, f"{missing} not in:\n{stderr}"
    runs = list(out.glob("run_*")) if out.exists() else []
    assert all(json.loads((r / "status.json").read_text())["state"] == "failed" for r in runs), runs  # none, or marked failed
    assert not runs, runs  # (in fact none: every case fails before a run folder is created)
    assert not (tmp / MARKER).exists() and not (tmp.parent / MARKER).exists()
    if (tmp / "run_x").exists():  # a resumed or reused run folder is left exactly as it was
        assert sorted(p.name for p in (tmp / "run_x").iterdir()) == ["checkpoints", "status.json"]
        assert json.loads((tmp / "run_x" / "status.json").read_text())["state"] == "finished"


@pytest.mark.parametrize("case", list(CASES))
def test_refused_input(refused, case):
    r = refused[case]
    _check_refused(case, r["rc"], r["stderr"], r["out"], r["tmp"])
    if "standalone" in r:
        s = r["standalone"]
        _check_refused(case, s["rc"], s["stderr"], s["out"], s["tmp"])


def test_refused_inputs_are_documented():
    "docs/refused_inputs.md has one row per case (by id), and every row is a tested case."
    rows = [l for l in DOC.read_text().splitlines() if l.startswith("| `") and "|" in l[3:]]
    ids = [l.split("`")[1] for l in rows]
    assert sorted(ids) == sorted(CASES), sorted(set(ids) ^ set(CASES))
    assert all(l.rstrip().endswith("| 2 |") for l in rows)  # the exit code of every refused input
    assert len(CASES) >= 20


# ------------------------------------------------------------------------------------------------------------------------------
# 3. Security
# ------------------------------------------------------------------------------------------------------------------------------
def test_lightning_loads_checkpoints_with_weights_only(tmp_path):
    "Even a caller asking for `weights_only=False` gets the safe loader: the payload never runs."
    import pickle
    import torch
    from cardiac_dreamer.system import AtomicCheckpointIO
    path = tmp_path / "evil.ckpt"
    torch.save({"epoch": 0, "x": _Evil(tmp_path / MARKER)}, path)
    with pytest.raises(pickle.UnpicklingError): AtomicCheckpointIO().load_checkpoint(path, weights_only=False)
    assert not (tmp_path / MARKER).exists()


def test_resume_checks_the_checkpoint_safely(tmp_path):
    from cardiac_dreamer.model import CheckpointError
    from cardiac_dreamer.train import check_resume_checkpoint
    _write_checkpoints(tmp_path / "run")
    with pytest.raises(CheckpointError, match="refused to unpickle"): check_resume_checkpoint(tmp_path / "run" / "checkpoints" / "evil.ckpt")
    assert not (tmp_path / MARKER).exists()


def test_configuration_values_are_data(tmp_path):
    from cardiac_dreamer.config import ConfigError
    from cardiac_dreamer.runs import resolve_config
    marker = tmp_path / "pwned"
    code = f"__import__('os').system('touch {marker}')"
    assert resolve_config(None, [f"data.data_dir={code}"]).data.data_dir == code  # a string, never evaluated
    with pytest.raises(ConfigError, match="training.lr"): resolve_config(None, [f"training.lr={code}"])  # not a number
    with pytest.raises(ConfigError): resolve_config(None, [f"training.lr=!!python/object/apply:os.system ['touch {marker}']"])
    assert resolve_config({"data": {"data_dir": code}}).data.data_dir == code
    assert not marker.exists()


def test_papermill_parameters_are_data(tmp_path):
    "A parameter value that looks like code is injected as a string literal; running the parameter cells creates nothing."
    import papermill as pm
    marker = tmp_path / "pwned"
    code = f"__import__('os').system('touch {marker}')"
    out = tmp_path / "prepared.ipynb"
    nb = pm.execute_notebook(str(ROOT / "nbs" / "train.ipynb"), str(out), prepare_only=True, kernel_name="python3", progress_bar=False,
                             parameters=dict(config_path=code, data_dir=code, overrides=[f"data.data_dir={code}"], progress=code))
    injected = next(c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", []))
    ns = {}
    for c in nb.cells:
        if "parameters" in c.metadata.get("tags", []) or c is injected: exec(c.source, ns)
    assert ns["config_path"] == code and ns["overrides"] == [f"data.data_dir={code}"] and ns["progress"] == code
    assert not marker.exists()
