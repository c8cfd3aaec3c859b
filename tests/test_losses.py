"`cardiac_dreamer.losses`: a few optimiser steps on one batch lower every weighted term (the loss trains the model)."
import pytest
import torch

from cardiac_dreamer.config import LossConfig, ModelConfig
from cardiac_dreamer.losses import CardiacDreamerLoss
from cardiac_dreamer.model import CardiacDreamer

TINY = dict(backbone="resnet18", image_size=32, d_model=32, num_heads=4, num_layers=1, guidance_hidden=[64, 32], dropout=0.0,
            guidance_dropout=0.0)


@pytest.mark.parametrize("use_dreamer,latent_distance,token_type",
                         [(True, "mse", "spatial"), (True, "cosine", "spatial"), (False, "mse", "spatial")])
def test_overfit_one_batch(use_dreamer, latent_distance, token_type):
    torch.manual_seed(0)
    model = CardiacDreamer(ModelConfig(**TINY, use_dreamer=use_dreamer, token_type=token_type)).train()
    loss_fn = CardiacDreamerLoss(LossConfig(latent_distance=latent_distance, lambda_single_frame=0.5))
    batch = dict(image_t1=torch.rand(4, 1, 32, 32), image_t2=torch.rand(4, 1, 32, 32), action_change=torch.randn(4, 6),
                 at1=torch.randn(4, 6))
    batch["at2"] = batch["at1"] + batch["action_change"]
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    step = lambda: loss_fn(model(batch["image_t1"], batch["action_change"], batch["image_t2"]), batch, model)
    first = {k: float(v.detach()) for k, v in step().items()}
    for _ in range(10):
        opt.zero_grad()
        step()["total_loss"].backward()
        opt.step()
    last = {k: float(v.detach()) for k, v in step().items()}
    assert last["total_loss"] < 0.5 * first["total_loss"], (first, last)
    assert last["main_task_loss"] < first["main_task_loss"]
    assert all(torch.isfinite(torch.tensor(v)) for v in last.values())


@pytest.mark.parametrize("uncertainty", ["gaussian", "laplace"])
def test_overfit_one_batch_with_uncertainty(uncertainty):
    "With an uncertainty head the NLL terms fall too, and the predicted scales shrink towards the shrinking residuals."
    torch.manual_seed(0)
    model = CardiacDreamer(ModelConfig(**TINY, token_type="spatial", uncertainty=uncertainty)).train()
    loss_fn = CardiacDreamerLoss(LossConfig(lambda_single_frame=0.5))
    batch = dict(image_t1=torch.rand(4, 1, 32, 32), image_t2=torch.rand(4, 1, 32, 32), action_change=torch.randn(4, 6),
                 at1=torch.randn(4, 6))
    batch["at2"] = batch["at1"] + batch["action_change"]
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    run = lambda: model(batch["image_t1"], batch["action_change"], batch["image_t2"])
    first_out = run()
    first = {k: float(v.detach()) for k, v in loss_fn(first_out, batch, model).items()}
    for _ in range(15):
        opt.zero_grad()
        loss_fn(run(), batch, model)["total_loss"].backward()
        opt.step()
    out = run()
    last = {k: float(v.detach()) for k, v in loss_fn(out, batch, model).items()}
    assert last["main_task_loss"] < first["main_task_loss"] - 0.2, (first, last)
    assert last["single_frame_loss"] < first["single_frame_loss"], (first, last)
    assert out["at1_log_scale"].mean() < first_out["at1_log_scale"].mean()
    assert all(torch.isfinite(torch.tensor(v)) for v in last.values())
