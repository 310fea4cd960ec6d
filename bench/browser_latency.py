"""Browser-visible latency of a per-layer slider release, and how many components it re-renders.

Starts ``python app.py`` from a checkout (this one by default, and optionally a second one to compare, one after the
other in the same run), opens it in Debian's Chromium through Playwright, waits for the first preview, then releases a
per-layer slider of the Recipe tab ``--releases`` times. For each release it measures the time from the pointer
release to the preview's latency line showing the new result (what a person sees), and counts the Gradio components
whose DOM changed in between (a MutationObserver on the page; each component renders in one ``div.block``, and
status fades count, as a person sees them too).

    python bench/browser_latency.py [--releases 15] [--compare /path/to/other/checkout] [--threads 1]

Prints the median latency and component count per checkout, and the ratio between them when comparing.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
HERE = Path(__file__).resolve().parents[1]

OBSERVER_JS = """
() => {
  // a Gradio component renders inside one div.block; a mutation counts for the nearest enclosing block
  window.__touched = new Set();
  const owner = (n) => {
    for (let e = n.nodeType === 1 ? n : n.parentElement; e; e = e.parentElement) {
      if (e.classList && e.classList.contains('block')) return e;
    }
    return null;
  };
  window.__obs && window.__obs.disconnect();
  window.__obs = new MutationObserver((records) => {
    for (const r of records) { const b = owner(r.target); if (b) window.__touched.add(b); }
  });
  window.__obs.observe(document.body, {subtree: true, childList: true, attributes: true, characterData: true});
}
"""


def release_and_count(page, slider: str, value: float) -> tuple[float, int]:
    """Drag the slider ``slider`` (a CSS selector of its block) to ``value`` and let go; wait until the preview shows
    the new result and nothing is pending. Returns (milliseconds from the release, components whose DOM changed)."""
    from playwright.sync_api import expect

    latency = page.locator("#latency")
    handle = page.locator(f"{slider} input[type=range]")
    expect(handle).to_be_visible(timeout=10_000)
    page.wait_for_timeout(300)  # let the previous update's animations settle
    before = latency.inner_text()
    page.evaluate(OBSERVER_JS)
    handle.fill(f"{value:.2f}")
    t0 = time.perf_counter()
    handle.dispatch_event("pointerup")
    page.wait_for_function("(b) => { const l = document.querySelector('#latency');"
                           " return l.innerText != b && !document.querySelector('.pending, .eta-bar'); }",
                           arg=before, timeout=60_000)
    ms = (time.perf_counter() - t0) * 1000
    page.wait_for_timeout(150)  # late DOM work of the same update still counts
    return ms, page.evaluate("() => window.__touched.size")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, proc, timeout: float = 120.0) -> None:
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"the studio exited with {proc.returncode}")
        try:
            urllib.request.urlopen(url, timeout=2).read(100)
            return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"the studio did not answer on {url} within {timeout:.0f} s")


def measure(checkout: Path, releases: int, threads: int | None) -> dict:
    from playwright.sync_api import expect, sync_playwright

    port = _free_port()
    cmd = [sys.executable, "app.py", "--port", str(port)] + (["--threads", str(threads)] if threads else [])
    env = dict(os.environ, HF_HUB_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False")
    proc = subprocess.Popen(cmd, cwd=checkout, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_http(url, proc)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=[
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
            page = browser.new_page(viewport={"width": 1440, "height": 900})
            page.goto(url)
            latency = page.locator("#latency")
            expect(latency).to_contain_text("ms", timeout=120_000)
            page.get_by_role("tab", name="Recipe").click()
            times, counts, server = [], [], []
            for i in range(releases):
                ms, touched = release_and_count(page, f"#strip-{1 + i % 4}", 0.3 + 0.1 * (i % 10))
                times.append(ms)
                counts.append(touched)
                text = latency.inner_text()
                server.append(text.split("updated in ")[-1].split(" ms")[0] if "updated in" in text else "?")
            browser.close()
        srv = [float(s) for s in server if s.replace(".", "").isdigit()]
        return {"checkout": str(checkout), "median_ms": statistics.median(times), "min_ms": min(times),
                "components": statistics.median(counts), "components_max": max(counts),
                "server_ms": statistics.median(srv) if srv else None, "releases": releases}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--releases", type=int, default=15)
    ap.add_argument("--compare", type=Path, default=None, help="a second checkout measured right after this one")
    ap.add_argument("--threads", type=int, default=None, help="passed to app.py --threads")
    args = ap.parse_args(argv)
    if not os.path.exists(CHROMIUM):
        print("SKIPPED: /usr/bin/chromium is not installed")
        return 0
    rows = []
    for checkout in [HERE] + ([args.compare.resolve()] if args.compare else []):
        r = measure(checkout, args.releases, args.threads)
        rows.append(r)
        print(f"{r['checkout']}: slider release → visible preview median {r['median_ms']:.0f} ms "
              f"(min {r['min_ms']:.0f} ms; server-side {r['server_ms']} ms) · components re-rendered: median "
              f"{r['components']:.0f}, max {r['components_max']} · {r['releases']} releases")
    if len(rows) == 2:
        a, b = rows
        print(f"ratio (this / compared): latency {a['median_ms'] / b['median_ms']:.2f}×, components "
              f"{a['components'] / max(b['components'], 1):.2f}×")
    return 0


if __name__ == "__main__":
    sys.exit(main())
