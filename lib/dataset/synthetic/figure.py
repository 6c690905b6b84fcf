"""Joint positions of one synthetic figure: a front-facing person on the COCO 17-joint skeleton.

Lengths are fractions of the figure's height H, drawn uniformly from ``(low, high)`` ranges around
adult proportions, so no two figures share a build; angles are radians. A figure faces the camera,
so the person's left side (COCO's odd joint indices after the face) lies on the image's right (+x).
"""

from __future__ import annotations

import numpy as np

# COCO joint indices (``specs.COCO.joint_names``) of the parts the figure is built from.
NOSE = 0
EYES = (1, 2)  # (left, right)
EARS = (3, 4)  # (left, right)
ARMS = ((5, 7, 9), (6, 8, 10))  # (shoulder, elbow, wrist) of the left arm, then the right one
LEGS = ((11, 13, 15), (12, 14, 16))  # (hip, knee, ankle) of the left leg, then the right one
NUM_JOINTS = 17
# The image-x direction of the person's left and right side (in the order of ARMS / LEGS): a
# front-facing person's left is on the image's right, as for the people facing the camera in COCO.
SIDES = (1, -1)

# Whole-body lean, radians either side of upright: people stand roughly upright (about ±14°).
MAX_LEAN = 0.25
# Pelvis-to-neck length (H): an adult torso is about 0.3 H.
TORSO_LENGTH = (0.28, 0.32)
# Half the distance between the shoulders, then between the hips (H): shoulders wider than hips.
SHOULDER_HALF_WIDTH = (0.09, 0.12)
HIP_HALF_WIDTH = (0.06, 0.08)
# Head radius (H): larger than an adult's (about 0.065 H), so the face keypoints stay apart on
# small figures.
HEAD_RADIUS = (0.075, 0.085)
# Head centre above the neck, in head radii: the head ellipse's lower edge (1.18 radii below its
# centre, ``synthetic.draw.HEAD_ELONGATION``) then sits just above the neck.
HEAD_ABOVE_NECK = 1.35
# Largest sideways shift of the head off the body axis (H): a slight head tilt.
MAX_HEAD_SHIFT = 0.015
# Face keypoints from the head centre, in head radii: the nose below the centre, the eyes
# (sideways, up) and the ears on the outline (sideways, up), so each sits inside the head ellipse.
NOSE_BELOW_CENTRE = 0.25
EYE_OFFSET = (0.42, 0.18)
EAR_OFFSET = (0.98, 0.05)
# Limb segment lengths (H), around adult anthropometry: upper arm, forearm, thigh, shank.
UPPER_ARM = (0.15, 0.18)
FOREARM = (0.13, 0.16)
THIGH = (0.22, 0.25)
SHANK = (0.21, 0.24)
# Joint angles, measured from the body axis toward the figure's outside. Upper arm: from across the
# body to raised above the shoulder; the elbow bends mostly outward-up; the hips spread less, and
# the knees bend either way a little, so the poses stay human-like while the limbs vary widely.
SHOULDER_ANGLE = (-0.2, 2.4)
ELBOW_BEND = (-0.3, 2.2)
HIP_ANGLE = (-0.15, 0.7)
KNEE_BEND = (-0.6, 0.4)


def _unit(angle: np.ndarray | float) -> np.ndarray:
    """Unit direction (2,) (x, y) at ``angle`` radians measured from 'down' (+y), positive toward +x."""
    return np.array([np.sin(angle), np.cos(angle)])


def figure_joints(rng: np.random.Generator, height: float, pelvis: np.ndarray) -> tuple[np.ndarray, float]:
    """Joints of a front-facing figure ``height`` px tall, its pelvis (2,) at ``pelvis``.

    Returns (joints (17, 2) float x, y in pixels, head radius in pixels). Person-left joints lie on
    the image's right (+x).
    """
    h = height
    tilt = rng.uniform(-MAX_LEAN, MAX_LEAN)
    up = -_unit(tilt)  # pelvis → neck
    right = np.array([np.cos(tilt), -np.sin(tilt)])  # image-right, perpendicular to the body axis
    torso = h * rng.uniform(*TORSO_LENGTH)
    neck = pelvis + up * torso
    sho_w = h * rng.uniform(*SHOULDER_HALF_WIDTH)
    hip_w = h * rng.uniform(*HIP_HALF_WIDTH)
    l_sho, r_sho = neck + right * sho_w, neck - right * sho_w
    l_hip, r_hip = pelvis + right * hip_w, pelvis - right * hip_w
    head_r = h * rng.uniform(*HEAD_RADIUS)
    head_c = neck + up * (head_r * HEAD_ABOVE_NECK) + right * h * rng.uniform(-MAX_HEAD_SHIFT, MAX_HEAD_SHIFT)
    eye_side, eye_up = EYE_OFFSET
    ear_side, ear_up = EAR_OFFSET
    joints = np.zeros((NUM_JOINTS, 2))
    joints[NOSE] = head_c - up * head_r * NOSE_BELOW_CENTRE
    joints[EYES[0]] = head_c + right * head_r * eye_side + up * head_r * eye_up
    joints[EYES[1]] = head_c - right * head_r * eye_side + up * head_r * eye_up
    joints[EARS[0]] = head_c + right * head_r * ear_side + up * head_r * ear_up
    joints[EARS[1]] = head_c - right * head_r * ear_side + up * head_r * ear_up
    joints[ARMS[0][0]], joints[ARMS[1][0]] = l_sho, r_sho
    joints[LEGS[0][0]], joints[LEGS[1][0]] = l_hip, r_hip
    upper, fore = h * rng.uniform(*UPPER_ARM), h * rng.uniform(*FOREARM)
    thigh, shank = h * rng.uniform(*THIGH), h * rng.uniform(*SHANK)
    for side, (sho, elb, wri) in zip(SIDES, ARMS):
        a1 = tilt + side * rng.uniform(*SHOULDER_ANGLE)
        a2 = a1 + side * rng.uniform(*ELBOW_BEND)
        joints[elb] = joints[sho] + _unit(a1) * upper
        joints[wri] = joints[elb] + _unit(a2) * fore
    for side, (hip, kne, ank) in zip(SIDES, LEGS):
        a1 = tilt + side * rng.uniform(*HIP_ANGLE)
        a2 = a1 + side * rng.uniform(*KNEE_BEND)
        joints[kne] = joints[hip] + _unit(a1) * thigh
        joints[ank] = joints[kne] + _unit(a2) * shank
    return joints, head_r
