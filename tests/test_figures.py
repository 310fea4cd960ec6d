"""studio/figures.py: plotly figures drawn from the analysis numbers (values, ranges, names)."""

from __future__ import annotations

import math

import pytest

from studio import figures as plots


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
    ui = plots.diagnostic_figures(dict(stats, display_names={stats["models"][0]: "First"}))
    assert len(ui) == 4 and list(ui[1].data[0].x) == ["First", "e1", "e2"]
    names = [t for t, _ in plots.stats_figures(stats)]
    assert "Norms" in names and "Cosine similarity" in names
    line = plots.landscape_figure({"kind": "param1d", "x": {"label": "lambda", "values": [0, 1]}, "z": [1.0, 2.0],
                                   "score_name": "loss", "markers": [{"name": "current", "x": 0.5, "y": None,
                                                                      "score": 1.5}]})
    assert list(line.data[0].y) == [1.0, 2.0] and line.data[1].name == "current"


def test_scores_that_span_decades_are_drawn_on_a_log_scale():
    """Perplexity from 20 to 300k: a linear axis shows one flat line and a cliff (#17); a log axis shows the valley.
    Accuracy in [0.4, 0.9] stays linear."""
    ppl = {"x": {"label": "weight", "values": [0.0, 0.5, 1.0]}, "z": [300_000.0, 20.0, 45.0],
           "score_name": "average perplexity"}
    fig = plots.landscape_figure(ppl)
    assert fig.layout.yaxis.type == "log" and "log scale" in fig.layout.yaxis.title.text
    acc = dict(ppl, z=[0.4, 0.9, 0.7], score_name="accuracy")
    assert plots.landscape_figure(acc).layout.yaxis.type != "log"
    plane = {"x": {"label": "α", "values": [0.0, 1.0]}, "y": {"label": "β", "values": [0.0, 1.0]},
             "z": [[20.0, 1000.0], [200.0, 20_000.0]], "score_name": "perplexity"}
    contour = plots.landscape_figure(plane).data[0]
    assert contour.z[0][1] == pytest.approx(3.0) and contour.customdata[1][1] == 20_000.0  # colour by log10
    assert list(contour.colorbar.tickvals) == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert list(contour.colorbar.ticktext)[1:4] == ["100", "1,000", "10,000"]
    assert not plots.spans_decades([0.0, 50.0]) and not plots.spans_decades([-1.0, 50.0])


def _plane(z, score_name):
    return {"kind": "task_plane", "x": {"label": "α · τ(code)", "values": [0.0, 0.5, 1.0]},
            "y": {"label": "β · τ(prose)", "values": [0.0, 1.0]}, "z": z, "score_name": score_name,
            "markers": [{"name": "base", "x": 0.0, "y": 0.0, "score": z[0][0]},
                        {"name": "/zoo/text/experts/code", "x": 1.0, "y": 0.0, "score": z[0][2]},
                        {"name": "current", "x": 0.5, "y": 1.0, "score": z[1][1]}]}


def test_the_plane_is_bright_where_better_with_labelled_lines_and_boxed_names():
    """#17: the task-vector plane was one dark area with black labels. Good is bright (Viridis, reversed for
    perplexity), the contour lines carry labels, and each model's name sits in a white box on any colour."""
    fig = plots.landscape_contour(_plane([[30.0, 20.0, 40.0], [50.0, 25.0, 60.0]], "average perplexity"))
    contour = fig.data[0]
    assert contour.colorscale[0][1] == "#440154" and contour.reversescale is True  # Viridis, lowest = yellow
    assert contour.contours.showlines and contour.contours.showlabels and contour.contours.labelfont.color == "white"
    assert contour.contours.labelfont.shadow  # white labels outlined dark: readable on yellow as on purple
    bar = contour.colorbar.title.text
    assert bar.startswith("average perplexity") and "bright = better (lower)" in bar
    assert [a.text for a in fig.layout.annotations] == ["base", "code", "current"]
    assert all(a.bgcolor.startswith("rgba(255,255,255") and a.font.color == "#111111" for a in fig.layout.annotations)
    assert [(t.mode, t.name) for t in fig.data[1:]] == [("markers", n) for n in ("base", "code", "current")]
    assert (fig.layout.xaxis.title.text, fig.layout.yaxis.title.text) == ("α · τ(code)", "β · τ(prose)")
    acc = plots.landscape_contour(_plane([[30.0, 20.0, 40.0], [50.0, 25.0, 60.0]], "average accuracy")).data[0]
    assert acc.reversescale is False and [list(r) for r in acc.z] == [[30.0, 20.0, 40.0], [50.0, 25.0, 60.0]]


def test_a_plane_spanning_decades_is_coloured_by_log_with_real_units_on_the_bar():
    contour = plots.landscape_contour(_plane([[20.0, 1000.0, 30.0], [200.0, 20_000.0, 25.0]], "perplexity")).data[0]
    assert contour.z[1][1] == pytest.approx(math.log10(20_000.0)) and contour.reversescale is True
    assert "log scale" in contour.colorbar.title.text and list(contour.colorbar.ticktext)[:3] == ["10", "100", "1,000"]
    assert not contour.contours.showlabels  # labels would read in log10 units; the bar reads in perplexity
    # a decade or two (the text zoo's plane: 17 to 300): 1-2-5 ticks, not the one "100" of whole decades
    few = plots.landscape_contour(_plane([[17.0, 30.0, 300.0], [20.0, 18.0, 150.0]], "perplexity")).data[0]
    assert list(few.colorbar.ticktext)[:6] == ["10", "20", "50", "100", "200", "500"]
