"""Writing the synthetic set to disk: JPEG images and COCO json per split, and the whole set.

Layout under ``root``: ``images/<split>/<index:012d>.jpg`` and
``annotations/person_keypoints_<split>.json``. A ``.incomplete`` marker is written before anything
else and removed last, and each json is written atomically after its images, so an interrupted run
never looks complete. Images are rendered in parallel, but each is a pure function of
``(seed, split, index)``, so the same seed writes the same bytes whatever the number of processes.
"""

from __future__ import annotations

import fcntl
import json
import multiprocessing
import os
import shutil
from dataclasses import asdict

import cv2

from higherpose.dataset.crowd_index import add_crowd_index
from higherpose.dataset.specs import COCO
from higherpose.dataset.synthetic.annotate import PERSON_CATEGORY
from higherpose.dataset.synthetic.scene import DEFAULT_CONFIG, SyntheticConfig, render_image
from higherpose.dataset.synthetic.stats import format_stats, split_stats
from higherpose.utils.atomic import atomic_write

# The splits of the set, in the order they are written.
SPLITS = ("train", "val")
# The quick start's set: enough images for the tiny models to learn on within its time budget, and
# a val split large enough for a stable AP; seed 0 so every checkout trains on the same images.
DEFAULT_NUM_TRAIN = 800
DEFAULT_NUM_VAL = 100
DEFAULT_SEED = 0
# File under root while a generation runs or after it was interrupted.
MARKER = ".incomplete"
# File under root with the generator settings of the set (a set without it is the plain one).
RECORD = "generator.json"
# Processes when none is asked for: the CPU count, at most this many, leaving a shared machine some.
MAX_AUTO_WORKERS = 4
# Fewer images than this are rendered in this process: a pool's start-up would cost more.
MIN_IMAGES_FOR_POOL = 16
# Tasks per worker in the pool's map: enough for an even load, few enough for little overhead.
CHUNKS_PER_WORKER = 8

_Job = tuple[int, str, int, str, SyntheticConfig]  # (seed, split, index, image folder, cfg)


def annotation_path(root: str, split: str) -> str:
    """The COCO json of ``split`` under ``root``."""
    return os.path.join(root, "annotations", f"person_keypoints_{split}.json")


def _render_and_save(job: _Job) -> tuple[int, str, int, int, list[dict]]:
    """Render one image and write it as JPEG; returns (index, file name, height, width, annotations)."""
    seed, split, index, img_dir, cfg = job
    image, anns = render_image(seed, split, index, cfg)
    name = f"{index:012d}.jpg"
    ok = cv2.imwrite(
        os.path.join(img_dir, name),
        cv2.cvtColor(image, cv2.COLOR_RGB2BGR),
        [cv2.IMWRITE_JPEG_QUALITY, cfg.jpeg_quality],
    )
    if not ok:
        raise OSError(f"could not write {os.path.join(img_dir, name)}")
    return index, name, image.shape[0], image.shape[1], anns


def categories() -> list[dict]:
    """COCO's person category: keypoint names and the 1-based skeleton, from ``specs.COCO``."""
    return [
        {
            "supercategory": "person",
            "id": PERSON_CATEGORY,
            "name": "person",
            "keypoints": list(COCO.joint_names),
            "skeleton": [[a + 1, b + 1] for a, b in COCO.skeleton],
        }
    ]


def write_split(
    root: str, split: str, num_images: int, seed: int, workers: int = 0, cfg: SyntheticConfig = DEFAULT_CONFIG
) -> dict:
    """Render ``num_images`` images into ``root/images/<split>/`` with ``workers`` processes (0: the
    CPU count, at most ``MAX_AUTO_WORKERS``), then write their json (last, atomically); returns the json dict."""
    img_dir = os.path.join(root, "images", split)
    ann_dir = os.path.join(root, "annotations")
    if os.path.isdir(img_dir):
        shutil.rmtree(img_dir)  # stale images of an earlier, larger or interrupted run
    os.makedirs(img_dir)
    os.makedirs(ann_dir, exist_ok=True)
    jobs = [(seed, split, i, img_dir, cfg) for i in range(num_images)]
    workers = workers or min(os.cpu_count() or 1, MAX_AUTO_WORKERS)
    if workers > 1 and num_images >= MIN_IMAGES_FOR_POOL:
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            chunksize = max(1, num_images // (workers * CHUNKS_PER_WORKER))
            results = pool.map(_render_and_save, jobs, chunksize=chunksize)
    else:
        results = [_render_and_save(j) for j in jobs]
    images, annotations = [], []
    for index, name, h, w, anns in sorted(results, key=lambda r: r[0]):
        image_id = index + 1
        images.append({"id": image_id, "file_name": name, "height": h, "width": w})
        for ann in anns:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, **ann})
    data = {
        "info": {"description": f"HigherPose synthetic keypoints ({split}, seed {seed})", "version": "1.0"},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": categories(),
    }
    if cfg.crowd_index:
        add_crowd_index(data)
    atomic_write(annotation_path(root, split), lambda f: json.dump(data, f, separators=(",", ":")))
    return data


def generate(
    root: str,
    num_train: int = DEFAULT_NUM_TRAIN,
    num_val: int = DEFAULT_NUM_VAL,
    seed: int = DEFAULT_SEED,
    workers: int = 0,
    verbose: bool = True,
    cfg: SyntheticConfig = DEFAULT_CONFIG,
) -> dict[str, dict]:
    """Write the train and val splits under ``root`` (printing each one's statistics when
    ``verbose``); returns each split's :func:`split_stats`."""
    os.makedirs(root, exist_ok=True)
    marker = os.path.join(root, MARKER)
    with open(marker, "w") as f:
        f.write("generation in progress or interrupted; rerun tools/make_synthetic.py\n")
    for split in SPLITS:  # drop json of an earlier run first: the set is complete only at the end
        path = annotation_path(root, split)
        if os.path.exists(path):
            os.remove(path)
    stats = {}
    for split, n in zip(SPLITS, (num_train, num_val)):
        data = write_split(root, split, n, seed, workers, cfg)
        stats[split] = split_stats(data)
        if verbose:
            print(format_stats(split, stats[split]), flush=True)
    record = {"seed": seed, "num_train": num_train, "num_val": num_val, "generator": _settings(cfg)}
    atomic_write(os.path.join(root, RECORD), lambda f: json.dump(record, f, indent=1))
    os.remove(marker)
    return stats


def _settings(cfg: SyntheticConfig) -> dict:
    """``cfg`` as the json record holds it (tuples become lists)."""
    return json.loads(json.dumps(asdict(cfg)))


def check_generator(root: str, cfg: SyntheticConfig) -> None:
    """ValueError when the set under ``root`` was generated with other settings than ``cfg`` (a set
    without a record counts as the plain one): training on it would silently use the wrong set."""
    path = os.path.join(root, RECORD)
    stored = _settings(DEFAULT_CONFIG)
    if os.path.isfile(path):
        with open(path) as f:
            stored = json.load(f).get("generator", stored)
    wanted = _settings(cfg)
    if stored != wanted:
        changed = ", ".join(
            f"{k} {stored.get(k)!r} there, {v!r} wanted" for k, v in wanted.items() if stored.get(k) != v
        )
        raise ValueError(
            f"the synthetic set under {root} was generated with other settings ({changed}); "
            "point DATASET.ROOT (--root) elsewhere or delete the folder to regenerate it"
        )


def is_complete(root: str) -> bool:
    """Both json files present and no interrupted-run marker."""
    return not os.path.exists(os.path.join(root, MARKER)) and all(
        os.path.isfile(annotation_path(root, s)) for s in SPLITS
    )


def read_stats(root: str) -> dict[str, dict]:
    """Each split's :func:`split_stats`, counted from the json files of a complete set under ``root``."""
    stats = {}
    for split in SPLITS:
        with open(annotation_path(root, split)) as f:
            stats[split] = split_stats(json.load(f))
    return stats


def ensure_synthetic(
    root: str,
    num_train: int = DEFAULT_NUM_TRAIN,
    num_val: int = DEFAULT_NUM_VAL,
    seed: int = DEFAULT_SEED,
    verbose: bool = True,
    workers: int = 0,
    force: bool = False,
    cfg: SyntheticConfig = DEFAULT_CONFIG,
) -> bool:
    """Generate the synthetic set under ``root`` unless a complete one is there (or always, with
    ``force``); see :func:`generate` for the arguments. True if it generated. A complete set of other
    generator settings than ``cfg`` raises ValueError (:func:`check_generator`)."""
    if is_complete(root) and not force:
        check_generator(root, cfg)
        return False
    # Several processes (DDP ranks) may get here at once: one generates, the others wait for it.
    parent = os.path.dirname(os.path.abspath(root))
    os.makedirs(parent, exist_ok=True)
    with open(os.path.abspath(root) + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if is_complete(root) and not force:
                check_generator(root, cfg)
                return False
            if verbose and not force:
                print(f"synthetic data set missing or incomplete under {root}: generating it (seed {seed})", flush=True)
            generate(root, num_train, num_val, seed, workers, verbose, cfg)
            return True
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
