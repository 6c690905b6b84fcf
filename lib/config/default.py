"""Default configuration: every key and default of HigherHRNet's ``lib/config/default.py``, plus new
keys added beside them (marked NEW).  Each official HigherHRNet YAML merges unmodified.

Use :func:`update_config` to merge a YAML and ``KEY VALUE`` overrides, then :func:`check_config`
(called by ``update_config``) to catch inconsistent values before anything is built.
"""

from __future__ import annotations

import math
import os
from typing import Any

from yacs.config import CfgNode as CN

from higherpose.config.checks import ConfigError, check_gpu_keys, check_warmup_linear, fail
from higherpose.config.models import SAT_HEAD, sat_head_problem

_C = CN()

_C.OUTPUT_DIR = ""  # checkpoints, logs and results go to OUTPUT_DIR/<dataset>/<model>/<cfg name>
_C.LOG_DIR = ""  # TensorBoard logs go to LOG_DIR/<dataset>/<model>/<cfg name>_<time>
_C.DATA_DIR = ""  # prefix joined to DATASET.ROOT (if that does not exist), PRETRAINED and MODEL_FILE
_C.GPUS = (0,)  # GPU ids; one training process per visible GPU
_C.WORKERS = 4  # DataLoader workers per process
_C.PRINT_FREQ = 20  # log every N training steps / validation images
_C.AUTO_RESUME = False  # resume from OUTPUT_DIR/.../checkpoint.pth.tar when it exists
_C.PIN_MEMORY = True
_C.RANK = 0  # node rank (HigherHRNet meaning); set by the launcher
_C.VERBOSE = True
_C.DIST_BACKEND = "nccl"  # 'nccl' on CUDA; training falls back to 'gloo' on CPU
_C.DIST_TIMEOUT_MIN = 120.0  # NEW: collective timeout (min); > rank 0's longest validation while others wait
_C.MULTIPROCESSING_DISTRIBUTED = True
_C.DEVICE = ""  # NEW: '' = cuda when available else cpu; or 'cpu' / 'cuda'
_C.TF32 = "conv"  # NEW: TF32 on tensor-core GPUs: 'conv' (PyTorch's default), 'all' (+ fp32 matmuls), 'none'

# Mixed precision (torch.amp; replaces HigherHRNet's apex-legacy FP16 path)
_C.FP16 = CN()
_C.FP16.ENABLED = False  # autocast + (for float16) a GradScaler
_C.FP16.STATIC_LOSS_SCALE = 1.0  # used as the GradScaler's initial scale when > 1
_C.FP16.DYNAMIC_LOSS_SCALE = False  # kept for YAML compatibility; torch.amp's scaler is dynamic
_C.FP16.DTYPE = "float16"  # NEW: 'float16' (GradScaler) or 'bfloat16' (no scaler needed)

_C.CUDNN = CN()
_C.CUDNN.BENCHMARK = True
_C.CUDNN.DETERMINISTIC = False
_C.CUDNN.ENABLED = True

# common params for NETWORK
_C.MODEL = CN()
_C.MODEL.NAME = "pose_multi_resolution_net_v16"  # 'pose_higher_hrnet' or 'higher_pose'
_C.MODEL.INIT_WEIGHTS = True  # call init_weights(PRETRAINED) when building for training
_C.MODEL.PRETRAINED = ""  # ImageNet HRNet classification checkpoint
_C.MODEL.INIT_SCHEME = "higherhrnet"  # NEW: all convs N(0, 0.001^2) as HigherHRNet, or 'kaiming' (from scratch)
_C.MODEL.NUM_JOINTS = 17
_C.MODEL.TAG_PER_JOINT = True  # one tag map per joint (else a single tag map)
_C.MODEL.EXTRA = CN(new_allowed=True)  # architecture (STAGE2..4, DECONV, ...), filled by the YAML
_C.MODEL.SYNC_BN = False  # convert BatchNorm to SyncBatchNorm under DDP

# NEW: structure-aware transformer (SAT) head of the higher_pose model (keys and comments: models.py)
_C.MODEL.SAT = SAT_HEAD.clone()

_C.LOSS = CN()
_C.LOSS.NUM_STAGES = 1
_C.LOSS.WITH_HEATMAPS_LOSS = (True,)
_C.LOSS.HEATMAPS_LOSS_FACTOR = (1.0,)
_C.LOSS.HEATMAPS_LOSS_TYPE = "mse"  # NEW: 'mse' (HigherHRNet), 'wahr' / 'swahr' (SWAHR), 'qfl' (focal, logits)
_C.LOSS.WITH_AE_LOSS = (True,)
_C.LOSS.AE_LOSS_TYPE = "max"  # 'exp' or 'max'
_C.LOSS.PUSH_LOSS_FACTOR = (0.001,)
_C.LOSS.PULL_LOSS_FACTOR = (0.001,)

# DATASET related params
_C.DATASET = CN()
_C.DATASET.ROOT = ""
_C.DATASET.DATASET = "coco_kpt"  # training set: 'coco_kpt', 'crowd_pose_kpt' or 'custom_kpt'
_C.DATASET.DATASET_TEST = "coco"  # test set: 'coco', 'crowd_pose' or 'custom'
_C.DATASET.NUM_JOINTS = 17
_C.DATASET.MAX_NUM_PEOPLE = 30
_C.DATASET.TRAIN = "train2017"
_C.DATASET.TEST = "val2017"
_C.DATASET.DATA_FORMAT = "jpg"  # 'jpg' (image files) or 'zip' (images/<split>.zip)
# NEW: keypoint metadata for 'custom' datasets (COCO and CrowdPose take theirs from lib/dataset/specs.py)
_C.DATASET.FLIP_INDEX = []  # joint index each joint maps to under a horizontal flip
_C.DATASET.SIGMAS = []  # per-joint OKS sigmas
_C.DATASET.SKELETON = []  # edges as [[a, b], ...], 0-based
_C.DATASET.JOINT_NAMES = []
_C.DATASET.CATEGORY_IDS = []  # NEW: keypoint categories trained and evaluated as one class ([] = all with keypoints)
_C.DATASET.SYNTHETIC = False  # NEW: generate the synthetic set under ROOT when it is missing
_C.DATASET.SYNTHETIC_SCENE = "plain"  # NEW: its generator preset: 'plain' or 'crowded' (crowdIndex per image)
_C.DATASET.CROWD_INDEX_EVAL = False  # NEW: evaluate a COCO-format test set as CrowdPose: AP (E)/(M)/(H) by crowdIndex

# training data augmentation
_C.DATASET.MAX_ROTATION = 30
_C.DATASET.MIN_SCALE = 0.75
_C.DATASET.MAX_SCALE = 1.25
_C.DATASET.SCALE_TYPE = "short"
_C.DATASET.MAX_TRANSLATE = 40
_C.DATASET.INPUT_SIZE = 512
_C.DATASET.OUTPUT_SIZE = [128, 256, 512]
_C.DATASET.FLIP = 0.5

# heatmap generator (default is OUTPUT_SIZE/64)
_C.DATASET.SIGMA = -1.0  # a float (HigherHRNet: -1, an int, so yacs refused `SIGMA: 1.5`); `SIGMA: 2` still merges
_C.DATASET.SCALE_AWARE_SIGMA = False
_C.DATASET.BASE_SIZE = 256.0
_C.DATASET.BASE_SIGMA = 2.0
_C.DATASET.INT_SIGMA = False
# NEW: unbiased data processing (Huang et al., UDP): Gaussians at the exact joint positions, exact
# flip mirror, test maps aligned by exact resampling, sub-pixel decoding without HigherHRNet's offsets.
_C.DATASET.USE_UDP = False

_C.DATASET.WITH_CENTER = False

# train
_C.TRAIN = CN()
_C.TRAIN.LR_FACTOR = 0.1
_C.TRAIN.LR_STEP = [90, 110]
_C.TRAIN.LR = 0.001
_C.TRAIN.OPTIMIZER = "adam"  # 'adam', 'adamw' or 'sgd'
_C.TRAIN.MOMENTUM = 0.9
_C.TRAIN.WD = 0.0001  # used by sgd and adamw (HigherHRNet's Adam has no weight decay)
_C.TRAIN.NESTEROV = False
_C.TRAIN.GAMMA1 = 0.99
_C.TRAIN.GAMMA2 = 0.0
_C.TRAIN.BEGIN_EPOCH = 0
_C.TRAIN.END_EPOCH = 140
_C.TRAIN.WARM_UP_EPOCH = 3  # SWAHR's key: warm-up epochs of TRAIN.LR_SCHEDULER 'warmup_linear' (only)
_C.TRAIN.RESUME = False
_C.TRAIN.CHECKPOINT = ""
_C.TRAIN.IMAGES_PER_GPU = 32
_C.TRAIN.SHUFFLE = True
# NEW training keys
_C.TRAIN.SEED = -1  # >= 0: seed torch/numpy/random and the data order, so a run reproduces
_C.TRAIN.DETERMINISTIC = False  # deterministic CUDA kernels where they exist (slower); see docs/performance.md
_C.TRAIN.VAL_FREQ = 0  # validate every N epochs (0 = never, as HigherHRNet)
_C.TRAIN.VAL_SUBSET = 0  # validate on the first N test images (0 = all)
_C.TRAIN.ITERS_PER_EPOCH = 0  # cap the steps of an epoch (0 = the whole data set)
_C.TRAIN.NAN_POLICY = "stop"  # non-finite loss: 'stop' the run, or 'skip' the step (fp16: skip, scale kept)
_C.TRAIN.CLIP_GRAD = 0.0  # clip the gradient norm to this value (0 = off)
_C.TRAIN.CHANNELS_LAST = False  # channels_last memory format (faster on tensor-core GPUs)
_C.TRAIN.WARMUP_ITERS = 0  # linear LR warm-up over the first N steps
_C.TRAIN.EMA_DECAY = 0.0  # > 0: keep an exponential moving average of the weights; final/best = the average
_C.TRAIN.LR_SCHEDULER = "multistep"  # 'multistep' (HigherHRNet), 'cosine' or 'warmup_linear' (SWAHR), per step
_C.TRAIN.TIME_BUDGET = 0.0  # > 0: train at most this many minutes; epochs are cut to fit (multistep only)
_C.TRAIN.AE_WARMUP_ITERS = 0  # push/pull factors scaled up by AE_WARMUP_FACTOR for the first N steps
_C.TRAIN.AE_WARMUP_FACTOR = 1.0

# testing
_C.TEST = CN()
_C.TEST.IMAGES_PER_GPU = 32
_C.TEST.FLIP_TEST = False
_C.TEST.ADJUST = True
_C.TEST.REFINE = True
_C.TEST.SCALE_FACTOR = [1]
# group
_C.TEST.DETECTION_THRESHOLD = 0.2
_C.TEST.TAG_THRESHOLD = 1.0
_C.TEST.USE_DETECTION_VAL = True
_C.TEST.IGNORE_TOO_MUCH = False
_C.TEST.MODEL_FILE = ""
_C.TEST.IGNORE_CENTER = True
_C.TEST.NMS_KERNEL = 3
_C.TEST.NMS_PADDING = 1
_C.TEST.PROJECT2IMAGE = False
_C.TEST.WITH_HEATMAPS = (True,)
_C.TEST.WITH_AE = (True,)
_C.TEST.LOG_PROGRESS = False
_C.TEST.SUBSET = 0  # NEW: evaluate the first N test images only (0 = all)
_C.TEST.FP16 = False  # NEW: test forward under autocast (FP16.DTYPE); maps are averaged and grouped in fp32
_C.TEST.CHANNELS_LAST = True  # NEW: the loaded test network in channels_last (faster convolutions)
# NEW: on the CPU, images predicted side by side, each on its own thread with a share of torch's threads
# (0 = min(torch threads, 4); 1 = one image at a time, every thread on its operations). Small networks
# use the cores better this way; each image in flight holds its own activations and maps.
_C.TEST.CPU_IMAGE_THREADS = 0
# NEW: short side of the scale-1 test input (0 = DATASET.INPUT_SIZE). A model trained on crops
# (DATASET.INPUT_SIZE smaller than the image, MIN/MAX_SCALE < 1) is tested on whole images at this size.
_C.TEST.INPUT_SIZE = 0

# debug
_C.DEBUG = CN()
_C.DEBUG.DEBUG = True
_C.DEBUG.SAVE_BATCH_IMAGES_GT = False
_C.DEBUG.SAVE_BATCH_IMAGES_PRED = False
_C.DEBUG.SAVE_HEATMAPS_GT = True
_C.DEBUG.SAVE_HEATMAPS_PRED = True
_C.DEBUG.SAVE_TAGMAPS_PRED = True
_C.DEBUG.SAVE_SCALEMAPS_PRED = True  # NEW: SWAHR's scale maps (LOSS.HEATMAPS_LOSS_TYPE 'swahr')
_C.DEBUG.SAVE_FREQ = 0  # NEW: debug grids at the steps of each epoch that are multiples of N (0 = PRINT_FREQ)

MODEL_NAMES = ("pose_higher_hrnet", "higher_pose")
TRAIN_DATASETS = ("coco_kpt", "crowd_pose_kpt", "custom_kpt")
TEST_DATASETS = ("coco", "crowd_pose", "custom")
SYNTHETIC_SCENES = ("plain", "crowded")  # the presets of higherpose.dataset.synthetic.scene.SCENES
LR_SCHEDULERS = ("multistep", "cosine", "warmup_linear")
HEATMAPS_LOSS_TYPES = ("mse", "wahr", "qfl", "swahr")
MAX_LR = 1e3  # upper bound of TRAIN.LR: far above any LR that trains, far below a float32 overflow


def _ints_to_floats(defaults: CN, loaded: CN) -> None:
    """In place: an int in ``loaded`` (a parsed YAML) where ``defaults`` holds a float becomes that float
    (``SIGMA: 2``); :func:`_int_to_float` does the same for command-line overrides, which are strings."""
    for key, value in loaded.items():
        if key not in defaults:
            continue  # unknown key: yacs reports it
        default = defaults[key]
        if isinstance(default, CN) and isinstance(value, CN):
            _ints_to_floats(default, value)
        elif isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
            loaded[key] = float(value)


def _merge_file(cfg: CN, path: str) -> None:
    if not os.path.isfile(path):
        raise ConfigError(f"config file not found: {path}")
    try:
        with open(path) as f:
            loaded = cfg.load_cfg(f)
        _ints_to_floats(cfg, loaded)
        cfg.merge_from_other_cfg(loaded)
    except KeyError as err:
        # yacs says "Non-existent config key: X"; add the file so the user knows where to look.
        raise ConfigError(f"{path}: {err.args[0]}") from None
    except ValueError as err:
        raise ConfigError(f"{path}: {err}") from None


def _int_to_float(cfg: CN, key: str, value: Any) -> Any:
    """``'15'`` for a float key becomes ``'15.0'``: yacs rejects an int for a float (``TRAIN.LR 1``)."""
    node: Any = cfg
    for part in str(key).split("."):
        if not isinstance(node, CN) or part not in node:
            return value  # unknown key: yacs reports it
        node = node[part]
    if not isinstance(node, float) or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return float(value)
    if isinstance(value, str) and value.strip().lstrip("+-").isdigit():
        return str(float(value))
    return value


def _merge_list(cfg: CN, opts: list[str]) -> None:
    if len(opts) % 2:
        raise ConfigError(f"command-line overrides must be KEY VALUE pairs, got {opts}")
    opts = [v if i % 2 == 0 else _int_to_float(cfg, opts[i - 1], v) for i, v in enumerate(opts)]
    try:
        cfg.merge_from_list(opts)
    except (KeyError, AssertionError) as err:
        raise ConfigError(f"command-line override: {err.args[0] if err.args else err}") from None
    except ValueError as err:
        raise ConfigError(f"command-line override: {err}") from None


def update_config(cfg: CN, args: Any) -> None:
    """Merge ``args.cfg`` (YAML) and ``args.opts`` (``KEY VALUE`` list) into ``cfg``, then check it.

    Path handling follows HigherHRNet: ``DATASET.ROOT`` is joined to ``DATA_DIR`` when it does not
    exist as given, ``MODEL.PRETRAINED`` and ``TEST.MODEL_FILE`` always are.
    """
    cfg.defrost()
    _merge_file(cfg, args.cfg)
    _merge_list(cfg, list(getattr(args, "opts", None) or []))

    if not os.path.exists(cfg.DATASET.ROOT):
        cfg.DATASET.ROOT = os.path.join(cfg.DATA_DIR, cfg.DATASET.ROOT)
    cfg.MODEL.PRETRAINED = os.path.join(cfg.DATA_DIR, cfg.MODEL.PRETRAINED)
    if cfg.TEST.MODEL_FILE:
        cfg.TEST.MODEL_FILE = os.path.join(cfg.DATA_DIR, cfg.TEST.MODEL_FILE)

    if cfg.DATASET.WITH_CENTER:
        cfg.DATASET.NUM_JOINTS += 1
        cfg.MODEL.NUM_JOINTS = cfg.DATASET.NUM_JOINTS
    if not isinstance(cfg.DATASET.OUTPUT_SIZE, (list, tuple)):
        cfg.DATASET.OUTPUT_SIZE = [cfg.DATASET.OUTPUT_SIZE]
    # HigherHRNet meant to turn scalar LOSS entries into tuples but wrote `(x)`; we do it properly.
    for key in (
        "WITH_HEATMAPS_LOSS",
        "HEATMAPS_LOSS_FACTOR",
        "WITH_AE_LOSS",
        "PUSH_LOSS_FACTOR",
        "PULL_LOSS_FACTOR",
    ):
        if not isinstance(cfg.LOSS[key], (list, tuple)):
            cfg.LOSS[key] = (cfg.LOSS[key],)
    check_config(cfg, source=args.cfg)
    cfg.freeze()


def check_config(cfg: CN, source: str = "config") -> None:
    """Fail with a message naming the key and value when the merged config cannot work."""
    stages = cfg.LOSS.NUM_STAGES
    for key in (
        "LOSS.WITH_HEATMAPS_LOSS",
        "LOSS.HEATMAPS_LOSS_FACTOR",
        "LOSS.WITH_AE_LOSS",
        "LOSS.PUSH_LOSS_FACTOR",
        "LOSS.PULL_LOSS_FACTOR",
        "TEST.WITH_HEATMAPS",
        "TEST.WITH_AE",
        "DATASET.OUTPUT_SIZE",
    ):
        group, name = key.split(".")
        value = cfg[group][name]
        if len(value) != stages:
            fail(source, key, value, f"needs one entry per stage (LOSS.NUM_STAGES = {stages})")
    for i, (heatmaps, ae) in enumerate(zip(cfg.LOSS.WITH_HEATMAPS_LOSS, cfg.LOSS.WITH_AE_LOSS)):
        if not heatmaps and not ae:
            # The model still builds the stage's layers; no loss gives them a gradient, and DDP
            # (find_unused_parameters=False) then stops at the second step of every multi-GPU run.
            raise ConfigError(
                f"{source}: LOSS.WITH_HEATMAPS_LOSS[{i}] and LOSS.WITH_AE_LOSS[{i}] are both False: stage {i} "
                "has no loss to train its layers; enable a loss for it, or remove the stage (lower "
                "LOSS.NUM_STAGES, with one entry per stage in the per-stage keys and "
                "MODEL.EXTRA.DECONV.NUM_DECONVS = LOSS.NUM_STAGES - 1)"
            )

    if cfg.MODEL.NAME not in MODEL_NAMES:
        fail(source, "MODEL.NAME", cfg.MODEL.NAME, f"unknown model; choose one of {MODEL_NAMES}")
    if cfg.DATASET.DATASET not in TRAIN_DATASETS:
        fail(source, "DATASET.DATASET", cfg.DATASET.DATASET, f"choose one of {TRAIN_DATASETS}")
    if cfg.DATASET.DATASET_TEST not in TEST_DATASETS:
        fail(source, "DATASET.DATASET_TEST", cfg.DATASET.DATASET_TEST, f"choose one of {TEST_DATASETS}")
    if cfg.DATASET.SYNTHETIC_SCENE not in SYNTHETIC_SCENES:
        fail(source, "DATASET.SYNTHETIC_SCENE", cfg.DATASET.SYNTHETIC_SCENE, f"choose one of {SYNTHETIC_SCENES}")

    size = cfg.DATASET.INPUT_SIZE
    if size <= 0 or size % 32:
        fail(source, "DATASET.INPUT_SIZE", size, "must be a positive multiple of 32 (HRNet's stride)")
    if cfg.TEST.INPUT_SIZE < 0 or cfg.TEST.INPUT_SIZE % 32:
        fail(source, "TEST.INPUT_SIZE", cfg.TEST.INPUT_SIZE, "must be 0 (= DATASET.INPUT_SIZE) or a multiple of 32")
    for i, out in enumerate(cfg.DATASET.OUTPUT_SIZE):
        expected = size // 4 * 2**i
        if out != expected:
            fail(
                source,
                "DATASET.OUTPUT_SIZE",
                list(cfg.DATASET.OUTPUT_SIZE),
                f"entry {i} must be {expected} (stage {i} is INPUT_SIZE {size} / {size // expected})",
            )

    if cfg.MODEL.NUM_JOINTS != cfg.DATASET.NUM_JOINTS:
        fail(
            source,
            "MODEL.NUM_JOINTS",
            cfg.MODEL.NUM_JOINTS,
            f"differs from DATASET.NUM_JOINTS = {cfg.DATASET.NUM_JOINTS}",
        )
    joints = cfg.DATASET.NUM_JOINTS - int(cfg.DATASET.WITH_CENTER)
    for key in ("FLIP_INDEX", "SIGMAS", "JOINT_NAMES"):
        value = cfg.DATASET[key]
        if value and len(value) != joints:
            fail(source, f"DATASET.{key}", list(value), f"needs {joints} entries (DATASET.NUM_JOINTS)")
    if cfg.DATASET.FLIP_INDEX and sorted(cfg.DATASET.FLIP_INDEX) != list(range(joints)):
        fail(source, "DATASET.FLIP_INDEX", list(cfg.DATASET.FLIP_INDEX), "must be a permutation of 0..K-1")
    for edge in cfg.DATASET.SKELETON:
        if len(edge) != 2 or not all(0 <= j < joints for j in edge):
            fail(source, "DATASET.SKELETON", edge, f"edges are pairs of joint indices in 0..{joints - 1}")
    ids = cfg.DATASET.CATEGORY_IDS
    if any(isinstance(i, bool) or not isinstance(i, int) for i in ids) or len(set(ids)) != len(ids):
        fail(source, "DATASET.CATEGORY_IDS", list(ids), "must be distinct integer category ids ([] = all)")
    if cfg.DATASET.DATASET == "custom_kpt" and not cfg.DATASET.FLIP_INDEX:
        fail(source, "DATASET.FLIP_INDEX", [], "a custom dataset must give its flip index (and SIGMAS)")

    extra = cfg.MODEL.EXTRA
    if "DECONV" in extra and extra.DECONV.NUM_DECONVS != stages - 1:
        fail(
            source,
            "MODEL.EXTRA.DECONV.NUM_DECONVS",
            extra.DECONV.NUM_DECONVS,
            f"must be LOSS.NUM_STAGES - 1 = {stages - 1}",
        )
    if cfg.TRAIN.IMAGES_PER_GPU < 1:
        fail(source, "TRAIN.IMAGES_PER_GPU", cfg.TRAIN.IMAGES_PER_GPU, "must be at least 1")
    if cfg.TRAIN.END_EPOCH <= cfg.TRAIN.BEGIN_EPOCH:
        raise ConfigError(
            f"{source}: TRAIN.END_EPOCH = {cfg.TRAIN.END_EPOCH} must be larger than "
            f"TRAIN.BEGIN_EPOCH = {cfg.TRAIN.BEGIN_EPOCH}"
        )
    if cfg.TEST.IMAGES_PER_GPU < 1:
        fail(source, "TEST.IMAGES_PER_GPU", cfg.TEST.IMAGES_PER_GPU, "must be at least 1")
    if cfg.TEST.CPU_IMAGE_THREADS < 0:
        fail(source, "TEST.CPU_IMAGE_THREADS", cfg.TEST.CPU_IMAGE_THREADS, "must be >= 0 (0 = automatic)")
    if cfg.WORKERS < 0:
        fail(source, "WORKERS", cfg.WORKERS, "must be >= 0")
    if cfg.TRAIN.NAN_POLICY not in ("stop", "skip"):
        fail(source, "TRAIN.NAN_POLICY", cfg.TRAIN.NAN_POLICY, "choose 'stop' or 'skip'")
    # The optimisers cast the step size to float32: an LR (or LR x LR_FACTOR) far beyond any working
    # value overflows there mid-run ("value cannot be converted to type float without overflow").
    if not (math.isfinite(cfg.TRAIN.LR) and 0.0 < cfg.TRAIN.LR <= MAX_LR):
        fail(source, "TRAIN.LR", cfg.TRAIN.LR, f"must be a finite number in (0, {MAX_LR:g}]")
    if not (math.isfinite(cfg.TRAIN.LR_FACTOR) and 0.0 < cfg.TRAIN.LR_FACTOR <= 1.0):
        fail(source, "TRAIN.LR_FACTOR", cfg.TRAIN.LR_FACTOR, "must be in (0, 1]: the LR decay at each TRAIN.LR_STEP")
    if not 0.0 <= cfg.TRAIN.EMA_DECAY < 1.0:
        fail(source, "TRAIN.EMA_DECAY", cfg.TRAIN.EMA_DECAY, "must be in [0, 1) (0 = off)")
    if cfg.MODEL.INIT_SCHEME not in ("higherhrnet", "kaiming"):
        fail(source, "MODEL.INIT_SCHEME", cfg.MODEL.INIT_SCHEME, "choose 'higherhrnet' or 'kaiming'")
    if cfg.TRAIN.LR_SCHEDULER not in LR_SCHEDULERS:
        fail(source, "TRAIN.LR_SCHEDULER", cfg.TRAIN.LR_SCHEDULER, f"choose one of {LR_SCHEDULERS}")
    if cfg.TRAIN.LR_SCHEDULER == "warmup_linear":
        check_warmup_linear(cfg, source)
    if cfg.TRAIN.TIME_BUDGET < 0:
        fail(source, "TRAIN.TIME_BUDGET", cfg.TRAIN.TIME_BUDGET, "must be >= 0 minutes (0 = no budget)")
    if cfg.TRAIN.TIME_BUDGET > 0 and cfg.TRAIN.LR_SCHEDULER != "multistep":
        # cosine / warmup_linear run per step to END_EPOCH x steps; a budget changes the number of steps.
        fail(source, "TRAIN.TIME_BUDGET", cfg.TRAIN.TIME_BUDGET, "needs TRAIN.LR_SCHEDULER 'multistep'")
    if cfg.TRAIN.OPTIMIZER not in ("adam", "adamw", "sgd"):
        fail(source, "TRAIN.OPTIMIZER", cfg.TRAIN.OPTIMIZER, "choose 'adam', 'adamw' or 'sgd'")
    if cfg.FP16.DTYPE not in ("float16", "bfloat16"):
        fail(source, "FP16.DTYPE", cfg.FP16.DTYPE, "choose 'float16' or 'bfloat16'")
    if cfg.LOSS.AE_LOSS_TYPE not in ("exp", "max"):
        fail(source, "LOSS.AE_LOSS_TYPE", cfg.LOSS.AE_LOSS_TYPE, "choose 'exp' or 'max'")
    if cfg.DATASET.USE_UDP and cfg.DATASET.SCALE_AWARE_SIGMA:
        fail(source, "DATASET.USE_UDP", True, "is not implemented with DATASET.SCALE_AWARE_SIGMA True")
    if cfg.LOSS.HEATMAPS_LOSS_TYPE not in HEATMAPS_LOSS_TYPES:
        fail(source, "LOSS.HEATMAPS_LOSS_TYPE", cfg.LOSS.HEATMAPS_LOSS_TYPE, f"choose one of {HEATMAPS_LOSS_TYPES}")
    if cfg.LOSS.HEATMAPS_LOSS_TYPE == "swahr" and not all(cfg.LOSS.WITH_HEATMAPS_LOSS):
        # SWAHR's scale maps are trained through the heatmap loss of their stage.
        why = "LOSS.HEATMAPS_LOSS_TYPE 'swahr' needs a heatmap loss on every stage"
        fail(source, "LOSS.WITH_HEATMAPS_LOSS", list(cfg.LOSS.WITH_HEATMAPS_LOSS), why)
    if 1 not in [float(s) for s in cfg.TEST.SCALE_FACTOR]:
        # Tags are only taken at scale 1.0 (HigherHRNet's aggregate_results); without it there are none.
        fail(source, "TEST.SCALE_FACTOR", list(cfg.TEST.SCALE_FACTOR), "must contain 1.0")

    problem = sat_head_problem(cfg.MODEL.SAT)
    if problem:
        fail(source, *problem)
    check_gpu_keys(cfg, source)
