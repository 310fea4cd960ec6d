"""Task-vector statistics against values computed by hand on small tensors; groups match the layout."""

from __future__ import annotations

import math

import pytest
import torch

from studio.analysis import task_vector_stats
from studio.errors import StudioError
from studio.layout import detect_layout, is_mergeable
from studio.sources import DictSource, open_source

# one layer tensor, six entries, three experts (base = 0) — the numbers worked by hand below
T1 = [1.0, 2.0, -1.0, 0.0, 0.5, 0.0]
T2 = [-1.0, 1.5, -2.0, 0.0, 0.0, 3.0]
T3 = [2.0, 0.0, 1.0, 0.0, 0.0, -1.0]
# the embedding group: two entries; the third task vector is zero there
E1, E2, E3 = [1.0, 1.0], [1.0, -1.0], [0.0, 0.0]
LAYER = "model.layers.0.mlp.up_proj.weight"
EMB = "model.embed_tokens.weight"


def _family(shift: float = 0.0):
    base = {EMB: torch.full((1, 2), shift), LAYER: torch.full((2, 3), shift)}
    experts = []
    for t, e in ((T1, E1), (T2, E2), (T3, E3)):
        experts.append({EMB: torch.tensor([e]) + shift, LAYER: torch.tensor(t).reshape(2, 3) + shift})
    return [DictSource(base, ref="base")] + [DictSource(x, ref=f"m{i}") for i, x in enumerate(experts)]


@pytest.mark.parametrize("chunk", [4, 1 << 22])
def test_layer_statistics_by_hand(chunk):
    # shift 0.25: nonzero base, same task vectors (exactly representable)
    out = task_vector_stats(_family(0.25), density=0.5, chunk=chunk)
    assert out["group_order"] == ["EMB", "L00"]
    g = {x["group"]: x for x in out["groups"]}["L00"]
    assert g["tensors"] == 1 and g["numel"] == 6
    # conflicts at entries 0, 2, 5; entries with ≥ 2 nonzero: 0, 1, 2, 5
    assert g["sign_conflict"] == pytest.approx(3 / 6)
    assert g["sign_conflict_active"] == pytest.approx(3 / 4)
    # Σ|Σ τ| = 2 + 3.5 + 2 + 0 + 0.5 + 2 = 10; Σ Σ|τ| = 4 + 3.5 + 4 + 0 + 0.5 + 4 = 16
    assert g["mass_agreement"] == pytest.approx(10 / 16)
    pair = g["pairwise_disagreement"]
    assert pair[0][1] == pytest.approx(1 / 3) and pair[1][0] == pytest.approx(1 / 3)
    assert pair[0][2] == pytest.approx(1 / 2)
    assert pair[1][2] == pytest.approx(1.0)
    assert pair[0][0] == 0.0
    # elected γ = (+, +, −, +, +, +); per model: 4/4, 3/4, 1/3
    assert g["elected_keep_per_model"] == pytest.approx([1.0, 0.75, 1 / 3])
    assert g["elected_keep"] == pytest.approx((1 + 0.75 + 1 / 3) / 3)
    # norms² 6.25, 16.25, 6; dots ⟨1,2⟩ = 4, ⟨1,3⟩ = 1, ⟨2,3⟩ = −7
    assert g["norms"] == pytest.approx([2.5, math.sqrt(16.25), math.sqrt(6)])
    cos = g["cosine"]
    assert cos[0][1] == pytest.approx(4 / (2.5 * math.sqrt(16.25)))
    assert cos[0][2] == pytest.approx(1 / (2.5 * math.sqrt(6)))
    assert cos[1][2] == pytest.approx(-7 / (math.sqrt(16.25) * math.sqrt(6)))
    assert cos[2][1] == pytest.approx(cos[1][2]) and cos[1][1] == pytest.approx(1.0)
    # trimmed at density 0.5 (k = 3 per model): τ̂1 = [1,2,−1,0,0,0], τ̂2 = [0,1.5,−2,0,0,3], τ̂3 = τ3
    tr = g["trimmed"]
    assert tr["sign_conflict"] == pytest.approx(2 / 6)
    assert tr["mass_agreement"] == pytest.approx(10.5 / 14.5)
    assert tr["elected_keep_per_model"] == pytest.approx([1.0, 1.0, 1 / 3])
    assert tr["elected_keep"] == pytest.approx(7 / 9)
    # both nonzero: (1,2) at entries 1, 2 — both agree; (1,3) at 0 (agree), 2 (differ); (2,3) at 2, 5 — both differ
    assert tr["pairwise_disagreement"][0][1] == 0.0
    assert tr["pairwise_disagreement"][0][2] == pytest.approx(1 / 2)
    assert tr["pairwise_disagreement"][1][2] == pytest.approx(1.0)

def test_overall_and_zero_vector():
    out = task_vector_stats(_family())
    emb = out["groups"][0]
    assert emb["group"] == "EMB" and emb["label"] == "embeddings"
    assert emb["sign_conflict"] == pytest.approx(1 / 2)
    assert emb["norms"] == pytest.approx([math.sqrt(2), math.sqrt(2), 0.0])
    assert emb["cosine"][0][1] == pytest.approx(0.0)
    assert emb["cosine"][0][2] is None and emb["cosine"][2][2] is None  # undefined for a zero task vector
    assert emb["trimmed"] is None
    ov = out["overall"]
    assert ov["numel"] == 8
    assert ov["sign_conflict"] == pytest.approx(4 / 8)
    assert ov["norms"] == pytest.approx([math.sqrt(8.25), math.sqrt(18.25), math.sqrt(6)])
    assert ov["cosine"][0][1] == pytest.approx(4 / (math.sqrt(8.25) * math.sqrt(18.25)))
    # the group × kind cells: the layer tensor is an MLP input projection
    assert out["cells"]["L00"]["mlp_in"]["sign_conflict"] == pytest.approx(0.5)
    assert out["cells"]["EMB"]["embed"]["numel"] == 2


def test_density_extremes_and_errors():
    full = task_vector_stats(_family(), density=1.0)
    assert full["overall"]["trimmed"]["sign_conflict"] == pytest.approx(full["overall"]["sign_conflict"])
    none = task_vector_stats(_family(), density=0.0)
    assert none["overall"]["trimmed"]["sign_conflict"] == 0.0
    assert none["overall"]["trimmed"]["mass_agreement"] is None
    with pytest.raises(StudioError):
        task_vector_stats(_family()[:1])
    with pytest.raises(StudioError):
        task_vector_stats(_family(), density=1.5)


def test_groups_match_layout(llama_family):
    fam = llama_family
    recipe = {"merge_method": "ties", "base_model": str(fam["base"]),
              "models": [{"model": str(fam[n]), "parameters": {"weight": 1.0, "density": 0.5}} for n in "abc"]}
    calls = []
    out = task_vector_stats(recipe, density=0.2, progress=lambda f, m: calls.append(f))
    assert calls and calls[-1] == pytest.approx(1.0)
    src = open_source(str(fam["base"]))
    layout = detect_layout(src)
    expect: dict[str, list[int]] = {}
    for k in src.keys():
        if is_mergeable(k, src.info(k).dtype):
            expect.setdefault(layout.group_of(k), []).append(src.info(k).numel)
    assert out["group_order"] == [g for g in layout.groups if g in expect]
    assert out["models"] == [str(fam[n]) for n in "abc"]
    for g in out["groups"]:
        assert g["tensors"] == len(expect[g["group"]])
        assert g["numel"] == sum(expect[g["group"]])
        assert g["label"] == layout.labels[g["group"]]
    assert out["overall"]["numel"] == sum(map(sum, expect.values()))
    # noise 0.02·i: the norms grow with i; independent noise → near-orthogonal, heavy sign conflicts
    n = out["overall"]["norms"]
    assert n[0] < n[1] < n[2]
    assert abs(out["overall"]["cosine"][0][1]) < 0.1
    assert 0.6 < out["overall"]["sign_conflict"] <= 0.75 + 0.01
    assert out["overall"]["trimmed"]["sign_conflict"] < out["overall"]["sign_conflict"]
