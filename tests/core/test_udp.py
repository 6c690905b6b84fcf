"""DATASET.USE_UDP's exact resampling and Taylor decoding (the end-to-end round trip is in test_inference)."""

from __future__ import annotations

import numpy as np
import torch

from higherpose.core.udp import sample_grid, taylor_offsets


def test_sample_grid_at_pixel_centres_is_exact_and_shifts_with_border_values() -> None:
    maps = torch.rand(2, 3, 5, 7)
    xs, ys = torch.arange(7, dtype=torch.float64), torch.arange(5, dtype=torch.float64)
    assert sample_grid(maps.half(), xs, ys).dtype == torch.float32  # half maps, float32 coordinates
    torch.testing.assert_close(sample_grid(maps, xs, ys), maps)
    shifted = sample_grid(maps, xs - 1, ys[:3] + 2)  # output pixel (y, x) = input (y + 2, x - 1)
    want = torch.cat((maps[:, :, 2:5, :1], maps[:, :, 2:5, :-1]), dim=3)  # column -1 -> border column 0
    torch.testing.assert_close(shifted, want)


def test_taylor_offsets_recover_an_anisotropic_gaussian_and_fall_back_on_flat_maps() -> None:
    ys, xs = np.mgrid[0:16, 0:16].astype(np.float64)
    cx, cy = 7.3, 8.6
    dx, dy = xs - cx, ys - cy
    g = np.exp(-(dx**2 / 6.0 + dx * dy / 8.0 + dy**2 / 3.0))  # correlated x/y: the Hessian's cross term
    det = torch.from_numpy(np.stack([g, np.ones_like(g)]))
    row, col = np.unravel_index(g.argmax(), g.shape)
    ox, oy = taylor_offsets(det, np.array([0, 1]), np.array([row, 5]), np.array([col, 5]))
    np.testing.assert_allclose([col + ox[0], row + oy[0]], [cx, cy], atol=1e-9)
    assert ox[1] == 0 and oy[1] == 0  # flat map: no curvature, no offset


def test_udp_refine_reads_the_mean_tag_at_the_peak_pixel() -> None:
    """A UDP position left of its peak pixel (offset < 0) must still read the tag of the peak pixel:
    truncating it would read the left neighbour, whose tag here leads refine to another person's joint."""
    from higherpose.core.group_refine import refine_people as _refine_people

    h, w = 32, 32
    det = torch.full((2, h, w), 1e-3, dtype=torch.float64)
    det[1, 20, 10] = 0.6  # joint 1 of our person (tag 10)
    det[1, 25, 9] = 0.9  # joint 1 of someone else (tag 9), stronger
    tag = torch.arange(w, dtype=torch.float64).expand(2, h, w).clone()[..., None]  # tag = column
    people = np.zeros((1, 2, 4))
    people[0, 0] = (10 - 0.3, 5.0, 0.8, 10.0)  # joint 0 found at peak (10, 5), Taylor offset -0.3
    truncated = people.copy()
    _refine_people(det, tag, truncated, 2, udp=False)
    assert tuple(truncated[0, 1, :2]) != (10.0, 20.0)
    _refine_people(det, tag, people, 2, udp=True)
    np.testing.assert_allclose(people[0, 1, :3], (10.0, 20.0, 0.6))


def test_taylor_offsets_on_the_border_move_only_along_the_inner_axis() -> None:
    """A peak on column 0 (the Gaussian's centre at x = 0.2) lacks its left neighbour: no x offset, and
    the y offset is the exact 1-D Newton step of a separable Gaussian (centre y = 8.6). Same for row 0."""
    ys, xs = np.mgrid[0:16, 0:16].astype(np.float64)
    col_edge = np.exp(-((xs - 0.2) ** 2 / 4.0 + (ys - 8.6) ** 2 / 5.0))
    row_edge = np.exp(-((xs - 6.7) ** 2 / 4.0 + (ys - 15.1) ** 2 / 5.0))  # peak on the last row
    det = torch.from_numpy(np.stack([col_edge, row_edge]))
    ox, oy = taylor_offsets(det, np.array([0, 1]), np.array([9, 15]), np.array([0, 7]))
    assert ox[0] == 0 and oy[1] == 0
    np.testing.assert_allclose([9 + oy[0], 7 + ox[1]], [8.6, 6.7], atol=1e-9)
