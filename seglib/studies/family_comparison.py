"""Model families side by side: the same split, the same loop, the same evaluator (notebook 07).

``plan_comparison`` picks the contenders a config can run here and now: Mask R-CNN v1 and
v2 and Mask2Former, trained, plus the zero-shot COCO models when their weights are cached.
A comparison needs two of them: with one (the base install offline, where Mask2Former needs
the ``detr`` extra and only Mask R-CNN v1 can run) it plans nothing, and says why.
``compare_models`` is one use of the study mechanism (``seglib.studies.study``): every
contender is a change of ``arch`` (and what goes with it) to one config, so each trains with
``trainer.train`` on the same data, augmentation, optimizer, schedule and number of
iterations, and ``study.evaluate_model`` scores each on the same split: box and mask AP
overall and per class, AP per occlusion bucket, parameters, training and inference time per
image and, on CUDA, peak memory. ``comparison_tables`` lays the
result out as text; ``ap_series``, ``occlusion_series`` and ``read_contender_results`` feed ``viz``
(they live in ``seglib.studies.comparison_report``).

What an equal budget shows, and what it does not: on the offline profiles both families
start from random weights and learn synthetic shapes for a few dozen iterations, and
Mask2Former is a ~1 M-parameter "tiny" random configuration, not the Swin-T COCO model. The
numbers then check that both families run through one loop and one evaluator; they say
nothing about which family is better on COCO. That needs the seed profile, the COCO weights
of both, and a GPU.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from seglib.core.atomic import write_json_atomic
from seglib.core.config import TrainConfig
from seglib.data.dataset import open_split
from seglib.engine.trainer import Callback
from seglib.evaluation.prediction import check_postprocess
from seglib.models import mask2former_weights
from seglib.models.weights import weights_file
from seglib.studies import study

#: Display names of the architectures.
ARCH_NAMES = {"v1": "mask-rcnn-v1", "v2": "mask-rcnn-v2", "mask2former": "mask2former"}
TINY_NOTE = (
    "TINY RANDOM CONFIG: Mask2Former here is the ~1 M-parameter 'tiny' preset trained from "
    "scratch, not the Swin-T COCO architecture or weights"
)


@dataclass(frozen=True)
class Contender:
    """One row of the comparison.

    Attributes:
        name: display name, also the folder of its run ("mask2former", "zero-shot-mask-rcnn-v1").
        cfg: the config it is built (and, when ``train``, trained) from.
        train: False for a zero-shot COCO baseline, evaluated as it is.
        note: what the reader must know about this row (stand-ins, tiny configs).
    """

    name: str
    cfg: TrainConfig
    train: bool = True
    note: str = ""


@dataclass
class Plan:
    """``plan_comparison``'s answer: the contenders, and why others were left out.

    ``needs_detr_extra`` is True when Mask2Former was left out because ``transformers`` (the
    optional ``detr`` extra) is not installed.
    """

    contenders: list[Contender]
    skipped: list[str] = field(default_factory=list)
    needs_detr_extra: bool = False


def _maskrcnn_weights_cached(kind: str, arch: str) -> bool:

    return weights_file(kind, arch).is_file()


def _mask2former_config(cfg: TrainConfig, changes: Mapping[str, Any]) -> TrainConfig | str:
    """The trained Mask2Former contender's config, or why it is left out.

    ``cfg.weights`` "coco" becomes its own COCO checkpoint (Swin-T); anything else a random
    init of ``cfg.m2f_config``.
    """

    try:
        mask2former_weights.require_transformers()
    except ImportError as e:
        return str(e)
    weights = "coco" if cfg.weights == "coco" else "none"
    preset = "swin-tiny" if weights == "coco" else cfg.m2f_config
    try:
        c = cfg.replace(arch="mask2former", weights=weights, m2f_config=preset, **changes)
        check_postprocess(c.arch, c.postprocess, c.tta_hflip)
    except ValueError as e:
        return str(e)
    if weights == "coco" and not mask2former_weights.pretrained_available(c.m2f_pretrained):
        return (
            f"{c.m2f_pretrained} is not in the Hugging Face cache "
            "(`python -m seglib fetch-weights mask2former`)"
        )
    return c


def _maskrcnn_config(cfg: TrainConfig, arch: str, changes: Mapping[str, Any]) -> TrainConfig | str:
    """The trained Mask R-CNN contender's config (``arch`` "v1" or "v2"), or why it is left out."""
    if arch == "v2" and cfg.weights != "coco":
        return (
            f"compared from its COCO weights only (this profile's weights are "
            f"{cfg.weights!r}; the offline recipe trains v1 from scratch)"
        )
    try:
        c = cfg.replace(arch=arch, **changes)
    except ValueError as e:
        return str(e)
    if c.weights in ("coco", "imagenet") and not _maskrcnn_weights_cached(c.weights, arch):
        return (
            f"its {c.weights} weights are not cached "
            f"(`python -m seglib fetch-weights {c.weights} --arch {arch}`)"
        )
    return c


def _trained_contender(cfg: TrainConfig, arch: str, changes: Mapping[str, Any]) -> Contender | str:
    """``cfg`` trained as ``arch`` with ``changes``, or why it is left out (a sentence)."""
    name = ARCH_NAMES[arch]
    if arch == "mask2former":
        c = _mask2former_config(cfg, changes)
    else:
        c = _maskrcnn_config(cfg, arch, changes)
    if isinstance(c, str):
        return f"{name}: {c}"
    note = f"overrides {dict(changes)}" if changes else ""
    if c.arch == "mask2former" and c.m2f_config == "tiny":
        note = "; ".join(filter(None, [TINY_NOTE, note]))
    return Contender(name, c, True, note)


def _zero_shot_contender(cfg: TrainConfig, trained: Contender) -> Contender | str:
    """The unmodified COCO model of ``trained``'s arch, or why it is left out (a sentence)."""

    arch = trained.cfg.arch
    name = f"zero-shot-{trained.name}"
    if arch == "mask2former" and mask2former_weights.pretrained_available(
        trained.cfg.m2f_pretrained
    ):
        zs = cfg.replace(arch=arch, weights="coco", m2f_config="swin-tiny")
        return Contender(name, zs, False, "COCO head restricted to the classes")
    if arch != "mask2former" and _maskrcnn_weights_cached("coco", arch):
        return Contender(name, cfg.replace(arch=arch), False, "COCO model")
    return f"{name}: its COCO weights are not cached"


def plan_comparison(
    cfg: TrainConfig,
    archs: Sequence[str] = ("v1", "v2", "mask2former"),
    *,
    zero_shot: bool = True,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    min_contenders: int = 2,
) -> Plan:
    """The contenders ``cfg`` allows with the weights and packages present, nothing fetched.

    Every trained contender is ``cfg`` with another ``arch``, so the budget and recipe are the
    same. Mask2Former takes ``cfg.weights`` "coco" as its own COCO checkpoint (Swin-T) and
    anything else as a random init of ``cfg.m2f_config`` (the offline profiles' "tiny"). It
    is left out when ``cfg`` asks for post-processing (``postprocess`` other than "nms", or
    ``tta_hflip``): it has no NMS to replace.

    Args:
        archs: which of "v1", "v2", "mask2former" to consider.
        zero_shot: also the unmodified COCO models (Mask R-CNN by coco_id, Mask2Former by
            name) when their weights are cached; never stand-ins.
        overrides: per-arch field changes, e.g. ``{"mask2former": {"lr": 1e-4}}``; they
            make the budgets unequal, so the note says so.
        min_contenders: fewer contenders than this compare nothing, so none is kept (each
            goes to ``skipped`` with the reason): training one model alone for a comparison
            would spend the slow step on a table of one row.

    Returns:
        A ``Plan``: contenders in order, and a sentence per contender left out.
    """

    plan = Plan([])
    overrides = overrides or {}
    for arch in archs:
        if arch not in ARCH_NAMES:
            raise ValueError(f"arch must be one of {tuple(ARCH_NAMES)}, got {arch!r}")
        trained = _trained_contender(cfg, arch, dict(overrides.get(arch, {})))
        if isinstance(trained, str):
            plan.skipped.append(trained)
            continue
        plan.contenders.append(trained)
        if zero_shot:
            zs = _zero_shot_contender(cfg, trained)
            (plan.skipped if isinstance(zs, str) else plan.contenders).append(zs)
    if "mask2former" in archs:
        try:
            mask2former_weights.require_transformers()
        except ImportError:
            plan.needs_detr_extra = True
    if len(plan.contenders) < min_contenders:
        plan.skipped += [
            f"{c.name}: nothing to compare it with here (a comparison needs {min_contenders} "
            "contenders), so it is not trained"
            for c in plan.contenders
        ]
        plan.contenders = []
    return plan


# --- the comparison: one use of the study mechanism ------------------------------------------
def _as_study(contenders: Sequence[Contender], num_epochs: int | None) -> tuple[TrainConfig, list]:
    """The comparison as ``study.run_study``'s base config and contenders: the first trained
    contender's config is the base, and every contender is its difference from it."""
    configs = [
        c.cfg.replace(num_epochs=num_epochs) if c.train and num_epochs is not None else c.cfg
        for c in contenders
    ]
    first = next((cfg for c, cfg in zip(contenders, configs, strict=True) if c.train), configs[0])
    base = first.to_dict()
    rows = []
    for c, cfg in zip(contenders, configs, strict=True):
        if cfg.seed != first.seed:
            raise ValueError(
                f"contender {c.name!r} has seed {cfg.seed}, the others {first.seed}: the "
                "comparison trains every model from the same seed"
            )
        changes = {k: v for k, v in cfg.to_dict().items() if base[k] != v}
        rows.append(study.Contender(c.name, changes, c.note, zero_shot=not c.train))
    return first, rows


def compare_models(
    plan: Plan | Sequence[Contender],
    data_dir: str | Path,
    out_dir: str | Path,
    *,
    split: str = "test",
    num_epochs: int | None = None,
    reusable: Sequence[str | Path] = (),
    callback: Callback | None = None,
) -> dict[str, Any]:
    """Train each trained contender for the same budget, then evaluate every one on ``split``.

    A study (``study.run_study``) with one seed, the config's: every trained contender is
    trained by ``trainer.train`` for the same budget, every one is scored by
    ``study.evaluate_model``. A trained contender that one of the ``reusable`` run folders
    trained already (``finished_run_of``: the notebook 03 run of the same profile,
    typically) is not trained again: its ``last.pt`` is evaluated, and its row says so
    (``reused_from``).

    Writes ``out_dir/<name>/seed-<seed>/`` (the run: config.json, metrics.jsonl, last.pt,
    ..., and ``<split>_results.json`` with COCO's category ids, which
    ``comparison_report.read_contender_results`` reads back; a zero-shot model's results in
    ``out_dir/<name>/``), ``out_dir/study.json`` and ``out_dir/comparison.json``.

    Args:
        num_epochs: replaces every trained contender's ``num_epochs`` (the same budget;
            the schedule then spans it), e.g. ``cfg.compare_epochs``.
        callback: ``callback(event, payload)``: the engine's events and ("scored", row),
            with ``payload["contender"]`` and ``payload["seed"]`` added.

    Returns:
        ``{"split", "num_images", "categories" (the split's), "skipped", "models": {name:
        {"arch", "note", "train" (bool), "params", "iterations", "train_time_per_image" (s,
        data loading included), "train_peak_memory_mb", "time_per_image", "peak_memory_mb"
        (CUDA only, else None), "metrics" (evaluate_results), "occlusion" (occlusion_ap),
        "results" (path), and "reused_from" (a run folder) for a contender not retrained}}}``.

    Raises:
        ValueError: contenders with different seeds.
    """
    contenders = plan.contenders if isinstance(plan, Plan) else list(plan)
    skipped = list(plan.skipped) if isinstance(plan, Plan) else []
    models: dict[str, Any] = {}
    if not contenders:
        dataset = open_split(data_dir, split)
        num_images, categories = len(dataset), dataset.categories
    else:
        base, rows = _as_study(contenders, num_epochs)
        result = study.run_study(
            base,
            rows,
            data_dir,
            out_dir,
            seeds=(base.seed,),
            split=split,
            reusable=reusable,
            callback=callback,
        )
        num_images, categories = result["num_images"], result["categories"]
        for c in contenders:
            scored = dict(result["contenders"][c.name]["seeds"][base.seed])
            models[c.name] = {"arch": c.cfg.arch, "note": c.note, "train": c.train, **scored}
            if c.train and not scored["trained"]:
                models[c.name]["reused_from"] = scored["run"]
    out = {
        "split": split,
        "num_images": num_images,
        "categories": categories,
        "skipped": skipped,
        "models": models,
    }
    write_json_atomic(Path(out_dir) / "comparison.json", out)
    return out
