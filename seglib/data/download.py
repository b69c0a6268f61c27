"""Getting COCO's files: resumable, retried HTTP downloads, the annotations archive, images.

``download_file`` fetches one URL through a ``.part`` file (resumed with a Range request,
retried with exponential back-off, checked before it is renamed into place);
``fetch_annotations`` fetches ``annotations_trainval2017.zip`` once, checks its SHA-1 and
extracts only the two instances JSONs (``extract_instances``, which refuses archive members
whose names would escape the folder); ``place_images`` copies the chosen images out of a COCO
root, downloading the missing ones first, and checks that each decodes at its annotated size.
``seglib.data.subset`` decides what to fetch.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import tempfile
import threading
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

from PIL import Image

from seglib import __version__
from seglib.core.atomic import write_bytes_atomic
from seglib.data.annotations import SubsetError

__all__ = [
    "ANNOTATIONS_SHA1",
    "check_image",
    "COCO_BASE_URL",
    "DownloadError",
    "download_file",
    "extract_instances",
    "fetch_annotations",
    "file_sha1",
    "image_url",
    "place_images",
]

COCO_BASE_URL = "http://images.cocodataset.org"
ANNOTATIONS_ZIP = "annotations/annotations_trainval2017.zip"
#: SHA-1 of COCO's annotations_trainval2017.zip (241 MB), as recorded by gluoncv's
#: scripts/datasets/mscoco.py and other public download scripts.
ANNOTATIONS_SHA1 = "8551ee4bb5860311e79dace7e79cb91e432e78b3"
INSTANCES_MEMBERS = ("annotations/instances_train2017.json", "annotations/instances_val2017.json")


class DownloadError(RuntimeError):
    """A download failed for good (after retries) or gave a corrupt file; names the URL."""


class _Retryable(Exception):
    """A failure worth another try: connection trouble, truncation, 5xx or 429."""


def image_url(image: dict[str, Any], folder: str, base_url: str | None) -> str:
    """The image's URL; ``base_url`` replaces scheme and host, keeping COCO's path."""
    url = image.get("coco_url") or f"{COCO_BASE_URL}/{folder}/{image['file_name']}"
    if base_url:
        path = urlsplit(url).path or f"/{folder}/{image['file_name']}"
        url = base_url.rstrip("/") + path
    return url


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


def file_sha1(path: str | Path) -> str:
    """Hex SHA-1 of a file, read in 1 MiB chunks."""
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
        if sha1 and (got := file_sha1(path)) != sha1.lower():
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


# --- images ----------------------------------------------------------------------------------
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


def _place_image(
    folder: str,
    image: dict[str, Any],
    coco_root: Path,
    images_dir: Path,
    *,
    fetch: Callable[..., bool] | None,
    base_url: str | None,
) -> str:
    """Make ``images_dir/<file_name>`` a verified copy of the COCO image; return its sha256.

    ``fetch`` (``download_file`` with the retry settings bound) downloads a missing source
    file; None means downloads are off.
    """
    name = image["file_name"]
    src = coco_root / folder / name
    if not src.is_file():
        if fetch is None:
            raise FileNotFoundError(
                f"image {name} (id {image['id']}) is not in {coco_root / folder}; pass --download "
                f"(download=True) to fetch missing images from {base_url or COCO_BASE_URL}"
            )
        fetch(image_url(image, folder, base_url), src, verify=check_image)
    size = check_image(src)
    if size != (image["width"], image["height"]):
        # COCO annotates the stored pixels (EXIF orientation not applied), and so do we.
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


def place_images(
    jobs: list[tuple[str, dict[str, Any]]], workers: int, progress: bool, **kwargs: Any
) -> dict[str, str]:
    """Run ``_place_image`` over ``(folder, image)`` jobs in a thread pool.

    Stops starting new jobs at the first error and re-raises it (naming how many more failed).

    Returns:
        file_name -> sha256 of every image placed.
    """
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
