"""Tests of cardiac_dreamer.fusion: carrying estimates through known motion and fusing them (seeded, no hypothesis)."""
import math

import numpy as np
import pytest
import torch

from cardiac_dreamer.config import CardiacDreamerError
from cardiac_dreamer.fusion import (DEFAULT_WINDOW, FusionError, SequentialFuser, carry_estimate, fuse_estimates,
                                    fuse_sequence)
from cardiac_dreamer.geometry import LABEL_CONVENTIONS, apply_change, pose_to_matrix, wrap_angle

STEP = torch.tensor([2.0, 2, 2, 5, 5, 5], dtype=torch.float64)  # std of a random action change (mm, deg)


def trajectory(n, convention, seed, start=(5.0, -3, 8, 170, 20, -175)):
    "True moves at [n, 6] of a moving probe and the action changes [n, 6] (row t: frame t-1 -> t; row 0 NaN), via apply_change."
    g = torch.Generator().manual_seed(seed)
    ch = torch.randn(n, 6, generator=g, dtype=torch.float64) * STEP
    at = [torch.tensor(start, dtype=torch.float64)]
    for t in range(1, n):
        at.append(apply_change(at[-1], ch[t], convention))
    ch[0] = torch.nan
    return torch.stack(at), ch


def pose_err(a, b):
    "Max abs difference of two pose arrays, angles compared modulo 360 degrees."
    d = torch.as_tensor(np.asarray(a)) - torch.as_tensor(np.asarray(b))
    return torch.cat([d[..., :3], wrap_angle(d[..., 3:])], -1).abs().max().item()


@pytest.mark.parametrize("convention", LABEL_CONVENTIONS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_carried_exact_estimates_give_the_true_present_move(convention, seed):
    at, ch = trajectory(25, convention, seed)
    t = 24
    for k in range(t + 1):  # every earlier frame's exact estimate, carried, is the true move of frame t
        carried = carry_estimate(at[k], ch[k + 1:t + 1], convention)
        assert pose_err(carried, at[t]) < 1e-6
    if convention == "se3":  # the same as composing the matrices by hand
        T = pose_to_matrix(at[3])
        for j in range(4, t + 1):
            T = T @ pose_to_matrix(ch[j])
        assert torch.allclose(pose_to_matrix(carry_estimate(at[3], ch[4:], convention)), T, atol=1e-9)
    else:
        assert torch.allclose(carry_estimate(at[3], ch[4:], convention), at[3] + ch[4:].sum(0))


@pytest.mark.parametrize("convention", LABEL_CONVENTIONS)
@pytest.mark.parametrize("method", ["auto", "huber", "median", "mean", "inverse_variance"])
@pytest.mark.parametrize("window", [1, 3, 8])
def test_fusion_of_exact_estimates_reproduces_the_true_move(convention, method, window):
    at, ch = trajectory(50, convention, seed=window)
    scales = torch.rand(50, 6, generator=torch.Generator().manual_seed(7), dtype=torch.float64) + 0.1
    sc = scales if method == "inverse_variance" else None
    assert pose_err(fuse_sequence(at, ch, window, convention, scales=sc, method=method), at) < 1e-6
    f = SequentialFuser(convention, window=window, method=method)
    out = [f.update(at[t], None if t == 0 else ch[t], None if sc is None else sc[t]) for t in range(50)]
    assert pose_err(torch.stack(out), at) < 1e-6


def test_sequential_fuser_matches_fuse_sequence_on_noisy_estimates():
    for convention in LABEL_CONVENTIONS:
        at, ch = trajectory(40, convention, seed=3)
        noisy = at + torch.randn(40, 6, generator=torch.Generator().manual_seed(4), dtype=torch.float64) * STEP
        f = SequentialFuser(convention, window=5)
        seq = torch.stack([f.update(noisy[t], None if t == 0 else ch[t]) for t in range(40)])
        assert pose_err(seq, fuse_sequence(noisy, ch, 5, convention)) < 1e-9


@pytest.mark.parametrize("method,slack", [("inverse_variance", 0.12), ("huber", 0.2)])
@pytest.mark.parametrize("window", [4, 9])
def test_independent_noise_mae_falls_by_sqrt_window(method, slack, window):
    rng = np.random.default_rng(0)
    n, std = 4000, np.array([2.0, 2, 2, 4, 4, 4])
    ch = rng.normal(0, 1, (n, 6)) * std
    ch[0] = 0
    at = np.cumsum(ch, 0)
    est = at + rng.normal(0, 1, (n, 6)) * std
    scales = np.broadcast_to(std, est.shape) if method == "inverse_variance" else None
    fused = fuse_sequence(est, ch, window, "additive", scales=scales, method=method)
    gain = np.abs(est - at)[window:].mean() / np.abs(fused - at)[window:].mean()
    assert (1 - slack) * math.sqrt(window) < gain < (1 + slack) * math.sqrt(window), gain


def test_inverse_variance_prefers_the_precise_estimate():
    est = torch.tensor([[0.0] * 6, [10.0] * 6], dtype=torch.float64)
    fused, scale = fuse_estimates(est, scales=torch.tensor([[1.0] * 6, [3.0] * 6]))
    assert torch.allclose(fused, torch.ones(6, dtype=torch.float64))
    assert torch.allclose(scale, torch.full((6,), (1 + 1 / 9) ** -0.5, dtype=torch.float64))
    fused, _ = fuse_estimates(est, scales=torch.tensor([[1.0] * 6, [0.01] * 6]))
    assert (fused > 9.99).all()


@pytest.mark.parametrize("method", ["huber", "median", "mean"])
def test_angles_near_180_fuse_on_the_latest_branch(method):
    est = np.zeros((5, 6))
    est[:, 5] = [179.0, -179.0, 177.0, -177.0, -180.0]
    est[:, 3] = [-179.0, 179.0, -177.0, 177.0, 180.0]
    fused, _ = fuse_estimates(est, method=method)
    assert abs(fused[5] + 180.0) < 1e-9 and abs(fused[3] - 180.0) < 1e-9  # not 0, and within 180 deg of the latest
    fused, _ = fuse_estimates(np.deg2rad(est), method=method, angle_unit="rad")
    assert abs(fused[5] + math.pi) < 1e-9


def test_huber_resists_an_outlier_and_returns_a_scale():
    rng = np.random.default_rng(1)
    est = rng.normal(0, 1, (12, 6))
    est[4] = 50.0
    fused, scale = fuse_estimates(est)  # auto without scales: huber
    assert np.abs(fused).max() < 1.0 and np.abs(fuse_estimates(est, method="mean")[0]).min() > 3.0
    assert np.isfinite(scale).all() and (scale > 0).all()
    _, scale1 = fuse_estimates(est[:1])
    assert np.isnan(scale1).all()  # one estimate: spread unknown


def test_window_and_sweep_semantics():
    at, ch = trajectory(30, "additive", seed=5)
    est = at + torch.randn(30, 6, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    ones = torch.ones(30, 6, dtype=torch.float64)
    assert torch.equal(fuse_sequence(est, ch, 1, "additive"), est)
    _, scale = fuse_sequence(est, ch, 4, "additive", scales=ones, return_scale=True)
    assert torch.allclose(scale[:, 0], torch.tensor([1, 2, 3] + [4] * 27, dtype=torch.float64).rsqrt())  # 1, 2, 3, 4, 4 ... frames
    new = torch.zeros(30, dtype=torch.bool)
    new[10] = True
    ch_break = ch.clone()
    ch_break[10] = torch.nan  # the motion across a sweep break is unknown and unused
    fused = fuse_sequence(est, ch_break, 4, "additive", new_sweep=new)
    assert torch.allclose(fused[10:], fuse_sequence(est[10:], ch[10:], 4, "additive"))
    assert torch.allclose(fused[10], est[10])
    assert torch.allclose(fused[:10], fuse_sequence(est[:10], ch[:10], 4, "additive"))
    # the stateful fuser: window trims the oldest, reset starts over, the first motion is ignored
    f = SequentialFuser("additive", window=2, method="mean")
    assert len(f) == 0 and f.window == 2 and SequentialFuser("se3").window == DEFAULT_WINDOW
    np.testing.assert_allclose(f.update(np.zeros(6), np.full(6, np.nan)), np.zeros(6))
    np.testing.assert_allclose(f.update(np.full(6, 2.0), np.ones(6)), np.full(6, 1.5))  # (0 + 1, 2) / 2
    np.testing.assert_allclose(f.update(np.full(6, 3.0), np.ones(6)), np.full(6, 3.0))  # (2 + 1, 3): frame 0 dropped
    assert len(f) == 2
    f.reset()
    assert len(f) == 0 and f.scale is None
    np.testing.assert_allclose(f.update(np.full(6, 9.0)), np.full(6, 9.0))


def test_batches_and_types():
    at = torch.zeros(4, 6, dtype=torch.float32)
    ch = torch.ones(4, 3, 6, dtype=torch.float32)
    out = carry_estimate(at, ch, "se3")
    assert out.dtype == torch.float32 and out.shape == (4, 6)
    assert isinstance(carry_estimate(at.numpy(), ch.numpy(), "additive"), np.ndarray)
    f = SequentialFuser("additive", window=3)
    out = f.update(torch.zeros(5, 6), scale=torch.ones(5, 6))
    out = f.update(torch.zeros(5, 6), torch.ones(5, 6), scale=torch.ones(5, 6))
    assert out.shape == (5, 6) and out.dtype == torch.float32 and torch.allclose(f.scale, torch.full((5, 6), 0.5 ** 0.5))


def test_bad_inputs_raise_clear_errors():
    est, ch = np.zeros((10, 6)), np.zeros((10, 6))
    cases = [
        (lambda: carry_estimate(np.zeros(5), np.zeros((1, 6)), "additive"), "[..., 6]"),
        (lambda: carry_estimate(np.zeros(6), np.zeros(6), "additive"), "[..., M, 6]"),
        (lambda: carry_estimate(np.full(6, np.nan), np.zeros((1, 6)), "additive"), "NaN"),
        (lambda: carry_estimate(np.zeros(6), np.zeros((1, 6)), "euler"), "convention"),
        (lambda: carry_estimate(np.zeros(6), np.zeros((1, 6)), "additive", angle_unit="grad"), "angle_unit"),
        (lambda: fuse_estimates(np.zeros(6)), "[..., K, 6]"),
        (lambda: fuse_estimates(est, method="trimmed"), "method"),
        (lambda: fuse_estimates(est, method="inverse_variance"), "needs per-axis scales"),
        (lambda: fuse_estimates(est, scales=-np.ones((10, 6))), "> 0"),
        (lambda: fuse_estimates(est, scales=np.full((10, 6), np.nan)), "NaN"),
        (lambda: fuse_estimates(est, mask=np.zeros(10, bool)), "at least one"),
        (lambda: fuse_sequence(est, ch[:3], 4, "additive"), "motions: expected"),
        (lambda: fuse_sequence(est, np.full((10, 6), np.nan), 4, "additive"), "NaN"),
        (lambda: fuse_sequence(est[None], ch[None], 4, "additive"), "[T, 6]"),
        (lambda: fuse_sequence(est, ch, 0, "additive"), "window"),
        (lambda: fuse_sequence(est, ch, 2.5, "additive"), "window"),
        (lambda: fuse_sequence(est, ch, 4, "SE3"), "convention"),
        (lambda: SequentialFuser("quaternion"), "convention"),
        (lambda: SequentialFuser("additive", method="best"), "method"),
    ]
    for fn, msg in cases:
        with pytest.raises(FusionError, match=None) as e:
            fn()
        assert msg in str(e.value), (msg, str(e.value))
        assert isinstance(e.value, (ValueError, CardiacDreamerError))
    f = SequentialFuser("additive")
    f.update(np.zeros(6))
    for fn, msg in [(lambda: f.update(np.zeros(6)), "motion_since_previous is required"),
                    (lambda: f.update(np.zeros((2, 6)), np.zeros(6)), "reset()"),
                    (lambda: f.update(np.zeros(6), np.zeros(6), scale=np.ones(6)), "every update"),
                    (lambda: f.update(np.zeros(6), np.full(6, np.nan)), "NaN")]:
        with pytest.raises(FusionError) as e:
            fn()
        assert msg in str(e.value)


@pytest.mark.parametrize("convention", LABEL_CONVENTIONS)
@pytest.mark.parametrize("inflation", [0.0, 0.25])
def test_inverse_variance_with_model_scales(convention, inflation):
    """The model's per-frame scales (issue 14): exact estimates with unequal scales fuse to the true move in both conventions
    (stream and recording alike), and a noisy estimate with a large scale barely moves the fused value."""
    at, ch = trajectory(40, convention, seed=11)
    sc = torch.rand(40, 6, generator=torch.Generator().manual_seed(12), dtype=torch.float64) * 3 + 0.2
    assert pose_err(fuse_sequence(at, ch, 6, convention, scales=sc, inflation=inflation), at) < 1e-6
    f = SequentialFuser(convention, window=6, inflation=inflation)
    assert pose_err(torch.stack([f.update(at[t], None if t == 0 else ch[t], sc[t]) for t in range(40)]), at) < 1e-6
    bad = at.clone(); bad[20, :3] += 30.0  # one wild translation estimate ...
    big = sc.clone(); big[20] = 100.0      # ... that the model flags as uncertain
    fused = fuse_sequence(bad, ch, 6, convention, scales=big, inflation=inflation)
    assert (fused[21:26, :3] - at[21:26, :3]).abs().max() < 0.05 * 30.0 / 6
    naive = fuse_sequence(bad, ch, 6, convention, scales=sc, inflation=inflation)  # trusted: it pulls
    assert (naive[21:26, :3] - at[21:26, :3]).abs().max() > 0.5
