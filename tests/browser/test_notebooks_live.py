"""Open every notebook in a real JupyterLab, run all cells, move a slider, and check that the
bokeh plot's data and pixels changed and that no cell shows an error. Screenshots go to
test-artifacts/."""

from __future__ import annotations

import hashlib
import time

import pytest

from phyrlab.nbtools import notebook_paths

BOKEH_DATA_JS = """
() => {
  if (!window.Bokeh || !window.Bokeh.documents) return null;
  const out = [];
  for (const doc of window.Bokeh.documents) {
    for (const m of doc.all_models) {
      if (m.data !== undefined && m.selected !== undefined) {
        const cols = {};
        for (const [k, v] of (m.data instanceof Map ? m.data.entries() : Object.entries(m.data)))
          cols[k] = Array.from(v, x => (typeof x === 'object' ? JSON.stringify(x) : x));
        out.push(cols);
      }
    }
  }
  return JSON.stringify(out);
}
"""


KERNEL_IDLE_JS = """() => {
  const k = document.querySelector('.jp-Notebook-ExecutionIndicator');
  return k !== null && k.getAttribute('data-status') === 'idle';
}"""


def wait_idle(page, timeout=240) -> bool:
    """Until every code cell has run (no '[*]' prompt) and the kernel is idle; False if cells
    stay unrun with the kernel idle (the run-all was dropped)."""
    idle_unrun_since = None
    deadline = time.time() + timeout
    while time.time() < deadline:
        busy = page.evaluate("""() => {
          const prompts = [...document.querySelectorAll('.jp-InputArea-prompt')]
            .map(e => e.textContent);
          const kernel = document.querySelector('.jp-Notebook-ExecutionIndicator');
          const running = prompts.some(t => t.includes('*'));
          const unrun = prompts.some(t => t.trim() === '[ ]:');
          return running || unrun || (kernel && kernel.getAttribute('data-status') === 'busy');
        }""")
        if not busy:
            return True
        if page.evaluate(KERNEL_IDLE_JS) and not page.evaluate(
                "() => [...document.querySelectorAll('.jp-InputArea-prompt')]"
                ".some(e => e.textContent.includes('*'))"):
            idle_unrun_since = idle_unrun_since or time.time()
            if time.time() - idle_unrun_since > 10:
                return False
        else:
            idle_unrun_since = None
        time.sleep(0.5)
    raise AssertionError("notebook did not finish running")


def fingerprint(page) -> str:
    return hashlib.sha1((page.evaluate(BOKEH_DATA_JS) or "").encode()).hexdigest()


@pytest.mark.parametrize("nb", [p.name for p in notebook_paths()])
def test_notebook_runs_and_slider_updates_plot(browser, lab, artifacts, nb):
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    stem = nb.removesuffix(".ipynb")
    # a workspace of its own, reset: no tab restored from another test's session
    page.goto(f"{lab['url']}/lab/workspaces/{stem}/tree/{nb}?reset&token={lab['token']}")
    page.wait_for_function("() => window.jupyterapp && window.jupyterapp.shell", timeout=60_000)
    page.wait_for_selector(".jp-Notebook", timeout=60_000)
    page.wait_for_function(KERNEL_IDLE_JS, timeout=120_000)
    time.sleep(1)
    for _attempt in range(3):  # a run-all sent while the kernel starts can be dropped
        page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
        time.sleep(3)
        if wait_idle(page):
            break
    else:
        raise AssertionError("notebook did not finish running")
    page.wait_for_function("() => window.Bokeh && window.Bokeh.documents.length > 0",
                           timeout=60_000)
    slider = page.locator(".jupyter-widgets .noUi-handle, .widget-slider .noUi-handle").first
    slider.scroll_into_view_if_needed()
    time.sleep(1)
    plot = page.locator(".bk-Figure, .bk-Column, .bk-Row").first
    before_png = plot.screenshot(path=str(artifacts / f"{stem}-before.png"))
    before = fingerprint(page)
    slider.scroll_into_view_if_needed()  # the screenshot may have scrolled it away
    time.sleep(0.5)
    box = slider.bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] / 2 + 120, box["y"] + box["height"] / 2, steps=8)
    page.mouse.up()
    deadline = time.time() + 60
    while fingerprint(page) == before and time.time() < deadline:
        time.sleep(0.5)
    assert fingerprint(page) != before, "moving the slider did not change the plot's data"
    time.sleep(1.5)
    after_png = plot.screenshot(path=str(artifacts / f"{stem}-after.png"))
    assert before_png != after_png, "the plot's pixels did not change"
    error_outputs = page.locator(
        ".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']").all_inner_texts()
    shown = [t for t in error_outputs if "Traceback" in t or "Error" in t]
    assert not shown, shown
    assert page.locator(".jp-RenderedText[data-mime-type='application/vnd.jupyter.error']"
                        ).count() == 0
    page.screenshot(path=str(artifacts / f"{stem}-page.png"), full_page=False)
    page.close()
