"""Mask2Former weights and configurations: the optional dependency, the hub cache, presets.

``transformers`` is imported only when a function here needs it (the ``detr`` extra;
``require_transformers`` names the install command when it is missing), so importing this
module, like importing ``seglib``, works without it. Nothing downloads implicitly:
``fetch_mask2former_weights`` is the one function that does; loading uses the Hugging Face
cache or a local folder with ``local_files_only=True``. The COCO-instance checkpoints are
licensed CC BY-NC 4.0 (``WEIGHTS_LICENCE``): non-commercial use only, which ``fetch-weights``
prints.

Also here: the architecture presets (``hf_config``), and cutting a COCO-trained 80-class head
down to the subset's classes by name (``subset_head_rows``, ``map_head_to_subset``). The
model adapter behind seglib's contract is ``seglib.models.mask2former``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from seglib.core.config import M2F_MODEL_ID, M2F_PRESETS
from seglib.models.weights import MissingWeightsError

#: The COCO-instance checkpoint that ``weights="coco"`` means (CC BY-NC 4.0 weights).
MODEL_ID = M2F_MODEL_ID
WEIGHTS_LICENCE = "CC BY-NC 4.0"
INSTALL_HINT = "pip install 'seglib[detr]' (or pip install -r requirements-detr.txt)"


class MissingDependencyError(ImportError):
    """The optional ``transformers`` dependency (the ``detr`` extra) is not installed."""


def require_transformers() -> Any:
    """Import and return ``transformers``.

    Raises:
        MissingDependencyError: it is not installed; names the install command.
    """
    try:
        import transformers
    except ImportError as e:
        raise MissingDependencyError(
            f"arch 'mask2former' needs Hugging Face transformers, an optional extra: {INSTALL_HINT}. "
            "The Mask R-CNN archs (v1, v2) work without it."
        ) from e
    return transformers


# --- weights -------------------------------------------------------------------------------
def hf_cache_dir() -> Path:
    """The Hugging Face hub cache: $HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub.

    The value huggingface_hub itself uses (read when it was imported) when it is installed.
    """
    try:
        from huggingface_hub import constants

        return Path(constants.HF_HUB_CACHE)
    except ImportError:
        pass
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "huggingface"
    )
    return Path(home) / "hub"


def _is_folder_spec(source: str) -> bool:
    """A local folder rather than a hub id ("org/name"): it exists or cannot be an id."""
    return (
        Path(source).expanduser().exists()
        or source.startswith((".", "/", "~"))
        or source.count("/") != 1
    )


def _missing_message(source: str) -> str:
    if _is_folder_spec(source):
        return (
            f"Mask2Former weights folder {source} does not exist or holds no config.json and weights "
            "(a folder written by save_pretrained). Point m2f_pretrained at such a folder, or at a "
            f"Hugging Face model id such as {MODEL_ID}."
        )
    return (
        f"Mask2Former weights {source!r} are not in the Hugging Face cache {hf_cache_dir()} "
        f"($HF_HUB_CACHE, or $HF_HOME/hub). seglib never downloads implicitly. To put them there: run "
        f"`python -m seglib fetch-weights mask2former{'' if source == MODEL_ID else ' --model-id ' + source}` "
        "on a machine with internet, then copy the cache folder over; or set m2f_pretrained to a "
        "local folder written by "
        f"save_pretrained. The weights are {WEIGHTS_LICENCE} (non-commercial). Offline, "
        "weights='none' (random init) works without any file."
    )


def fetch_mask2former_weights(model_id: str = MODEL_ID) -> Path:
    """Download ``model_id``'s config and weights into the Hugging Face cache (no-op when present).

    The only function here that touches the network.

    Returns:
        The local snapshot folder.

    Raises:
        MissingDependencyError: transformers is not installed.
        MissingWeightsError: the download failed (offline, proxy); says how to fetch by hand.
    """
    transformers = require_transformers()
    from huggingface_hub import snapshot_download

    try:
        transformers.Mask2FormerForUniversalSegmentation.from_pretrained(model_id)
        return Path(snapshot_download(model_id, local_files_only=True))
    except Exception as e:  # hub, network and file errors all mean "not obtained"
        raise MissingWeightsError(_missing_message(model_id) + f"\nThe download failed: {e}") from e


def pretrained_available(source: str = MODEL_ID) -> bool:
    """Whether ``load_pretrained(source)`` would find config and weights, offline.

    False when transformers is not installed.
    """
    try:
        require_transformers()
    except MissingDependencyError:
        return False
    if _is_folder_spec(source):
        return (Path(source).expanduser() / "config.json").is_file()
    from huggingface_hub import try_to_load_from_cache

    def cached(name: str) -> bool:
        return isinstance(try_to_load_from_cache(source, name), str)

    return cached("config.json") and (cached("model.safetensors") or cached("pytorch_model.bin"))


def load_pretrained(source: str = MODEL_ID) -> nn.Module:
    """The Hugging Face ``Mask2FormerForUniversalSegmentation`` at ``source``, offline.

    Args:
        source: a model id already in the Hugging Face cache, or a folder written by
            ``save_pretrained``. Read with ``local_files_only=True``: never a download.

    Raises:
        MissingDependencyError: transformers is not installed.
        MissingWeightsError: not cached / no such folder; names the id, the cache folder and
            ``python -m seglib fetch-weights mask2former``.
    """
    transformers = require_transformers()
    if _is_folder_spec(source) and not (Path(source).expanduser() / "config.json").is_file():
        raise MissingWeightsError(_missing_message(source))
    try:
        return transformers.Mask2FormerForUniversalSegmentation.from_pretrained(
            str(Path(source).expanduser()) if _is_folder_spec(source) else source,
            local_files_only=True,
        )
    except (OSError, ValueError) as e:  # transformers' "not found locally" errors
        raise MissingWeightsError(_missing_message(source)) from e


# --- architecture ----------------------------------------------------------------------------
def hf_config(preset: str, id2label: dict[int, str]) -> Any:
    """A ``Mask2FormerConfig`` of the named preset with a head for ``id2label`` (0-based).

    "swin-tiny" is the architecture of ``MODEL_ID`` (Swin-T backbone, 100 queries, hidden
    256, 6 encoder / 10 decoder layers); "tiny" a ~1 M-parameter random configuration (Swin
    embed 24, one block per stage, 20 queries, hidden 64) that trains on CPU in tens of ms.
    Neither reads a file: backbones are randomly initialised unless weights are loaded.

    Raises:
        ValueError: unknown preset (names the choices).
    """
    transformers = require_transformers()
    stages = ["stage1", "stage2", "stage3", "stage4"]
    labels = {int(k): v for k, v in id2label.items()}
    common = dict(id2label=labels, label2id={v: k for k, v in labels.items()})
    if preset == "swin-tiny":
        backbone = transformers.SwinConfig(
            embed_dim=96,
            depths=[2, 2, 6, 2],
            num_heads=[3, 6, 12, 24],
            window_size=7,
            drop_path_rate=0.3,
            out_features=stages,
        )
        return transformers.Mask2FormerConfig(backbone_config=backbone, **common)
    if preset == "tiny":
        backbone = transformers.SwinConfig(
            embed_dim=24,
            depths=[1, 1, 1, 1],
            num_heads=[1, 2, 4, 8],
            window_size=4,
            drop_path_rate=0.0,
            out_features=stages,
        )
        return transformers.Mask2FormerConfig(
            backbone_config=backbone,
            num_queries=20,
            hidden_dim=64,
            feature_size=64,
            mask_feature_size=64,
            encoder_feedforward_dim=128,
            dim_feedforward=128,
            encoder_layers=1,
            decoder_layers=3,
            num_attention_heads=4,
            train_num_points=1024,  # a 128 px image has 32x32 = 1024 mask logits
            **common,
        )
    raise ValueError(f"Mask2Former preset must be one of {M2F_PRESETS}, got {preset!r}")


def subset_head_rows(id2label: dict[int, str], names: Sequence[str]) -> list[int]:
    """Rows of an 80-class COCO head that give the subset's classes, then the no-object row.

    Mask2Former's COCO checkpoints number classes 0..79 contiguously (not COCO's 1..90
    ids), so classes are matched by name. Returns ``[row(name) for name in names] + [80]``.

    Raises:
        ValueError: a name is not among ``id2label``'s labels (lists them).
    """
    by_name = {str(v): int(k) for k, v in id2label.items()}
    missing = [n for n in names if n not in by_name]
    if missing:
        raise ValueError(
            f"categories {missing} are not classes of the pretrained Mask2Former; its labels are "
            f"{sorted(by_name)}"
        )
    return [by_name[n] for n in names] + [len(id2label)]


def map_head_to_subset(hf_model: nn.Module, names: Sequence[str]) -> nn.Module:
    """Cut a COCO-trained head down to ``names`` (in label order) plus no-object, in place.

    The same idea as the torchvision zero-shot baseline's ``coco_id`` map: the new head's
    row i is the COCO head's row for ``names[i]``, and its last row is the no-object row, so
    the mapped model starts out predicting exactly the COCO model's scores for those classes
    (renormalised over k + 1). The loss's no-object weighting is rebuilt for k classes.

    Returns:
        ``hf_model``, now with ``config.num_labels == len(names)``.
    """
    require_transformers()
    from transformers.models.mask2former.modeling_mask2former import Mask2FormerLoss

    rows = torch.tensor(subset_head_rows(hf_model.config.id2label, names))
    old = hf_model.class_predictor
    new = nn.Linear(old.in_features, len(rows), device=old.weight.device, dtype=old.weight.dtype)
    with torch.no_grad():
        new.weight.copy_(old.weight[rows])
        new.bias.copy_(old.bias[rows])
    hf_model.class_predictor = new
    labels = dict(enumerate(names))
    hf_model.config.id2label = labels
    hf_model.config.label2id = {v: k for k, v in labels.items()}
    hf_model.config.num_labels = len(names)
    hf_model.criterion = Mask2FormerLoss(hf_model.config, weight_dict=hf_model.weight_dict).to(
        old.weight.device
    )
    return hf_model


def coco_id2label() -> dict[int, str]:
    """COCO's 80 category names numbered 0..79 in COCO id order, as Mask2Former's COCO
    checkpoints number them (from torchvision's weight metadata; nothing is read or fetched)."""
    from torchvision.models.detection import MaskRCNN_ResNet50_FPN_Weights

    names = MaskRCNN_ResNet50_FPN_Weights.COCO_V1.meta["categories"]
    return dict(enumerate(n for n in names if n not in ("__background__", "N/A")))
