"""Acceptance checks of `cardiac_dreamer.bench`: the quick benchmark writes a JSON record with every field, with sane values
(timings are not asserted: the machine is shared), and the `bench` subcommand parses and runs."""
import dataclasses
import json
import math

import pytest

from cardiac_dreamer.bench import SCHEMA
from cardiac_dreamer.bench_report import format_table
from cardiac_dreamer.cli import build_parser
from cardiac_dreamer.config import BenchTargets

TARGETS = dataclasses.asdict(BenchTargets())


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


def test_scale_and_targets(record):
    s = record["scale"]
    assert (s["patients"], s["transitions_per_patient"], s["transitions"], s["image_files"]) == (4, 50, 200, 204)
    assert _finite_positive(s["wall_s"]) and _finite_positive(s["cpu_s"]) and 0 < s["peak_rss_gib"] < 16
    t = record["targets"]
    assert set(t) == {"mfu", "data_ratio", "latency_p50_ms", "peak_rss_gib", "scale_wall_s", "scale_rss_gib"}
    for name, v in t.items():
        assert v["target"] == TARGETS[name] and isinstance(v["met"], bool) and _finite_positive(v["measured"]), name
        assert v["met"] == (v["measured"] < v["target"] if v["comparison"] == "<" else v["measured"] >= v["target"])


def test_table_mentions_every_figure(record):
    table = format_table(record)
    for word in ("ceiling", "mfu", "GFLOP/sample", "p50 ms", "cache, workers 0", "store, workers 0", "Indexing", "data_ratio"):
        assert word in table, word
