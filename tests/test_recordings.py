"""`cardiac-dreamer import` from the command line: a good import, and bad inputs refused (exit 2, file and line named, nothing written)."""
import json

import numpy as np
import pytest

from conftest import cli
from cardiac_dreamer.data import JSON_NAME, index_dataset
from cardiac_dreamer.importer import import_recording
from cardiac_dreamer.recordings import open_recording, write_dicom_cine, write_video

N = 8


@pytest.fixture(scope="module")
def rec(tmp_path_factory):
    """A small DICOM cine loop, an MP4 of it and a valid pose CSV (frame k at x = k mm, yaw = 2k deg)."""
    d = tmp_path_factory.mktemp("rec")
    y, x = np.mgrid[:32, :32]
    frames = [((x * 4 + y * 2 + 9 * k) % 256).astype(np.uint8) for k in range(N)]
    write_dicom_cine(frames, d / "loop.dcm", frame_time_ms=40)
    write_video(frames, d / "loop.mp4", fps=25)
    rows = "".join(f"{k},{k}.0,0,0,0,0,{2 * k}.0\n" for k in range(N))
    (d / "poses.csv").write_text("frame,x,y,z,roll,pitch,yaw\n" + rows)
    return d


def _refused(res, *needles):
    assert res.returncode == 2, (res.returncode, res.stdout, res.stderr)
    assert "Traceback" not in res.stderr, res.stderr
    for n in needles: assert n in res.stderr, (n, res.stderr)


def test_import_dicom_and_mp4(rec, tmp_path):
    for name in ("loop.mp4", "loop.dcm"):  # the MP4 in-process, the DICOM through the CLI
        out = tmp_path / name.split(".")[1] / "p07"
        if name.endswith(".mp4"): import_recording(rec / name, rec / "poses.csv", out, target_frame=3, stride=2)
        else:
            res = cli("import", rec / name, "--poses", rec / "poses.csv", "--target_frame", 3, "--out", out, "--stride", 2)
            assert res.returncode == 0, res.stderr
            assert "6 transitions" in res.stdout and str(out) in res.stdout
        entries = json.loads((out / JSON_NAME).read_text())
        assert [(e["frame_t1"], e["frame_t2"]) for e in entries] == [(k, k + 2) for k in range(6)]
        np.testing.assert_allclose([e["at1_6dof"] for e in entries], [[3.0 - k, 0, 0, 0, 0, 2 * (3 - k)] for k in range(6)], atol=1e-9)
        idx = index_dataset(out.parent, label_convention="additive", verify_images=True)
        assert len(idx.transitions) == 6
        report = json.loads((out / "import_report.json").read_text())
        assert report["target"]["frame"] == 3 and report["frames"] == N and report["dropped"] == []
    assert len(open_recording(rec / "loop.mp4")) == N
    # the same folder again: refused, the first import untouched
    before = (out / JSON_NAME).read_bytes()
    _refused(cli("import", rec / "loop.dcm", "--poses", rec / "poses.csv", "--target_frame", 0, "--out", out),
             str(out), "refusing to overwrite")
    assert (out / JSON_NAME).read_bytes() == before


BAD_CSV = {
    "missing_frames": ("frame,x,y,z,roll,pitch,yaw\n0,0,0,0,0,0,0\n1,0,0,0,0,0,0\n4,0,0,0,0,0,0\n", "line 4: missing frames 2-3"),
    "non_monotonic": ("time_s,x,y,z,roll,pitch,yaw\n0,0,0,0,0,0,0\n0.08,0,0,0,0,0,0\n0.04,0,0,0,0,0,0\n", "line 4: timestamp 0.04 s"),
    "nan": ("frame,x,y,z,roll,pitch,yaw\n0,0,0,0,0,0,0\n1,0,0,0,NaN,0,0\n", "line 3, column 'roll': not a finite number"),
    "columns": ("frame,tx,ty,tz,roll,pitch,yaw\n0,0,0,0,0,0,0\n", "line 1 (header): missing column(s) x, y, z"),
}


@pytest.mark.parametrize("case", sorted(BAD_CSV))
def test_bad_pose_csv(rec, tmp_path, case):
    text, msg = BAD_CSV[case]
    csv = tmp_path / f"{case}.csv"; csv.write_text(text)
    res = cli("import", rec / "loop.dcm", "--poses", csv, "--target_frame", 0, "--out", tmp_path / "data" / "p")
    _refused(res, f"{csv}: {msg}")
    assert not (tmp_path / "data").exists() and sorted(p.name for p in tmp_path.iterdir()) == [csv.name]


def test_bad_target_and_recording(rec, tmp_path):
    out = tmp_path / "data" / "p"
    _refused(cli("import", rec / "loop.dcm", "--poses", rec / "poses.csv", "--target_frame", N, "--out", out),
             f"{rec / 'loop.dcm'}: target frame {N} out of range: the recording has {N} frames")
    (tmp_path / "broken.mp4").write_bytes(b"\0" * 1000)
    _refused(cli("import", tmp_path / "broken.mp4", "--poses", rec / "poses.csv", "--target_frame", 0, "--out", out),
             f"{tmp_path / 'broken.mp4'}: unreadable or truncated video")
    assert not (tmp_path / "data").exists()


def test_help_has_an_example():
    res = cli("import", "--help")
    assert res.returncode == 0 and "example:" in res.stdout and "--target_pose" in res.stdout and "--time_tolerance_ms" in res.stdout
