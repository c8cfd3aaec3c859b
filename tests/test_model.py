"""Acceptance checks of `cardiac_dreamer.model` checkpoints and weights: every bad file is a `CheckpointError` naming it,
nothing is unpickled unsafely, nothing is downloaded, and a real Lightning checkpoint round-trips."""
import os
import pathlib
import random
import shlex
import zipfile

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

import cardiac_dreamer.model as cdm
from cardiac_dreamer.config import CardiacDreamerError, ModelConfig
from cardiac_dreamer.model import (CHECKPOINT_KEY, CardiacDreamer, CheckpointError, build_backbone, load_checkpoint_file,
                                   model_checkpoint_payload)

TINY = dict(backbone="resnet18", image_size=64, d_model=32, num_heads=4, num_layers=1, guidance_hidden=[64, 32])


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return CardiacDreamer(ModelConfig(**TINY)).eval()


def lightning_dict(model, **payload_changes):
    "A Lightning-style checkpoint dict as the trainer writes it."
    return {"epoch": 1, "global_step": 10, "pytorch-lightning_version": "2.6.6",
            "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
            CHECKPOINT_KEY: {**model_checkpoint_payload(model, {"training": {"seed": 1}}), **payload_changes}}


def save(obj, path):
    torch.save(obj, path)
    return path


def assert_checkpoint_error(path, *fragments):
    with pytest.raises(CheckpointError) as info: CardiacDreamer.from_checkpoint(path)
    msg = str(info.value)
    assert msg.startswith(str(path)), msg
    for f in fragments: assert f in msg, msg
    return msg


def test_round_trip(tmp_path, model):
    path = save(lightning_dict(model), tmp_path/"good.ckpt")
    loaded = CardiacDreamer.from_checkpoint(path)
    frames = torch.randint(0, 256, (2, 3, 90, 120), dtype=torch.uint8)
    assert torch.equal(loaded.predict_action(frames), model.predict_action(frames))
    assert loaded.cfg == model.cfg and loaded.run_config == {"training": {"seed": 1}} and not loaded.training


def test_load_always_uses_weights_only(tmp_path, model, monkeypatch):
    path, calls, real_load = save(lightning_dict(model), tmp_path/"good.ckpt"), [], torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **kw: calls.append(kw) or real_load(*a, **kw))
    load_checkpoint_file(path)
    assert calls and all(kw.get("weights_only") is True for kw in calls)


def test_missing_file(tmp_path):
    assert_checkpoint_error(tmp_path/"nope.ckpt", "not found")


def test_directory(tmp_path):
    assert_checkpoint_error(tmp_path, "not a file")


@pytest.mark.parametrize("cut", [0, 0.5, 0.98])
def test_truncated(tmp_path, model, cut):
    data = save(lightning_dict(model), tmp_path/"good.ckpt").read_bytes()
    path = tmp_path/"truncated.ckpt"
    path.write_bytes(data[:int(len(data) * cut)])
    assert_checkpoint_error(path, "cannot load checkpoint")


def test_random_bytes(tmp_path):
    path = tmp_path/"random.ckpt"
    path.write_bytes(random.Random(0).randbytes(4096))
    assert_checkpoint_error(path, "cannot load checkpoint")


def test_zip_that_is_not_torch(tmp_path):
    path = tmp_path/"other.ckpt"
    with zipfile.ZipFile(path, "w") as z: z.writestr("hello.txt", "hi")
    assert_checkpoint_error(path, "cannot load checkpoint")


def test_not_a_dict(tmp_path):
    assert_checkpoint_error(save([1, 2, 3], tmp_path/"list.ckpt"), "not a Lightning checkpoint")


def test_without_payload(tmp_path, model):
    ckpt = lightning_dict(model)
    del ckpt[CHECKPOINT_KEY]
    assert_checkpoint_error(save(ckpt, tmp_path/"plain.ckpt"), "not a cardiac-dreamer checkpoint", CHECKPOINT_KEY)


def test_payload_missing_keys(tmp_path, model):
    ckpt = lightning_dict(model)
    del ckpt[CHECKPOINT_KEY]["stats"]
    assert_checkpoint_error(save(ckpt, tmp_path/"partial.ckpt"), "lacks stats")


def test_future_format(tmp_path, model):
    assert_checkpoint_error(save(lightning_dict(model, format_version=99), tmp_path/"future.ckpt"), "format_version 99")


def test_bad_model_config(tmp_path, model):
    bad = {**model_checkpoint_payload(model)["model_config"], "no_such_key": 1}
    assert_checkpoint_error(save(lightning_dict(model, model_config=bad), tmp_path/"badcfg.ckpt"), "invalid model settings")


def test_state_dict_mismatch(tmp_path, model):
    ckpt = lightning_dict(model)
    ckpt["state_dict"].pop("model.guidance.mlp.0.weight")
    ckpt["state_dict"]["model.at1_mean"] = torch.zeros(7)
    assert_checkpoint_error(save(ckpt, tmp_path/"mismatch.ckpt"), "do not match", "guidance.mlp.0.weight", "at1_mean")


def test_settings_do_not_fit_weights(tmp_path, model):
    other = {**model_checkpoint_payload(model)["model_config"], "d_model": 64}
    assert_checkpoint_error(save(lightning_dict(model, model_config=other), tmp_path/"wrong.ckpt"), "wrong shapes")


class _TouchOnLoad:
    "Unpickling this creates a file: the classic malicious-checkpoint payload."
    def __init__(self, path): self.path = pathlib.Path(path)
    def __reduce__(self): return (pathlib.Path.touch, (self.path,))


class _ShellOnLoad:
    "Unpickling this runs a shell command."
    def __init__(self, path): self.path = str(path)
    def __reduce__(self): return (os.system, (f"touch {shlex.quote(self.path)}",))


@pytest.mark.parametrize("payload", [_TouchOnLoad, _ShellOnLoad])
def test_malicious_pickle_is_refused(tmp_path, model, payload):
    marker = tmp_path/"pwned"
    ckpt = lightning_dict(model)
    ckpt[CHECKPOINT_KEY]["config"] = {"innocent": payload(marker)}
    path = save(ckpt, tmp_path/"evil.ckpt")
    assert not marker.exists()
    assert_checkpoint_error(path, "refused to unpickle")
    with pytest.raises(CheckpointError): load_checkpoint_file(path)
    assert not marker.exists()
    torch.load(path, weights_only=False)  # control: an unsafe loader does run the payload
    assert marker.exists()


def test_imagenet_is_never_downloaded(tmp_path, monkeypatch):
    def no_network(*a, **kw): raise AssertionError("tried to download")
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path/"hub"))
    try:
        with pytest.raises(CardiacDreamerError) as info: build_backbone("resnet34", "imagenet")
    finally: torch.hub.set_dir(old)
    msg = str(info.value)
    assert str(tmp_path/"hub"/"checkpoints"/"resnet34-b627a593.pth") in msg
    assert "https://download.pytorch.org/models/resnet34-b627a593.pth" in msg and "backbone_weights" in msg


def test_imagenet_checkpoint_needs_no_imagenet_file(tmp_path, model, monkeypatch):
    "A model trained from ImageNet weights loads where the ImageNet file is absent."
    path = save(lightning_dict(model, model_config={**model_checkpoint_payload(model)["model_config"],
                                                    "backbone_weights": "imagenet"}), tmp_path/"in.ckpt")
    monkeypatch.setattr(cdm, "imagenet_weights_path", lambda name: tmp_path/"absent.pth")
    assert CardiacDreamer.from_checkpoint(path).cfg.backbone_weights == "none"


class _TinySystem(L.LightningModule):
    "A minimal stand-in for the trainer's system: stores the payload the way the contract says."
    def __init__(self, model):
        super().__init__()
        self.model = model
    def training_step(self, batch, i):
        x, y = batch
        return torch.nn.functional.mse_loss(self.model(x, torch.zeros(len(x), 6))["at1_hat"], y)
    def validation_step(self, batch, i):
        self.log("val_loss", self.training_step(batch, i))
    def configure_optimizers(self): return torch.optim.AdamW(self.parameters(), lr=1e-3)
    def on_save_checkpoint(self, checkpoint): checkpoint[CHECKPOINT_KEY] = model_checkpoint_payload(self.model, {"model": TINY})


def test_real_lightning_checkpoint(tmp_path):
    torch.manual_seed(0)
    ds = torch.utils.data.TensorDataset(torch.rand(8, 1, 64, 64), torch.randn(8, 6))
    dl = torch.utils.data.DataLoader(ds, batch_size=4)
    system = _TinySystem(CardiacDreamer(ModelConfig(**TINY)))
    ckpt_cb = ModelCheckpoint(dirpath=tmp_path, monitor="val_loss", save_last=True)
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[ckpt_cb, EarlyStopping("val_loss", patience=3)], default_root_dir=tmp_path)
    trainer.fit(system, dl, dl)
    loaded = CardiacDreamer.from_checkpoint(tmp_path/"last.ckpt")
    frames = torch.rand(3, 1, 64, 64)
    assert torch.allclose(loaded.predict_action(frames), system.model.predict_action(frames))
    assert loaded.run_config == {"model": TINY}
