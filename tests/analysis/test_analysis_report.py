"""`python -m studio analyze`: the JSON contract, the figures, and the HTML report rendered in headless Chromium."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from studio.cli import main
from studio import figures as plots

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def recipe_path(tmp_path_factory):
    root = tmp_path_factory.mktemp("an_cli")
    g = torch.Generator().manual_seed(0)
    base = {f"blocks.{i}.mlp.fc1.weight": torch.randn(6, 4, generator=g) for i in range(3)}
    base.update({f"blocks.{i}.attn.qkv.weight": torch.randn(12, 4, generator=g) for i in range(3)})
    base["embed.weight"] = torch.randn(5, 4, generator=g)
    base["head.weight"] = torch.randn(2, 4, generator=g)
    save_file(base, str(root / "base.safetensors"))
    models = []
    for n in range(3):
        gn = torch.Generator().manual_seed(n + 1)
        save_file({k: v + 0.1 * torch.randn(v.shape, generator=gn) for k, v in base.items()},
                  str(root / f"e{n}.safetensors"))
        models.append(f"  - model: {root / f'e{n}.safetensors'}\n    parameters: {{weight: 1.0}}")
    text = (f"merge_method: ties\nbase_model: {root / 'base.safetensors'}\nparameters: {{density: 0.5}}\n"
            "models:\n" + "\n".join(models) + "\n")
    path = root / "recipe.yaml"
    path.write_text(text)
    return path


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


def test_figures_from_numbers(recipe_path):
    from studio.analysis import task_vector_stats

    stats = task_vector_stats(str(recipe_path), density=0.5)
    fig = plots.sign_conflict_heatmap(stats)
    hm = fig.data[0]
    assert list(hm.x) == ["EMB", "L00", "L01", "L02", "HEAD", "overall"]
    assert (hm.zmin, hm.zmax) == (0, 1) and len(hm.y) == 8  # 4 statistics × (raw, trimmed)
    assert hm.z[0][1] == pytest.approx(stats["groups"][1]["sign_conflict"])
    cos = plots.cosine_matrix(stats).data[0]
    assert (cos.zmin, cos.zmax, cos.zmid) == (-1, 1, 0) and list(cos.x) == ["e0", "e1", "e2"]
    from studio import analysis

    ui = plots.studio_figures(analysis, stats["base"], stats["models"], labels={stats["models"][0]: "First"})
    assert len(ui) == 4 and list(ui[1].data[0].x) == ["First", "e1", "e2"]
    names = [t for t, _ in plots.stats_figures(stats)]
    assert "Norms" in names and "Cosine similarity" in names
    line = plots.landscape_figure({"kind": "param1d", "x": {"label": "lambda", "values": [0, 1]}, "z": [1.0, 2.0],
                                   "score_name": "loss", "markers": [{"name": "current", "x": 0.5, "y": None,
                                                                      "score": 1.5}]})
    assert list(line.data[0].y) == [1.0, 2.0] and line.data[1].name == "current"


def test_html_report_renders_in_chromium(recipe_path, tmp_path):
    out = tmp_path / "report.html"
    assert main(["analyze", str(recipe_path), "--out", str(out), "--zoo", "none"]) == 0
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
