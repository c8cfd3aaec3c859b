"""Acceptance tests for cardiac_dreamer.config: error messages, shipped YAML files, round trips."""
import json
from pathlib import Path

import pytest
import yaml

from cardiac_dreamer.config import (CHOICES, CONFIG_SECTIONS, CardiacDreamerError, Config, ConfigError, DataConfig,
                                    atomic_write_json, atomic_write_text, config_from_dict, config_to_dict, load_config,
                                    save_config)

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", ["production", "debug", "demo"])
def test_shipped_configs_load(name):
    cfg = load_config(ROOT / "configs" / f"{name}.yaml")
    assert isinstance(cfg, Config)
    assert cfg.model.d_model % cfg.model.num_heads == 0


def test_shipped_values():
    prod, debug, demo = (load_config(ROOT / "configs" / f"{n}.yaml") for n in ("production", "debug", "demo"))
    assert prod == Config()  # production.yaml spells out the defaults
    assert (prod.model.d_model, prod.model.num_heads, prod.model.num_layers, prod.model.token_type) == (768, 12, 6, "channel")
    assert (prod.training.batch_size, prod.training.max_epochs, prod.training.lr, prod.training.early_stop_patience) == (16, 150, 2e-4, 20)
    assert (prod.loss.lambda_latent, prod.loss.lambda_t2_action, prod.loss.smooth_l1_beta, prod.loss.primary_task_only) == (0.2, 1.0, 1.0, False)
    assert prod.training.precision == "32" and prod.model.backbone == "resnet34"
    assert (debug.model.backbone, debug.model.image_size, debug.model.d_model, debug.model.num_heads, debug.model.num_layers) == ("resnet18", 64, 64, 4, 1)
    assert (debug.training.batch_size, debug.training.max_epochs, debug.training.early_stop_patience) == (8, 2, 5)
    assert (debug.data.max_transitions_per_patient, debug.data.num_workers) == (16, 0)
    assert (demo.model.backbone, demo.model.image_size, demo.model.d_model, demo.model.num_heads, demo.model.num_layers) == ("resnet18", 96, 128, 4, 2)
    assert (demo.training.batch_size, demo.training.max_epochs, demo.training.lr, demo.training.scheduler, demo.training.warmup_epochs) == (16, 4, 1e-3, "onecycle", 1)
    assert (demo.loss.lambda_single_frame, demo.data.num_workers) == (1.0, 0)


def test_unknown_key_lists_valid_keys(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("training:\n  learning_rate: 1.0e-3\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    msg = str(e.value)
    assert str(p) in msg and "training.learning_rate" in msg
    for key in ("lr", "batch_size", "max_epochs", "weight_decay"):
        assert key in msg
    with pytest.raises(ConfigError, match=r"--set: unknown key 'model.heads'.*valid keys for 'model': backbone"):
        load_config(overrides=["model.heads=4"])


def test_unknown_section(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("optimizer:\n  lr: 1.0\n")
    with pytest.raises(ConfigError, match=r"unknown section 'optimizer'; valid sections: model, loss, data, training"):
        load_config(p)


def test_wrong_type(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("training:\n  batch_size: sixteen\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    msg = str(e.value)
    assert str(p) in msg and "training.batch_size" in msg and "expected int" in msg and "'sixteen'" in msg
    with pytest.raises(ConfigError, match="expected bool"):
        load_config(overrides=["model.use_dreamer=maybe"])
    with pytest.raises(ConfigError, match="expected float"):
        load_config(overrides=["training.lr=true"])


def test_missing_file(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match="config file not found") as e:
        load_config(missing)
    assert str(missing) in str(e.value)
    assert isinstance(e.value, CardiacDreamerError)


@pytest.mark.parametrize("override,fragment", [
    ("training.lr=-1e-4", "training.lr=-0.0001: must be > 0"),
    ("training.lr=0", "must be > 0"),
    ("training.weight_decay=-1", "must be >= 0"),
    ("model.num_heads=5", "d_model must be divisible by num_heads"),
    ("model.freeze_backbone_layers=-1", "between 0 and 4"),
    ("data.split_ratios=[0.5,0.5,0.5]", "sum to 1"),
    ("training.batch_size=0", "must be >= 1"),
    ("training.max_epochs=0", "must be >= 1"),
    ("training.scheduler=linear", "is not one of cosine"),
])
def test_bad_values(override, fragment):
    with pytest.raises(ConfigError, match="--set") as e:
        load_config(overrides=[override])
    assert fragment in str(e.value)


def test_d_model_heads_from_file(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("model:\n  d_model: 100\n  num_heads: 12\n")
    with pytest.raises(ConfigError, match=r"model.d_model=100, model.num_heads=12: d_model must be divisible by num_heads"):
        load_config(p)


def test_overrides():
    cfg = load_config(ROOT / "configs" / "debug.yaml",
                      ["training.lr=1e-4", "model.token_type=spatial", "data.train_patients=[a,b]", "training.devices=auto"])
    assert cfg.training.lr == 0.0001 and isinstance(cfg.training.lr, float)
    assert cfg.model.token_type == "spatial" and cfg.data.train_patients == ["a", "b"]
    assert cfg.model.d_model == 64  # the file's value survives
    assert load_config(overrides={"training": {"lr": 3e-4}}).training.lr == 3e-4


def test_float_strings_in_yaml(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("training:\n  lr: 1e-4\n  weight_decay: 0\n")  # YAML 1.1 reads 1e-4 as a string
    cfg = load_config(p)
    assert cfg.training.lr == 1e-4 and type(cfg.training.weight_decay) is float


def test_save_load_round_trip_plain_types(tmp_path):
    cfg = load_config(ROOT / "configs" / "demo.yaml", ["data.subjects={p1: s1}", "data.subjects_file=subjects.yaml"])
    path = save_config(cfg, tmp_path / "out" / "config.yaml")
    assert load_config(path) == cfg
    assert config_from_dict(config_to_dict(cfg)) == cfg

    def plain(v):
        if isinstance(v, dict):
            return all(isinstance(k, str) and plain(x) for k, x in v.items())
        if isinstance(v, list):
            return all(plain(x) for x in v)
        return v is None or type(v) in (str, int, float, bool)
    assert plain(yaml.safe_load(path.read_text())) and plain(config_to_dict(cfg))
    assert [p.name for p in path.parent.iterdir()] == ["config.yaml"]


def test_atomic_helpers(tmp_path):
    p = atomic_write_json(tmp_path / "a" / "x.json", {"k": [1, 2]})
    assert json.loads(p.read_text()) == {"k": [1, 2]}
    atomic_write_text(p, "hello")
    assert p.read_text() == "hello"


def test_choices_cover_sections():
    for dotted, options in CHOICES.items():
        sec, key = dotted.split(".")
        assert key in CONFIG_SECTIONS[sec].__dataclass_fields__
        assert getattr(CONFIG_SECTIONS[sec](), key) in options
    assert DataConfig().label_convention == "additive"


def test_workflow_settings():
    """Typed, frozen workflow settings: one closed-loop step limit, `--set navigation.KEY=VALUE` read like the configuration's."""
    import dataclasses
    from cardiac_dreamer.config import (DEFAULT_DATA_DIR, AblationArms, BenchTargets, EvaluationThresholds, NavigationSettings,
                                        with_overrides)
    nav = NavigationSettings()
    assert nav.max_step == (2.0, 2.0, 2.0, 4.0, 4.0, 4.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        nav.gain = 1.0
    assert with_overrides(nav, ["navigation.gain=0.7", "navigation.max_step_deg=3"]).max_step == (2.0, 2.0, 2.0, 3.0, 3.0, 3.0)
    with pytest.raises(ConfigError, match="navigation.gain"):
        with_overrides(nav, ["navigation.gian=0.7"])
    assert EvaluationThresholds().by_unit() == {"mm": (2, 5, 10), "deg": (5, 10)}
    assert AblationArms().names == ("full", "no_world_model", "no_latent_loss") and AblationArms().reference == "no_world_model"
    assert BenchTargets().latency_p50_ms == 100.0 and DataConfig().data_dir == DEFAULT_DATA_DIR == "data/phantom"
