"""Drive one JupyterLab page in Chromium as a person does, and read back what it shows.

Menus are clicked by their labels, sliders are found by their description text and moved
with the keyboard or the mouse, and every wait is bounded. Nothing here knows a notebook's
cell numbers: cells are found by what they show (a slider, an image).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field

from playwright.sync_api import Locator, Page

STDERR = '.jp-RenderedText[data-mime-type="application/vnd.jupyter.stderr"]'
# A traceback, or a line that starts with an exception name ("ValueError: ...").
ERROR_TEXT = re.compile(r"Traceback \(most recent call last\)|^\s*\w*(Error|Exception)\b", re.M)
WIDGET_ERRORS = ("Error displaying widget", "model not found")

# Reads, per code cell: its prompt, first source line, stderr texts and whole output text.
_CELLS_JS = """
(panel, stderr) => [...panel.querySelectorAll('.jp-Notebook .jp-CodeCell')].map((cell) => {
  const prompt = cell.querySelector('.jp-InputPrompt');
  const source = cell.querySelector('.jp-InputArea-editor .cm-content');
  const out = cell.querySelector('.jp-Cell-outputArea');
  return {
    prompt: prompt ? prompt.textContent.trim() : '',
    source: source ? source.innerText.split('\\n').find((l) => l.trim()) || '' : '',
    stderr: [...cell.querySelectorAll(stderr)].map((e) => e.innerText),
    text: out ? out.innerText : '',
  };
})
"""


# Only the prompts and the status bar's kernel item: cheap enough to poll (no layout).
_PROMPTS_JS = """
() => {
  const panel = document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden)');
  const prompts = panel
    ? [...panel.querySelectorAll('.jp-Notebook .jp-CodeCell .jp-InputPrompt')].map((e) => e.textContent)
    : [];
  const item = document.querySelector('.jp-StatusBar-TextItem[title^="Change kernel"]');
  return [prompts, item ? item.textContent : ''];
}
"""


# FNV-1a over each output image's src: equal digests mean the same bytes, for our purposes.
_IMAGE_DIGESTS_JS = """
(cell) => [...cell.querySelectorAll('.jp-Cell-outputArea img')].map((img) => {
  const src = img.getAttribute('src') || '';
  let h = 0x811c9dc5;
  for (let i = 0; i < src.length; i++) {
    h ^= src.charCodeAt(i);
    h = Math.imul(h, 0x01000193) >>> 0;
  }
  return `${src.length}:${h.toString(16)}`;
})
"""


def _kernel_state(status: str) -> str | None:
    """ "Python 3 (ipykernel) | Idle" -> "idle"; None while no kernel is attached."""
    name, _, state = status.rpartition("|")
    return state.strip().lower() if name.strip() and "No Kernel" not in name else None


@dataclass
class Cell:
    """What one code cell shows: ``count`` is its execution count, None before it ran."""

    index: int
    prompt: str
    source: str
    stderr: list[str] = field(default_factory=list)
    text: str = ""

    @property
    def running(self) -> bool:
        return "*" in self.prompt

    @property
    def count(self) -> int | None:
        m = re.search(r"\[(\d+)\]", self.prompt)
        return int(m.group(1)) if m else None

    def label(self) -> str:
        return f"cell {self.index + 1} `{self.source.strip()[:70]}`"


class LabPage:
    """One browser page on a JupyterLab server, with one notebook open at a time."""

    def __init__(self, page: Page, base_url: str, run_timeout_s: float):
        self.page = page
        self.base_url = base_url.rstrip("/")
        self.run_timeout_s = run_timeout_s
        self.current: str | None = None
        self.console: list[str] = []
        page.on("console", lambda m: self.console.append(f"[{m.type}] {m.text}"))
        page.on("pageerror", lambda e: self.console.append(f"[pageerror] {e}"))

    # --- opening and running --------------------------------------------------------------
    @property
    def notebook(self) -> Locator:
        return self.page.locator(".jp-NotebookPanel:not(.lm-mod-hidden)").first

    @property
    def code_cells(self) -> Locator:
        return self.notebook.locator(".jp-Notebook .jp-CodeCell")

    def open(self, path: str) -> None:
        """Open ``path`` (relative to the server root) alone in a fresh workspace."""
        self.current = None
        self.page.goto(f"{self.base_url}/lab/tree/{path}?reset", timeout=60_000)
        self.code_cells.first.wait_for(timeout=60_000)
        self._wait(lambda: self.kernel_status() == "idle", 60, f"the kernel of {path} to start")
        self.current = path

    def menu(self, top: str, item: str) -> None:
        """Click ``top`` in the menu bar, then ``item`` in its menu."""
        self.page.get_by_role("menuitem", name=top, exact=True).click()
        self.page.get_by_role("menuitem", name=item, exact=True).click()

    def run_all(self) -> None:
        """Run > Run All Cells, and wait until the kernel is done."""
        self.menu("Run", "Run All Cells")
        self.wait_for_run(0, after=0, what="Run All Cells")

    def run_from(self, index: int) -> None:
        """Select code cell ``index`` and Run > Run Selected Cell and All Below."""
        after = max((c.count or 0) for c in self.cells())
        cell = self.code_cells.nth(index)
        cell.scroll_into_view_if_needed()
        cell.locator(".jp-InputPrompt").click()
        self.menu("Run", "Run Selected Cell and All Below")
        self.wait_for_run(
            index, after=after, what=f"Run Selected Cell and All Below from cell {index + 1}"
        )

    def wait_for_run(self, index: int, after: int, what: str) -> None:
        """Wait until code cell ``index`` has run (count > ``after``) and nothing is queued."""

        def done() -> bool:
            prompts, status = self.page.evaluate(_PROMPTS_JS)
            cells = [Cell(i, p, "") for i, p in enumerate(prompts)]
            return (
                index < len(cells)
                and (cells[index].count or 0) > after
                and not any(c.running for c in cells)
                and _kernel_state(status) == "idle"
            )

        # Twice in a row: the kernel goes idle for a moment between queued cells.
        self._wait(lambda: done() and (time.sleep(0.5) or done()), self.run_timeout_s, what)

    def kernel_status(self) -> str | None:
        """The status bar's kernel state ("idle", "busy", ...); None before a kernel is attached."""
        return _kernel_state(self.page.evaluate(_PROMPTS_JS)[1])

    def cells(self) -> list[Cell]:
        rows = self.notebook.evaluate(_CELLS_JS, STDERR)
        return [Cell(i, **row) for i, row in enumerate(rows)]

    # --- what went wrong ------------------------------------------------------------------
    def problems(self) -> list[str]:
        """Errors the notebook shows: tracebacks, error lines on stderr, broken widgets, cells never run."""
        found, cells = [], self.cells()
        for cell in cells:
            for text in cell.stderr:
                if ERROR_TEXT.search(text):
                    found.append(f"{cell.label()} shows an error:\n{_tail(text)}")
            for marker in WIDGET_ERRORS:
                if marker in cell.text:
                    found.append(f"{cell.label()} shows a broken widget: {marker!r}")
        found = list(dict.fromkeys(found))  # a widget redrawn twice shows the same error twice
        unrun = [c.index + 1 for c in cells if c.count is None]
        if unrun and not found:
            found.append(f"code cells {unrun} never ran")
        return found

    def outputs_text(self) -> str:
        """Every code cell's source line and output text, for a failure's artefacts."""
        return "\n\n".join(f"## {c.prompt} {c.source}\n{c.text}" for c in self.cells())

    # --- widgets --------------------------------------------------------------------------
    def slider(self, label: re.Pattern[str]) -> Locator:
        """The one slider whose description matches ``label``; fails listing the labels shown."""
        sliders = self.notebook.locator(".widget-slider")
        match = sliders.filter(has=self.page.locator(".widget-label", has_text=label))
        if match.count() != 1:
            labels = sliders.locator(".widget-label").all_inner_texts()
            raise AssertionError(
                f"{self.current}: expected one slider labelled /{label.pattern}/, found "
                f"{match.count()}; sliders shown: {labels}"
            )
        return match

    def text_field(self, label: re.Pattern[str]) -> Locator:
        """The text inputs whose description matches ``label`` (none, one or more)."""
        box = self.notebook.locator(".widget-text").filter(
            has=self.page.locator(".widget-label", has_text=label)
        )
        return box.locator("input")

    def slider_value(self, slider: Locator) -> float:
        """The handle's position (for a log slider, the exponent)."""
        return float(slider.locator(".noUi-handle").get_attribute("aria-valuenow"))

    def readout(self, slider: Locator) -> str:
        return slider.locator(".widget-readout").inner_text().strip()

    def press(self, slider: Locator, key: str) -> None:
        """Click the slider's handle and press ``key`` (ArrowRight, Home, End ...)."""
        before = self.slider_value(slider)
        handle = slider.locator(".noUi-handle")
        handle.scroll_into_view_if_needed()
        handle.click()
        handle.press(key)
        self._wait(lambda: self.slider_value(slider) != before, 10, f"the slider to move on {key}")

    def drag(self, slider: Locator, steps: float) -> None:
        """Drag the slider's handle with the mouse by about ``steps`` of its unit."""
        handle = slider.locator(".noUi-handle")
        handle.scroll_into_view_if_needed()
        lo = float(handle.get_attribute("aria-valuemin"))
        hi = float(handle.get_attribute("aria-valuemax"))
        track = slider.locator(".noUi-base").bounding_box()
        box = handle.bounding_box()
        x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
        before = self.slider_value(slider)
        self.page.mouse.move(x, y)
        self.page.mouse.down()
        self.page.mouse.move(x + steps * track["width"] / (hi - lo), y, steps=5)
        self.page.mouse.up()
        self._wait(lambda: self.slider_value(slider) != before, 10, "the slider to move on a drag")

    def cell_index(self, inner: Locator) -> int:
        """Index of the code cell that holds ``inner``."""
        return inner.first.evaluate(
            "(el, sel) => [...document.querySelectorAll(sel)].indexOf(el.closest('.jp-CodeCell'))",
            ".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook .jp-CodeCell",
        )

    def images(self, index: int) -> list[str]:
        """A digest of each image in code cell ``index``'s outputs (widget outputs included).

        Digests, computed in the page, rather than the data URLs: those are megabytes to poll.
        """
        return self.code_cells.nth(index).evaluate(_IMAGE_DIGESTS_JS)

    def wait_images_change(self, index: int, before: list[str], timeout_s: float) -> bool:
        """Whether code cell ``index`` shows different images within ``timeout_s``."""
        try:
            self._wait(lambda: (now := self.images(index)) and now != before, timeout_s, "")
        except TimeoutError:
            return False
        return True

    # --- helpers --------------------------------------------------------------------------
    def _wait(self, ok, timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if ok():
                return
            time.sleep(0.5)
        raise TimeoutError(f"{self.current}: gave up after {timeout_s:.0f} s waiting for {what}")


def _tail(text: str, lines: int = 12) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])
