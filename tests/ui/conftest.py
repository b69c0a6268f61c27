"""JupyterLab in a real browser: one server, one Chromium, the notebooks in order.

- The server runs on 127.0.0.1 on a port the OS picks, without a token, in a scratch folder
  that holds copies of the notebooks (so nothing, autosave included, writes into the
  checkout), with ``SEGLIB_PROFILE=smoke``, ``SEGLIB_DATA`` in that folder and a tiny run
  through ``SEGLIB_SET`` (override it with ``SEGLIB_UI_SET``).
- Its kernels run with ``MPLBACKEND=Agg``, as on a headless server or in CI, where ipykernel
  then leaves matplotlib's inline backend off: the notebooks must show their figures as
  images all the same (``seglib.viz.jupyter``).
- Chromium is Debian's (``/usr/bin/chromium``, or ``$SEGLIB_CHROMIUM``), driven by the
  ``playwright`` package. Without one the suite skips, but only where apt-get cannot install
  it; with ``SEGLIB_UI_REQUIRED=1`` (as ``.ci/run`` sets) it fails instead.
- On a failure: a screenshot, the notebook's outputs, the server log and the browser console
  go to ``$SEGLIB_UI_ARTIFACTS`` (default ``tests/ui/artifacts/``). On success: one
  screenshot per notebook in the run folder, ``<run>/screenshots/NN_name.png``.
"""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
NOTEBOOKS = REPO / "notebooks"
ARTIFACTS = Path(os.environ.get("SEGLIB_UI_ARTIFACTS") or REPO / "tests" / "ui" / "artifacts")
# About 2 training steps per epoch: the suite checks widgets and wiring, not learning. An
# untrained model fills every detection slot, so fewer slots make each post-processing and
# evaluation step (04-07) cheaper.
TINY_RUN = {
    "num_train": 4,
    "num_val": 2,
    "num_test": 2,
    "synthetic_images": 8,
    "num_epochs": 1,
    "warmup_iters": 1,
    "eval_interval": 1,
    "detections_per_img": 10,
    # notebook 08: 2 seeds of 2 steps per contender, training-set sizes 2 and 4
    "study_seeds": 2,
    "study_epochs": 1,
    "study_sizes": [2, 4],
}
# Seconds for one Run All; several times what a notebook needs on 2 idle cores.
RUN_TIMEOUT_S = float(os.environ.get("SEGLIB_UI_RUN_TIMEOUT", "300"))
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    # Without these Chromium calls home, and a closed network refuses it.
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# JupyterLab user settings: no autosave, every cell in the DOM, no news or update checks.
LAB_SETTINGS = {
    "@jupyterlab/docmanager-extension/plugin": {"autosave": False},
    "@jupyterlab/notebook-extension/tracker": {"windowingMode": "none"},
    "@jupyterlab/apputils-extension/notification": {"fetchNews": "false", "checkForUpdates": False},
}
SCREENSHOTS = pytest.StashKey[list]()
FAILED_ARTEFACTS = pytest.StashKey[list]()
KERNEL_CPU = pytest.StashKey[dict]()
CPU_OTHERS = pytest.StashKey[dict]()


# --- the browser ---------------------------------------------------------------------------
def find_chromium() -> str | None:
    named = os.environ.get("SEGLIB_CHROMIUM")
    if named:
        return named if os.access(named, os.X_OK) else None
    for candidate in ("/usr/bin/chromium", "chromium", "chromium-browser"):
        found = shutil.which(candidate)
        if found:
            return found
    return None


def apt_usable() -> bool:
    """Whether this machine could install Chromium with apt-get (root, or sudo without a password)."""
    if not shutil.which("apt-get"):
        return False
    if os.geteuid() == 0:
        return True
    sudo = shutil.which("sudo")
    return bool(sudo) and subprocess.run([sudo, "-n", "true"], capture_output=True).returncode == 0


def _no_browser(reason: str) -> None:
    if os.environ.get("SEGLIB_UI_REQUIRED") == "1" or apt_usable():
        pytest.fail(f"{reason}. Install it with tests/ui/install_chromium.sh (.ci/run does).")
    pytest.skip(
        f"{reason}, and apt-get cannot install it here (no apt-get, or not root and no sudo)"
    )


@pytest.fixture(scope="session")
def chromium_path() -> str:
    path = find_chromium()
    if path is None:
        _no_browser("no Chromium: looked for $SEGLIB_CHROMIUM, /usr/bin/chromium, chromium-browser")
    return path


@pytest.fixture(scope="session")
def browser(request, chromium_path, tmp_path_factory):
    """A persistent Chromium context with a fresh profile folder; closed even on failure."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("the playwright package is missing: pip install -r requirements.txt")
    profile = tmp_path_factory.mktemp("chromium-profile")
    pw = sync_playwright().start()
    try:
        context = pw.chromium.launch_persistent_context(
            str(profile),
            executable_path=chromium_path,
            headless=True,
            args=CHROMIUM_FLAGS,
            viewport={"width": 1400, "height": 1000},
            timeout=60_000,
        )
        try:
            context.set_default_timeout(30_000)
            yield context
        finally:
            chromium = sum(_cpu_seconds(pid) for pid in _pids_with(str(profile).encode()))
            request.config.stash[CPU_OTHERS]["(chromium)"] = chromium
            _quietly(context.close)
    finally:
        _quietly(pw.stop)


def _quietly(close) -> None:
    """Close what may already be gone (a browser killed along with us) without a new error."""
    try:
        close()
    except Exception:
        pass


# --- the server ----------------------------------------------------------------------------
@dataclass
class LabServer:
    url: str
    scratch: Path
    data: Path
    log: Path
    kernel_cpu: dict[str, float] = field(default_factory=dict)

    def newest_config(self) -> Path | None:
        """The most recently written run config under ``<data>/runs/`` (run folders may be named)."""
        found = list((self.data / "runs").rglob("config.json"))
        return max(found, key=lambda p: p.stat().st_mtime) if found else None

    def run_folder(self) -> Path:
        """The newest run's folder; the data root itself before any run exists."""
        newest = self.newest_config()
        return newest.parent if newest is not None else self.data

    def api(self, method: str, path: str) -> object:
        req = urllib.request.Request(f"{self.url}{path}", method=method)
        with urllib.request.urlopen(req, timeout=10) as r:
            body = r.read()
        return json.loads(body) if body else None

    def shut_down_kernels(self) -> None:
        """Shut down every session's kernel (frees CPU and memory between notebooks).

        Each kernel's CPU seconds go to ``kernel_cpu`` under its notebook's name first: the
        suite's cost, notebook by notebook, whatever else the machine is doing.
        """
        for session in self.api("GET", "/api/sessions"):
            marker = f"kernel-{session['kernel']['id']}.json".encode()
            cpu = sum(_cpu_seconds(pid) for pid in _pids_with(marker))
            name = Path(session["path"]).stem
            self.kernel_cpu[name] = self.kernel_cpu.get(name, 0.0) + cpu
            self.api("DELETE", f"/api/sessions/{session['id']}")


def _server_env(scratch: Path) -> dict[str, str]:
    # None of the caller's seglib settings (a run name, overrides) or Jupyter paths leak in.
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("SEGLIB_") and k not in ("JUPYTER_PATH", "JUPYTER_CONFIG_PATH")
    }
    env.update(
        SEGLIB_PROFILE="smoke",
        SEGLIB_DATA=str(scratch / "data"),
        SEGLIB_SET=os.environ.get("SEGLIB_UI_SET") or json.dumps(TINY_RUN),
        # The kernel imports seglib from this checkout, the one whose notebooks are tested.
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        JUPYTER_CONFIG_DIR=str(scratch / "jupyter-config"),
        JUPYTER_DATA_DIR=str(scratch / "jupyter-data"),
        JUPYTER_RUNTIME_DIR=str(scratch / "jupyter-runtime"),
        JUPYTERLAB_SETTINGS_DIR=str(scratch / "lab-settings"),
        JUPYTERLAB_WORKSPACES_DIR=str(scratch / "lab-workspaces"),
        IPYTHONDIR=str(scratch / "ipython"),
        # The headless case, whatever the caller's setting: figures must still show as images.
        MPLBACKEND="Agg",
    )
    return env


def _wait_for_server(proc: subprocess.Popen, runtime: Path, log: Path, timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"JupyterLab exited with {proc.returncode}:\n{_tail(log)}")
        for info in runtime.glob("jpserver-*.json"):
            try:
                url = json.loads(info.read_text())["url"].rstrip("/")
                with urllib.request.urlopen(f"{url}/api/status", timeout=2):
                    return url
            except (OSError, ValueError, KeyError):
                pass
        time.sleep(0.3)
    raise RuntimeError(f"JupyterLab did not answer within {timeout_s:.0f} s:\n{_tail(log)}")


def _pids_with(marker: bytes) -> list[int]:
    """Processes whose command line holds ``marker`` (Linux /proc; none elsewhere)."""
    pids = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if marker in (proc / "cmdline").read_bytes():
                pids.append(int(proc.name))
        except (OSError, ValueError):
            pass
    return pids


def _cpu_seconds(pid: int, children: bool = True) -> float:
    """User + system CPU seconds of ``pid`` (and of its reaped children) so far; 0 when gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    ticks = fields[11:15] if children else fields[11:13]
    return sum(int(t) for t in ticks) / os.sysconf("SC_CLK_TCK")


def _kill_kernels_left(scratch: Path) -> None:
    """Kernels run in their own sessions; find any left by their connection file's folder."""
    for pid in _pids_with(str(scratch / "jupyter-runtime").encode()):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


@pytest.fixture(scope="session")
def lab_server(request, tmp_path_factory):
    scratch = tmp_path_factory.mktemp("jupyterlab")
    shutil.copytree(
        NOTEBOOKS,
        scratch / "notebooks",
        ignore=shutil.ignore_patterns(".ipynb_checkpoints", "__pycache__", "conftest.py"),
    )
    (scratch / "data").mkdir()
    for name, values in LAB_SETTINGS.items():
        path = scratch / "lab-settings" / f"{name}.jupyterlab-settings"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))
    log = scratch / "jupyter-server.log"
    cmd = [
        sys.executable,
        "-m",
        "jupyterlab",
        "--no-browser",
        "--ServerApp.ip=127.0.0.1",
        "--ServerApp.port=0",
        "--IdentityProvider.token=",
        "--ServerApp.password=",
        "--ServerApp.disable_check_xsrf=True",
        f"--ServerApp.root_dir={scratch}",
        "--LabServerApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        # Should this process be killed outright, the orphans end themselves.
        "--MappingKernelManager.cull_idle_timeout=600",
        "--ServerApp.shutdown_no_activity_timeout=900",
    ]
    if os.geteuid() == 0:
        cmd.append("--allow-root")
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            cmd,
            cwd=scratch,
            env=_server_env(scratch),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = None
    try:
        url = _wait_for_server(proc, scratch / "jupyter-runtime", log, timeout_s=60)
        server = LabServer(url=url, scratch=scratch, data=scratch / "data", log=log)
        yield server
    except RuntimeError as e:
        _save_artefact(log, "jupyter-server.log")
        pytest.fail(str(e))
    finally:
        if server is not None:
            try:
                server.shut_down_kernels()
            except OSError:
                pass
            request.config.stash[KERNEL_CPU] = server.kernel_cpu
        # Without its children: they are the kernels, counted above.
        request.config.stash[CPU_OTHERS]["(jupyter server)"] = _cpu_seconds(proc.pid, False)
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=15)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)
        _kill_kernels_left(scratch)


@pytest.fixture(scope="session")
def lab(browser, lab_server):
    """The page that every test drives; one notebook open at a time."""
    from labpage import LabPage

    page = browser.pages[0] if browser.pages else browser.new_page()
    return LabPage(page, lab_server.url, run_timeout_s=RUN_TIMEOUT_S)


class Screenshots(dict):
    """Notebook stem -> PNG bytes (a short repr keeps failure reports readable)."""

    def __repr__(self) -> str:
        return f"Screenshots({sorted(self)})"


@pytest.fixture(scope="session")
def screenshots(request, lab_server):
    """``screenshots[stem] = png``; written to ``<run>/screenshots/`` at the end of the session."""
    shots = Screenshots()
    yield shots
    if not shots:
        return
    folder = lab_server.run_folder() / "screenshots"
    folder.mkdir(parents=True, exist_ok=True)
    for name, png in shots.items():
        (folder / f"{name}.png").write_bytes(png)
        request.config.stash[SCREENSHOTS].append(folder / f"{name}.png")


# --- failures ------------------------------------------------------------------------------
def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"({path} unreadable)"


def _save_artefact(source: Path | bytes | str, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    target = ARTIFACTS / name
    if isinstance(source, Path):
        shutil.copyfile(source, target)
    elif isinstance(source, bytes):
        target.write_bytes(source)
    else:
        target.write_text(source)
    return target


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.when == "call":
        item.stash[_CALL_REPORT] = report


_CALL_REPORT = pytest.StashKey[pytest.TestReport]()


@pytest.fixture(autouse=True)
def artefacts_on_failure(request):
    """After a failing test: screenshot, outputs, server log and browser console."""
    yield
    report = request.node.stash.get(_CALL_REPORT, None)
    if report is None or not report.failed:
        return
    name = re.sub(r"[^\w.-]+", "_", request.node.name)
    saved = []
    lab = request.node.funcargs.get("lab")
    server = request.node.funcargs.get("lab_server")
    if lab is not None:
        try:
            saved.append(_save_artefact(lab.page.screenshot(timeout=10_000), f"{name}.png"))
            saved.append(_save_artefact(lab.outputs_text(), f"{name}.outputs.txt"))
        except Exception as e:  # a dead page must not hide the test's own failure
            saved.append(_save_artefact(f"could not capture the page: {e}", f"{name}.png.txt"))
        saved.append(_save_artefact("\n".join(lab.console), "browser-console.log"))
    if server is not None:
        saved.append(_save_artefact(server.log, "jupyter-server.log"))
    request.config.stash[FAILED_ARTEFACTS].extend(saved)


# --- order and summary ---------------------------------------------------------------------
def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def pytest_configure(config):
    config.stash[SCREENSHOTS] = []
    config.stash[FAILED_ARTEFACTS] = []
    config.stash[CPU_OTHERS] = {}
    # A CI timeout sends SIGTERM: unwind like Ctrl-C so the fixtures stop server and browser.
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _interrupt)


def pytest_collection_modifyitems(items):
    """Notebooks run in order in one server: sort by (notebook prefix, step), keeping ties."""

    def key(item):
        mark = item.get_closest_marker("notebook")
        return tuple(mark.args) if mark else ("99", 0)

    ui = [i for i in items if Path(str(i.path)).is_relative_to(Path(__file__).parent)]
    others = [i for i in items if i not in ui]
    items[:] = others + sorted(ui, key=key)


def pytest_terminal_summary(terminalreporter, config):
    cpu = dict(sorted(config.stash.get(KERNEL_CPU, {}).items()))
    if cpu:
        cpu.update(config.stash.get(CPU_OTHERS, {}))
        own = resource.getrusage(resource.RUSAGE_SELF)
        cpu["(pytest)"] = own.ru_utime + own.ru_stime
        terminalreporter.write_sep("-", "CPU seconds: each notebook's kernel, then the rest")
        for name, seconds in cpu.items():
            terminalreporter.write_line(f"{name:<28} {seconds:6.1f}")
        terminalreporter.write_line(f"{'total':<28} {sum(cpu.values()):6.1f}")
    shots = config.stash.get(SCREENSHOTS, [])
    if shots:
        terminalreporter.write_sep("-", "notebook screenshots")
        for path in shots:
            terminalreporter.write_line(str(path))
    saved = config.stash.get(FAILED_ARTEFACTS, [])
    if saved:
        terminalreporter.write_sep("-", "browser test artefacts")
        for path in dict.fromkeys(saved):
            terminalreporter.write_line(str(path))
