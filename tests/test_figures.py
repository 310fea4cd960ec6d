"""studio/figures.py: plotly figures drawn from the analysis numbers (values, ranges, names)."""

from __future__ import annotations

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
