"""Every default of a seglib run, written once.

``TrainConfig`` is the single source of hyperparameters. Each field carries a one-line
comment (unit, and why that value) and, where a notebook slider edits it, the slider's
range in ``metadata["slider"]``. Profiles are named constructors: ``TrainConfig.seed_recipe()``
(profile ``seed``; the name avoids the ``seed`` field) is the seed recipe on real COCO, ``TrainConfig.smoke()`` a tiny offline CPU run that
checks the plumbing, not the results.

File locations live in ``seglib.paths``; atomic file writing in ``seglib.io``.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from seglib.io import write_json_atomic

#: The four categories of the project, in the order that defines label ids 1..4.
DEFAULT_CATEGORIES: tuple[str, ...] = ("cake", "car", "dog", "person")
#: Their ids in COCO 2017 (non-contiguous; background is 0 in the model, not in COCO).
COCO_IDS: dict[str, int] = {"person": 1, "car": 3, "dog": 18, "cake": 61}

PROFILES = ("seed", "demo", "smoke")
NORMS = ("bn", "gn")
ARCHS = ("v1", "v2", "mask2former")  # mask2former needs the detr extra (requirements-detr.txt)
#: Mask2Former architecture presets: "swin-tiny" is the COCO checkpoint's architecture, "tiny"
#: a ~1 M-parameter random one for offline CPU runs and tests (no published weights fit it).
M2F_PRESETS = ("swin-tiny", "tiny")
#: The COCO-instance Mask2Former checkpoint (Hugging Face id; weights CC BY-NC 4.0).
M2F_MODEL_ID = "facebook/mask2former-swin-tiny-coco-instance"
WEIGHT_CHOICES = ("coco", "imagenet", "none")  # or a path to a local file
LR_SCHEDULES = ("multistep", "cosine", "constant")
DEVICES = ("auto", "cpu", "cuda")
DATA_SOURCES = ("coco", "synthetic")
#: Suppression methods of ``seglib.postprocess`` ("nms" is torchvision's own).
POSTPROCESS_METHODS = ("nms", "soft-nms-gaussian", "soft-nms-linear", "matrix-nms", "mask-nms")


def _slider(lo: float, hi: float, step: float, log: bool = False) -> dict[str, Any]:
    return {"slider": {"min": lo, "max": hi, "step": step, "log": log}}


@dataclass
class TrainConfig:
    """Hyperparameters and run settings. Defaults are the seed recipe.

    Raises:
        ValueError: from ``__post_init__`` when a value is out of range or not a valid choice.
    """

    # --- data -------------------------------------------------------------------------
    # Category names; their order defines labels 1..k (0 is background).
    categories: tuple[str, ...] = DEFAULT_CATEGORIES
    # Where images come from: real COCO 2017, or the generated offline stand-in.
    data_source: str = "coco"
    # Images in each split: 300 train (train2017); 300 val + 30 test (val2017, disjoint).
    num_train: int = 300
    num_val: int = 300
    num_test: int = 30
    # Synthetic COCO only: images per split and their side in px.
    synthetic_images: int = 40
    synthetic_size: int = 256
    # Synthetic COCO only: share (0-1) of object scenes drawn as heavy occlusion (a smaller
    # object inside a larger one's extent), so every occlusion bucket holds instances.
    synthetic_heavy_share: float = 0.0
    # px; instances whose mask box is narrower or shorter are dropped (no degenerate boxes).
    min_box_size: float = 2.0

    # --- augmentation -----------------------------------------------------------------
    # 0 disables crop/scale/colour jitter; 1 is the seed recipe's strength.
    aug_strength: float = field(default=1.0, metadata=_slider(0.0, 2.0, 0.1))
    # Probability of a horizontal flip per training image.
    hflip_prob: float = field(default=0.5, metadata=_slider(0.0, 1.0, 0.05))

    # --- model ------------------------------------------------------------------------
    # torchvision Mask R-CNN R50-FPN: "v1" (maskrcnn_resnet50_fpn) or "v2" (improved recipe);
    # "mask2former": Hugging Face Mask2Former (optional detr extra), same loop and evaluator.
    arch: str = "v1"
    # "coco" (COCO-trained, the seed), "imagenet" (backbone only), "none", or a .pth path.
    weights: str = "coco"
    # Mask2Former only: architecture preset (M2F_PRESETS); "swin-tiny" fits the COCO weights.
    m2f_config: str = "swin-tiny"
    # Mask2Former only: Hugging Face model id or save_pretrained folder that weights="coco"
    # loads, offline (fetch-weights mask2former). Weights CC BY-NC 4.0.
    m2f_pretrained: str = M2F_MODEL_ID
    # Notebook 07: epochs every model trains in the family comparison, the same for each
    # (None: num_epochs). The smoke profile cuts it to 2 so the notebook fits CI.
    compare_epochs: int | None = None
    # ResNet stages left trainable (0-5); torchvision's default for fine-tuning is 3.
    trainable_backbone_layers: int = 3
    # Normalisation in the ResNet and FPN: "bn" is torchvision's (frozen BatchNorm when starting
    # from trained weights); "gn" is GroupNorm(32), for training from scratch (weights "none")
    # with batches of 2, where BatchNorm's statistics are noise (He et al., "Rethinking
    # ImageNet Pre-training", 2019). Measured offline: docs/benchmarks.md.
    norm: str = "bn"
    # px; the model's internal resize (shorter side, longer side cap). COCO standard.
    min_size: int = field(default=800, metadata=_slider(128, 1024, 32))
    max_size: int = 1333
    # RPN proposals kept before/after NMS per image; torchvision defaults.
    rpn_pre_nms_top_n_train: int = 2000
    rpn_post_nms_top_n_train: int = 2000
    rpn_pre_nms_top_n_test: int = 1000
    rpn_post_nms_top_n_test: int = 1000
    # ROIs sampled per image for the box/mask heads; dominates CPU cost at small sizes.
    box_batch_size_per_image: int = 512
    # Inference: detections scoring below this are dropped inside the model (torchvision's 0.05).
    box_score_thresh: float = field(default=0.05, metadata=_slider(0.0, 1.0, 0.01))
    # Inference: IoU above which per-class box NMS suppresses the lower-scored box.
    box_nms_thresh: float = field(default=0.5, metadata=_slider(0.1, 1.0, 0.05))
    # Inference: detections kept per image, best first (COCO's AP counts up to 100).
    detections_per_img: int = field(default=100, metadata=_slider(1, 300, 1))
    # Inference: how overlapping detections are suppressed (seglib.postprocess): "nms" is
    # torchvision's box NMS at box_nms_thresh, the seed; the others rescore or use masks.
    postprocess: str = "nms"
    # Soft-NMS Gaussian: overlapping scores decay by exp(-IoU²/sigma); 0.5 in Bodla et al. 2017.
    soft_nms_sigma: float = 0.5
    # Soft-NMS linear: scores of boxes with IoU above this decay by (1 - IoU); 0.3 in the paper.
    soft_nms_thresh: float = 0.3
    # Matrix NMS (on masks, Gaussian kernel): decay exp(-sigma * IoU²); 2.0 as in SOLOv2.
    matrix_nms_sigma: float = 2.0
    # Mask NMS: mask IoU above which the lower-scored detection of a class is dropped.
    mask_nms_thresh: float = 0.5
    # Candidates per image taken with the model's box NMS off, for every variant but plain
    # "nms"; 3x detections_per_img leaves room for what suppression removes.
    postprocess_pool: int = 300
    # Horizontal-flip test-time augmentation: both views' detections merged, then suppressed.
    tta_hflip: bool = False

    # --- optimisation -----------------------------------------------------------------
    # SGD learning rate for batch_size 2 (seed recipe).
    lr: float = field(default=0.001, metadata=_slider(1e-5, 1e-1, 0.1, log=True))
    momentum: float = 0.9
    # L2 penalty, torchvision detection reference value.
    weight_decay: float = 1e-4
    batch_size: int = field(default=2, metadata=_slider(1, 16, 1))
    num_epochs: int = field(default=10, metadata=_slider(1, 50, 1))
    # Stop after this many iterations in total (None: run all epochs). For smoke runs.
    max_iters: int | None = None
    # Iterations of linear warmup from lr * warmup_factor; guards against early NaN losses.
    warmup_iters: int = 100
    warmup_factor: float = 0.001
    # After warmup: step decay at lr_milestones, cosine to 0, or constant.
    lr_schedule: str = "multistep"
    # Fractions of the run (0-1) where "multistep" multiplies lr by lr_gamma; 0.8 is the
    # seed recipe's epoch 8 of 10, and stays at 80% when the epochs slider changes the length.
    lr_milestones: tuple[float, ...] = (0.8,)
    lr_gamma: float = 0.1
    # Max global gradient norm (None: no clipping); second guard against divergence.
    grad_clip_norm: float | None = 10.0

    # --- runtime ----------------------------------------------------------------------
    # "auto" picks CUDA when present and warns loudly when it falls back to the CPU.
    device: str = "auto"
    # Mixed precision on CUDA (bf16 where supported, else fp16 + GradScaler); ignored on CPU.
    amp: bool = True
    # DataLoader worker processes; 0 loads in the main process (safe in notebooks).
    num_workers: int = 2
    # Group images of similar aspect ratio into batches (less padding, faster on GPU).
    aspect_ratio_grouping: bool = True
    # Seeds python, numpy and torch; also the subset sampling seed.
    seed: int = 0
    # Validate (and update best.pt) every this many epochs.
    eval_interval: int = 1
    # Iterations between host syncs that report losses to the callback and metrics.jsonl.
    log_interval: int = 20
    # Predictions below this score are ignored by IoU measures, overlays and the confusion matrix.
    score_thresh: float = field(default=0.5, metadata=_slider(0.0, 1.0, 0.05))

    def __post_init__(self) -> None:
        _check_types(self)
        # JSON round-trips give lists; keep tuples so configs compare equal.
        self.categories = tuple(self.categories)
        self.lr_milestones = tuple(self.lr_milestones)
        errors = []

        def check(ok: bool, msg: str) -> None:
            if not ok:
                errors.append(msg)

        check(len(self.categories) > 0, "categories must not be empty")
        check(
            len(set(self.categories)) == len(self.categories),
            f"categories repeat: {self.categories}",
        )
        check(
            self.data_source in DATA_SOURCES,
            f"data_source must be one of {DATA_SOURCES}, got {self.data_source!r}",
        )
        for name in ("num_train", "num_val", "num_test", "synthetic_images"):
            check(getattr(self, name) >= 1, f"{name} must be >= 1, got {getattr(self, name)}")
        check(
            self.synthetic_size >= 32, f"synthetic_size must be >= 32 px, got {self.synthetic_size}"
        )
        check(
            0.0 <= self.synthetic_heavy_share <= 1.0,
            f"synthetic_heavy_share must be in [0, 1], got {self.synthetic_heavy_share}",
        )
        check(self.min_box_size >= 0, f"min_box_size must be >= 0, got {self.min_box_size}")
        check(
            0.0 <= self.aug_strength <= 2.0,
            f"aug_strength must be in [0, 2], got {self.aug_strength}",
        )
        check(0.0 <= self.hflip_prob <= 1.0, f"hflip_prob must be in [0, 1], got {self.hflip_prob}")
        check(self.arch in ARCHS, f"arch must be one of {ARCHS}, got {self.arch!r}")
        check(self.norm in NORMS, f"norm must be one of {NORMS}, got {self.norm!r}")
        check(
            self.norm != "gn"
            or self.arch == "mask2former"  # norm is Mask R-CNN's; Mask2Former ignores it
            or (self.weights == "none" and self.arch == "v1"),
            f"norm 'gn' builds a v1 Mask R-CNN from scratch: it needs weights 'none' and arch 'v1' "
            f"(torchvision's trained weights use BatchNorm), got weights {self.weights!r}, arch {self.arch!r}",
        )
        check(
            self.weights in WEIGHT_CHOICES or self.weights.endswith((".pth", ".pt")),
            f"weights must be one of {WEIGHT_CHOICES} or a path ending in .pth/.pt, got {self.weights!r}",
        )
        check(
            self.m2f_config in M2F_PRESETS,
            f"m2f_config must be one of {M2F_PRESETS}, got {self.m2f_config!r}",
        )
        check(
            self.compare_epochs is None or self.compare_epochs >= 1,
            f"compare_epochs must be None or >= 1, got {self.compare_epochs}",
        )
        check(
            self.arch != "mask2former" or self.weights != "imagenet",
            "weights='imagenet' is a torchvision ResNet-50 file; Mask2Former takes 'coco', 'none' or a .pt/.pth file",
        )
        check(
            self.arch != "mask2former"
            or self.weights != "coco"
            or self.m2f_pretrained != M2F_MODEL_ID
            or self.m2f_config == "swin-tiny",
            f"{M2F_MODEL_ID} fits m2f_config='swin-tiny' only, got {self.m2f_config!r}; for the "
            "'tiny' preset point m2f_pretrained at a folder of weights that fit it",
        )
        check(
            0 <= self.trainable_backbone_layers <= 5,
            f"trainable_backbone_layers must be in [0, 5], got {self.trainable_backbone_layers}",
        )
        check(
            32 <= self.min_size <= self.max_size,
            f"need 32 <= min_size <= max_size, got {self.min_size}, {self.max_size}",
        )
        for name in (
            "rpn_pre_nms_top_n_train",
            "rpn_post_nms_top_n_train",
            "rpn_pre_nms_top_n_test",
            "rpn_post_nms_top_n_test",
            "box_batch_size_per_image",
            "detections_per_img",
        ):
            check(getattr(self, name) >= 1, f"{name} must be >= 1, got {getattr(self, name)}")
        check(0.0 < self.lr <= 1.0, f"lr must be in (0, 1], got {self.lr}")
        check(0.0 <= self.momentum < 1.0, f"momentum must be in [0, 1), got {self.momentum}")
        check(self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}")
        check(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")
        check(self.num_epochs >= 1, f"num_epochs must be >= 1, got {self.num_epochs}")
        check(
            self.max_iters is None or self.max_iters >= 1,
            f"max_iters must be None or >= 1, got {self.max_iters}",
        )
        check(self.warmup_iters >= 0, f"warmup_iters must be >= 0, got {self.warmup_iters}")
        check(
            0.0 < self.warmup_factor <= 1.0,
            f"warmup_factor must be in (0, 1], got {self.warmup_factor}",
        )
        check(
            self.lr_schedule in LR_SCHEDULES,
            f"lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}",
        )
        check(0.0 < self.lr_gamma <= 1.0, f"lr_gamma must be in (0, 1], got {self.lr_gamma}")
        check(
            all(0.0 < m < 1.0 for m in self.lr_milestones)
            and list(self.lr_milestones) == sorted(self.lr_milestones),
            f"lr_milestones must be increasing fractions of the run in (0, 1), got {self.lr_milestones}",
        )
        check(
            0.0 <= self.box_score_thresh <= 1.0,
            f"box_score_thresh must be in [0, 1], got {self.box_score_thresh}",
        )
        check(
            0.0 < self.box_nms_thresh <= 1.0,
            f"box_nms_thresh must be in (0, 1], got {self.box_nms_thresh}",
        )
        check(
            self.postprocess in POSTPROCESS_METHODS,
            f"postprocess must be one of {POSTPROCESS_METHODS}, got {self.postprocess!r}",
        )
        for name in ("soft_nms_sigma", "matrix_nms_sigma"):
            check(getattr(self, name) > 0, f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("soft_nms_thresh", "mask_nms_thresh"):
            check(
                0.0 <= getattr(self, name) <= 1.0,
                f"{name} must be in [0, 1], got {getattr(self, name)}",
            )
        check(
            self.postprocess_pool >= self.detections_per_img,
            f"postprocess_pool ({self.postprocess_pool}) must be >= detections_per_img "
            f"({self.detections_per_img})",
        )
        check(
            self.grad_clip_norm is None or self.grad_clip_norm > 0,
            f"grad_clip_norm must be None or > 0, got {self.grad_clip_norm}",
        )
        check(
            self.device in DEVICES or self.device.startswith("cuda:"),
            f"device must be one of {DEVICES} or 'cuda:N', got {self.device!r}",
        )
        check(self.num_workers >= 0, f"num_workers must be >= 0, got {self.num_workers}")
        check(self.eval_interval >= 1, f"eval_interval must be >= 1, got {self.eval_interval}")
        check(self.log_interval >= 1, f"log_interval must be >= 1, got {self.log_interval}")
        check(
            0.0 <= self.score_thresh <= 1.0,
            f"score_thresh must be in [0, 1], got {self.score_thresh}",
        )
        if errors:
            raise ValueError("invalid TrainConfig: " + "; ".join(errors))

    # --- profiles ---------------------------------------------------------------------
    @classmethod
    def seed_recipe(cls, **overrides: Any) -> TrainConfig:
        """The ``seed`` profile, the seed experiment: real COCO subset, COCO-trained weights, SGD lr 0.001, 10 epochs."""
        return cls(**overrides)

    @classmethod
    def demo(cls, **overrides: Any) -> TrainConfig:
        """The offline demo (``make demo``): learns the synthetic shapes from scratch on 2 CPU cores.

        Synthetic data at 128 px, no pretrained weights, GroupNorm in the ResNet and FPN (with
        BatchNorm and batches of 2, mask AP50 stayed near 0.4), proposal and ROI counts cut so a
        step costs under a second on 2 CPU cores, and a cosine schedule from lr 0.02 after 50
        warmup steps: a constant lr 0.02 collapsed, lr 0.04 barely learned. The learning curves
        behind these choices are in docs/benchmarks.md. Synthetic shapes say nothing about COCO.
        """
        values: dict[str, Any] = dict(
            data_source="synthetic",
            num_train=48,
            num_val=24,
            num_test=16,
            synthetic_images=64,  # about 85% of synthetic images qualify: 54 for 48 train
            synthetic_size=128,
            synthetic_heavy_share=0.25,
            weights="none",
            norm="gn",
            m2f_config="tiny",
            trainable_backbone_layers=5,
            min_size=128,
            max_size=128,
            rpn_pre_nms_top_n_train=200,
            rpn_post_nms_top_n_train=100,
            rpn_pre_nms_top_n_test=200,
            rpn_post_nms_top_n_test=100,
            box_batch_size_per_image=64,
            detections_per_img=50,
            # On the CPU at 128 px the mask head dominates inference, and the pool's masks are
            # all predicted: a pool the size of the output keeps the study's cost at inference's.
            postprocess_pool=50,
            lr=0.02,
            lr_schedule="cosine",
            num_epochs=16,
            warmup_iters=50,
            device="cpu",
            amp=False,
            num_workers=0,
            eval_interval=4,
            log_interval=4,
            score_thresh=0.5,
        )
        values.update(overrides)
        return cls(**values)

    @classmethod
    def smoke(cls, **overrides: Any) -> TrainConfig:
        """The demo cut to what CI can afford: 24 training images, 144 steps, about 2 minutes on 2 CPU cores.

        Enough to learn the synthetic shapes a little (the notebooks' tests require mask AP50
        of at least 0.15 on synthetic val; at 96 steps it stayed near 0.1), not to show a good
        model: use ``demo`` for that.
        """
        values: dict[str, Any] = dict(
            num_train=24,
            num_val=12,
            num_test=8,
            synthetic_images=32,  # 27 qualify for 24 train
            num_epochs=12,
            warmup_iters=20,
            eval_interval=6,
            log_interval=1,
            compare_epochs=2,
        )
        values.update(overrides)
        return cls.demo(**values)

    @classmethod
    def from_profile(cls, profile: str, **overrides: Any) -> TrainConfig:
        """``seed``, ``demo`` or ``smoke``; raises ValueError naming the valid profiles otherwise."""
        if profile not in PROFILES:
            raise ValueError(f"unknown profile {profile!r}; choose one of {PROFILES}")
        make = {"seed": cls.seed_recipe, "demo": cls.demo, "smoke": cls.smoke}[profile]
        return make(**overrides)

    # --- serialisation ----------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        """k + 1: the categories plus background."""
        return len(self.categories) + 1

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (tuples become lists)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """Inverse of ``to_dict``; unknown keys raise ValueError naming them."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown TrainConfig keys {unknown}; valid keys: {sorted(known)}")
        return cls(**values)

    def replace(self, **changes: Any) -> TrainConfig:
        """A validated copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    def save(self, path: str | Path) -> Path:
        """Write the config as indented JSON, atomically."""
        return write_json_atomic(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> TrainConfig:
        """Read a config written by ``save``.

        Raises:
            ValueError: the file is not valid JSON or holds unknown keys (names the file).
        """
        path = Path(path)
        try:
            values = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from e
        try:
            return cls.from_dict(values)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{path}: {e}") from e


def _is(value: Any, kind: str) -> bool:
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "float":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "str":
        return isinstance(value, str)
    if kind.startswith("tuple["):  # tuple[X, ...]: a list or tuple of X, never a bare string
        item = kind[len("tuple[") :].split(",")[0]
        return isinstance(value, (list, tuple)) and all(_is(v, item) for v in value)
    raise TypeError(f"no check for type {kind!r}")


def _check_types(cfg: TrainConfig) -> None:
    """Raise ValueError naming every field whose value has the wrong type (JSON, CLI, widgets)."""
    errors = []
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        kinds = [k.strip() for k in str(f.type).split("|")]
        if value is None and "None" in kinds:
            continue
        if not any(_is(value, k) for k in kinds if k != "None"):
            errors.append(f"{f.name} must be {f.type}, got {value!r}")
        elif "float" in kinds and isinstance(value, int):
            object.__setattr__(cfg, f.name, float(value))
    if errors:
        raise ValueError("invalid TrainConfig: " + "; ".join(errors))


def parse_overrides(items: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """``["lr=0.002", "num_epochs=3"]`` -> ``{"lr": 0.002, "num_epochs": 3}``.

    Each value is read as JSON where it parses (numbers, true/false, null, lists) and as a
    plain string otherwise, so ``weights=none`` and ``categories=["dog","cake"]`` both work.
    Types and ranges are checked when the values reach ``TrainConfig``.

    Raises:
        ValueError: an item without ``=``, or a name that is not a TrainConfig field (the
            message lists the valid names).
    """
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    values: dict[str, Any] = {}
    for item in items:
        name, sep, raw = item.partition("=")
        name = name.strip().replace("-", "_")
        if not sep:
            raise ValueError(f"--set {item!r}: expected NAME=VALUE, for example lr=0.002")
        if name not in known:
            raise ValueError(
                f"--set {item!r}: {name!r} is not a TrainConfig field; valid: {sorted(known)}"
            )
        try:
            values[name] = json.loads(raw)
        except json.JSONDecodeError:
            values[name] = raw
    return values


#: Environment variable through which ``python -m seglib run --set`` hands overrides to the
#: notebooks' kernels: a JSON object of TrainConfig fields.
OVERRIDES_ENV = "SEGLIB_SET"


def env_overrides() -> dict[str, Any]:
    """The TrainConfig overrides in ``$SEGLIB_SET`` (a JSON object), or ``{}`` when unset.

    Raises:
        ValueError: the variable is not a JSON object of known field names.
    """
    raw = os.environ.get(OVERRIDES_ENV, "").strip()
    if not raw:
        return {}
    try:
        values = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ValueError(f"${OVERRIDES_ENV} is not valid JSON ({e}): {raw!r}") from e
    if not isinstance(values, dict):
        raise ValueError(
            f"${OVERRIDES_ENV} must be a JSON object of TrainConfig fields, got {raw!r}"
        )
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"${OVERRIDES_ENV} names unknown TrainConfig fields {unknown}")
    return values


def slider_fields() -> dict[str, dict[str, Any]]:
    """Field name -> slider range, for every TrainConfig field a notebook slider edits."""
    return {
        f.name: f.metadata["slider"]
        for f in dataclasses.fields(TrainConfig)
        if "slider" in f.metadata
    }
