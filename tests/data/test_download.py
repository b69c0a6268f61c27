"""Downloads against a real HTTP server on 127.0.0.1: retries, resume, checks, the archive."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from seglib.data.download import ANNOTATIONS_SHA1, DownloadError, download_file, file_sha1
from seglib.data.subset import build_subset


def _read(path: Path) -> dict:
    return json.loads(path.read_text())


def _no_outputs(out: Path) -> bool:
    return not any(
        (out / n).exists() for n in ("train.json", "val.json", "test.json", "manifest.json")
    )


# --- downloads, against a real HTTP server on 127.0.0.1 ---------------------------------------
class _Server:
    """Serves a folder over HTTP with Range support and switchable faults, recording requests.

    faults maps a URL path to a list of actions used one per request (then normal service):
    "cut" (announce the full length, send half, close), "500", "404", "429", "norange"
    (ignore Range, answer 200), "garbage" (200 with bytes that are not an image).
    A path in ``always`` gets its fault on every request.
    """

    def __init__(self, root: Path):
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.root = root
        self.requests: list[tuple[str, str | None]] = []
        self.faults: dict[str, list[str]] = {}
        self.always: dict[str, str] = {}
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def do_GET(self):
                path, rng = self.path, self.headers.get("Range")
                with server.lock:
                    server.requests.append((path, rng))
                    queue = server.faults.get(path, [])
                    fault = server.always.get(path) or (queue.pop(0) if queue else None)
                if fault in ("500", "404", "429"):
                    self.send_error(int(fault))
                    return
                file = server.root / path.lstrip("/")
                if not file.is_file():
                    self.send_error(404)
                    return
                data = file.read_bytes()
                if fault == "garbage":
                    data = b"<html>not an image</html>" * 10
                start = 0
                if rng and fault != "norange" and rng.startswith("bytes="):
                    start = int(rng[6:].split("-")[0])
                    if start >= len(data):
                        self.send_error(416)
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Accept-Ranges", "bytes")
                self.end_headers()
                if fault == "cut":
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def hits(self, prefix: str = "/") -> list[tuple[str, str | None]]:
        with self.lock:
            return [r for r in self.requests if r[0].startswith(prefix)]

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server(synthetic_coco, monkeypatch):
    """An HTTP mirror of the synthetic COCO root (images under /train2017/ and /val2017/)."""
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.delenv("http_proxy", raising=False)
    monkeypatch.delenv("HTTP_PROXY", raising=False)
    srv = _Server(synthetic_coco)
    yield srv
    srv.close()


@pytest.fixture
def bare_root(synthetic_coco, tmp_path) -> Path:
    """A COCO root holding the annotations but no images."""
    root = tmp_path / "coco"
    (root / "annotations").mkdir(parents=True)
    for f in ("train2017", "val2017"):
        shutil.copy(synthetic_coco / "annotations" / f"instances_{f}.json", root / "annotations")
    return root


SMALL = {
    "num_train": 4,
    "num_val": 2,
    "num_test": 1,
    "progress": False,
    "backoff": 0.01,
    "retries": 3,
}


def _download(root: Path, out: Path, server: _Server, **kwargs) -> dict:
    return build_subset(
        root, out, download=True, base_url=server.url, **{**SMALL, "workers": 3, **kwargs}
    )


def _picked(synthetic_coco: Path, tmp_path: Path) -> list[str]:
    """URL paths the SMALL subset downloads, from a copy-path build of the same arguments."""
    build_subset(
        synthetic_coco,
        tmp_path / "probe",
        **{k: v for k, v in SMALL.items() if k not in ("backoff", "retries")},
    )
    paths = []
    for split, folder in (("train", "train2017"), ("val", "val2017"), ("test", "val2017")):
        paths += [
            f"/{folder}/{im['file_name']}"
            for im in _read(tmp_path / f"probe/{split}.json")["images"]
        ]
    return paths


def test_download_fetches_each_image_once_and_verifies(synthetic_coco, bare_root, server, tmp_path):
    manifest = _download(bare_root, tmp_path / "out", server)
    paths = _picked(synthetic_coco, tmp_path)
    assert sorted(p for p, _ in server.hits()) == sorted(paths)
    for p in paths:
        assert (bare_root / p.lstrip("/")).read_bytes() == (
            synthetic_coco / p.lstrip("/")
        ).read_bytes()
        assert (tmp_path / "out/images" / Path(p).name).is_file()
    assert not list(bare_root.rglob("*.part"))
    # same JSONs as when the images were already there
    assert (tmp_path / "out/train.json").read_bytes() == (
        tmp_path / "probe/train.json"
    ).read_bytes()
    assert manifest["source"]["base_url"] == server.url


def test_download_without_flag_never_touches_the_network(bare_root, server, tmp_path):
    with pytest.raises(FileNotFoundError, match="--download"):
        build_subset(bare_root, tmp_path / "out", base_url=server.url, **SMALL)
    assert server.hits() == []


def test_cut_connection_is_resumed(synthetic_coco, bare_root, server, tmp_path):
    target = _picked(synthetic_coco, tmp_path)[0]
    server.faults[target] = ["cut"]
    _download(bare_root, tmp_path / "out", server)
    hits = server.hits(target)
    assert len(hits) == 2 and hits[0][1] is None and hits[1][1].startswith("bytes=")
    assert (bare_root / target.lstrip("/")).read_bytes() == (
        synthetic_coco / target.lstrip("/")
    ).read_bytes()


def test_transient_errors_are_retried(synthetic_coco, bare_root, server, tmp_path):
    paths = _picked(synthetic_coco, tmp_path)
    server.faults[paths[0]] = ["500", "429"]
    server.faults[paths[1]] = ["cut", "cut"]
    _download(bare_root, tmp_path / "out", server)
    assert len(server.hits(paths[0])) == 3 and len(server.hits(paths[1])) == 3
    assert (tmp_path / "out/train.json").is_file()


def test_persistent_server_error_fails_cleanly(synthetic_coco, bare_root, server, tmp_path):
    target = _picked(synthetic_coco, tmp_path)[0]
    server.always[target] = "500"
    with pytest.raises(DownloadError, match=rf"{target}.*4 attempts.*500"):
        _download(bare_root, tmp_path / "out", server)
    assert len(server.hits(target)) == 4
    assert _no_outputs(tmp_path / "out")
    assert not (bare_root / target.lstrip("/")).exists()


def test_persistent_truncation_fails_and_keeps_part(synthetic_coco, bare_root, server, tmp_path):
    target = _picked(synthetic_coco, tmp_path)[0]
    server.always[target] = "cut"
    with pytest.raises(DownloadError, match="truncated"):
        _download(bare_root, tmp_path / "out", server)
    assert _no_outputs(tmp_path / "out")
    assert not (bare_root / target.lstrip("/")).exists()
    assert (bare_root / (target.lstrip("/") + ".part")).is_file()


def test_404_is_not_retried(synthetic_coco, bare_root, server, tmp_path):
    target = _picked(synthetic_coco, tmp_path)[1]
    server.always[target] = "404"
    with pytest.raises(DownloadError, match=rf"{target}: HTTP 404"):
        _download(bare_root, tmp_path / "out", server)
    assert len(server.hits(target)) == 1
    assert _no_outputs(tmp_path / "out")


def test_undecodable_download_is_rejected(synthetic_coco, bare_root, server, tmp_path):
    target = _picked(synthetic_coco, tmp_path)[0]
    server.always[target] = "garbage"
    with pytest.raises(DownloadError, match=rf"{target}.*failed its check"):
        _download(bare_root, tmp_path / "out", server)
    assert not (bare_root / target.lstrip("/")).exists()
    assert not (bare_root / (target.lstrip("/") + ".part")).exists()
    assert _no_outputs(tmp_path / "out")


@pytest.mark.parametrize("honours_range", [True, False])
def test_existing_part_is_resumed_or_restarted(
    synthetic_coco, bare_root, server, tmp_path, honours_range
):
    target = _picked(synthetic_coco, tmp_path)[0]
    original = (synthetic_coco / target.lstrip("/")).read_bytes()
    part = bare_root / (target.lstrip("/") + ".part")
    part.parent.mkdir(parents=True)
    part.write_bytes(original[:1000])
    if not honours_range:
        server.faults[target] = ["norange"]
    _download(bare_root, tmp_path / "out", server)
    assert server.hits(target) == [(target, "bytes=1000-")]
    assert (bare_root / target.lstrip("/")).read_bytes() == original
    assert not part.exists()


def test_rerun_skips_complete_files(synthetic_coco, bare_root, server, tmp_path):
    first = _download(bare_root, tmp_path / "out", server)
    assert len(server.hits()) == 7
    second = _download(bare_root, tmp_path / "out", server)
    assert len(server.hits()) == 7  # nothing fetched again
    assert first == second


def test_rerun_after_failure_fetches_only_what_is_missing(
    synthetic_coco, bare_root, server, tmp_path
):
    target = _picked(synthetic_coco, tmp_path)[0]
    server.always[target] = "404"
    with pytest.raises(DownloadError):
        _download(bare_root, tmp_path / "out", server, workers=1)
    done = {p for p, _ in server.hits() if (bare_root / p.lstrip("/")).is_file()}
    del server.always[target]
    server.requests.clear()
    _download(bare_root, tmp_path / "out", server)
    assert not done & {p for p, _ in server.hits()}
    assert (tmp_path / "out/manifest.json").is_file()


# --- the annotations archive ------------------------------------------------------------------
def _make_zip(synthetic_coco: Path, dest: Path, extra: dict[str, bytes] | None = None) -> str:
    import zipfile

    dest.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(dest, "w") as zf:
        for f in ("train2017", "val2017"):
            zf.write(
                synthetic_coco / "annotations" / f"instances_{f}.json",
                f"annotations/instances_{f}.json",
            )
        zf.writestr("annotations/captions_train2017.json", b"{}")
        for name, data in (extra or {}).items():
            zf.writestr(name, data)
    return hashlib.sha1(dest.read_bytes()).hexdigest()


@pytest.fixture
def zip_server(synthetic_coco, tmp_path, monkeypatch):
    """A server whose root holds the images (symlinked) and an annotations zip built per test."""
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    remote = tmp_path / "remote"
    (remote / "annotations").mkdir(parents=True)
    for f in ("train2017", "val2017"):
        (remote / f).symlink_to(synthetic_coco / f)
    srv = _Server(remote)
    yield srv
    srv.close()


ZIP_PATH = "/annotations/annotations_trainval2017.zip"


def test_annotations_zip_fetched_once_and_only_instances_extracted(
    synthetic_coco, zip_server, tmp_path
):
    sha1 = _make_zip(synthetic_coco, zip_server.root / ZIP_PATH.lstrip("/"))
    zip_server.faults[ZIP_PATH] = ["cut"]
    root = tmp_path / "coco"
    _download(root, tmp_path / "out", zip_server, annotations_sha1=sha1)
    assert [r for r in zip_server.hits(ZIP_PATH)][1][1].startswith("bytes=")  # resumed
    assert sorted(p.name for p in (root / "annotations").iterdir()) == [
        "annotations_trainval2017.zip",
        "instances_train2017.json",
        "instances_val2017.json",
    ]
    for f in ("train2017", "val2017"):
        assert (root / f"annotations/instances_{f}.json").read_bytes() == (
            synthetic_coco / f"annotations/instances_{f}.json"
        ).read_bytes()
    zip_server.requests.clear()
    _download(root, tmp_path / "out2", zip_server, annotations_sha1=sha1)
    assert zip_server.hits() == []  # annotations and images both already there


def test_annotations_checksum_mismatch(synthetic_coco, zip_server, tmp_path):
    _make_zip(synthetic_coco, zip_server.root / ZIP_PATH.lstrip("/"))
    root = tmp_path / "coco"
    with pytest.raises(DownloadError, match="SHA-1 .* does not match the recorded " + "0" * 40):
        _download(root, tmp_path / "out", zip_server, annotations_sha1="0" * 40)
    assert not list((root / "annotations").iterdir())
    assert _no_outputs(tmp_path / "out")


def test_default_checksum_is_the_published_one():
    assert ANNOTATIONS_SHA1 == "8551ee4bb5860311e79dace7e79cb91e432e78b3"


@pytest.mark.parametrize(
    "evil", ["../evil.json", "annotations/../../evil.json", "/tmp/evil.json", "./"]
)
def test_zip_slip_is_rejected(synthetic_coco, zip_server, tmp_path, evil):
    sha1 = _make_zip(synthetic_coco, zip_server.root / ZIP_PATH.lstrip("/"), {evil: b"pwned"})
    root = tmp_path / "deep" / "coco"
    with pytest.raises(DownloadError, match="escape"):
        _download(root, tmp_path / "out", zip_server, annotations_sha1=sha1)
    assert not list(tmp_path.rglob("evil.json"))
    assert not (root / "annotations/instances_train2017.json").exists()
    assert _no_outputs(tmp_path / "out")


def test_annotations_zip_missing_members(synthetic_coco, zip_server, tmp_path):
    import zipfile

    dest = zip_server.root / ZIP_PATH.lstrip("/")
    with zipfile.ZipFile(dest, "w") as zf:
        zf.writestr("annotations/captions_train2017.json", b"{}")
    sha1 = hashlib.sha1(dest.read_bytes()).hexdigest()
    with pytest.raises(DownloadError, match="instances_train2017.json"):
        _download(tmp_path / "coco", tmp_path / "out", zip_server, annotations_sha1=sha1)


# --- download_file and file_sha1 on their own ------------------------------------------------
def test_download_file_keeps_existing_files_and_checks_new_ones(synthetic_coco, server, tmp_path):
    name = sorted((synthetic_coco / "train2017").iterdir())[0].name
    url = f"{server.url}/train2017/{name}"
    dest = tmp_path / "cache" / name
    assert download_file(url, dest, backoff=0.01) is True
    assert dest.read_bytes() == (synthetic_coco / "train2017" / name).read_bytes()
    assert download_file(url, dest) is False  # an existing file is taken as complete
    assert len(server.hits()) == 1

    def reject(path: Path) -> None:
        raise ValueError("not what we wanted")

    with pytest.raises(DownloadError, match="failed its check: not what we wanted"):
        download_file(url, tmp_path / "other.jpg", verify=reject)
    assert not list(tmp_path.glob("other.jpg*"))


def test_file_sha1_reads_in_chunks(tmp_path):
    path = tmp_path / "blob"
    path.write_bytes(bytes(range(256)) * 9000)  # over 2 MiB: several chunks
    assert file_sha1(path) == hashlib.sha1(path.read_bytes()).hexdigest()
