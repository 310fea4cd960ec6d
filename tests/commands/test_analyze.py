"""`python -m studio analyze`: the JSON contract, one-line errors, and the HTML report rendered in headless
Chromium."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from studio.cli import main

ROOT = Path(__file__).resolve().parents[2]


def test_json_contract(recipe_path, capsys):
    assert main(["analyze", str(recipe_path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [g["group"] for g in out["groups"]] == ["EMB", "L00", "L01", "L02", "HEAD"]
    for g in out["groups"] + [out["overall"]]:
        assert isinstance(g["sign_conflict"], float)
        assert len(g["cosine"]) == 3 and all(len(r) == 3 for r in g["cosine"])
        assert len(g["norms"]) == 3
    assert out["density"] == 0.5 and out["overall"]["trimmed"]["sign_conflict"] <= out["overall"]["sign_conflict"]


def test_bad_input_is_one_line(tmp_path, capsys):
    bad = tmp_path / "r.yaml"
    bad.write_text("merge_method: linear\nmodels:\n  - model: a\n  - model: b\n")
    assert main(["analyze", str(bad), "--json"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err


def test_progress_goes_to_stderr_with_an_estimate_and_json_stays_clean(recipe_path, tmp_path, capsys):
    assert main(["analyze", str(recipe_path), "--out", str(tmp_path / "r.html"), "--zoo", "none"]) == 0
    err = capsys.readouterr().err
    assert "task vectors: 100%" in err and "<" in err  # elapsed<remaining, as tqdm estimates it
    assert main(["analyze", str(recipe_path), "--json"]) == 0
    assert capsys.readouterr().err == ""


def test_html_report_renders_in_chromium(recipe_path, tmp_path):
    out = tmp_path / "report.html"
    assert main(["analyze", str(recipe_path), "--out", str(out), "--zoo", "none"]) == 0
    assert "task-vector statistics computed in" in out.read_text()  # says what the time was spent on
    text = out.read_text()
    assert text.count("Plotly.newPlot") >= 5 and '<script src="http' not in text  # no network needed
    assert text.count("/*! For license information please see plotly") <= 1  # plotly.js inlined once
    if not os.path.exists("/usr/bin/chromium"):
        pytest.skip("no /usr/bin/chromium")
    sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright
    art = ROOT / "test-artifacts"
    art.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium",
                                    args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(out.as_uri())
        page.wait_for_function("document.querySelectorAll('.js-plotly-plot .main-svg').length >= 5", timeout=30000)
        n_plots = page.locator(".js-plotly-plot").count()
        n_with_svg = page.evaluate("[...document.querySelectorAll('.js-plotly-plot')]"
                                   ".filter(d => d.querySelector('svg.main-svg')).length")
        n_cells = page.evaluate("document.querySelectorAll('.js-plotly-plot .heatmaplayer image, "
                                ".js-plotly-plot .hm image').length")
        page.screenshot(path=str(art / "analysis_report.png"), full_page=True)
        browser.close()
    assert n_plots >= 5 and n_with_svg == n_plots
    assert n_cells >= 1
