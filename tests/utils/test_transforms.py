"""utils.transforms: official formulas (integer-rounded centre, long side rounded up to 64), the
vectorised transform_preds equals the per-point loop, and resize -> inverse map is the identity."""

from __future__ import annotations

import numpy as np
import pytest

from higherpose.utils.transforms import (
    affine_transform,
    get_affine_transform,
    get_final_preds,
    get_multi_scale_size,
    resize_align_multi_scale,
    transform_preds,
)


def test_multi_scale_size_official_values():
    image = np.zeros((425, 640, 3), np.uint8)
    (w, h), center, scale = get_multi_scale_size(image, 512, 1.0, 1.0)
    assert (w, h) == (832, 512)  # 640 / 425 * 512 = 771 -> rounded up to 832
    assert center.tolist() == [320, 213]  # int(212.5 + 0.5)
    np.testing.assert_allclose(scale, [832 / 512 * 425 / 200, 425 / 200])
    (w, h), _, _ = get_multi_scale_size(np.zeros((640, 427, 3)), 512, 2.0, 0.5)
    assert (w, h) == (1024, 1536)  # min input 256; portrait: w = 256 * 2 / 0.5
    # An input size off the 64 grid is rounded up first: 200 -> 256 short side, 385.5 -> 448 long side.
    (w, h), _, scale = get_multi_scale_size(image, 200, 1.0, 1.0)
    assert (w, h) == (448, 256)
    np.testing.assert_allclose(scale, [448 / 256 * 425 / 200, 425 / 200])


def test_transform_preds_equals_loop():
    rng = np.random.default_rng(0)
    coords = rng.random((17, 5)) * 200
    center, scale = np.array([320, 213]), np.array([3.2, 2.1])
    trans = get_affine_transform(center, scale, 0, (256, 192), inv=1)
    want = coords.copy()
    for p in range(coords.shape[0]):
        want[p, 0:2] = affine_transform(coords[p, 0:2], trans)
    np.testing.assert_allclose(transform_preds(coords, center, scale, (256, 192)), want, rtol=0, atol=1e-9)


@pytest.mark.parametrize("shape", [(425, 640), (640, 427)])
def test_resize_then_inverse_is_identity(shape):
    image = np.zeros((*shape, 3), np.uint8)
    resized, center, scale = resize_align_multi_scale(image, 256, 1.0, 1.0)
    size = (resized.shape[1], resized.shape[0])
    fwd = get_affine_transform(center, scale, 0, size)
    pts = np.array([[10.0, 20.0, 0.9], [300.0, 400.0, 0.5]])
    on_input = pts.copy()
    on_input[:, :2] = pts[:, :2] @ fwd[:, :2].T + fwd[:, 2]
    back = get_final_preds([[on_input]], center, scale, size)
    np.testing.assert_allclose(back[0], pts, atol=1e-3)


def test_scalar_scale_and_rotation():
    t = get_affine_transform(np.array([100.0, 100.0]), 1.0, 90, (200, 200))
    # rotating by 90 degrees about the centre maps the centre to the output centre
    np.testing.assert_allclose(affine_transform([100, 100], t), [100, 100], atol=1e-4)
    # Hand-computed: with a factor of 1, a point 50 px right of the centre goes 50 px up (rot = +90 turns
    # the box counter-clockwise on the screen, so its content turns clockwise in the output).
    np.testing.assert_allclose(affine_transform([150, 100], t), [100, 50], atol=1e-4)
    np.testing.assert_allclose(affine_transform([100, 150], t), [150, 100], atol=1e-4)


def _closed_form(center, scale_px, rot_deg, size, shift=(0.0, 0.0)):
    """dst = size / 2 + (w / scale_px) * R(-rot) (src - (center + scale_px * shift)), R(a) the rotation
    [[cos a, -sin a], [sin a, cos a]]: HigherHRNet's three point pairs solved by hand. (2, 3)."""
    a = np.deg2rad(rot_deg)
    k = size[0] / scale_px[0]
    lin = k * np.array([[np.cos(a), np.sin(a)], [-np.sin(a), np.cos(a)]])
    origin = np.asarray(center, float) + np.asarray(scale_px, float) * np.asarray(shift, float)
    return np.concatenate([lin, (np.array(size, float) / 2 - lin @ origin)[:, None]], axis=1)


@pytest.mark.parametrize("rot", [-30.0, -7.5, 0.0, 12.0, 30.0, 90.0, 180.0])
def test_affine_transform_equals_closed_form_rotation(rot):
    """Rotated points against the closed form and against OpenCV's rotation matrix (same convention:
    positive angle = counter-clockwise on the screen), forward and inverse."""
    import cv2

    center, scale, size = np.array([140.0, 95.0]), np.array([1.3, 2.0]), (192, 256)
    t = get_affine_transform(center, scale, rot, size)
    want = _closed_form(center, scale * 200, rot, size)
    np.testing.assert_allclose(t, want, rtol=0, atol=1e-3)
    k = size[0] / (scale[0] * 200)
    cv = cv2.getRotationMatrix2D((float(center[0]), float(center[1])), rot, k)
    cv[:, 2] += np.array(size, float) / 2 - center
    np.testing.assert_allclose(t, cv, rtol=0, atol=1e-3)
    rng = np.random.default_rng(0)
    pts = rng.uniform(0, 300, (6, 2))
    inv = get_affine_transform(center, scale, rot, size, inv=1)
    on_out = pts @ t[:, :2].T + t[:, 2]
    np.testing.assert_allclose(on_out @ inv[:, :2].T + inv[:, 2], pts, atol=2e-3)


def test_affine_transform_shift_moves_the_source_centre():
    center, scale, size, shift = np.array([50.0, 60.0]), np.array([0.5, 0.5]), (64, 64), (0.1, -0.2)
    t = get_affine_transform(center, scale, 20.0, size, shift=shift)
    np.testing.assert_allclose(t, _closed_form(center, scale * 200, 20.0, size, shift), rtol=0, atol=1e-3)
    # the shifted centre (50 + 10, 60 - 20) lands on the output centre
    np.testing.assert_allclose(affine_transform([60.0, 40.0], t), [32, 32], atol=1e-3)
