"""A synthetic COCO-format multi-person keypoint set that a tiny model can learn on a CPU.

Each image holds several articulated figures on the COCO 17-joint skeleton (``specs.COCO``): filled
limbs of varying thickness, a torso polygon, a head ellipse with eyes / nose / ears drawn as small
distinct marks at the keypoints, hands and feet at the limb ends. Poses vary (joint angles within
human-like limits), so do scale (many small people: the low-resolution case), overlap and
occlusion (by other figures and by occluder shapes), and backgrounds are textured and noisy. Some
images hold a crowd region (a cluster of tiny unlabelled figures, ``iscrowd=1`` with an RLE).

Annotations follow COCO: ``v=2`` visible, ``v=1`` labelled but occluded, ``v=0`` unlabelled (outside
the image, or an occluded joint the "annotator" skipped); ``area`` is the segmentation area
(visible region of the figure, pycocotools); figures are front-facing, so a person's left side is
on the image's right, as for a person facing the camera in COCO.

Everything is a function of ``(seed, split, image index)``: the same seed writes the same json bytes
and the same images, whatever the number of processes.

This module is the public entry point; the work is done by one module per job:

- ``synthetic.figure``: joint positions of a figure;
- ``synthetic.draw``: drawing figures, backgrounds and occluders, with the layer map of who owns a pixel;
- ``synthetic.annotate``: COCO annotations read off the layer map;
- ``synthetic.scene``: one image (``render_image``), the generator's knobs (``SyntheticConfig``) and
  its presets (``SCENES``: ``plain``, the quick start's; ``crowded``, with a ``crowdIndex`` per image);
- ``synthetic.write``: images and json on disk (``generate``, ``ensure_synthetic``);
- ``synthetic.stats``: what a split holds (``split_stats``).

``tools/make_synthetic.py`` is the command line over :func:`ensure_synthetic`.
"""

from __future__ import annotations

from higherpose.dataset.synthetic.draw import background, draw_figure, draw_occluder
from higherpose.dataset.synthetic.figure import figure_joints
from higherpose.dataset.synthetic.scene import (
    CROWDED_CONFIG,
    DEFAULT_CONFIG,
    SCENES,
    SPLIT_CODES,
    SyntheticConfig,
    render_image,
)
from higherpose.dataset.synthetic.stats import format_stats, split_stats
from higherpose.dataset.synthetic.write import (
    DEFAULT_NUM_TRAIN,
    DEFAULT_NUM_VAL,
    DEFAULT_SEED,
    MAX_AUTO_WORKERS,
    SPLITS,
    annotation_path,
    categories,
    check_generator,
    ensure_synthetic,
    generate,
    is_complete,
    read_stats,
    write_split,
)

__all__ = [
    "CROWDED_CONFIG",
    "DEFAULT_CONFIG",
    "SCENES",
    "check_generator",
    "DEFAULT_NUM_TRAIN",
    "DEFAULT_NUM_VAL",
    "DEFAULT_SEED",
    "MAX_AUTO_WORKERS",
    "SPLITS",
    "SPLIT_CODES",
    "SyntheticConfig",
    "annotation_path",
    "background",
    "categories",
    "draw_figure",
    "draw_occluder",
    "ensure_synthetic",
    "figure_joints",
    "format_stats",
    "generate",
    "is_complete",
    "read_stats",
    "render_image",
    "split_stats",
    "write_split",
]
