"""Acceptance checks of `cardiac_dreamer.bench`: the quick benchmark writes a JSON record with every field, with sane values
(timings are not asserted: the machine is shared), and the `bench` subcommand parses and runs."""
import copy
import dataclasses
import json
import math
from pathlib import Path

import pytest

from cardiac_dreamer.bench import SCHEMA, evaluate_targets
from cardiac_dreamer.bench_report import format_table
from cardiac_dreamer.cli import build_parser
from cardiac_dreamer.config import BenchTargets

TARGETS = dataclasses.asdict(BenchTargets())
ROOT = Path(__file__).resolve().parents[1]
GUIDE_TARGETS = {"guide_fps_demo": ("demo", "pytorch", "guide_fps_demo"), "guide_fps_demo_onnx": ("demo", "onnx", "guide_fps_demo"),
                 "guide_fps_production": ("production", "pytorch", "guide_fps_production"),
                 "guide_fps_production_onnx": ("production", "onnx", "guide_fps_production")}  # target: (config, runtime, BenchTargets field)


def _finite_positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


@pytest.fixture(scope="module")
def record(tmp_path_factory):
    "Run `cardiac-dreamer bench --quick` through the subcommand's handler (1 compute thread: robust on a loaded machine)."
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    args = build_parser().parse_args(["bench", "--quick", "--threads", "1", "--out", str(out)])
    assert args.func(args) == 0
    return json.loads(out.read_text())


@pytest.mark.timeout(300)
def test_record_has_every_section(record):
    assert record["schema"] == SCHEMA and record["mode"] == "quick" and record["device"] == "cpu"
    for key in ("created", "command", "machine", "packages", "git_commit", "allocator_tuned", "settings", "ceiling", "configs",
                "scale", "targets", "mfu", "process_peak_rss_gib", "elapsed_s", "targets_reference", "help_s"):
        assert key in record, key
    assert _finite_positive(record["help_s"]) and len(record["help"]["samples_s"]) == 3  # `cardiac-dreamer --help`, median of 3
    m = record["machine"]
    assert m["cpu_count"] >= 1 and m["torch_threads"] == 1 and m["memory_gib"] > 0
    assert len(m["load_average"]) == 3 and len(m["load_average_end"]) == 3
    assert record["packages"]["torch"] and record["targets_reference"] == TARGETS
    c = record["ceiling"]
    assert c["size"] == 512 and _finite_positive(c["fp32_gflops"]) and len(c["fp32_samples"]) == 5 and c["bf16_gflops"] is None


def test_training_step_figures(record):
    assert list(record["configs"]) == ["debug"]
    cfg = record["configs"]["debug"]
    assert cfg["config"]["model"]["backbone"] == "resnet18" and cfg["config_path"].endswith("debug.yaml")
    t = cfg["train_step"]
    assert t["batch_size"] == 8 and len(t["step_s"]) == t["steps"] == 2 and len(t["ceiling_gflops"]) == 2
    for k in ("median_step_s", "samples_per_s", "flops_per_step", "flops_per_sample", "achieved_gflops", "median_ceiling_gflops",
              "mfu", "mfu_paired", "mfu_best", "peak_rss_gib", "cpu_share"):
        assert _finite_positive(t[k]), (k, t[k])
    assert t["flops_per_step"] == pytest.approx(8 * t["flops_per_sample"])
    assert t["samples_per_s"] == pytest.approx(8 / t["median_step_s"])
    assert t["achieved_gflops"] == pytest.approx(t["flops_per_step"] / t["median_step_s"] / 1e9)
    assert t["mfu"] == pytest.approx(t["achieved_gflops"] / t["median_ceiling_gflops"]) and len(t["mfu_per_step"]) == 2
    assert 0 < t["mfu"] < 2 and 0 < t["cpu_share"] < 1.5 and 0.05 < t["peak_rss_gib"] < 64
    assert {"aten.convolution", "aten.mm"} <= set(t["flops_by_op"]) and sum(t["flops_by_op"].values()) == t["flops_per_step"]
    assert t["optimizer"] == "AdamW" and t["precision"] == "32" and t["peak_gpu_gib"] is None and t["loss_via"] == "training_step"
    assert record["mfu"] == t["mfu"]


def test_inference_and_data_figures(record):
    cfg = record["configs"]["debug"]
    i = cfg["inference"]
    assert 0 < i["batch1_p50_ms"] <= i["batch1_p95_ms"] and len(i["batch1_ms"]) == 5
    assert i["throughput_batch"] == 32 and _finite_positive(i["throughput_samples_per_s"])
    d = cfg["data"]
    assert d["source"].startswith("synthetic") or d["source"].startswith("configured")
    expected = {f"{s}_workers{w}" for s in ("png", "cache") for w in (0, 1, 2)} | {"store_workers0"}
    assert set(d["settings"]) == expected
    for name, s in d["settings"].items():
        assert s["samples"] >= 16 and _finite_positive(s["samples_per_s"]) and _finite_positive(s["ratio_to_model"]), name
        assert s["ratio_to_model"] == pytest.approx(s["samples_per_s"] / cfg["train_step"]["samples_per_s"])


def test_cache_build(record):
    "The first epoch with an empty cache is timed: its samples/s, decode ms per frame and the first epoch's decode seconds."
    d = record["configs"]["debug"]["data"]
    for name in ("cache_workers0", "cache_workers1", "cache_workers2"):
        s = d["settings"][name]
        assert _finite_positive(s["build_s"]) and s["build_samples"] > 0 and s["build_frames"] > 0, name
    b, s0 = d["cache_build"], d["settings"]["cache_workers0"]  # debug.yaml: num_workers 0
    assert b["setting"] == "cache_workers0" and (b["seconds"], b["samples"], b["frames"]) == (s0["build_s"], s0["build_samples"], s0["build_frames"])
    assert b["samples_per_s"] == pytest.approx(b["samples"] / b["seconds"]) and b["cached_samples_per_s"] == s0["samples_per_s"]
    assert b["decode_s"] == pytest.approx(max(b["seconds"] - b["samples"] / b["cached_samples_per_s"], 0), abs=1e-9)
    assert b["decode_ms_per_frame"] == pytest.approx(b["decode_s"] / b["frames"] * 1e3) and b["epoch_frames"] >= b["frames"]
    assert b["first_epoch_decode_s"] == pytest.approx(b["epoch_frames"] * b["decode_ms_per_frame"] / 1e3)


def test_onnx_runtime_and_guide_figures(record):
    "ONNX Runtime beside predict_action (interleaved, at batch 1 and 32), and the guide end to end from both runtimes."
    x = record["configs"]["debug"]["exported"]
    for rt in ("pytorch", "onnx"):
        assert 0 < x[rt]["batch1_p50_ms"] <= x[rt]["batch1_p95_ms"], rt
        assert x[rt]["throughput_batch"] == 32 and _finite_positive(x[rt]["throughput_samples_per_s"]), rt
    assert x["onnx_p50_ratio"] == pytest.approx(x["onnx"]["batch1_p50_ms"] / x["pytorch"]["batch1_p50_ms"]) and x["threads"] == 1
    g = record["configs"]["debug"]["guide"]
    assert set(g) == {"pytorch", "onnx"} and record["settings"]["guide_frames"] == 24
    for rt, v in g.items():
        assert v["runtime"] == rt and v["frames"] == 24 and _finite_positive(v["seconds"]), rt
        assert v["frames_per_s"] == pytest.approx(v["frames"] / v["seconds"]), rt


def _check_targets(targets:dict):
    for name, v in targets.items():
        assert v["target"] == TARGETS[GUIDE_TARGETS[name][2] if name in GUIDE_TARGETS else name], name
        if v["measured"] is None:
            assert v["met"] is None, name
        else:
            assert isinstance(v["met"], bool) and _finite_positive(v["measured"]), name
            ok = {"<": v["measured"] < v["target"], "<=": v["measured"] <= v["target"], ">=": v["measured"] >= v["target"]}
            assert v["met"] == ok[v["comparison"]], name


def test_scale_and_targets(record):
    s = record["scale"]
    assert (s["patients"], s["transitions_per_patient"], s["transitions"], s["image_files"]) == (4, 50, 200, 204)
    assert _finite_positive(s["wall_s"]) and _finite_positive(s["cpu_s"]) and 0 < s["peak_rss_gib"] < 16
    t, c = record["targets"], record["configs"]["debug"]
    assert set(t) == {"mfu", "data_ratio", "latency_p50_ms", "latency_p95_ms", "onnx_p50_ratio", "peak_rss_gib", "scale_wall_s", "scale_rss_gib"} | set(GUIDE_TARGETS)
    _check_targets(t)
    assert all(t[k]["measured"] is None and t[k]["config"] == GUIDE_TARGETS[k][0] for k in GUIDE_TARGETS)  # quick: only debug, not measured
    assert t["latency_p95_ms"]["measured"] == c["inference"]["batch1_p95_ms"] and t["latency_p95_ms"]["comparison"] == "<"
    assert t["onnx_p50_ratio"]["measured"] == c["exported"]["onnx_p50_ratio"] and t["onnx_p50_ratio"]["comparison"] == "<="
    assert all(t[k]["config"] == "debug" for k in ("mfu", "latency_p95_ms", "onnx_p50_ratio"))


def test_targets_by_configuration_name(record):
    "The guide targets are read from the configurations named production and demo; absent ones are not measured, not an error."
    dbg = record["configs"]["debug"]
    demo = copy.deepcopy(dbg); demo["guide"]["onnx"]["frames_per_s"] = TARGETS["guide_fps_demo"]  # exactly the target: met
    demo["guide"]["pytorch"]["frames_per_s"] = TARGETS["guide_fps_demo"] - 0.1
    t = evaluate_targets({**record, "configs": {"production": dbg, "demo": demo}})
    _check_targets(t)
    for name, (cfg, rt, _) in GUIDE_TARGETS.items():
        assert t[name]["config"] == cfg and t[name]["measured"] == (dbg if cfg == "production" else demo)["guide"][rt]["frames_per_s"], name
    assert (t["guide_fps_demo"]["met"], t["guide_fps_demo_onnx"]["met"]) == (False, True)
    assert t["onnx_p50_ratio"]["config"] == "production"
    empty = evaluate_targets({"configs": {"demo": {**dbg, "guide": None, "exported": None}}})  # no scale, no guide, no ONNX: no error
    assert empty["guide_fps_demo"]["met"] is None and empty["onnx_p50_ratio"]["met"] is None and empty["scale_wall_s"]["met"] is None
    assert empty["latency_p95_ms"]["met"] is not None


def test_table_mentions_every_figure(record):
    table = format_table(record)
    for word in ("ceiling", "mfu", "GFLOP/sample", "p50 ms", "cache, workers 0", "store, workers 0", "Indexing", "data_ratio",
                 "cache build (first epoch", "first-epoch decode s", "ONNX p50 ms", "ONNX / PyTorch p50", "guide frames/s, .ckpt",
                 "guide frames/s, .onnx", "latency_p95_ms", "onnx_p50_ratio", "guide_fps_production_onnx", "not measured"):
        assert word in table, word
    x = record["configs"]["debug"]["exported"]
    assert f"| debug | {x['pytorch']['batch1_p50_ms']:.1f} | {x['pytorch']['batch1_p95_ms']:.1f} | {x['onnx']['batch1_p50_ms']:.1f} |" in table


def test_table_of_an_older_record():
    "A record written before the ONNX, guide and cache-build figures still renders (docs/benchmarks)."
    table = format_table(json.loads((ROOT / "docs/benchmarks/bench_cpu_2cores.json").read_text()))
    assert "| production | 8 | 174.1 |" in table and "ONNX p50 ms" not in table and "cache build" not in table
