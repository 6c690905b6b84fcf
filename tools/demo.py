"""Draw multi-person poses on an image, a folder of images or a video.

    python tools/demo.py --cfg experiments/coco/higher_hrnet/w32_512_adam_lr1e-3.yaml \\
        --input photo.jpg --output output/demo TEST.MODEL_FILE models/pose_higher_hrnet_w32_512.pth

``--input`` is an image, a folder (its images, not recursive) or a video (by extension). Inference is
``higherpose.PoseEstimator`` (resize, ``TEST.SCALE_FACTOR`` multi-scale, ``TEST.FLIP_TEST``, grouping) on
``DEVICE`` ('' = CUDA when available). Writes, under ``--output``:

* images: ``<name>`` drawn with every person's skeleton in its own colour;
* video: ``<stem>_pose.mp4`` (and ``<stem>_frames/<frame>.jpg`` with ``--save-frames``);
* ``<input name>_keypoints.json``: the poses in COCO result format (``image_id`` = the file stem when
  it is a number, as in COCO file names, else the image's index; the frame index for a video).

Unreadable images are reported and skipped; ``--random-weights`` runs an untrained model (a smoke
test of the pipeline; its poses are meaningless).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from higherpose.apis.demo import Demo, collect, run_images, run_video
from higherpose.apis.estimator import PoseEstimator
from higherpose.apis.eval_model import load_eval_model
from higherpose.config import ConfigError, update_config
from higherpose.config import cfg as default_cfg
from higherpose.config.cli import add_cfg_argument, add_overrides_argument
from higherpose.core.evaluation import write_results_json
from higherpose.utils.checkpoint import CheckpointError
from higherpose.utils.launch import keep_freed_memory


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_cfg_argument(parser)
    parser.add_argument("--input", required=True, help="an image, a folder of images, or a video")
    parser.add_argument("--output", default="output/demo", help="folder for the drawn pictures and the JSON")
    parser.add_argument("--threshold", type=float, default=0.1, help="draw joints with confidence above this")
    parser.add_argument("--min-score", type=float, default=0.0, help="draw/keep people scoring at least this")
    parser.add_argument("--joint-scores", action="store_true", help="write each joint's confidence next to it")
    parser.add_argument("--save-frames", action="store_true", help="video: also write every drawn frame as JPEG")
    parser.add_argument("--limit", type=int, default=0, help="process at most N images / frames (0 = all)")
    parser.add_argument(
        "--random-weights", action="store_true", help="no TEST.MODEL_FILE: use an untrained model (smoke test)"
    )
    add_overrides_argument(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cfg = default_cfg.clone()
    update_config(cfg, args)
    kind, paths = collect(Path(args.input))
    model, _, device = load_eval_model(cfg, random_weights=args.random_weights, optimize=True)
    if device.type == "cpu":
        keep_freed_memory()
    out_dir = Path(args.output)
    out_dir.mkdir(parents=True, exist_ok=True)
    demo = Demo(PoseEstimator(cfg, model), args.min_score, args.threshold, args.joint_scores)
    print(f"demo: {cfg.MODEL.NAME} on {device}, {kind} {args.input} -> {out_dir}", file=sys.stderr)

    start = time.perf_counter()
    bad: list[Path] = []
    if kind == "video":
        done = run_video(demo, paths[0], out_dir, args.save_frames, args.limit)
    else:
        done, bad = run_images(demo, paths[: args.limit] if args.limit else paths, out_dir)
    name = Path(args.input).resolve().stem if kind != "folder" else Path(args.input).resolve().name
    json_path = out_dir / f"{name}_keypoints.json"
    write_results_json(demo.results, str(json_path))
    seconds = time.perf_counter() - start
    unit = "frames" if kind == "video" else "images"
    print(
        f"demo: {done} {unit} in {seconds:.1f} s ({done / max(seconds, 1e-9):.2f}/s), {demo.people} people; "
        f"wrote {out_dir} and {json_path.name}",
        file=sys.stderr,
    )
    if bad:
        print(f"demo: skipped {len(bad)} unreadable image(s): {', '.join(p.name for p in bad)}", file=sys.stderr)
    return 0 if done else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (ConfigError, CheckpointError, FileNotFoundError, ValueError, OSError) as err:
        sys.exit(f"demo.py: {err}")
