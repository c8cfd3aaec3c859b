"""The production training guide's configuration snippets, as written, load through the project's loader (issue 19, section 1),
plus the loader's last-mile help (issue 18): "did you mean", shipped configs by name, aliases and their conflicts."""
import dataclasses
import logging
from pathlib import Path

import pytest
import yaml

from cardiac_dreamer.config import (CONFIG_SECTIONS, Config, ConfigError, load_config, package_root, save_config,
                                    shipped_configs)

# Every YAML snippet of the guide (docs: production_training_guide.md), copied verbatim with its comments.
GUIDE_SNIPPETS = {
    "cuda_out_of_memory": """\
training:
  batch_size: 8         # Reduce from 16
  accumulate_grad_batches: 2  # Simulate larger batches
""",
    "slow_data_loading": """\
training:
  num_workers: 2        # Reduce from 4
  # Ensure data is on fast storage (SSD)
""",
    "memory_issues": """\
training:
  precision: 16         # Use mixed precision
  batch_size: 4         # Further reduce batch size
""",
    "scaling_10x_data": """\
model:
  lr: 2.0e-4              # Scaled from 1e-4

training:
  batch_size: 16          # Scaled from 8
  max_epochs: 100         # May reduce due to more data
  early_stop_patience: 15 # Adjusted for larger dataset
""",
    # "Key Configuration Parameters": the guide lists them without sections, with their defaults
    "key_parameters_flat": """\
d_model: 768
num_heads: 12
num_layers: 6
token_type: "channel"
batch_size: 16
max_epochs: 150
lr: 2e-4
early_stop_patience: 20
precision: 16
lambda_latent: 0.2
lambda_t2_action: 1.0
smooth_l1_beta: 1.0
primary_task_only: false
""",
}
EXPECTED = {  # (section, key) -> value each snippet must produce
    "cuda_out_of_memory": {("training", "batch_size"): 8, ("training", "accumulate_grad_batches"): 2},
    "slow_data_loading": {("data", "num_workers"): 2},
    "memory_issues": {("training", "precision"): "16-mixed", ("training", "batch_size"): 4},
    "scaling_10x_data": {("training", "lr"): 2e-4, ("training", "batch_size"): 16, ("training", "max_epochs"): 100,
                         ("training", "early_stop_patience"): 15},
    "key_parameters_flat": {("model", "d_model"): 768, ("model", "num_heads"): 12, ("model", "num_layers"): 6,
                            ("model", "token_type"): "channel", ("training", "batch_size"): 16, ("training", "max_epochs"): 150,
                            ("training", "lr"): 2e-4, ("training", "early_stop_patience"): 20, ("training", "precision"): "16-mixed",
                            ("loss", "lambda_latent"): 0.2, ("loss", "lambda_t2_action"): 1.0, ("loss", "smooth_l1_beta"): 1.0,
                            ("loss", "primary_task_only"): False},
}


@pytest.mark.parametrize("name", list(GUIDE_SNIPPETS))
def test_guide_snippet_loads(name, tmp_path):
    p = tmp_path / f"{name}.yaml"
    p.write_text(GUIDE_SNIPPETS[name])
    cfg = load_config(p)  # any refusal fails the test
    for (sec, key), want in EXPECTED[name].items():
        assert getattr(getattr(cfg, sec), key) == want, (sec, key)
    # the resolved config (what a run folder keeps) holds the project's keys and values only
    saved = yaml.safe_load(save_config(cfg, tmp_path / "resolved.yaml").read_text())
    assert saved["training"]["precision"] in ("32", "16-mixed", "bf16-mixed")
    assert "num_workers" not in saved["training"] and "lr" not in saved["model"]
    assert load_config(tmp_path / "resolved.yaml") == cfg


def test_flat_defaults_are_the_production_defaults(tmp_path):
    p = tmp_path / "flat.yaml"
    p.write_text(GUIDE_SNIPPETS["key_parameters_flat"].replace("precision: 16", "precision: 32"))
    assert load_config(p) == Config()  # the guide's defaults are the project's defaults


def test_notes_name_the_canonical_form(tmp_path, caplog):
    p = tmp_path / "g.yaml"
    p.write_text(GUIDE_SNIPPETS["memory_issues"] + "  num_workers: 2\n")
    with caplog.at_level(logging.INFO, logger="cardiac_dreamer.config"):
        load_config(p)
    assert f"{p}: training.precision 16 is read as '16-mixed'" in caplog.messages
    assert f"{p}: training.num_workers is read as data.num_workers (the project's key for it)" in caplog.messages


@pytest.mark.parametrize("override,key,want", [
    ("training.precision=16", "precision", "16-mixed"),
    ('training.precision="16"', "precision", "16-mixed"),
    ("training.precision=bf16", "precision", "bf16-mixed"),
    ("training.precision=32", "precision", "32"),
    ("training.precision=16-mixed", "precision", "16-mixed"),
    ("training.num_workers=2", "num_workers", 2),
    ("model.lr=2.0e-4", "lr", 2e-4),
    ("model.lr=1e-3", "lr", 1e-3),
])
def test_guide_set_forms(override, key, want):
    cfg = load_config(overrides=[override])
    assert getattr(cfg.data if key == "num_workers" else cfg.training, key) == want


def test_precision_64_refused_with_choices():
    with pytest.raises(ConfigError, match=r"--set: training.precision: '64' is not one of 32, 16-mixed, bf16-mixed"):
        load_config(overrides=["training.precision=64"])


def test_flat_mixed_with_sections(tmp_path):
    p = tmp_path / "mix.yaml"
    p.write_text("d_model: 64\nnum_heads: 4\nlambda_latent: 0.5\ntraining:\n  batch_size: 8\ndata:\n  num_workers: 1\n")
    cfg = load_config(p, ["training.precision=bf16"])
    assert (cfg.model.d_model, cfg.model.num_heads, cfg.loss.lambda_latent, cfg.training.batch_size, cfg.data.num_workers,
            cfg.training.precision) == (64, 4, 0.5, 8, 1, "bf16-mixed")


def test_flat_ambiguous_key_refused(tmp_path, monkeypatch):
    @dataclasses.dataclass
    class Other:  # a section that shares a key name with training (no real section does today)
        seed: int = 0
        batch_size: int = 1
    monkeypatch.setitem(CONFIG_SECTIONS, "other", Other)
    p = tmp_path / "amb.yaml"
    p.write_text("d_model: 64\nnum_heads: 4\nseed: 3\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert f"{p}: key 'seed' without a section is ambiguous: write it as one of training.seed, other.seed" in str(e.value)


@pytest.mark.parametrize("text,fragment", [
    ("model:\n  lr: 1.0e-3\ntraining:\n  lr: 2.0e-4\n", "model.lr=0.001 and training.lr=0.0002 both set training.lr; keep one"),
    ("training:\n  num_workers: 2\ndata:\n  num_workers: 4\n", "training.num_workers=2 and data.num_workers=4 both set data.num_workers"),
    ("batch_size: 8\ntraining:\n  batch_size: 16\n", "batch_size=8 and training.batch_size=16 both set training.batch_size"),
])
def test_alias_conflicts_in_a_file(tmp_path, text, fragment):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert f"{p}: " in str(e.value) and fragment in str(e.value)


def test_alias_same_value_and_layering(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("model:\n  lr: 1.0e-3\ntraining:\n  lr: 1e-3\n")  # two spellings, one value: fine
    assert load_config(p).training.lr == 1e-3
    assert load_config(p, ["training.lr=5e-4"]).training.lr == 5e-4  # a later source overrides, as for any key
    with pytest.raises(ConfigError, match=r"--set: model.lr=0.001 and training.lr=0.002 both set training.lr"):
        load_config(overrides=["model.lr=1e-3", "training.lr=2e-3"])


@pytest.mark.parametrize("where,key,suggestion", [
    ("set", "training.learning_rate", "training.lr"),
    ("set", "model.batchsize", "training.batch_size"),
    ("set", "training.lrr", "training.lr"),
    ("set", "model.dmodel", "model.d_model"),
    ("set", "training.num_worker", "data.num_workers"),
    ("set", "trainig.lr", "training.lr"),
    ("yaml", "training.learning_rate", "training.lr"),
    ("yaml", "model.batchsize", "training.batch_size"),
    ("yaml", "learning_rate", "training.lr"),
    ("yaml", "lambda_laten", "loss.lambda_latent"),
])
def test_did_you_mean(tmp_path, where, key, suggestion):
    if where == "set":
        call, source = (lambda: load_config(overrides=[f"{key}=1"])), "--set"
    else:
        p = tmp_path / "c.yaml"
        sec, _, k = key.rpartition(".")
        p.write_text(f"{sec}:\n  {k}: 1\n" if sec else f"{k}: 1\n")
        call, source = (lambda: load_config(p)), str(p)
    with pytest.raises(ConfigError) as e:
        call()
    msg = str(e.value)
    assert msg.startswith(f"{source}: unknown ") and f"(did you mean '{suggestion}'?)" in msg
    if "." in key and key.split(".")[0] in CONFIG_SECTIONS:  # still lists what is valid
        assert f"valid keys for '{key.split('.')[0]}': " in msg


def test_shipped_config_by_name_from_anywhere(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert set(shipped_configs()) >= {"debug", "demo", "production"}
    demo = load_config(package_root() / "configs" / "demo.yaml")
    for name in ("demo", "demo.yaml", "configs/demo.yaml"):
        assert load_config(name) == demo
    assert load_config("debug", ["training.max_epochs=1"]).training.max_epochs == 1
    with pytest.raises(ConfigError) as e:
        load_config("demo2")
    msg = str(e.value)
    assert msg.startswith("config file not found: demo2")
    assert str(Path.cwd()) in msg and str(package_root() / "configs") in msg and "debug, demo, production" in msg
    (tmp_path / "demo.yaml").write_text("training:\n  max_epochs: 1\n")  # a file in the working directory comes first
    assert load_config("demo.yaml").training.max_epochs == 1


def _readme_guide_commands() -> list:
    "The `cardiac-dreamer ...` commands of the README's 'Coming from the training guide' table."
    import re
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = text.split("## Coming from the training guide", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"\| `(cardiac-dreamer [^`]+)` \|", section)


def test_readme_guide_table_lists_the_guide_commands():
    cmds = _readme_guide_commands()
    assert len(cmds) >= 5, cmds
    for opt in ("--manual_splits", "--resume_from_checkpoint", "--config production", "--config debug", "best.ckpt"):
        assert any(opt in c for c in cmds), opt


@pytest.mark.parametrize("command", _readme_guide_commands())
def test_readme_guide_commands_are_accepted(command):
    "Every command of the table parses, and the configuration it names (a shipped name) loads: no refusal."
    import shlex
    from cardiac_dreamer.cli import build_parser
    from cardiac_dreamer.config import load_config
    args = build_parser().parse_args(shlex.split(command)[1:])  # SystemExit (exit 2) on a refused option
    assert callable(args.func)
    if getattr(args, "config", None): load_config(args.config)
