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
