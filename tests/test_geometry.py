"""Property tests for cardiac_dreamer.geometry on seeded random poses (no hypothesis in the venv)."""
import math

import numpy as np
import pytest
import roma
import torch

from cardiac_dreamer.geometry import (LABEL_CONVENTIONS, POSE_AXES, apply_change, compose_poses, infer_label_convention,
                                      invert_pose, matrix_to_pose, pose_to_matrix, recover_at1, relative_change,
                                      rotation_distance_deg, translation_distance, wrap_angle)

SEEDS = [0, 1, 2, 3, 4]


def random_poses(n, seed, dtype=torch.float64, max_pitch=89.0, angle_scale=179.0):
    g = torch.Generator().manual_seed(seed)
    t = torch.randn(n, 3, generator=g, dtype=dtype) * 40
    roll, yaw = ((torch.rand(n, 1, generator=g, dtype=dtype) * 2 - 1) * angle_scale for _ in range(2))
    pitch = (torch.rand(n, 1, generator=g, dtype=dtype) * 2 - 1) * max_pitch
    return torch.cat([t, roll, pitch, yaw], dim=-1)


def hand_rotation(roll, pitch, yaw):
    "R = Rz(yaw) @ Ry(pitch) @ Rx(roll), angles in degrees, built entry by entry."
    r, p, y = map(math.radians, (roll, pitch, yaw))
    rx = np.array([[1, 0, 0], [0, math.cos(r), -math.sin(r)], [0, math.sin(r), math.cos(r)]])
    ry = np.array([[math.cos(p), 0, math.sin(p)], [0, 1, 0], [-math.sin(p), 0, math.cos(p)]])
    rz = np.array([[math.cos(y), -math.sin(y), 0], [math.sin(y), math.cos(y), 0], [0, 0, 1]])
    return rz @ ry @ rx


def test_axes():
    assert POSE_AXES == ("x", "y", "z", "roll", "pitch", "yaw")


@pytest.mark.parametrize("seed", SEEDS)
def test_rotation_order_matches_hand_built(seed):
    p = random_poses(16, seed)
    T = pose_to_matrix(p).numpy()
    for i in range(len(p)):
        np.testing.assert_allclose(T[i, :3, :3], hand_rotation(*p[i, 3:].tolist()), atol=1e-12)
        np.testing.assert_allclose(T[i, :3, 3], p[i, :3].numpy(), atol=1e-12)
        np.testing.assert_allclose(T[i, 3], [0, 0, 0, 1])


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("dtype,atol", [(torch.float64, 1e-9), (torch.float32, 2e-3)])
def test_pose_matrix_round_trip(seed, dtype, atol):
    p = random_poses(256, seed, dtype)
    q = matrix_to_pose(pose_to_matrix(p))
    assert q.dtype == dtype and q.shape == p.shape
    torch.testing.assert_close(q, p, atol=atol, rtol=0)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("pitch", [89.9, -89.9, 90.0, -90.0])
def test_gimbal_lock_matrices_round_trip(seed, pitch):
    for dtype, atol in [(torch.float64, 1e-9), (torch.float32, 1e-4)]:
        p = random_poses(64, seed, dtype)
        p[:, 4] = pitch
        T = pose_to_matrix(p)
        q = matrix_to_pose(T)
        assert torch.isfinite(q).all()
        torch.testing.assert_close(pose_to_matrix(q), T, atol=atol, rtol=0)


@pytest.mark.parametrize("seed", SEEDS)
def test_group_properties(seed):
    a, b, c = (random_poses(64, seed * 3 + k) for k in range(3))
    Ta, Tb = pose_to_matrix(a), pose_to_matrix(b)
    torch.testing.assert_close(pose_to_matrix(compose_poses(a, b)), Ta @ Tb, atol=1e-9, rtol=0)
    torch.testing.assert_close(pose_to_matrix(invert_pose(a)), torch.linalg.inv(Ta), atol=1e-9, rtol=0)
    left = pose_to_matrix(compose_poses(compose_poses(a, b), c))
    right = pose_to_matrix(compose_poses(a, compose_poses(b, c)))
    torch.testing.assert_close(left, right, atol=1e-9, rtol=0)
    torch.testing.assert_close(invert_pose(invert_pose(a)), a, atol=1e-9, rtol=0)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("convention", LABEL_CONVENTIONS)
@pytest.mark.parametrize("angle_unit", ["deg", "rad"])
def test_conventions_recover_at1(seed, convention, angle_unit):
    at1, change = random_poses(128, seed), random_poses(128, seed + 100) * 0.05
    if angle_unit == "rad":
        at1, change = torch.cat([at1[:, :3], at1[:, 3:].deg2rad()], -1), torch.cat([change[:, :3], change[:, 3:].deg2rad()], -1)
    at2 = apply_change(at1, change, convention, angle_unit)
    torch.testing.assert_close(recover_at1(at2, change, convention, angle_unit), at1, atol=1e-9, rtol=0)
    torch.testing.assert_close(relative_change(at1, at2, convention, angle_unit), change, atol=1e-9, rtol=0)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("convention", LABEL_CONVENTIONS)
def test_infer_label_convention(seed, convention):
    g = torch.Generator().manual_seed(seed)
    scale1 = torch.tensor([4.1, 5.5, 3.0, 18, 6.4, 15.5], dtype=torch.float64)
    scale_c = torch.tensor([0.57, 0.72, 0.30, 0.52, 0.33, 0.44], dtype=torch.float64)
    at1 = torch.randn(200, 6, generator=g, dtype=torch.float64) * scale1
    change = torch.randn(200, 6, generator=g, dtype=torch.float64) * scale_c
    at2 = apply_change(at1, change, convention)
    report = infer_label_convention(at1.numpy(), change.numpy(), at2.numpy())
    assert report.convention == convention and report.consistent
    other = report.residual_se3 if convention == "additive" else report.residual_additive
    assert other > 100 * max(min(report.residual_additive, report.residual_se3), 1e-9)


@pytest.mark.parametrize("seed", SEEDS)
def test_rotation_distance_properties(seed):
    a, b, c = (random_poses(64, seed * 3 + k) for k in range(3))
    d_ab, d_bc, d_ac = rotation_distance_deg(a, b), rotation_distance_deg(b, c), rotation_distance_deg(a, c)
    assert ((d_ab >= 0) & (d_ab <= 180 + 1e-9)).all()
    torch.testing.assert_close(d_ab, rotation_distance_deg(b, a), atol=1e-9, rtol=0)
    assert (d_ac <= d_ab + d_bc + 1e-6).all()  # triangle inequality of the geodesic metric
    rel = pose_to_matrix(invert_pose(a))[..., :3, :3] @ pose_to_matrix(b)[..., :3, :3]
    torch.testing.assert_close(d_ab, torch.rad2deg(roma.rotmat_to_rotvec(rel).norm(dim=-1)), atol=1e-6, rtol=0)
    torch.testing.assert_close(rotation_distance_deg(a, a), torch.zeros(64, dtype=torch.float64), atol=1e-5, rtol=0)
    torch.testing.assert_close(translation_distance(a, b), (a[:, :3] - b[:, :3]).norm(dim=-1))


def test_single_axis_rotation_distance():
    for axis in (3, 4, 5):
        for angle in (1.0, 45.0, 170.0):
            p = torch.zeros(6, dtype=torch.float64)
            p[axis] = angle
            assert abs(rotation_distance_deg(torch.zeros(6, dtype=torch.float64), p).item() - angle) < 1e-6


def test_wrap_angle():
    torch.testing.assert_close(wrap_angle(torch.tensor([-540.0, -181.0, 181.0, 360.0])), torch.tensor([180.0, 179.0, -179.0, 0.0]))


def test_gradients_finite_float32():
    p = random_poses(32, 7, torch.float32).requires_grad_()
    c = (random_poses(32, 8, torch.float32) * 0.1).requires_grad_()
    for conv in LABEL_CONVENTIONS:
        loss = recover_at1(apply_change(p, c, conv), c, conv).square().sum() + rotation_distance_deg(p, p.detach()).sum()
        gp, gc = torch.autograd.grad(loss, (p, c))
        assert torch.isfinite(gp).all() and torch.isfinite(gc).all()


def test_bad_inputs():
    with pytest.raises(ValueError, match=r"\[\.\.\., 6\]"):
        pose_to_matrix(torch.zeros(3, 5))
    with pytest.raises(ValueError, match="angle_unit"):
        pose_to_matrix(torch.zeros(6), angle_unit="degrees")
    with pytest.raises(ValueError, match="convention"):
        apply_change(torch.zeros(6), torch.zeros(6), "auto")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_device_preserved():
    p = random_poses(16, 0).cuda()
    for f in (pose_to_matrix, lambda x: invert_pose(x), lambda x: compose_poses(x, x)):
        assert f(p).device == p.device
    assert rotation_distance_deg(p, p).device == p.device
