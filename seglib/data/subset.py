"""The category subset of COCO 2017: which images qualify, how they are sampled, and writing it.

``build_subset`` reads ``COCO_ROOT/annotations/instances_{train,val}2017.json``, picks images
holding a non-crowd instance of *any* chosen category (the union, via ``catToImgs``-style
indexing; never ``getImgIds(catIds=[...])``, which intersects), samples them seeded and
class-balanced, and writes ``OUT/{train,val,test}.json``, ``OUT/images/`` and
``OUT/manifest.json``. Train comes from train2017; val and test from val2017, disjoint
(the COCO-trained weights saw all of train2017).

Images are copied from ``COCO_ROOT/{train,val}2017/``. With ``download=True`` the missing ones
are fetched one by one into that folder first (COCO's layout, so it doubles as a cache), and
a missing annotations archive is fetched once and only its two instances JSONs extracted;
``seglib.data.download`` does the HTTP. The 19 GB image zips are never downloaded. Nothing touches
the network unless ``download=True``.
"""

from __future__ import annotations

import functools
import json
import warnings
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from seglib import __version__
from seglib.core.atomic import write_json_atomic
from seglib.core.config import DEFAULT_CATEGORIES, TrainConfig
from seglib.core.paths import Paths
from seglib.data.annotations import (
    AnnotationError,
    SubsetError,
    category_counts,
    load_instances,
    resolve_categories,
    split_document,
)
from seglib.data.download import (
    ANNOTATIONS_SHA1,
    COCO_BASE_URL,
    download_file,
    fetch_annotations,
    place_images,
)
from seglib.data.synthetic import make_synthetic_coco

__all__ = ["build_subset", "format_subset_counts", "prepare_source"]

#: Which COCO folder each subset split draws from.
SPLIT_SOURCE = {"train": "train2017", "val": "val2017", "test": "val2017"}
SPLITS = ("train", "val", "test")


# --- sampling --------------------------------------------------------------------------------
def _qualifying(data: dict[str, Any], coco_ids: Sequence[int]) -> dict[int, set[int]]:
    """coco id -> ids of images with at least one non-crowd instance of it (union semantics)."""
    cat_to_imgs: dict[int, set[int]] = {c: set() for c in coco_ids}
    for a in data["annotations"]:
        if a["category_id"] in cat_to_imgs and not a.get("iscrowd", 0):
            cat_to_imgs[a["category_id"]].add(a["image_id"])
    return cat_to_imgs


def _balanced_sample(
    cat_to_imgs: dict[int, set[int]], exclude: set[int], n: int, rng: np.random.Generator
) -> list[int]:
    """``n`` image ids, rarest category first, each category in about n/k images, then filled.

    Sorting before every shuffle makes the result depend only on the seed, not on set order.
    """
    pools = {c: imgs - exclude for c, imgs in cat_to_imgs.items()}
    everything = sorted(set().union(*pools.values()))
    target = max(1, n // max(1, len(pools)))
    chosen: set[int] = set()
    for c in sorted(pools, key=lambda c: len(pools[c])):  # stable: ties keep the order given
        have = len(pools[c] & chosen)
        room = n - len(chosen)
        candidates = sorted(pools[c] - chosen)
        take = min(max(0, target - have), room, len(candidates))
        if take:
            chosen.update(rng.permutation(np.array(candidates))[:take].tolist())
    rest = [i for i in everything if i not in chosen]
    if n > len(chosen) and rest:
        chosen.update(rng.permutation(np.array(rest))[: n - len(chosen)].tolist())
    return sorted(chosen)


def _choose(
    quals: dict[str, dict[int, set[int]]], nums: dict[str, int], seed: int
) -> dict[str, list[int]]:
    """Image ids per split. Each split has its own seeded stream, so changing one count keeps
    the others; val and test both draw from val2017 and never share an image."""
    chosen: dict[str, list[int]] = {}
    taken: dict[str, set[int]] = defaultdict(set)
    for k, split in enumerate(SPLITS):
        folder = SPLIT_SOURCE[split]
        if not nums[split]:
            chosen[split] = []
            continue
        rng = np.random.default_rng([seed, k])
        chosen[split] = _balanced_sample(quals[folder], taken[folder], nums[split], rng)
        taken[folder].update(chosen[split])
    return chosen


# --- building the subset ---------------------------------------------------------------------
def _check_arguments(
    categories: Sequence[str], nums: dict[str, int], workers: int, base_url: str | None
) -> list[str]:
    if isinstance(categories, str):
        categories = [categories]
    categories = list(categories)
    if not categories or not all(isinstance(c, str) and c for c in categories):
        raise SubsetError(f"categories must be a non-empty list of names, got {categories!r}")
    if len(set(categories)) != len(categories):
        raise SubsetError(f"categories repeat: {categories}")
    for split, n in nums.items():
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise SubsetError(f"num_{split} must be an int >= 0, got {n!r}")
    if not isinstance(workers, int) or workers < 1:
        raise SubsetError(f"workers must be an int >= 1, got {workers!r}")
    if base_url is not None and urlsplit(base_url).scheme not in ("http", "https"):
        raise SubsetError(f"base_url must start with http:// or https://, got {base_url!r}")
    if not any(nums.values()):
        raise SubsetError("num_train, num_val and num_test are all 0: nothing to build")
    return categories


def _annotation_files(
    coco_root: Path,
    nums: dict[str, int],
    fetch_missing: Callable[[], Any] | None,
    base_url: str | None,
) -> dict[str, Path]:
    """folder -> its instances JSON, for the folders the asked-for splits draw from.

    Missing files are fetched with ``fetch_missing`` (None: downloads are off, so it raises).
    """
    folders = [
        f for f in ("train2017", "val2017") if any(nums[s] for s in SPLITS if SPLIT_SOURCE[s] == f)
    ]
    paths = {f: coco_root / "annotations" / f"instances_{f}.json" for f in folders}
    missing = [p for p in paths.values() if not p.is_file()]
    if missing and fetch_missing is None:
        raise FileNotFoundError(
            f"COCO annotations not found: expected {', '.join(map(str, missing))}. Put COCO 2017's "
            f"instances JSONs in {coco_root / 'annotations'}, or pass --download (download=True) to "
            f"fetch annotations_trainval2017.zip (241 MB) from {base_url or COCO_BASE_URL} and "
            "extract just those two files."
        )
    if missing:
        fetch_missing()
    return paths


def _availability(
    quals: dict[str, dict[int, set[int]]], names: list[str], coco_ids: list[int]
) -> dict[str, dict[str, Any]]:
    """Per folder: qualifying images in all, and per category."""
    return {
        f: {
            "images": len(set().union(*q.values())),
            "per_category": {n: len(q[i]) for n, i in zip(names, coco_ids, strict=True)},
        }
        for f, q in quals.items()
    }


def _check_enough(
    nums: dict[str, int], available: dict[str, dict[str, Any]], names: list[str]
) -> None:
    short = []
    for f, avail in available.items():
        splits = [s for s in SPLITS if SPLIT_SOURCE[s] == f and nums[s]]
        asked = sum(nums[s] for s in splits)
        if asked > avail["images"]:
            what = " + ".join(f"{nums[s]} {s}" for s in splits)
            per = ", ".join(f"{n} {k}" for n, k in avail["per_category"].items())
            short.append(
                f"{f}: asked for {what} = {asked} images but only {avail['images']} "
                f"have a non-crowd instance of {names} (per category: {per})"
            )
    if short:
        raise SubsetError(
            "not enough qualifying images; lower --train/--val/--test. " + "; ".join(short)
        )


def _image_jobs(docs: dict[str, dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    """(source folder, image entry) for every image of every split."""
    jobs: list[tuple[str, dict[str, Any]]] = []
    owner: dict[str, str] = {}
    for split in SPLITS:
        folder = SPLIT_SOURCE[split]
        for im in docs[split]["images"]:
            if owner.setdefault(im["file_name"], folder) != folder:
                raise SubsetError(
                    f"file_name {im['file_name']} occurs in both train2017 and val2017; "
                    "OUT/images/ cannot hold both"
                )
            jobs.append((folder, im))
    return jobs


def _manifest(
    arguments: dict[str, Any],
    source: dict[str, Any],
    docs: dict[str, dict[str, Any]],
    available: dict[str, dict[str, Any]],
    dropped: list[int],
    hashes: dict[str, str],
) -> dict[str, Any]:
    def totals(doc: dict[str, Any]) -> dict[str, int]:
        crowd = sum(a["iscrowd"] for a in doc["annotations"])
        return {
            "images": len(doc["images"]),
            "instances": len(doc["annotations"]) - crowd,
            "crowd": crowd,
        }

    return {
        "seglib_version": __version__,
        "source": source,
        "arguments": arguments,
        "seed": arguments["seed"],
        "categories": docs["train"]["categories"],
        "splits": {s: {"file": f"{s}.json", "source": SPLIT_SOURCE[s]} for s in SPLITS},
        "available": available,
        "counts": {s: category_counts(docs[s]) for s in SPLITS},
        "totals": {s: totals(docs[s]) for s in SPLITS},
        "dropped_annotations": sorted(dropped),
        "images": {
            s: {im["file_name"]: hashes[im["file_name"]] for im in docs[s]["images"]}
            for s in SPLITS
        },
    }


def _read_source(path: Path) -> dict[str, Any]:
    """A COCO instances JSON, checked (``validate_instances``), each file_name used once.

    Raises:
        SubsetError: bad JSON, a bad entry, or a file_name two images share (names them).
    """
    try:
        data = load_instances(path)
    except AnnotationError as e:
        raise SubsetError(str(e)) from e
    owner: dict[str, int] = {}
    for im in data["images"]:
        if owner.setdefault(im["file_name"], im["id"]) != im["id"]:
            raise SubsetError(
                f"{path}: image {im['id']}: file_name {im['file_name']!r} is also used by image "
                f"{owner[im['file_name']]}"
            )
    return data


def _split_docs(
    paths: dict[str, Path], names: list[str], nums: dict[str, int], seed: int
) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]], list[int]]:
    """Read and check the instances JSONs, sample each split, and build its JSON.

    Returns:
        ``(docs, available, dropped)``: split -> its JSON, folder -> qualifying images (all
        and per category), and ids of annotations dropped for having no usable polygon.
    """
    data = {f: _read_source(p) for f, p in paths.items()}
    cats = {f: resolve_categories(data[f], names, paths[f]) for f in paths}
    ref_cats = next(iter(cats.values()))
    coco_ids = [c["id"] for c in ref_cats]
    quals = {f: _qualifying(data[f], coco_ids) for f in paths}
    available = _availability(quals, names, coco_ids)
    _check_enough(nums, available, names)
    chosen = _choose(quals, nums, seed)
    dropped: list[int] = []
    empty = {"images": [], "annotations": []}
    docs = {}
    for s in SPLITS:  # an empty split still lists the categories
        folder = SPLIT_SOURCE[s]
        source, split_cats = (data[folder], cats[folder]) if nums[s] else (empty, ref_cats)
        docs[s] = split_document(source, chosen[s], split_cats, folder, s, dropped, COCO_BASE_URL)
    return docs, available, dropped


def _fetchers(
    coco_root: Path, base_url: str | None, annotations_sha1: str | None, net: dict[str, Any]
) -> tuple[Callable[..., Any], Callable[[], Any]]:
    """``(fetch one image, fetch the annotations)`` with the download settings ``net``."""
    return (
        functools.partial(download_file, **net),
        functools.partial(fetch_annotations, coco_root, base_url, sha1=annotations_sha1, **net),
    )


def _source(coco_root: Path, base_url: str | None, paths: dict[str, Path]) -> dict[str, Any]:
    """Where the subset came from, for the manifest."""
    return {
        "coco_root": str(coco_root.resolve()),
        "base_url": base_url or COCO_BASE_URL,
        "annotations": {f: str(p.resolve()) for f, p in paths.items()},
    }


def _write_subset(
    out: Path, docs: dict[str, dict[str, Any]], manifest: dict[str, Any]
) -> dict[str, Any]:
    """Write the split JSONs, then ``manifest.json``; return the manifest."""
    for split in SPLITS:
        write_json_atomic(out / f"{split}.json", docs[split], indent=None)
    write_json_atomic(out / "manifest.json", manifest)
    return manifest


def build_subset(
    coco_root: str | Path,
    out: str | Path,
    categories: Sequence[str] = DEFAULT_CATEGORIES,
    num_train: int = 300,
    num_val: int = 300,
    num_test: int = 30,
    seed: int = 0,
    download: bool = False,
    base_url: str | None = None,
    workers: int = 8,
    progress: bool = True,
    annotations_sha1: str | None = ANNOTATIONS_SHA1,
    *,
    retries: int = 5,
    backoff: float = 1.0,
    timeout: float = 60.0,
) -> dict[str, Any]:
    """Write a seeded, class-balanced subset of COCO 2017 for ``categories``.

    Train images come from train2017, val and test from val2017 (disjoint). An image qualifies
    when it has a non-crowd instance of at least one chosen category; the rarest category is
    served first so each appears in about n/k images where COCO has enough. Split JSONs keep
    original image, annotation and category ids (COCO's: ``seglib.core.categories``) and crowd
    instances (``iscrowd=1``), hold only the chosen categories, listed in the order given (which
    defines labels 1..k), and are byte-identical
    for the same seed and arguments. They and ``manifest.json`` are written only after every
    image is in ``OUT/images/`` and decodes.

    Args:
        coco_root: folder with ``annotations/``, ``train2017/``, ``val2017/`` (images optional
            with ``download=True``).
        out: subset folder: ``{train,val,test}.json``, ``images/``, ``manifest.json``.
        categories: COCO category names; their order defines labels 1..k.
        num_train, num_val, num_test: images per split.
        seed: sampling seed (each split has its own stream, so changing one count keeps the others).
        download: fetch missing images, and the annotations archive if the JSONs are missing.
        base_url: replaces ``http://images.cocodataset.org`` keeping its layout.
        workers: parallel image copies/downloads.
        progress: show a tqdm bar (the only output this function makes).
        annotations_sha1: expected SHA-1 of annotations_trainval2017.zip (None: unchecked).
        retries, backoff, timeout: per-file download retries, base back-off (s), socket timeout (s).

    Returns:
        The manifest: ``counts[split][category] = {"images", "instances", "crowd"}`` plus
        ``totals``, ``available``, ``arguments``, ``source``, ``images`` (file -> sha256).

    Raises:
        FileNotFoundError: instances JSON or an image missing without ``download``.
        SubsetError: unknown category, bad annotation, corrupt image, unsafe file_name, or more
            images asked for than qualify.
        DownloadError: a download failed for good.
    """
    coco_root, out = Path(coco_root), Path(out)
    nums = {"train": num_train, "val": num_val, "test": num_test}
    names = _check_arguments(categories, nums, workers, base_url)
    net = {"retries": retries, "backoff": backoff, "timeout": timeout}
    fetch, fetch_missing = (
        _fetchers(coco_root, base_url, annotations_sha1, net) if download else (None, None)
    )
    paths = _annotation_files(coco_root, nums, fetch_missing, base_url)
    docs, available, dropped = _split_docs(paths, names, nums, seed)
    hashes = place_images(
        _image_jobs(docs),
        workers,
        progress,
        coco_root=coco_root,
        images_dir=out / "images",
        fetch=fetch,
        base_url=base_url,
    )
    arguments = {"categories": names, **{f"num_{k}": n for k, n in nums.items()}}
    arguments.update(seed=seed, download=download, base_url=base_url)
    source = _source(coco_root, base_url, paths)
    manifest = _manifest(arguments, source, docs, available, dropped, hashes)
    return _write_subset(out, docs, manifest)


# --- the notebooks' and CLI's entry points --------------------------------------------------
def prepare_source(cfg: TrainConfig, paths: Paths) -> Path:
    """The COCO root that ``cfg.data_source`` reads, generating the synthetic one when needed.

    ``coco``: ``paths.coco_root`` as it is (``build_subset(download=True)`` fills it in).
    ``synthetic``: generates the offline stand-in at ``paths.coco_root`` unless one made with
    the same arguments is already there (recorded in ``synthetic.json``), and warns that the
    data is synthetic every time, so no figure is mistaken for a COCO result.

    Returns:
        The root folder to pass to ``build_subset``.
    """
    root = paths.coco_root
    if cfg.data_source == "coco":
        return root
    warnings.warn(
        f"SYNTHETIC DATA: the {paths.profile!r} profile uses a generated stand-in for COCO at {root}. "
        "It checks that the pipeline works; its metrics say nothing about real images.",
        UserWarning,
        stacklevel=2,
    )
    wanted = {
        "images_per_split": cfg.synthetic_images,
        "size": cfg.synthetic_size,
        "seed": cfg.seed,
        "heavy_share": cfg.synthetic_heavy_share,
    }
    marker = root / "synthetic.json"
    try:
        if json.loads(marker.read_text()) == wanted:
            return root
    except (OSError, json.JSONDecodeError):
        pass  # absent or unreadable: (re)generate
    make_synthetic_coco(root, **wanted)
    write_json_atomic(marker, wanted)
    return root


def format_subset_counts(counts: dict[str, dict[str, dict[str, int]]]) -> str:
    """A fixed-width table of ``manifest["counts"]``: images and instances per split and category."""
    lines = [f"{'split':<6} {'category':<10} {'images':>7} {'instances':>10} {'crowd':>6}"]
    for split, per_category in counts.items():
        for name, c in per_category.items():
            lines.append(
                f"{split:<6} {name:<10} {c['images']:>7} {c['instances']:>10} {c.get('crowd', 0):>6}"
            )
    return "\n".join(lines)
