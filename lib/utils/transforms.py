"""Affine transforms between image and network coordinates (HigherHRNet's ``lib/utils/transforms.py``).

The formulas are the official ones, sub-pixel conventions included: the image centre is rounded to
integers (``int(w / 2 + 0.5)``), the long side of the network input is rounded *up* to a multiple of
64, and scales are in units of 200 pixels. ``transform_preds`` is vectorised over the joints.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

ArrayLike = np.ndarray | Sequence[float]


def get_dir(src_point: Sequence[float], rot_rad: float) -> list[float]:
    """``src_point`` rotated by ``rot_rad`` (radians) about the origin."""
    sn, cs = np.sin(rot_rad), np.cos(rot_rad)
    return [src_point[0] * cs - src_point[1] * sn, src_point[0] * sn + src_point[1] * cs]


def get_3rd_point(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The point completing a right angle at ``b`` (``a - b`` rotated by 90 degrees, added to ``b``)."""
    direct = a - b
    return b + np.array([-direct[1], direct[0]], dtype=np.float32)


def get_affine_transform(
    center: ArrayLike,
    scale: ArrayLike | float,
    rot: float,
    output_size: Sequence[int],
    shift: ArrayLike = (0.0, 0.0),
    inv: int | bool = 0,
) -> np.ndarray:
    """The (2, 3) matrix mapping the box ``center``, ``scale * 200`` (rotated by ``rot`` degrees) onto
    ``output_size = (w, h)``; with ``inv`` the inverse mapping. Only ``scale[0]`` sets the factor
    (isotropic ``w / (scale[0] * 200)``), as in HigherHRNet."""
    if not isinstance(scale, (np.ndarray, list, tuple)):
        scale = np.array([scale, scale])
    scale_tmp = np.asarray(scale, dtype=np.float64) * 200.0
    shift = np.asarray(shift, dtype=np.float32)
    center = np.asarray(center)
    src_w = scale_tmp[0]
    dst_w, dst_h = output_size[0], output_size[1]

    rot_rad = np.pi * rot / 180
    src_dir = get_dir([0, src_w * -0.5], rot_rad)
    dst_dir = np.array([0, dst_w * -0.5], np.float32)

    src = np.zeros((3, 2), dtype=np.float32)
    dst = np.zeros((3, 2), dtype=np.float32)
    src[0, :] = center + scale_tmp * shift
    src[1, :] = center + src_dir + scale_tmp * shift
    dst[0, :] = [dst_w * 0.5, dst_h * 0.5]
    dst[1, :] = np.array([dst_w * 0.5, dst_h * 0.5]) + dst_dir
    src[2:, :] = get_3rd_point(src[0, :], src[1, :])
    dst[2:, :] = get_3rd_point(dst[0, :], dst[1, :])

    if inv:
        return cv2.getAffineTransform(np.float32(dst), np.float32(src))
    return cv2.getAffineTransform(np.float32(src), np.float32(dst))


def affine_transform(pt: ArrayLike, t: np.ndarray) -> np.ndarray:
    """Apply the (2, 3) matrix ``t`` to one point ``(x, y)`` -> ``(2,)``."""
    return np.dot(t, np.array([pt[0], pt[1], 1.0]))[:2]


def transform_preds(coords: np.ndarray, center: ArrayLike, scale: ArrayLike, output_size: Sequence[int]) -> np.ndarray:
    """Map ``coords (N, C>=2)`` from network-output pixels back to the image; columns 2.. are kept.

    Vectorised form of HigherHRNet's per-point loop (same float64 arithmetic)."""
    target = coords.copy()
    trans = get_affine_transform(center, scale, 0, output_size, inv=1)
    xy = coords[:, 0:2].astype(np.float64)
    target[:, 0:2] = xy @ trans[:, :2].T + trans[:, 2]
    return target


def get_multi_scale_size(
    image: np.ndarray, input_size: int, current_scale: float, min_scale: float
) -> tuple[tuple[int, int], np.ndarray, np.ndarray]:
    """Network input size at ``current_scale`` for ``image (H, W, 3)``.

    The short side becomes ``input_size * current_scale`` (via the smallest scale rounded up to 64),
    the long side keeps the aspect ratio rounded up to a multiple of 64. Returns ``((w, h), center,
    scale)`` with the integer-rounded image centre and the scale (200-px units) of the padded box."""
    h, w = image.shape[:2]
    center = np.array([int(w / 2.0 + 0.5), int(h / 2.0 + 0.5)])
    min_input_size = int((min_scale * input_size + 63) // 64 * 64)
    if w < h:
        w_resized = int(min_input_size * current_scale / min_scale)
        h_resized = int(int((min_input_size / w * h + 63) // 64 * 64) * current_scale / min_scale)
        scale_w = w / 200.0
        scale_h = h_resized / w_resized * w / 200.0
    else:
        h_resized = int(min_input_size * current_scale / min_scale)
        w_resized = int(int((min_input_size / h * w + 63) // 64 * 64) * current_scale / min_scale)
        scale_h = h / 200.0
        scale_w = w_resized / h_resized * h / 200.0
    return (w_resized, h_resized), center, np.array([scale_w, scale_h])


def resize_align_multi_scale(
    image: np.ndarray, input_size: int, current_scale: float, min_scale: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``image (H, W, 3)`` warped (bilinear, black border) to the size of :func:`get_multi_scale_size`.
    Returns ``(image_resized (h, w, 3), center, scale)``."""
    size_resized, center, scale = get_multi_scale_size(image, input_size, current_scale, min_scale)
    trans = get_affine_transform(center, scale, 0, size_resized)
    return cv2.warpAffine(image, trans, size_resized), center, scale


def get_final_preds(
    grouped_joints: Sequence[Sequence[np.ndarray]],
    center: ArrayLike,
    scale: ArrayLike,
    heatmap_size: Sequence[int],
) -> list[np.ndarray]:
    """Persons of image 0 (``grouped_joints[0]``: each ``(K, 3+L)`` in heatmap pixels, ``heatmap_size =
    (w, h)``) mapped to original-image pixels; other columns (score, tags) are kept."""
    return [transform_preds(person, center, scale, heatmap_size) for person in grouped_joints[0]]
