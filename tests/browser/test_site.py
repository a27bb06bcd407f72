"""A page of the offline site: it renders with no kernel and no network, and a bokeh control
switches the plot to another precomputed result."""

from __future__ import annotations

import time

from phyrlab.report import build_site

from .test_notebooks_live import fingerprint


def test_site_page_control_works_without_kernel(browser, tmp_path, artifacts):
    build_site(tmp_path, only=["01-storage-size"])
    page = browser.new_page(viewport={"width": 1024, "height": 768})
    requests = []
    page.on("request", lambda r: requests.append(r.url))
    page.goto((tmp_path / "01-storage-size.html").as_uri())
    page.wait_for_function("() => window.Bokeh && window.Bokeh.documents.length > 0",
                           timeout=30_000)
    time.sleep(1)
    before = fingerprint(page)
    select = page.locator("select").first
    select.scroll_into_view_if_needed()
    options = select.locator("option").all_inner_texts()
    select.select_option(options[-1])
    deadline = time.time() + 10
    while fingerprint(page) == before and time.time() < deadline:
        time.sleep(0.2)
    assert fingerprint(page) != before, "the site's control did not change the plot"
    page.screenshot(path=str(artifacts / "site-01-storage-size.png"))
    assert all(u.startswith(("file:", "data:", "blob:", "about:")) for u in requests), requests
    page.close()
