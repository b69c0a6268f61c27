"""The category subset of COCO 2017: which images qualify, how they are sampled, and downloads.

``build_subset`` reads ``COCO_ROOT/annotations/instances_{train,val}2017.json``, picks images
holding a non-crowd instance of *any* chosen category (the union, via ``catToImgs``-style
indexing; never ``getImgIds(catIds=[...])``, which intersects), samples them seeded and
class-balanced, and writes ``OUT/{train,val,test}.json``, ``OUT/images/`` and
``OUT/manifest.json``. Train comes from train2017; val and test from val2017, disjoint
(the COCO-trained weights saw all of train2017).

Images are copied from ``COCO_ROOT/{train,val}2017/``. With ``download=True`` the missing ones
are fetched one by one into that folder first (COCO's layout, so it doubles as a cache), and
a missing annotations archive is fetched once and only its two instances JSONs extracted.
The 19 GB image zips are never downloaded. Nothing touches the network unless
``download=True``.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import shutil
import tempfile
import threading
import time
import urllib.error
import urllib.request
import warnings
import zipfile
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any
from urllib.parse import urlsplit

import numpy as np
from PIL import Image

from . import __version__
from .config import DEFAULT_CATEGORIES, TrainConfig
from .io import write_bytes_atomic, write_json_atomic
from .paths import Paths

COCO_BASE_URL = "http://images.cocodataset.org"
ANNOTATIONS_ZIP = "annotations/annotations_trainval2017.zip"
#: SHA-1 of COCO's annotations_trainval2017.zip (241 MB), as recorded by gluoncv's
#: scripts/datasets/mscoco.py and other public download scripts.
ANNOTATIONS_SHA1 = "8551ee4bb5860311e79dace7e79cb91e432e78b3"
INSTANCES_MEMBERS = ("annotations/instances_train2017.json", "annotations/instances_val2017.json")
#: Which COCO folder each subset split draws from.
SPLIT_SOURCE = {"train": "train2017", "val": "val2017", "test": "val2017"}
SPLITS = ("train", "val", "test")


class SubsetError(ValueError):
    """Bad input to ``build_subset``: the message names the file, annotation or argument."""


class DownloadError(RuntimeError):
    """A download failed for good (after retries) or gave a corrupt file; names the URL."""


# --- reading and validating annotations ------------------------------------------------------
def load_instances(path: str | Path) -> dict[str, Any]:
    """Read a COCO instances JSON (``images``, ``annotations``, ``categories`` lists).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        SubsetError: not valid JSON (e.g. truncated) or not a COCO instances file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"COCO instances file {path} does not exist")
    try:
        data = json.loads(path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SubsetError(
            f"{path} is not valid JSON (truncated or corrupt download?): {e}. "
            "Delete it and fetch it again (build_subset(..., download=True) / --download)."
        ) from e
    if not isinstance(data, dict) or not all(
        isinstance(data.get(k), list) for k in ("images", "annotations", "categories")
    ):
        raise SubsetError(
            f"{path} is not a COCO instances file: it needs 'images', 'annotations' and 'categories' lists"
        )
    return data


def _check_file_name(name: Any, where: str) -> str:
    """``name`` if it is a bare file name that stays inside the image folder."""
    if not isinstance(name, str) or not name or "\x00" in name:
        raise SubsetError(f"{where}: file_name must be a non-empty string, got {name!r}")
    for pure in (PurePosixPath(name), PureWindowsPath(name)):
        if pure.is_absolute() or pure.drive or len(pure.parts) != 1 or pure.name in (".", ".."):
            raise SubsetError(
                f"{where}: file_name {name!r} escapes the image folder (absolute path, '..' or a "
                "folder part); COCO file names are bare names like 000000000139.jpg"
            )
    return name


def _validate(data: dict[str, Any], path: Path) -> None:
    """Catch, with ids in the message, what would otherwise crash later in pycocotools or training."""
    cat_ids = set()
    for c in data["categories"]:
        if (
            not isinstance(c, dict)
            or not isinstance(c.get("id"), int)
            or not isinstance(c.get("name"), str)
        ):
            raise SubsetError(f"{path}: category {c!r} needs an int 'id' and a str 'name'")
        cat_ids.add(c["id"])
    images: dict[int, dict[str, Any]] = {}
    names: dict[str, int] = {}
    for im in data["images"]:
        if not isinstance(im, dict) or not isinstance(im.get("id"), int):
            raise SubsetError(f"{path}: image entry {str(im)[:80]} has no int 'id'")
        where = f"{path}: image {im['id']}"
        if im["id"] in images:
            raise SubsetError(f"{where} appears twice")
        for key in ("width", "height"):
            if not isinstance(im.get(key), int) or im[key] < 1:
                raise SubsetError(f"{where}: '{key}' must be a positive int, got {im.get(key)!r}")
        name = _check_file_name(im.get("file_name"), where)
        if names.setdefault(name, im["id"]) != im["id"]:
            raise SubsetError(f"{where}: file_name {name!r} is also used by image {names[name]}")
        images[im["id"]] = im
    for a in data["annotations"]:
        if not isinstance(a, dict) or not isinstance(a.get("id"), int):
            raise SubsetError(f"{path}: annotation entry {str(a)[:80]} has no int 'id'")
        where = f"{path}: annotation {a['id']}"
        if a.get("category_id") not in cat_ids:
            raise SubsetError(
                f"{where} has category_id {a.get('category_id')!r}, which is not in 'categories' ({sorted(cat_ids)})"
            )
        im = images.get(a.get("image_id"))
        if im is None:
            raise SubsetError(
                f"{where} refers to image_id {a.get('image_id')!r}, which is not in 'images'"
            )
        if a.get("iscrowd", 0) not in (0, 1):
            raise SubsetError(f"{where}: iscrowd must be 0 or 1, got {a.get('iscrowd')!r}")
        seg = a.get("segmentation")
        if isinstance(seg, dict):
            if list(seg.get("size", [])) != [im["height"], im["width"]] or "counts" not in seg:
                raise SubsetError(
                    f"{where}: RLE segmentation needs 'counts' and size [h, w] = "
                    f"[{im['height']}, {im['width']}] of image {im['id']}, got size {seg.get('size')!r}"
                )
        elif isinstance(seg, list):
            for poly in seg:
                if not isinstance(poly, list) or len(poly) % 2:
                    raise SubsetError(f"{where}: each polygon must be a flat list of x, y pairs")
        else:
            raise SubsetError(
                f"{where}: segmentation must be a list of polygons or an RLE dict, got {type(seg).__name__}"
            )


def _clean_segmentation(seg: Any) -> Any:
    """Drop polygon parts with fewer than 3 points: pycocotools reads a 4-number one as a box."""
    if isinstance(seg, list):
        return [p for p in seg if len(p) >= 6]
    return seg


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


# --- downloads -------------------------------------------------------------------------------
class _Retryable(Exception):
    """A failure worth another try: connection trouble, truncation, 5xx or 429."""


def _image_url(image: dict[str, Any], folder: str, base_url: str | None) -> str:
    """The image's URL; ``base_url`` replaces scheme and host, keeping COCO's path."""
    url = image.get("coco_url") or f"{COCO_BASE_URL}/{folder}/{image['file_name']}"
    if base_url:
        path = urlsplit(url).path or f"/{folder}/{image['file_name']}"
        url = base_url.rstrip("/") + path
    return url


def check_image(path: str | Path) -> tuple[int, int]:
    """Fully decode an image file and return its stored (width, height).

    Raises:
        SubsetError: the file is missing, truncated or not an image (names the file).
    """
    try:
        with Image.open(path) as im:
            im.load()
            return im.size
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise SubsetError(
            f"image {path} is missing or corrupt: {e}. Delete it; with --download a rerun fetches it again"
        ) from e


def download_file(
    url: str,
    dest: str | Path,
    *,
    retries: int = 5,
    backoff: float = 1.0,
    timeout: float = 60.0,
    verify: Callable[[Path], Any] | None = None,
) -> bool:
    """Download ``url`` to ``dest`` through ``dest.part``, renamed only once complete and verified.

    An existing ``dest`` is taken as complete. An existing ``.part`` is resumed with an HTTP
    Range request; a server that ignores Range (answers 200) restarts it. Connection errors,
    short bodies, 5xx and 429 are retried ``retries`` times, waiting ``backoff * 2**attempt``
    seconds; other HTTP errors (404...) fail at once.

    Args:
        verify: called on the complete ``.part`` file; raises if it is bad (the part is deleted).

    Returns:
        True if it downloaded, False if ``dest`` already existed.

    Raises:
        DownloadError: the URL and why (HTTP status, truncation, failed check); a partial
            ``.part`` is kept so a rerun resumes.
    """
    dest = Path(dest)
    if dest.is_file():
        return False
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    last: BaseException | None = None
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(backoff * 2 ** (attempt - 1))
        offset = part.stat().st_size if part.is_file() else 0
        try:
            _fetch_into(url, part, offset, timeout)
        except _Retryable as e:
            last = e.__cause__ or e
            continue
        if verify is not None:
            try:
                verify(part)
            except Exception as e:
                part.unlink(missing_ok=True)
                if offset:  # a resumed file may have been spliced badly: one more try from scratch
                    last = e
                    continue
                raise DownloadError(f"{url}: the downloaded file failed its check: {e}") from e
        os.replace(part, dest)
        return True
    kept = f"; partial data kept in {part}, rerun to resume" if part.is_file() else ""
    raise DownloadError(f"{url}: failed after {retries + 1} attempts: {last}{kept}") from last


def _fetch_into(url: str, part: Path, offset: int, timeout: float) -> None:
    """One request: append to (206) or rewrite (200) ``part``; raise _Retryable when worth retrying."""
    headers = {"User-Agent": f"seglib/{__version__}"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        with urllib.request.urlopen(
            urllib.request.Request(url, headers=headers), timeout=timeout
        ) as resp:
            if resp.status == 206 and offset:
                start = resp.headers.get("Content-Range", "").split(" ")[-1].split("-")[0]
                if start != str(offset):
                    part.unlink(missing_ok=True)
                    raise _Retryable(f"server resumed at byte {start}, not {offset}")
                mode, expected_total = (
                    "ab",
                    resp.headers.get("Content-Range", "").rpartition("/")[2],
                )
                total = int(expected_total) if expected_total.isdigit() else None
            else:
                mode, offset = "wb", 0
                length = resp.headers.get("Content-Length")
                total = int(length) if length and length.isdigit() else None
            with open(part, mode) as f:
                while chunk := resp.read(1 << 20):
                    f.write(chunk)
            size = part.stat().st_size
            if total is not None and size != total:
                raise _Retryable(f"truncated: got {size} of {total} bytes")
    except urllib.error.HTTPError as e:
        if e.code == 416:  # our .part is already as long as the file, or longer: start over
            part.unlink(missing_ok=True)
            raise _Retryable(e) from e
        if e.code == 429 or 500 <= e.code < 600:
            raise _Retryable(e) from e
        raise DownloadError(f"{url}: HTTP {e.code} {e.reason}") from e
    except (OSError, http.client.HTTPException) as e:  # URLError, resets, timeouts, short reads
        raise _Retryable(e) from e


def _sha1(path: Path) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _safe_member(name: str) -> bool:
    pure = PurePosixPath(name.replace("\\", "/"))
    parts = pure.parts
    return bool(parts) and not pure.is_absolute() and ".." not in parts and ":" not in parts[0]


def extract_instances(zip_path: str | Path, annotations_dir: str | Path) -> list[Path]:
    """Extract only ``instances_{train,val}2017.json`` from COCO's annotations archive.

    Member names are never used as paths: each wanted member is streamed to a fixed name in
    ``annotations_dir`` (temp file, then rename). An archive holding any member whose name
    would escape its folder (absolute, ``..``, a drive) is rejected outright.

    Raises:
        DownloadError: not a zip, an unsafe member name, a wanted member missing, or a bad CRC.
    """
    zip_path, annotations_dir = Path(zip_path), Path(annotations_dir)
    try:
        with zipfile.ZipFile(zip_path) as zf:
            infos = zf.infolist()
            unsafe = [i.filename for i in infos if not _safe_member(i.filename)]
            if unsafe:
                raise DownloadError(
                    f"{zip_path}: refusing to extract, member {unsafe[0]!r} would escape the folder; "
                    "delete the archive and fetch it again"
                )
            by_name = {i.filename: i for i in infos}
            missing = [m for m in INSTANCES_MEMBERS if m not in by_name]
            if missing:
                raise DownloadError(
                    f"{zip_path}: the archive has no {missing}; is it annotations_trainval2017.zip?"
                )
            annotations_dir.mkdir(parents=True, exist_ok=True)
            written = []
            for member in INSTANCES_MEMBERS:
                dest = annotations_dir / PurePosixPath(member).name
                fd, tmp = tempfile.mkstemp(
                    dir=annotations_dir, prefix=f".{dest.name}.", suffix=".tmp"
                )
                try:
                    with os.fdopen(fd, "wb") as out, zf.open(by_name[member]) as src:
                        shutil.copyfileobj(src, out, 1 << 20)
                    os.replace(tmp, dest)
                except BaseException:
                    Path(tmp).unlink(missing_ok=True)
                    raise
                written.append(dest)
            return written
    except (zipfile.BadZipFile, zipfile.LargeZipFile) as e:
        raise DownloadError(
            f"{zip_path}: not a readable zip archive ({e}); delete it and fetch it again"
        ) from e


def fetch_annotations(
    coco_root: str | Path,
    base_url: str | None = None,
    *,
    sha1: str | None = ANNOTATIONS_SHA1,
    retries: int = 5,
    backoff: float = 1.0,
    timeout: float = 60.0,
) -> list[Path]:
    """Fetch ``annotations_trainval2017.zip`` once (resumable) and extract the instances JSONs.

    The archive lands in ``COCO_ROOT/annotations/`` and is checked against ``sha1`` (None skips
    the check) before it is renamed into place; the JSONs go beside it.

    Raises:
        DownloadError: HTTP failure, checksum mismatch (the file is deleted), unsafe archive.
    """
    coco_root = Path(coco_root)
    url = f"{(base_url or COCO_BASE_URL).rstrip('/')}/{ANNOTATIONS_ZIP}"
    dest = coco_root / ANNOTATIONS_ZIP

    def check(path: Path) -> None:
        if sha1 and (got := _sha1(path)) != sha1.lower():
            raise DownloadError(f"{path.name}: SHA-1 {got} does not match the recorded {sha1}")

    if dest.is_file():
        try:
            check(dest)
        except DownloadError as e:
            dest.unlink()
            raise DownloadError(
                f"{dest}: {e}; the bad file was deleted, run again to refetch"
            ) from e
    else:
        download_file(url, dest, retries=retries, backoff=backoff, timeout=timeout, verify=check)
    return extract_instances(dest, dest.parent)


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
    return categories


def _resolve_categories(data: dict[str, Any], names: list[str], path: Path) -> list[dict[str, Any]]:
    by_name = {c["name"]: c for c in data["categories"]}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise SubsetError(
            f"unknown categor{'y' if len(unknown) == 1 else 'ies'} {unknown}; "
            f"valid names in {path}: {', '.join(sorted(by_name))}"
        )
    return [by_name[n] for n in names]


def _area_bbox(seg: Any, height: int, width: int) -> tuple[float, list[float]]:
    from pycocotools import mask as mask_utils

    rle = mask_utils.frPyObjects(seg, height, width)
    rle = mask_utils.merge(rle) if isinstance(rle, list) else rle
    return float(mask_utils.area(rle)), [float(v) for v in mask_utils.toBbox(rle)]


def _split_doc(
    data: dict[str, Any],
    image_ids: list[int],
    cats: list[dict[str, Any]],
    folder: str,
    split: str,
    names: list[str],
    dropped: list[int],
) -> dict[str, Any]:
    """The split JSON: chosen images and their annotations of the chosen categories, renumbered."""
    new_id = {c["id"]: i + 1 for i, c in enumerate(cats)}
    wanted = set(image_ids)
    images = {im["id"]: im for im in data["images"] if im["id"] in wanted}
    out_images = []
    for image_id in sorted(wanted):
        im = images[image_id]
        entry = {
            "id": im["id"],
            "file_name": im["file_name"],
            "width": im["width"],
            "height": im["height"],
            "coco_url": im.get("coco_url") or f"{COCO_BASE_URL}/{folder}/{im['file_name']}",
        }
        if "license" in im:
            entry["license"] = im["license"]
        out_images.append(entry)
    anns = []
    for a in sorted(data["annotations"], key=lambda a: a["id"]):
        if a["image_id"] not in wanted or a["category_id"] not in new_id:
            continue
        seg = _clean_segmentation(a["segmentation"])
        if not seg:
            dropped.append(a["id"])
            continue
        im = images[a["image_id"]]
        if "area" in a and "bbox" in a:
            area, bbox = a["area"], a["bbox"]
        else:
            area, bbox = _area_bbox(seg, im["height"], im["width"])
        anns.append(
            {
                "id": a["id"],
                "image_id": a["image_id"],
                "category_id": new_id[a["category_id"]],
                "segmentation": seg,
                "area": area,
                "bbox": bbox,
                "iscrowd": int(a.get("iscrowd", 0)),
            }
        )
    info = dict(data.get("info") or {})
    info["description"] = f"seglib {split} split from COCO {folder}: {', '.join(names)}"
    return {
        "info": info,
        "licenses": data.get("licenses") or [],
        "images": out_images,
        "annotations": anns,
        "categories": [
            {
                "id": new_id[c["id"]],
                "name": c["name"],
                "supercategory": c.get("supercategory", ""),
                "coco_id": c["id"],
            }
            for c in cats
        ],
    }


def _counts(doc: dict[str, Any]) -> dict[str, dict[str, int]]:
    """category name -> images with a non-crowd instance of it, non-crowd instances, crowd regions."""
    names = {c["id"]: c["name"] for c in doc["categories"]}
    imgs: dict[str, set[int]] = {n: set() for n in names.values()}
    counts = {n: {"images": 0, "instances": 0, "crowd": 0} for n in names.values()}
    for a in doc["annotations"]:
        name = names[a["category_id"]]
        if a["iscrowd"]:
            counts[name]["crowd"] += 1
        else:
            counts[name]["instances"] += 1
            imgs[name].add(a["image_id"])
    for n in counts:
        counts[n]["images"] = len(imgs[n])
    return counts


def _place_image(
    folder: str,
    image: dict[str, Any],
    coco_root: Path,
    images_dir: Path,
    *,
    download: bool,
    base_url: str | None,
    retries: int,
    backoff: float,
    timeout: float,
) -> str:
    """Make ``images_dir/<file_name>`` a verified copy of the COCO image; return its sha256."""
    name = image["file_name"]
    src = coco_root / folder / name
    if not src.is_file():
        if not download:
            raise FileNotFoundError(
                f"image {name} (id {image['id']}) is not in {coco_root / folder}; pass --download "
                f"(download=True) to fetch missing images from {base_url or COCO_BASE_URL}"
            )
        download_file(
            _image_url(image, folder, base_url),
            src,
            retries=retries,
            backoff=backoff,
            timeout=timeout,
            verify=check_image,
        )
    size = check_image(src)
    if size not in ((image["width"], image["height"]), (image["height"], image["width"])):
        raise SubsetError(
            f"image {src} (id {image['id']}) is {size[0]}x{size[1]} px but its annotations say "
            f"{image['width']}x{image['height']}; the file does not belong to these annotations"
        )
    data = src.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    dest = images_dir / name
    if not (dest.is_file() and hashlib.sha256(dest.read_bytes()).hexdigest() == digest):
        write_bytes_atomic(dest, data)
    return digest


def _place_images(
    jobs: list[tuple[str, dict[str, Any]]], workers: int, progress: bool, **kwargs: Any
) -> dict[str, str]:
    """Run ``_place_image`` over ``jobs`` in a thread pool; stop early and re-raise the first error."""
    stop = threading.Event()

    def run(folder: str, image: dict[str, Any]) -> str | None:
        return None if stop.is_set() else _place_image(folder, image, **kwargs)

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(jobs), desc="images", unit="img")
    hashes: dict[str, str] = {}
    errors: list[BaseException] = []
    try:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            futures = {pool.submit(run, folder, im): im["file_name"] for folder, im in jobs}
            for fut in as_completed(futures):
                try:
                    digest = fut.result()
                except Exception as e:
                    errors.append(e)
                    stop.set()
                    continue
                if digest is not None:
                    hashes[futures[fut]] = digest
                if bar is not None:
                    bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    if errors:
        first = errors[0]
        if len(errors) > 1 and isinstance(first, (SubsetError, DownloadError, FileNotFoundError)):
            raise type(first)(f"{first} ({len(errors) - 1} more image(s) failed too)") from first
        raise first
    return hashes


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
    original image and annotation ids and crowd instances (``iscrowd=1``), hold only the chosen
    categories renumbered 1..k in the order given (``coco_id`` kept), and are byte-identical
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
    if not any(nums.values()):
        raise SubsetError("num_train, num_val and num_test are all 0: nothing to build")
    folders = [
        f for f in ("train2017", "val2017") if any(nums[s] for s in SPLITS if SPLIT_SOURCE[s] == f)
    ]
    paths = {f: coco_root / "annotations" / f"instances_{f}.json" for f in folders}
    missing = [p for p in paths.values() if not p.is_file()]
    if missing:
        if not download:
            raise FileNotFoundError(
                f"COCO annotations not found: expected {', '.join(map(str, missing))}. Put COCO 2017's "
                f"instances JSONs in {coco_root / 'annotations'}, or pass --download (download=True) to "
                f"fetch annotations_trainval2017.zip (241 MB) from {base_url or COCO_BASE_URL} and "
                "extract just those two files."
            )
        fetch_annotations(
            coco_root,
            base_url,
            sha1=annotations_sha1,
            retries=retries,
            backoff=backoff,
            timeout=timeout,
        )
    data = {f: load_instances(p) for f, p in paths.items()}
    for f, p in paths.items():
        _validate(data[f], p)
    cats = {f: _resolve_categories(data[f], names, paths[f]) for f in folders}
    ref_cats = cats[folders[0]] if folders else []
    coco_ids = [c["id"] for c in ref_cats]

    quals = {f: _qualifying(data[f], coco_ids) for f in folders}
    available = {
        f: {
            "images": len(set().union(*q.values())),
            "per_category": {n: len(q[i]) for n, i in zip(names, coco_ids, strict=True)},
        }
        for f, q in quals.items()
    }
    short = []
    for f in folders:
        asked = sum(nums[s] for s in SPLITS if SPLIT_SOURCE[s] == f)
        if asked > available[f]["images"]:
            what = " + ".join(f"{nums[s]} {s}" for s in SPLITS if SPLIT_SOURCE[s] == f and nums[s])
            per = ", ".join(f"{n} {k}" for n, k in available[f]["per_category"].items())
            short.append(
                f"{f}: asked for {what} = {asked} images but only {available[f]['images']} "
                f"have a non-crowd instance of {names} (per category: {per})"
            )
    if short:
        raise SubsetError(
            "not enough qualifying images; lower --train/--val/--test. " + "; ".join(short)
        )

    chosen: dict[str, list[int]] = {}
    taken: dict[str, set[int]] = {f: set() for f in folders}
    for k, split in enumerate(SPLITS):
        f = SPLIT_SOURCE[split]
        if not nums[split]:
            chosen[split] = []
            continue
        rng = np.random.default_rng([seed, k])
        chosen[split] = _balanced_sample(quals[f], taken[f], nums[split], rng)
        taken[f].update(chosen[split])

    dropped: list[int] = []
    docs = {
        s: _split_doc(
            data[SPLIT_SOURCE[s]],
            chosen[s],
            cats[SPLIT_SOURCE[s]],
            SPLIT_SOURCE[s],
            s,
            names,
            dropped,
        )
        if nums[s]
        else _split_doc(
            {"images": [], "annotations": []}, [], ref_cats, SPLIT_SOURCE[s], s, names, dropped
        )
        for s in SPLITS
    }

    jobs: list[tuple[str, dict[str, Any]]] = []
    owner: dict[str, str] = {}
    for split in SPLITS:
        f = SPLIT_SOURCE[split]
        for im in docs[split]["images"]:
            if owner.setdefault(im["file_name"], f) != f:
                raise SubsetError(
                    f"file_name {im['file_name']} occurs in both train2017 and val2017; "
                    "OUT/images/ cannot hold both"
                )
            jobs.append((f, im))
    hashes = _place_images(
        jobs,
        workers,
        progress,
        coco_root=coco_root,
        images_dir=out / "images",
        download=download,
        base_url=base_url,
        retries=retries,
        backoff=backoff,
        timeout=timeout,
    )

    for split in SPLITS:
        write_json_atomic(out / f"{split}.json", docs[split], indent=None)
    manifest = {
        "seglib_version": __version__,
        "source": {
            "coco_root": str(coco_root.resolve()),
            "base_url": base_url or COCO_BASE_URL,
            "annotations": {f: str(p.resolve()) for f, p in paths.items()},
        },
        "arguments": {
            "categories": names,
            "num_train": num_train,
            "num_val": num_val,
            "num_test": num_test,
            "seed": seed,
            "download": download,
            "base_url": base_url,
        },
        "seed": seed,
        "categories": docs["train"]["categories"],
        "splits": {s: {"file": f"{s}.json", "source": SPLIT_SOURCE[s]} for s in SPLITS},
        "available": available,
        "counts": {s: _counts(docs[s]) for s in SPLITS},
        "totals": {
            s: {
                "images": len(docs[s]["images"]),
                "instances": sum(1 for a in docs[s]["annotations"] if not a["iscrowd"]),
                "crowd": sum(a["iscrowd"] for a in docs[s]["annotations"]),
            }
            for s in SPLITS
        },
        "dropped_annotations": sorted(dropped),
        "images": {
            s: {im["file_name"]: hashes[im["file_name"]] for im in docs[s]["images"]}
            for s in SPLITS
        },
    }
    write_json_atomic(out / "manifest.json", manifest)
    return manifest


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
    }
    marker = root / "synthetic.json"
    try:
        if json.loads(marker.read_text()) == wanted:
            return root
    except (OSError, json.JSONDecodeError):
        pass  # absent or unreadable: (re)generate

    from .synthetic import make_synthetic_coco

    make_synthetic_coco(root, **wanted)
    write_json_atomic(marker, wanted)
    return root


def format_counts(counts: dict[str, dict[str, dict[str, int]]]) -> str:
    """A fixed-width table of ``manifest["counts"]``: images and instances per split and category."""
    lines = [f"{'split':<6} {'category':<10} {'images':>7} {'instances':>10} {'crowd':>6}"]
    for split, per_category in counts.items():
        for name, c in per_category.items():
            lines.append(
                f"{split:<6} {name:<10} {c['images']:>7} {c['instances']:>10} {c.get('crowd', 0):>6}"
            )
    return "\n".join(lines)
