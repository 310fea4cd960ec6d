"""Playwright driving Debian's Chromium: open the studio, move a slider, see the preview change, visit every panel,
export, and keep screenshots in test-artifacts/ (skipped when Chromium or Playwright is missing)."""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"
sys.path.insert(0, str(ROOT / "bench"))

from browser_latency import release_and_count  # noqa: E402  (the bench's measurement of one slider release)

pytestmark = pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="Chromium is not installed")


@contextlib.contextmanager
def studio_page(url: str):
    """A headless Chromium page on the studio at ``url``, once the first preview has arrived."""
    sync_api = pytest.importorskip("playwright.sync_api")
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        try:
            page = browser.new_page(viewport={"width": 1500, "height": 1000})
            page.goto(url)
            sync_api.expect(page.locator("#latency")).to_contain_text("ms", timeout=60_000)
            yield page
        finally:
            browser.close()


def test_studio_in_a_browser(studio_server):
    sync_api = pytest.importorskip("playwright.sync_api")
    with studio_page(studio_server["url"]) as page:
        latency = page.locator("#latency")
        page.screenshot(path=str(ARTIFACTS / "01-models.png"), full_page=True)
        before = page.locator("#raw-preview").inner_text() if page.locator("#raw-preview").count() else ""
        first_latency = latency.inner_text()

        page.get_by_role("tab", name="Recipe").click()
        # drag the L00 slider to 2.5 and let go: the release re-merges, and only the preview and what the
        # change touches re-render (the recipe's text, the per-layer note, the history), not the control column
        _, touched = release_and_count(page, "#strip-1", 2.5)
        assert touched < 20, touched
        sync_api.expect(latency).not_to_have_text(first_latency, timeout=30_000)
        sync_api.expect(page.locator("#yaml")).to_contain_text("L00", timeout=10_000)
        page.screenshot(path=str(ARTIFACTS / "02-recipe-after-slider.png"), full_page=True)
        table = page.locator("#score-table").inner_text()
        assert "average" in table

        # Analysis: the 1-D line and the task-vector plane
        page.get_by_role("tab", name="Analysis").click()
        page.locator("#sweep-btn").click()
        sync_api.expect(page.locator("#landscape .js-plotly-plot")).to_be_visible(timeout=60_000)
        page.locator("#plane-grid input[type=number]").fill("5")
        page.locator("#plane-grid input[type=number]").press("Enter")
        page.locator("#plane-btn").click()
        sync_api.expect(page.locator("#plane .js-plotly-plot")).to_be_visible(timeout=90_000)
        sync_api.expect(page.locator("#plane-note")).to_contain_text("merges scored")
        sync_api.expect(page.get_by_text("processing")).to_have_count(0, timeout=30_000)
        page.screenshot(path=str(ARTIFACTS / "03-analysis.png"), full_page=True)

        page.get_by_role("tab", name="History").click()
        sync_api.expect(page.locator("#history-table")).to_contain_text("task_arithmetic")
        page.screenshot(path=str(ARTIFACTS / "05-history.png"), full_page=True)

        # Optimize: a short learned run, loaded into the sliders
        page.get_by_role("tab", name="Optimize").click()
        if studio_server["family"] != "toy":
            page.locator("#learn-steps input[type=number]").fill("20")
            page.locator("#learn-steps input[type=number]").press("Enter")
            page.locator("#learn-btn").click()
            sync_api.expect(page.locator("#learn-result")).to_contain_text("learned in", timeout=120_000)
            page.locator("#learn-load").click()
            sync_api.expect(page.locator("#yaml")).to_contain_text("adamerging", timeout=60_000)
            sync_api.expect(page.locator("#history-table")).to_contain_text("weight[digits]=", timeout=60_000)
            sync_api.expect(page.get_by_text("processing")).to_have_count(0, timeout=30_000)
        page.screenshot(path=str(ARTIFACTS / "06-optimize.png"), full_page=True)

        page.get_by_role("tab", name="Export").click()
        page.locator("#export-name input, #export-name textarea").first.fill("browser-export")
        page.locator("#export-btn").click()
        sync_api.expect(page.locator("#export-result")).to_contain_text("Exported", timeout=60_000)
        page.screenshot(path=str(ARTIFACTS / "04-export.png"), full_page=True)
        assert (studio_server["export_dir"] / "browser-export.safetensors").is_file()
        assert before is not None

        # the other zoo families: text (perplexity + generations) and diffusion (image grid + style scores)
        families = studio_server["env"].catalog.names()
        for fam, shot, ready in (("text", "07-text.png", "#samples"), ("diffusion", "08-diffusion.png",
                                                                        "#gallery")):
            if fam not in families:
                continue
            page.get_by_role("tab", name="Models").click()
            page.locator("#family input").click()
            page.get_by_role("option", name=fam, exact=True).click()
            sync_api.expect(page.locator("#verdict")).to_contain_text("Ready", timeout=60_000)
            sync_api.expect(latency).to_contain_text("perplexity" if fam == "text" else "style",
                                                     timeout=120_000)
            if fam == "text":
                sync_api.expect(page.locator("#samples")).to_contain_text("Generations", timeout=30_000)
            else:
                sync_api.expect(page.locator("#sample-grid img").first).to_be_visible(timeout=30_000)
            sync_api.expect(page.get_by_text("processing")).to_have_count(0, timeout=30_000)
            page.screenshot(path=str(ARTIFACTS / shot), full_page=True)


def test_own_sd_pipelines_in_a_browser(own_sd_server):
    """A user's own SD1 pipelines from disk: add both, type a prompt, move a block slider of the U, see the image
    change (screenshots 09, 10)."""
    sync_api = pytest.importorskip("playwright.sync_api")
    with studio_page(own_sd_server["url"]) as page:
        latency = page.locator("#latency")
        page.get_by_text("Add your own model or LoRA").click()
        for folder in own_sd_server["models"]:
            page.get_by_label("Path, folder or hub id").fill(str(folder))
            page.get_by_role("button", name="Add model", exact=True).click()
            sync_api.expect(page.locator("#include-models")).to_contain_text(folder.name, timeout=60_000)
        # the merge's image, then the previous merge's and each input model's for the same prompt and seed
        image = page.locator("#gallery img").first
        sync_api.expect(image).to_be_visible(timeout=120_000)
        sync_api.expect(page.locator("#gallery")).to_contain_text("my-sd-b · 1")
        sync_api.expect(page.get_by_text("processing")).to_have_count(0, timeout=60_000)

        prompt = page.locator("#req-text-0 textarea")
        sync_api.expect(prompt).to_have_value("a photograph of an astronaut riding a horse")
        sync_api.expect(page.locator("#family-about")).to_contain_text("Your own models")
        sync_api.expect(page.locator("#score-plot")).to_be_hidden()  # pictures only: no empty chart
        shown = latency.inner_text()
        prompt.fill("a lighthouse at dusk")
        prompt.blur()
        sync_api.expect(latency).not_to_have_text(shown, timeout=60_000)
        sync_api.expect(page.get_by_text("processing")).to_have_count(0, timeout=60_000)
        page.screenshot(path=str(ARTIFACTS / "09-own-sd.png"), full_page=True)
        before = image.get_attribute("src")

        page.get_by_role("tab", name="Recipe").click()
        ms, _ = release_and_count(page, "#u-left-1", 0.0)  # IN01 from my-sd-b alone
        sync_api.expect(page.locator("#yaml")).to_contain_text("IN01", timeout=10_000)
        # the U holds together from 1280 to 1920 px: IN down the left, OUT up the right, side by side
        for width in (1280, 1920, 1500):
            page.set_viewport_size({"width": width, "height": 1000})
            page.wait_for_timeout(300)
            left, right = (page.locator(f"#u-{side}-0").bounding_box() for side in ("left", "right"))
            assert right["x"] > left["x"] + left["width"] and abs(right["y"] - left["y"]) < 40, (width, left, right)
            if width == 1280:
                page.screenshot(path=str(ARTIFACTS / "11-own-sd-u-1280.png"), full_page=True)
        # keys commit like the mouse: an arrow key on a slider, a number typed into its box and Enter
        shown = latency.inner_text()
        page.locator("#m-slider-0-0 input[type=range]").press("ArrowLeft")
        sync_api.expect(latency).not_to_have_text(shown, timeout=30_000)
        sync_api.expect(page.locator("#yaml")).to_contain_text("0.99, IN01: 0.0", timeout=10_000)
        shown = latency.inner_text()
        box = page.locator("#m-slider-1-0 input[type=number]")
        box.fill("0.4")
        box.press("Enter")
        sync_api.expect(latency).not_to_have_text(shown, timeout=30_000)
        sync_api.expect(page.locator("#yaml")).to_contain_text("weight: 0.4", timeout=10_000)
        # the preview stays in view with the controls scrolled to their end
        page.evaluate("() => window.scrollTo(0, document.body.scrollHeight)")
        page.wait_for_timeout(300)
        box = page.locator("#latency").bounding_box()
        assert page.evaluate("() => window.scrollY") > 200 and -4 <= box["y"] < 200, box
        page.get_by_role("tab", name="Models").click()
        sync_api.expect(image).not_to_have_attribute("src", before, timeout=30_000)
        page.screenshot(path=str(ARTIFACTS / "10-own-sd-after-slider.png"), full_page=True)


def test_a_search_in_the_browser_refreshes_while_it_runs_and_loads_a_trial(studio_server):
    """The Optimize tab's Search section: tick λ, give a function of the merged tensors, Search; the timer brings the
    convergence plot and the best trials in without another click, and Load into sliders makes a trial the recipe."""
    sync_api = pytest.importorskip("playwright.sync_api")
    folder = studio_server["export_dir"]
    (folder / "browser_search_objective.py").write_text(
        "import time\n\ndef score(state):\n    time.sleep(0.2)\n"
        "    return float(sum(v.float().abs().sum() for v in state.values()))\n")
    sys.path.insert(0, str(folder))
    try:
        with studio_page(studio_server["url"]) as page:
            page.get_by_role("tab", name="Optimize").click()
            page.locator("#search-box").get_by_text("Search settings against an objective").click()
            page.locator("#search-settings label").first.click()
            page.locator("#search-own input, #search-own textarea").first.fill(
                "python:browser_search_objective:score")
            page.locator("#search-trials input").fill("6")
            page.locator("#search-start").click()
            sync_api.expect(page.locator("#search-status")).to_contain_text("Searching", timeout=30_000)
            sync_api.expect(page.locator("#search-status")).to_contain_text("Finished after 6", timeout=90_000)
            sync_api.expect(page.locator("#search-plot .js-plotly-plot")).to_be_visible()
            sync_api.expect(page.locator("#search-table")).to_contain_text("browser_search_objective")
            page.screenshot(path=str(ARTIFACTS / "09-search.png"), full_page=True)
            page.locator("#search-load").click()
            sync_api.expect(page.get_by_text("processing")).to_have_count(0, timeout=60_000)
            page.get_by_role("tab", name="History").click()
            sync_api.expect(page.locator("#history-table")).to_contain_text("lambda", timeout=60_000)
    finally:
        sys.path.remove(str(folder))
