"""Every default of a seglib run, written once.

``TrainConfig`` is the single source of hyperparameters. Each field carries a comment (unit, and
why that value) and, where a notebook slider edits it, the slider's range in
``metadata["slider"]``. Profiles are named constructors (``seed_recipe()``, ``demo()``,
``smoke()``); their values live in ``seglib.core.profiles``. Each field's rule (range, choices) is
one line of ``_field_rules``, checked by ``seglib.core.rules``; the checks that relate fields are
short ``TrainConfig`` methods.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from seglib.core import rules
from seglib.core.atomic import write_json_atomic
from seglib.core.profiles import DEMO, PROFILES, SMOKE_FROM_DEMO

#: The four categories of the project, in the order that defines label ids 1..4.
DEFAULT_CATEGORIES: tuple[str, ...] = ("cake", "car", "dog", "person")
#: Their ids in COCO 2017 (non-contiguous; background is 0 in the model, not in COCO).
COCO_IDS: dict[str, int] = {"person": 1, "car": 3, "dog": 18, "cake": 61}

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
#: bf16 autocast in training on the CPU: "auto" where the CPU computes bf16 natively (AMX or
#: AVX512-BF16; measured in docs/benchmarks.md), "bf16" always, "off" never.
CPU_AMP_CHOICES = ("auto", "bf16", "off")
#: "sgd" (with momentum; the seed recipe's) or "adamw" (decoupled weight decay, none on norms
#: and biases; the demo's: it learns the shapes from scratch in half the steps).
OPTIMIZERS = ("sgd", "adamw")
#: How the optimizer updates the weights (torch's implementations of the same update): "auto"
#: is "fused" on the CPU and CUDA (one kernel over all parameters: SGD's step 3x faster than
#: the for-loop on a 2-core CPU, docs/benchmarks.md), else torch's; the others force those.
OPTIMIZER_IMPLS = ("auto", "fused", "foreach", "for-loop")
DATA_SOURCES = ("coco", "synthetic")
#: Suppression methods of ``seglib.models.postprocess`` ("nms" is torchvision's own).
POSTPROCESS_METHODS = ("nms", "soft-nms-gaussian", "soft-nms-linear", "matrix-nms", "mask-nms")
MATRIX_NMS_KERNELS = ("gaussian", "linear")
#: "auto": seglib.models.roi_align's sparse product in CPU training; "torchvision": its op always.
ROI_ALIGN_CHOICES = ("auto", "torchvision")
#: Scale jitter's factor range per choice (seglib.data.scale_jitter; docs/augmentation.md).
SCALE_JITTERS = {"none": None, "standard": (0.8, 1.25), "large": (0.1, 2.0)}


def postprocess_applies(arch: str, postprocess: str = "nms", tta_hflip: bool = False) -> bool:
    """Whether a model of ``arch`` can take the suppression rule ``postprocess`` and flip TTA:
    ``seglib.models.postprocess``'s rules and flip TTA replace the box NMS inside torchvision's
    Mask R-CNN; Mask2Former suppresses nothing, so only "nms" without flip applies to it."""
    return arch != "mask2former" or (postprocess == "nms" and not tta_hflip)


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
    # Resize by a factor from SCALE_JITTERS, padded/cropped back to the image's size, after the
    # crop and flip: "standard" 0.8-1.25, "large" (LSJ) 0.1-2.0; "none" is the seed recipe.
    scale_jitter: str = "none"
    # Copy-Paste (Ghiasi et al. 2021): chance per training image that objects of another are
    # pasted on it before the flip and crop; 0 (off) is the seed recipe. docs/augmentation.md.
    copy_paste_prob: float = field(default=0.0, metadata=_slider(0.0, 1.0, 0.05))
    # Copy-Paste: most objects pasted at once (1 to this many of the source image's, at random).
    copy_paste_max_instances: int = field(default=10, metadata=_slider(1, 50, 1))
    # Copy-Paste: (lo, hi) range of the pasted objects' resize factor; the paper's LSJ range.
    copy_paste_scale: tuple[float, float] = (0.1, 2.0)

    # --- model ------------------------------------------------------------------------
    # torchvision Mask R-CNN R50-FPN: "v1" (maskrcnn_resnet50_fpn) or "v2" (improved recipe);
    # "mask2former": Hugging Face Mask2Former (optional detr extra), same loop and evaluator.
    arch: str = "v1"
    # "coco" (COCO-trained, the seed), "imagenet" (backbone only), "none", or a .pth path.
    weights: str = "coco"
    # Mask2Former only: architecture preset (M2F_PRESETS); "swin-tiny" fits the COCO weights.
    m2f_config: str = "swin-tiny"
    # Mask2Former only: the HF id or folder weights="coco" loads offline; CC BY-NC 4.0.
    m2f_pretrained: str = M2F_MODEL_ID
    # Notebook 07: epochs of every model in the comparison (None: num_epochs; 03's run reused).
    compare_epochs: int | None = None
    # Notebook 08's studies (and `study augmentation|data`): seeds per trained contender (seed,
    # seed + 1, ...), epochs of each (None: num_epochs; the data curve scales them per size to
    # about the same steps), and the data curve's training-set sizes (with the same val, test).
    study_seeds: int = field(default=3, metadata=_slider(1, 5, 1))
    study_epochs: int | None = field(default=None, metadata=_slider(1, 50, 1))
    study_sizes: tuple[int, ...] = (75, 150, 300, 600, 1200)
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
    # RoIAlign in the box and mask heads: samples per bin side (2 is torchvision's and its COCO
    # weights'; 1 is cheaper), which op pools (ROI_ALIGN_CHOICES; docs/benchmarks.md), and the
    # mask head's grid side (torchvision's 14; its masks come out twice as fine).
    roi_sampling_ratio: int = 2
    roi_align: str = "auto"
    mask_pool_size: int = 14
    # Inference: detections scoring below this are dropped inside the model (torchvision's 0.05).
    box_score_thresh: float = field(default=0.05, metadata=_slider(0.0, 1.0, 0.01))
    # Inference: IoU above which per-class box NMS suppresses the lower-scored box.
    box_nms_thresh: float = field(default=0.5, metadata=_slider(0.1, 1.0, 0.05))
    # Inference: detections kept per image, best first (COCO's AP counts up to 100).
    detections_per_img: int = field(default=100, metadata=_slider(1, 300, 1))
    # Inference: how overlapping detections are suppressed (seglib.models.postprocess): "nms" is
    # torchvision's box NMS at box_nms_thresh, the seed; the others rescore or use masks.
    postprocess: str = "nms"
    # Soft-NMS Gaussian: scores decay by exp(-IoU²/sigma), so a LARGER sigma suppresses LESS;
    # 0.5 in Bodla et al. 2017.
    soft_nms_sigma: float = 0.5
    # Soft-NMS linear: scores of boxes with IoU above this decay by (1 - IoU); 0.3 in the paper.
    soft_nms_thresh: float = 0.3
    # Soft-NMS: candidates rescored below this are dropped (0.001 in Bodla et al.'s code).
    soft_nms_score_floor: float = 0.001
    # Matrix NMS decay per higher same-class mask: "gaussian" exp(-sigma * IoU²) or "linear" (1 - IoU).
    matrix_nms_kernel: str = "gaussian"
    # Matrix NMS Gaussian: multiplies IoU² (SOLOv2's code; the paper divides), so a LARGER
    # sigma suppresses MORE; 2.0 as in SOLOv2.
    matrix_nms_sigma: float = 2.0
    # Matrix NMS: detections whose decayed score falls below this are dropped (SOLOv2's 0.05).
    matrix_nms_score_floor: float = 0.05
    # Mask NMS: mask IoU above which the lower-scored detection of a class is dropped.
    mask_nms_thresh: float = 0.5
    # Candidates per image taken with the model's box NMS off, for every variant but plain
    # "nms"; 3x detections_per_img leaves room for what suppression removes.
    postprocess_pool: int = 300
    # Horizontal-flip test-time augmentation: both views' detections merged, then suppressed.
    tta_hflip: bool = False

    # --- optimisation -----------------------------------------------------------------
    # OPTIMIZERS: "sgd" is the seed recipe's.
    optimizer: str = "sgd"
    # Learning rate for batch_size 2 (seed recipe: SGD at 0.001).
    lr: float = field(default=0.001, metadata=_slider(1e-5, 1e-1, 0.1, log=True))
    # SGD's momentum (AdamW keeps torch's betas, 0.9 and 0.999).
    momentum: float = 0.9
    # SGD: L2 penalty on every parameter, torchvision detection reference value. AdamW:
    # decoupled decay of the weights of convolutions and linear layers only.
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
    # The optimizer's implementation (OPTIMIZER_IMPLS): the same update, faster or slower.
    optimizer_impl: str = "auto"

    # --- runtime ----------------------------------------------------------------------
    # "auto" picks CUDA when present and warns loudly when it falls back to the CPU.
    device: str = "auto"
    # Mixed precision on CUDA (bf16 where supported, else fp16 + GradScaler); not the CPU's.
    amp: bool = True
    # bf16 autocast of training steps on the CPU (CPU_AMP_CHOICES).
    cpu_amp: str = "auto"
    # bf16 in prediction on the CPU (CPU_AMP_CHOICES): the backbone and heads' convolutions,
    # with boxes, scores and masks in fp32 (seglib.models.precision). CUDA predicts in fp32.
    cpu_amp_eval: str = "auto"
    # DataLoader worker processes; 0 loads in the main process (safe in notebooks).
    num_workers: int = 2
    # Group images of similar aspect ratio into batches (less padding, faster on GPU).
    aspect_ratio_grouping: bool = True
    # Seeds python, numpy and torch; also the subset sampling seed.
    seed: int = 0
    # Validate (and update best.pt) every this many epochs.
    eval_interval: int = 1
    # Save last.pt (to resume from) every this many epochs, and always when the run ends.
    checkpoint_interval: int = 1
    # Iterations between host syncs that report losses to the callback and metrics.jsonl.
    log_interval: int = 20
    # Predictions below this score are ignored by IoU measures, overlays and the confusion matrix.
    score_thresh: float = field(default=0.5, metadata=_slider(0.0, 1.0, 0.05))

    def __post_init__(self) -> None:
        rules.check_types(self)  # first: the rules below compare values of the declared types
        # JSON round-trips give lists; keep tuples so configs compare equal.
        for name in ("categories", "lr_milestones", "study_sizes"):
            setattr(self, name, tuple(getattr(self, name)))
        self.copy_paste_scale = tuple(float(v) for v in self.copy_paste_scale)
        cross_field = (
            self._categories_problem(),
            self._norm_problem(),
            self._m2f_weights_problem(),
            self._m2f_preset_problem(),
            self._size_problem(),
            self._pool_problem(),
            self._m2f_postprocess_problem(),
        )
        problems = rules.problems(self, _field_rules()) + [p for p in cross_field if p]
        if problems:
            raise ValueError("invalid TrainConfig: " + "; ".join(problems))

    # --- checks that relate fields (None: fine; else the message) ----------------------
    def _categories_problem(self) -> str | None:
        if not self.categories:
            return "categories must not be empty"
        if len(set(self.categories)) != len(self.categories):
            return f"categories repeat: {self.categories}"
        return None

    def _norm_problem(self) -> str | None:
        # norm is Mask R-CNN's; Mask2Former ignores it.
        from_scratch_v1 = self.weights == "none" and self.arch == "v1"
        if self.norm != "gn" or self.arch == "mask2former" or from_scratch_v1:
            return None
        return (
            f"norm 'gn' builds a v1 Mask R-CNN from scratch: it needs weights 'none' and arch 'v1' "
            f"(torchvision's trained weights use BatchNorm), got weights {self.weights!r}, arch {self.arch!r}"
        )

    def _m2f_weights_problem(self) -> str | None:
        if self.arch == "mask2former" and self.weights == "imagenet":
            return "weights='imagenet' is a torchvision ResNet-50 file; Mask2Former takes 'coco', 'none' or a .pt/.pth file"
        return None

    def _m2f_preset_problem(self) -> str | None:
        loads_published = (
            self.arch == "mask2former"
            and self.weights == "coco"
            and self.m2f_pretrained == M2F_MODEL_ID
        )
        if not loads_published or self.m2f_config == "swin-tiny":
            return None
        return (
            f"{M2F_MODEL_ID} fits m2f_config='swin-tiny' only, got {self.m2f_config!r}; for the "
            "'tiny' preset point m2f_pretrained at a folder of weights that fit it"
        )

    def _size_problem(self) -> str | None:
        if 32 <= self.min_size <= self.max_size:
            return None
        return f"need 32 <= min_size <= max_size, got {self.min_size}, {self.max_size}"

    def _pool_problem(self) -> str | None:
        if self.postprocess_pool >= self.detections_per_img:
            return None
        return (
            f"postprocess_pool ({self.postprocess_pool}) must be >= detections_per_img "
            f"({self.detections_per_img})"
        )

    def _m2f_postprocess_problem(self) -> str | None:
        if postprocess_applies(self.arch, self.postprocess, self.tta_hflip):
            return None
        return (
            f"postprocess {self.postprocess!r} and tta_hflip {self.tta_hflip} replace Mask "
            "R-CNN's box NMS; arch 'mask2former' has no NMS to replace (keep 'nms' and False)"
        )

    # --- profiles (values and their reasons: seglib.core.profiles) ---------------------------
    @classmethod
    def seed_recipe(cls, **overrides: Any) -> TrainConfig:
        """The ``seed`` profile, the seed experiment: real COCO subset, COCO-trained weights, SGD lr 0.001, 10 epochs."""
        return cls(**overrides)

    @classmethod
    def demo(cls, **overrides: Any) -> TrainConfig:
        """The offline demo (``make demo``): learns the synthetic shapes from scratch on 2 CPU
        cores (values and reasons: ``seglib.core.profiles.DEMO``)."""
        return cls(**{**DEMO, **overrides})

    @classmethod
    def smoke(cls, **overrides: Any) -> TrainConfig:
        """The demo cut to what CI affords, to check the plumbing, not the results (the cuts,
        and why: ``seglib.core.profiles.SMOKE_FROM_DEMO``)."""
        return cls.demo(**{**SMOKE_FROM_DEMO, **overrides})

    @classmethod
    def from_profile(cls, profile: str, **overrides: Any) -> TrainConfig:
        """``seed``, ``demo`` or ``smoke``; raises ValueError naming the valid profiles otherwise."""
        if profile not in PROFILES:
            raise ValueError(f"unknown profile {profile!r}; choose one of {PROFILES}")
        return {"seed": cls.seed_recipe, "demo": cls.demo, "smoke": cls.smoke}[profile](**overrides)

    # --- serialisation ----------------------------------------------------------------
    num_classes = property(lambda self: len(self.categories) + 1, doc="k + 1: with background")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (tuples become lists)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """Inverse of ``to_dict``; unknown keys raise ValueError naming them."""
        known = {f.name for f in dataclasses.fields(cls)}
        if unknown := sorted(set(values) - known):
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
        """Read a config written by ``save``; ValueError naming the file if it is not valid
        JSON or holds unknown keys."""
        path = Path(path)
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from e
        except (TypeError, ValueError) as e:
            raise ValueError(f"{path}: {e}") from e


def _field_rules() -> dict[str, rules.Rule]:
    """Each field's own rule, in field order (types are checked before, from the annotations).

    Built at each check, so the choice tuples are read as they are then (tests extend ARCHS).
    """
    return {
        "data_source": rules.OneOf(DATA_SOURCES),
        "num_train": rules.COUNT,
        "num_val": rules.COUNT,
        "num_test": rules.COUNT,
        "synthetic_images": rules.COUNT,
        "synthetic_size": rules.Range(lo=32, unit=" px"),
        "synthetic_heavy_share": rules.FRACTION,
        "min_box_size": rules.NON_NEGATIVE,
        "aug_strength": rules.Range(0, 2),
        "hflip_prob": rules.FRACTION,
        "scale_jitter": rules.OneOf(tuple(SCALE_JITTERS)),
        "copy_paste_prob": rules.FRACTION,
        "copy_paste_max_instances": rules.COUNT,
        "copy_paste_scale": rules.Satisfies(
            lambda v: len(v) == 2 and 0 < v[0] <= v[1], "a (lo, hi) range with 0 < lo <= hi"
        ),
        "arch": rules.OneOf(ARCHS),
        "weights": rules.OneOf(
            WEIGHT_CHOICES, "a path ending in .pth/.pt", lambda w: w.endswith((".pth", ".pt"))
        ),
        "m2f_config": rules.OneOf(M2F_PRESETS),
        "compare_epochs": rules.COUNT,
        "study_seeds": rules.COUNT,
        "study_epochs": rules.COUNT,
        "study_sizes": rules.Satisfies(
            lambda v: v and v[0] >= 1 and list(v) == sorted(set(v)),
            "increasing sizes of at least 1",
        ),
        "trainable_backbone_layers": rules.Range(0, 5),
        "norm": rules.OneOf(NORMS),
        "rpn_pre_nms_top_n_train": rules.COUNT,
        "rpn_post_nms_top_n_train": rules.COUNT,
        "rpn_pre_nms_top_n_test": rules.COUNT,
        "rpn_post_nms_top_n_test": rules.COUNT,
        "box_batch_size_per_image": rules.COUNT,
        "roi_sampling_ratio": rules.COUNT,
        "roi_align": rules.OneOf(ROI_ALIGN_CHOICES),
        "mask_pool_size": rules.COUNT,
        "box_score_thresh": rules.FRACTION,
        "box_nms_thresh": rules.POSITIVE_FRACTION,
        "detections_per_img": rules.COUNT,
        "postprocess": rules.OneOf(POSTPROCESS_METHODS),
        "soft_nms_sigma": rules.POSITIVE,
        "soft_nms_thresh": rules.FRACTION,
        "soft_nms_score_floor": rules.FRACTION,
        "matrix_nms_kernel": rules.OneOf(MATRIX_NMS_KERNELS),
        "matrix_nms_sigma": rules.POSITIVE,
        "matrix_nms_score_floor": rules.FRACTION,
        "mask_nms_thresh": rules.FRACTION,
        "lr": rules.POSITIVE_FRACTION,
        "optimizer": rules.OneOf(OPTIMIZERS),
        "momentum": rules.Range(0, 1, hi_open=True),
        "weight_decay": rules.NON_NEGATIVE,
        "batch_size": rules.COUNT,
        "num_epochs": rules.COUNT,
        "max_iters": rules.COUNT,
        "warmup_iters": rules.NON_NEGATIVE,
        "warmup_factor": rules.POSITIVE_FRACTION,
        "lr_schedule": rules.OneOf(LR_SCHEDULES),
        "lr_milestones": rules.INCREASING_FRACTIONS,
        "lr_gamma": rules.POSITIVE_FRACTION,
        "grad_clip_norm": rules.POSITIVE,
        "optimizer_impl": rules.OneOf(OPTIMIZER_IMPLS),
        "device": rules.OneOf(DEVICES, "'cuda:N'", lambda d: d.startswith("cuda:")),
        "cpu_amp": rules.OneOf(CPU_AMP_CHOICES),
        "cpu_amp_eval": rules.OneOf(CPU_AMP_CHOICES),
        "num_workers": rules.NON_NEGATIVE,
        "eval_interval": rules.COUNT,
        "checkpoint_interval": rules.COUNT,
        "log_interval": rules.COUNT,
        "score_thresh": rules.FRACTION,
    }
