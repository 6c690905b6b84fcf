"""One synthetic image and its annotations: background, crowd, placed figures, occluders.

``render_image`` is a pure function of ``(seed, split, index, cfg)``: it draws everything from one
random generator seeded with them, in a fixed order, so an image never depends on the others or on
the process that renders it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from higherpose.dataset.synthetic.annotate import crowd_annotation, person_annotation
from higherpose.dataset.synthetic.draw import CROWD_LAYER, background, draw_figure, draw_occluder
from higherpose.dataset.synthetic.figure import LEGS, figure_joints

# Each split's part of the random seed, so train and val images differ for the same seed and index.
SPLIT_CODES = {"train": 1, "val": 2}
# Seed part of any other split name.
OTHER_SPLIT_CODE = 99
# Image sides step by this many pixels from min_size to max_size: a few distinct sizes, each a
# multiple of the backbone's total stride (32).
SIZE_STEP = 32
# Crowd: its centre (fractions of the width, then the height: the upper half, far away), how many
# tiny figures (upper bound excluded), their height (px) and their spread around the centre (std,
# fractions of the width and the height: a wide, shallow group, as people in the distance stand).
CROWD_CENTRE_X = (0.2, 0.8)
CROWD_CENTRE_Y = (0.15, 0.5)
CROWD_FIGURES = (5, 12)
CROWD_HEIGHT = (12, 22)
CROWD_SPREAD = (0.07, 0.03)
# Figure heights (px): small figures have segmentation areas mostly under COCO's 32² "small" limit;
# the others range from just above them to this share of the shorter image side.
SMALL_HEIGHT = (42, 74)
LARGE_MIN_HEIGHT = 85
LARGE_MAX_SHARE = 0.85
# A figure placed next to another: the pelvis offset (std, in the taller one's height, x then y),
# side by side more than in depth. Otherwise the pelvis lies in these shares of the width / height.
NEAR_SPREAD = (0.25, 0.1)
PELVIS_X = (0.05, 0.95)
PELVIS_Y = (0.25, 0.85)
# Share of a figure's extent that may leave the image before it is shifted back in: a few figures
# still cross the border, which gives v=0 joints outside the image, as in COCO.
MAX_OUTSIDE = 0.15
# Occluders per image that has them (upper bound excluded).
OCCLUDER_COUNT = (1, 3)
# Ankle joint indices: the lower a figure's feet, the nearer it stands.
ANKLES = [ankle for _, _, ankle in LEGS]


@dataclass(frozen=True)
class SyntheticConfig:
    """Knobs of the generator (defaults: the quick-start set)."""

    min_size: int = 256  # image sides are drawn in [min_size, max_size], multiples of SIZE_STEP
    max_size: int = 320
    people_weights: tuple[float, ...] = (0.06, 0.2, 0.3, 0.24, 0.13, 0.07)  # P(1..6 labelled figures)
    small_fraction: float = 0.3  # share of figures drawn small; with the rest ~35 % of persons have area < 32²
    crowd_prob: float = 0.15  # images with a crowd region
    occluder_prob: float = 0.5  # images with occluder shapes
    near_prob: float = 0.4  # a figure placed next to another one (overlap)
    jpeg_quality: int = 92
    near_spread: float = 1.0  # scale of NEAR_SPREAD: below 1, figures placed next to another stand closer
    crowd_index: bool = False  # write CrowdPose's crowdIndex per image in the json (dataset.crowd_index)

    def __post_init__(self) -> None:
        if not 0.0 <= self.near_prob <= 1.0:
            raise ValueError(f"synthetic set: near_prob = {self.near_prob}: must be in [0, 1]")
        if not self.near_spread > 0:
            raise ValueError(f"synthetic set: near_spread = {self.near_spread}: must be > 0")


# The quick start's generator settings.
DEFAULT_CONFIG = SyntheticConfig()
# The crowded split: nearly every figure placed against another, at half the distance, and each image's
# crowd index in the json (its easy / medium / hard shares: docs/higher_pose.md).
CROWDED_CONFIG = SyntheticConfig(near_prob=0.9, near_spread=0.5, crowd_index=True)
# Generator presets by name (DATASET.SYNTHETIC_SCENE, tools/make_synthetic.py --scene).
SCENES = {"plain": DEFAULT_CONFIG, "crowded": CROWDED_CONFIG}


def _draw_crowd(rng: np.random.Generator, canvas: np.ndarray) -> np.ndarray:
    """Draw a cluster of tiny unlabelled figures on ``canvas`` (H, W, 3); returns their mask (H, W) uint8."""
    h, w = canvas.shape[:2]
    centre = np.array([rng.uniform(*CROWD_CENTRE_X) * w, rng.uniform(*CROWD_CENTRE_Y) * h])
    crowd_ids = np.zeros((h, w), np.uint8)
    for _ in range(int(rng.integers(*CROWD_FIGURES))):
        th = rng.uniform(*CROWD_HEIGHT)
        pelvis = centre + rng.normal(0, [w * CROWD_SPREAD[0], h * CROWD_SPREAD[1]])
        jts, hr = figure_joints(rng, th, pelvis)
        draw_figure(canvas, crowd_ids, 1, jts, hr, th, rng)
    return crowd_ids


def _place_figures(
    rng: np.random.Generator, cfg: SyntheticConfig, h: int, w: int
) -> list[tuple[float, np.ndarray, np.ndarray, float]]:
    """Heights and positions of the labelled figures on an (h, w) image:
    ``[(height px, pelvis (2,), joints (17, 2), head radius px), ...]``."""
    n = int(rng.choice(np.arange(1, len(cfg.people_weights) + 1), p=np.asarray(cfg.people_weights)))
    people: list[tuple[float, np.ndarray, np.ndarray, float]] = []
    for _ in range(n):
        small = rng.random() < cfg.small_fraction
        height = rng.uniform(*SMALL_HEIGHT) if small else rng.uniform(LARGE_MIN_HEIGHT, min(h, w) * LARGE_MAX_SHARE)
        if people and rng.random() < cfg.near_prob:  # next to someone: overlap
            other = people[int(rng.integers(len(people)))]
            # near_spread 1 multiplies exactly: the plain set's bytes stay as they were
            offset = rng.normal(0, 1, 2) * np.array(NEAR_SPREAD) * cfg.near_spread * max(height, other[0])
            pelvis = other[1] + offset
        else:
            pelvis = np.array([rng.uniform(*PELVIS_X) * w, rng.uniform(*PELVIS_Y) * h])
        jts, hr = figure_joints(rng, height, pelvis)
        lo, hi = jts.min(0) - hr, jts.max(0) + hr
        shift = np.zeros(2)
        for d, size in ((0, w), (1, h)):
            if lo[d] < -MAX_OUTSIDE * (hi[d] - lo[d]):
                shift[d] = -lo[d] - rng.uniform(0, MAX_OUTSIDE) * (hi[d] - lo[d])
            elif hi[d] > size + MAX_OUTSIDE * (hi[d] - lo[d]):
                shift[d] = size - hi[d] + rng.uniform(0, MAX_OUTSIDE) * (hi[d] - lo[d])
        people.append((height, pelvis + shift, jts + shift, hr))
    return people


def render_image(
    seed: int, split: str, index: int, cfg: SyntheticConfig = DEFAULT_CONFIG
) -> tuple[np.ndarray, list[dict]]:
    """One image: (image (H, W, 3) RGB uint8, its COCO annotations without the id fields).

    The crowd region comes first, then the labelled figures (the crowd's annotation, if any, first).
    """
    rng = np.random.default_rng([seed, SPLIT_CODES.get(split, OTHER_SPLIT_CODE), index])
    sizes = np.arange(cfg.min_size, cfg.max_size + 1, SIZE_STEP)
    h, w = int(rng.choice(sizes)), int(rng.choice(sizes))
    canvas = background(rng, h, w)
    ids = np.zeros((h, w), np.uint8)  # the layer map (synthetic.draw)
    anns: list[dict] = []

    # The crowd is "far away", behind everyone, so it is drawn first.
    if rng.random() < cfg.crowd_prob:
        crowd_ids = _draw_crowd(rng, canvas)
        crowd = crowd_annotation(crowd_ids)
        if crowd is not None:
            anns.append(crowd)
        ids[crowd_ids > 0] = CROWD_LAYER

    people = _place_figures(rng, cfg, h, w)
    # Farther figures (feet higher up) first, so nearer ones occlude them; the layer label is the rank.
    order = sorted(range(len(people)), key=lambda i: people[i][2][ANKLES, 1].max())
    for rank, i in enumerate(order):
        height, _, jts, hr = people[i]
        draw_figure(canvas, ids, rank + 1, np.round(jts), hr, height, rng)
    if rng.random() < cfg.occluder_prob:
        for _ in range(int(rng.integers(*OCCLUDER_COUNT))):
            height, pelvis, _, _ = people[int(rng.integers(len(people)))]
            draw_occluder(rng, canvas, ids, pelvis, height)

    for rank, i in enumerate(order):
        ann = person_annotation(rng, ids, rank + 1, people[i][2])
        if ann is not None:
            anns.append(ann)
    return canvas, anns
