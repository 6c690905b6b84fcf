"""Drawing the synthetic images: figures, textured backgrounds and occluders.

Every shape painted on the RGB canvas can also be painted into a layer map ``ids`` (H, W) uint8,
which says who owns each pixel: 0 background, 1..n labelled figures, ``CROWD_LAYER`` the crowd,
``OCCLUDER_LAYER`` occluders. The annotations (visibility, segmentation) are read off that map.
Sizes are fractions of the figure's height H, of a limb's thickness or of the head radius.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from higherpose.dataset.synthetic.figure import ARMS, EARS, EYES, LEGS, NOSE

# Layer-map values of the crowd and of occluders: above any labelled figure's 1..n.
CROWD_LAYER = 254
OCCLUDER_LAYER = 255

# Skin tones (RGB), light to dark, so skin colour says nothing about who is who.
SKIN_TONES = np.array(
    [(197, 140, 133), (236, 188, 180), (209, 163, 164), (161, 102, 94), (80, 51, 53), (89, 47, 42), (224, 172, 105)],
    dtype=np.float64,
)
# Clothing colours in OpenCV HSV (hue 0..179): saturated enough to stand off the muted background;
# shirts bright, trousers and shoes dark, so the torso and the legs contrast.
HUE_RANGE = (0, 180)
SATURATION_RANGE = (70, 230)
BRIGHT_VALUE = (110, 240)
DARK_VALUE = (40, 120)
# Thinnest stroke in px: thinner lines vanish under anti-aliasing and JPEG on small figures.
MIN_THICKNESS = 2
# Arm and leg thickness (H): legs a little thicker, as people's are.
ARM_THICKNESS = (0.045, 0.06)
LEG_THICKNESS = (0.055, 0.075)
# Joint marks (in limb thicknesses), so the network can see where the joint is, not only the limb:
# shoes at the ankles, hands at the wrists, darker discs at the elbows and knees.
SHOE_RADIUS = 0.75
HAND_RADIUS = 0.7
ELBOW_MARK_RADIUS = 0.55
KNEE_MARK_RADIUS = 0.55
ELBOW_SHADE = 0.8  # the elbow mark is the shirt this much darker
KNEE_SHADE = 0.75  # the knee mark is the trousers this much darker
# Head: an ellipse centred between the ears, moved this share of the eyes-to-nose offset toward the
# nose (the face looks slightly down), and taller than wide by this factor, as heads are.
HEAD_TOWARD_NOSE = 0.1
HEAD_ELONGATION = 1.18
# Face marks (head radii): eyes and nose dots, larger discs for the ears; the ears a darker skin,
# the eyes near-black and the nose red, so the face keypoints are told apart by colour too.
FACE_MARK_RADIUS = 0.16
EAR_RADIUS = 0.22
EAR_SHADE = 0.6
EYE_COLOUR = (20, 20, 30)
NOSE_COLOUR = (200, 40, 40)

# Background: a coarse grid of random colours (cells per side, levels), blended half-way toward
# grey for muted, scene-like colours and upscaled smoothly; then fine noise (std, on a grid of 8 px
# cells), clutter shapes that are not people, and per-pixel sensor-like noise (std).
BACKGROUND_GRID = (3, 7)
BACKGROUND_LEVELS = (40, 215)
BACKGROUND_GREY_MIX = 0.5
TEXTURE_STD = 18
TEXTURE_CELL = 8
PIXEL_NOISE_STD = 6
# Clutter: how many shapes, their colour levels, line thickness (px), box sides (px), blob axes (px).
CLUTTER_COUNT = (3, 9)
CLUTTER_LEVELS = (30, 230)
CLUTTER_LINE_THICKNESS = (1, 4)
CLUTTER_BOX_SIDE = (10, 80)
CLUTTER_BLOB_AXIS = (5, 40)

# Occluders: colour levels; the centre spread around the target (H); the chance of a box rather
# than a blob, and of a box being a tall pole; half sizes (H) of boxes and poles (x, y ranges) and
# blob axes (two ranges); blobs at least 2 px so the ellipse is drawn at all.
OCCLUDER_LEVELS = (20, 235)
OCCLUDER_SPREAD = 0.25
BOX_PROB = 0.5
POLE_PROB = 0.4
BOX_HALF_SIZE = ((0.1, 0.45), (0.08, 0.3))
POLE_HALF_SIZE = ((0.04, 0.1), (0.4, 0.9))
BLOB_AXES = ((0.1, 0.3), (0.08, 0.25))
MIN_BLOB_AXIS = 2


def _colour(rng: np.random.Generator, dark: bool = False) -> tuple[int, int, int]:
    """A random clothing colour, RGB."""
    value = rng.integers(*DARK_VALUE) if dark else rng.integers(*BRIGHT_VALUE)
    hsv = np.uint8([[[rng.integers(*HUE_RANGE), rng.integers(*SATURATION_RANGE), value]]])
    return tuple(int(c) for c in cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0])


def _shade(colour: tuple[int, ...], factor: float) -> tuple[int, ...]:
    return tuple(int(c * factor) for c in colour)


def _pt(p: np.ndarray) -> tuple[int, int]:
    """Point (2,) float x, y → the nearest pixel, as OpenCV takes it."""
    return int(round(p[0])), int(round(p[1]))


def draw_figure(
    canvas: np.ndarray,
    ids: np.ndarray | None,
    label: int,
    joints: np.ndarray,
    head_r: float,
    height: float,
    rng: np.random.Generator,
) -> None:
    """Draw one figure with joints (17, 2) onto ``canvas`` (H, W, 3) RGB uint8; paint ``label`` into
    the layer map ``ids`` (H, W) uint8 where drawn (anti-aliased edges excepted), unless it is None."""
    skin = tuple(int(c) for c in SKIN_TONES[rng.integers(len(SKIN_TONES))])
    shirt, pants, shoes = _colour(rng), _colour(rng, dark=True), _colour(rng, dark=True)
    limb = max(MIN_THICKNESS, int(round(height * rng.uniform(*ARM_THICKNESS))))
    leg = max(MIN_THICKNESS, int(round(height * rng.uniform(*LEG_THICKNESS))))
    j = joints

    def line(a: int, b: int, colour: tuple[int, ...], thick: int) -> None:
        cv2.line(canvas, _pt(j[a]), _pt(j[b]), colour, thick, cv2.LINE_AA)
        if ids is not None:
            cv2.line(ids, _pt(j[a]), _pt(j[b]), label, thick)

    def disc(p: np.ndarray, r: float, colour: tuple[int, ...]) -> None:
        cv2.circle(canvas, _pt(p), max(1, int(round(r))), colour, -1, cv2.LINE_AA)
        if ids is not None:
            cv2.circle(ids, _pt(p), max(1, int(round(r))), label, -1)

    for hip, kne, ank in LEGS:  # legs behind the torso
        line(hip, kne, pants, leg)
        line(kne, ank, pants, max(MIN_THICKNESS, leg - 1))
        disc(j[ank], leg * SHOE_RADIUS, shoes)
    (l_sho, _, _), (r_sho, _, _) = ARMS
    (l_hip, _, _), (r_hip, _, _) = LEGS
    quad = np.array([_pt(j[l_sho]), _pt(j[r_sho]), _pt(j[r_hip]), _pt(j[l_hip])], np.int32)
    cv2.fillConvexPoly(canvas, quad, shirt, cv2.LINE_AA)
    if ids is not None:
        cv2.fillConvexPoly(ids, quad, label)
    neck = (j[l_sho] + j[r_sho]) / 2
    cv2.line(canvas, _pt(neck), _pt(j[NOSE]), skin, max(MIN_THICKNESS, limb), cv2.LINE_AA)
    for sho, elb, wri in ARMS:
        line(sho, elb, shirt, limb)
        line(elb, wri, skin, max(MIN_THICKNESS, limb - 1))
        disc(j[elb], limb * ELBOW_MARK_RADIUS, _shade(shirt, ELBOW_SHADE))
        disc(j[wri], limb * HAND_RADIUS, skin)
    for _, kne, _ in LEGS:
        disc(j[kne], leg * KNEE_MARK_RADIUS, _shade(pants, KNEE_SHADE))
    l_ear, r_ear = EARS
    l_eye, r_eye = EYES
    head_c = (j[l_ear] + j[r_ear]) / 2 + (j[NOSE] - (j[l_eye] + j[r_eye]) / 2) * HEAD_TOWARD_NOSE
    axes = (max(1, int(round(head_r))), max(1, int(round(head_r * HEAD_ELONGATION))))
    angle = math.degrees(math.atan2(j[l_ear][1] - j[r_ear][1], j[l_ear][0] - j[r_ear][0]))
    cv2.ellipse(canvas, _pt(head_c), axes, angle, 0, 360, skin, -1, cv2.LINE_AA)
    if ids is not None:
        cv2.ellipse(ids, _pt(head_c), axes, angle, 0, 360, label, -1)
    mark = max(1, int(round(head_r * FACE_MARK_RADIUS)))
    dark_skin = _shade(skin, EAR_SHADE)
    for ear in EARS:
        cv2.circle(canvas, _pt(j[ear]), max(1, int(round(head_r * EAR_RADIUS))), dark_skin, -1, cv2.LINE_AA)
        if ids is not None:
            cv2.circle(ids, _pt(j[ear]), max(1, int(round(head_r * EAR_RADIUS))), label, -1)
    for eye in EYES:
        cv2.circle(canvas, _pt(j[eye]), mark, EYE_COLOUR, -1, cv2.LINE_AA)
    cv2.circle(canvas, _pt(j[NOSE]), mark, NOSE_COLOUR, -1, cv2.LINE_AA)


def background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Low-frequency colour texture + clutter (lines, boxes, blobs) + pixel noise: (h, w, 3) RGB uint8."""
    base = rng.uniform(*BACKGROUND_LEVELS, (rng.integers(*BACKGROUND_GRID), rng.integers(*BACKGROUND_GRID), 3))
    base = base.astype(np.float32)
    base = base.mean(axis=2, keepdims=True) * BACKGROUND_GREY_MIX + base * (1 - BACKGROUND_GREY_MIX)
    img = cv2.resize(base, (w, h), interpolation=cv2.INTER_CUBIC)
    fine = rng.normal(0, TEXTURE_STD, (h // TEXTURE_CELL, w // TEXTURE_CELL, 3)).astype(np.float32)
    img = np.clip(img + cv2.resize(fine, (w, h)), 0, 255).astype(np.uint8)
    for _ in range(int(rng.integers(*CLUTTER_COUNT))):
        colour = tuple(int(c) for c in rng.integers(*CLUTTER_LEVELS, 3))
        kind = rng.integers(3)  # a line, a box or a blob
        p1 = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        if kind == 0:
            p2 = (int(rng.integers(0, w)), int(rng.integers(0, h)))
            cv2.line(img, p1, p2, colour, int(rng.integers(*CLUTTER_LINE_THICKNESS)), cv2.LINE_AA)
        elif kind == 1:
            p2 = (p1[0] + int(rng.integers(*CLUTTER_BOX_SIDE)), p1[1] + int(rng.integers(*CLUTTER_BOX_SIDE)))
            cv2.rectangle(img, p1, p2, colour, -1)
        else:
            axes = (int(rng.integers(*CLUTTER_BLOB_AXIS)), int(rng.integers(*CLUTTER_BLOB_AXIS)))
            cv2.ellipse(img, p1, axes, float(rng.uniform(0, 180)), 0, 360, colour, -1, cv2.LINE_AA)
    noise = rng.normal(0, PIXEL_NOISE_STD, img.shape)
    return np.clip(img + noise, 0, 255).astype(np.uint8)


def draw_occluder(
    rng: np.random.Generator, canvas: np.ndarray, ids: np.ndarray, target: np.ndarray, size: float
) -> None:
    """An opaque shape (box, pole or blob) on ``canvas`` (H, W, 3) over part of a figure ``size`` px
    tall, centred near ``target`` (2,) x, y; marked ``OCCLUDER_LAYER`` in the layer map ``ids`` (H, W)."""
    colour = tuple(int(c) for c in rng.integers(*OCCLUDER_LEVELS, 3))
    c = target + rng.normal(0, size * OCCLUDER_SPREAD, 2)
    if rng.random() < BOX_PROB:
        x_range, y_range = BOX_HALF_SIZE
        half = np.array([rng.uniform(*x_range), rng.uniform(*y_range)]) * size
        if rng.random() < POLE_PROB:
            x_range, y_range = POLE_HALF_SIZE
            half = np.array([size * rng.uniform(*x_range), size * rng.uniform(*y_range)])
        p1, p2 = _pt(c - half), _pt(c + half)
        cv2.rectangle(canvas, p1, p2, colour, -1)
        cv2.rectangle(ids, p1, p2, OCCLUDER_LAYER, -1)
    else:
        x_range, y_range = BLOB_AXES
        axes = (
            max(MIN_BLOB_AXIS, int(size * rng.uniform(*x_range))),
            max(MIN_BLOB_AXIS, int(size * rng.uniform(*y_range))),
        )
        angle = float(rng.uniform(0, 180))
        cv2.ellipse(canvas, _pt(c), axes, angle, 0, 360, colour, -1, cv2.LINE_AA)
        cv2.ellipse(ids, _pt(c), axes, angle, 0, 360, OCCLUDER_LAYER, -1)
