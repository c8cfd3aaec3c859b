"""Acceptance checks of `cardiac-dreamer export` and `cardiac-dreamer guide` (issue 15): exported ONNX and TorchScript models
equal `predict_action`, guidance runs on a phantom sweep stored as a frame folder, an MP4 and a multi-frame DICOM and writes the
CSV, videos and report, and bad input exits non-zero naming the file without leaving anything under the output name."""
import json

import numpy as np
import pandas as pd
import pytest
import torch

from cardiac_dreamer.cli import main
from cardiac_dreamer.config import CardiacDreamerError, load_config
from cardiac_dreamer.export import FORMATS, export_model, file_sha256, load_exported, load_predictor, manifest_path, parity_error
from cardiac_dreamer.geometry import POSE_AXES, POSE_UNITS
from cardiac_dreamer.guide import MOVE_COLUMNS, guide_recording, phantom_sweep
from cardiac_dreamer.model import CHECKPOINT_KEY, CardiacDreamer, model_checkpoint_payload
from cardiac_dreamer.recordings import write_dicom_cine, write_frame_folder, write_video

from conftest import DEBUG_CONFIG, cli

STATS = {f"{w}_{s}": ([4.1, 5.5, 3.0, 18.0, 6.4, 15.5] if s == "std" else [1.0, -2.0, 0.5, 10.0, -3.0, 7.0])
         for w in ("at1", "at2", "change") for s in ("mean", "std")}  # the real recordings' spread: de-standardisation matters
N = 16  # frames of the phantom sweep


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    "A randomly initialised debug-size model saved as the trainer saves it, its exports, and a phantom sweep in three containers."
    d = tmp_path_factory.mktemp("export_guide")
    torch.manual_seed(0)
    model = CardiacDreamer(load_config(DEBUG_CONFIG).model, STATS).eval()
    ckpt = d / "debug.ckpt"
    torch.save({"epoch": 0, "global_step": 0, "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
                CHECKPOINT_KEY: model_checkpoint_payload(model, {})}, ckpt)
    sweep = phantom_sweep(N, 64, seed=3)
    rec = dict(folder=write_frame_folder(sweep["frames"], d / "sweep_png"), mp4=write_video(sweep["frames"], d / "sweep.mp4", fps=20),
               dicom=write_dicom_cine(sweep["frames"], d / "sweep.dcm", frame_time_ms=50))
    pd.DataFrame(sweep["changes"], columns=list(POSE_AXES)).to_csv(d / "motions.csv", index=False)
    pd.DataFrame(sweep["changes"][:-1], columns=list(POSE_AXES)).to_csv(d / "short_motions.csv", index=False)
    return dict(dir=d, model=model, ckpt=ckpt, sweep=sweep, rec=rec)


@pytest.fixture(scope="module")
def exported(work):
    return {fmt: export_model(work["ckpt"], fmt, work["dir"] / f"m{sfx}") for fmt, sfx in FORMATS.items()}


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_parity_64_frames(work, exported, fmt):
    "ONNX Runtime and TorchScript equal predict_action on 64 frames within 1e-4 relative (fp32), at batch 64 and batch 1."
    frames = torch.rand(64, 1, 64, 64, generator=torch.Generator().manual_seed(7))
    p = load_exported(exported[fmt])
    assert parity_error(p, work["model"], frames) <= 1e-4
    ref = work["model"].predict_action(frames[:1]).numpy()
    np.testing.assert_allclose(p(frames[:1]), ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


def test_manifest(work, exported):
    m = json.loads(manifest_path(exported["onnx"]).read_text())
    assert m["format"] == "onnx" and m["opset"] == 18 and m["input"]["shape"] == ["batch", 1, 64, 64] and m["input"]["dtype"] == "float32"
    assert m["output"]["axes"] == list(POSE_AXES) and m["output"]["units"] == list(POSE_UNITS)
    assert m["checkpoint"]["sha256"] == file_sha256(work["ckpt"]) and m["label_convention"] == "additive"
    assert m["output"]["destandardisation"]["at1_std"] == pytest.approx(STATS["at1_std"])
    assert {"version", "torch", "onnxruntime"} <= set(m["package"]) and "git_commit" in m
    assert json.loads(manifest_path(exported["torchscript"]).read_text())["format"] == "torchscript"


def test_cli_export_onnx(work, tmp_path):
    r = cli("export", work["ckpt"], "--format", "onnx", "--out", tmp_path / "cli.onnx")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "cli.onnx.json").is_file() and "checked against predict_action" in r.stdout
    assert parity_error(load_exported(tmp_path / "cli.onnx"), work["model"], torch.rand(8, 1, 64, 64)) <= 1e-4


def check_outputs(out, n, every=1):
    "The files guide writes, and a table with one row per guided frame."
    assert sorted(p.name for p in out.iterdir()) == ["guidance.csv", "overlay.gif", "overlay.mp4", "report.html", "summary.json"]
    t = pd.read_csv(out / "guidance.csv")
    assert t["frame"].tolist() == list(range(0, n, every)) and set(MOVE_COLUMNS + ["trans_mm", "rot_deg", "at_target"]) <= set(t.columns)
    html = (out / "report.html").read_text()
    assert "data:image/png;base64," in html and "overlay.mp4" in html
    assert (out / "overlay.mp4").stat().st_size > 0 and (out / "overlay.gif").read_bytes()[:3] == b"GIF"
    return t


def test_guide_cli_png_folder_onnx(work, exported, tmp_path):
    "The command on a frame folder with the exported ONNX model; the moves are predict_action's."
    r = cli("guide", exported["onnx"], work["rec"]["folder"], "--out", tmp_path / "g", "--fps", "20", "--no_progress")
    assert r.returncode == 0, r.stderr
    t = check_outputs(tmp_path / "g", N)
    ref = work["model"].predict_action(work["sweep"]["frames"][:, None]).numpy()
    np.testing.assert_allclose(t[MOVE_COLUMNS].to_numpy(), ref, atol=2e-4 * np.abs(ref).max())
    np.testing.assert_allclose(t["time_s"], np.arange(N) / 20, atol=1e-4)


@pytest.mark.parametrize("container,model", [("mp4", "torchscript"), ("dicom", "checkpoint")])
def test_guide_mp4_and_dicom(work, exported, tmp_path, container, model):
    m = work["ckpt"] if model == "checkpoint" else exported[model]
    res = guide_recording(m, work["rec"][container], tmp_path / "g", every=2, progress=False)
    t = check_outputs(tmp_path / "g", N, every=2)
    assert res.summary["frames_guided"] == len(t) == N // 2 and res.summary["frames_per_s"] > 0
    if container == "dicom":  # lossless: exactly predict_action on the stored frames
        ref = work["model"].predict_action(work["sweep"]["frames"][::2, None]).numpy()
        np.testing.assert_allclose(t[MOVE_COLUMNS].to_numpy(), ref, atol=2e-4 * np.abs(ref).max())
        np.testing.assert_allclose(t["time_s"], np.arange(0, N, 2) * 0.05, atol=1e-4)


def test_guide_with_motions(work, tmp_path, capsys):
    "A motion CSV of the right length fuses the estimates over time (single-frame estimates kept beside)."
    code = main(["guide", str(work["ckpt"]), str(work["rec"]["folder"]), "--motions", str(work["dir"] / "motions.csv"), "--window", "4",
                 "--out", str(tmp_path / "g"), "--no_progress", "--no_video", "--no_gif"])
    assert code == 0, capsys.readouterr().err
    t = pd.read_csv(tmp_path / "g" / "guidance.csv")
    assert {"single_x_mm", "std_x_mm"} <= set(t.columns) and t["x_mm"].iloc[0] == pytest.approx(t["single_x_mm"].iloc[0], abs=1e-3)
    assert not np.allclose(t["x_mm"].iloc[4:], t["single_x_mm"].iloc[4:])


def assert_refused(capsys, argv, *fragments, out):
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2 and all(f in err for f in fragments), err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not out.exists() and not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}")]


def test_bad_inputs(work, exported, tmp_path, capsys):
    empty = tmp_path / "empty"; empty.mkdir()
    out = tmp_path / "out"
    assert_refused(capsys, ["guide", str(work["ckpt"]), str(empty), "--out", str(out)], str(empty), "empty folder", out=out)
    wrong = tmp_path / "model.onnx"; wrong.write_bytes(work["ckpt"].read_bytes())  # a checkpoint named .onnx
    assert_refused(capsys, ["guide", str(wrong), str(work["rec"]["folder"]), "--out", str(out)], str(wrong), "checkpoint", out=out)
    junk = tmp_path / "junk.pt"; junk.write_bytes(b"\x00" * 100)
    assert_refused(capsys, ["guide", str(junk), str(work["rec"]["mp4"]), "--out", str(out)], str(junk), "not a model file", out=out)
    short = work["dir"] / "short_motions.csv"
    assert_refused(capsys, ["guide", str(work["ckpt"]), str(work["rec"]["dicom"]), "--motions", str(short), "--out", str(out)],
                   str(short), f"{N - 1} rows", f"{N} frames", out=out)
    onnx_out = tmp_path / "x.onnx"
    assert_refused(capsys, ["export", str(junk), "--out", str(onnx_out)], str(junk), out=onnx_out)
    assert_refused(capsys, ["export", str(exported["onnx"]), "--format", "torchscript", "--out", str(tmp_path / "y.pt")],
                   str(exported["onnx"]), "expected a cardiac-dreamer/Lightning checkpoint", "ONNX", out=tmp_path / "y.pt")


def test_existing_output_kept(work, tmp_path, capsys):
    "A non-empty output folder is refused (its content untouched) unless --overwrite."
    out = tmp_path / "g"; out.mkdir(); (out / "keep.txt").write_text("mine")
    argv = ["guide", str(work["ckpt"]), str(work["rec"]["dicom"]), "--out", str(out), "--no_progress", "--no_video", "--no_gif"]
    assert main(argv) == 2 and "not empty" in capsys.readouterr().err and (out / "keep.txt").read_text() == "mine"
    assert main(argv + ["--overwrite"]) == 0 and not (out / "keep.txt").exists() and (out / "guidance.csv").is_file()


def test_predictor_kinds(work, exported):
    "One interface for every kind of model file; uint8 RGB frames of another size are prepared as predict_action prepares them."
    rgb = np.random.default_rng(0).integers(0, 256, (2, 3, 80, 80), dtype=np.uint8)
    ref = work["model"].predict_action(rgb).numpy()
    for m in (work["ckpt"], *exported.values()):
        p = load_predictor(m)
        np.testing.assert_allclose(p(rgb), ref, atol=1e-3)
        assert p.image_size == 64 and p.label_convention == "additive"
    with pytest.raises(CardiacDreamerError, match="unknown kind of model file"): load_predictor(work["dir"] / "motions.csv")


def test_workflow_notebook(work, tmp_path, monkeypatch):
    "nbs/guide.ipynb under papermill (inline figures, as the CLI runs notebooks): the overlay GIF and the figure are in the output."
    import papermill as pm
    from conftest import ROOT
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")  # the kernel inherits it
    nb = pm.execute_notebook(str(ROOT / "nbs" / "guide.ipynb"), str(tmp_path / "guide.ipynb"), kernel_name="python3", progress_bar=False,
                             parameters=dict(model=str(work["ckpt"]), input=str(work["rec"]["mp4"]), out_dir=str(tmp_path / "g"),
                                             every=2, thresholds=[4.0, 6.0], progress=False))
    mimes = [m for c in nb.cells for o in c.get("outputs", []) for m in o.get("data", {})]
    assert "image/gif" in mimes and "image/png" in mimes
    check_outputs(tmp_path / "g", N, every=2)
