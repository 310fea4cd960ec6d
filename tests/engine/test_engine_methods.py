"""Engine features that methods rely on: whole-model statistics (two rounds) and EMR's side outputs."""

import json
import subprocess
import sys
from pathlib import Path

import torch

from tinymodels import load_state
from studio.engine import merge_in_memory, merge_to_disk
from studio.recipe import Recipe

ROOT = Path(__file__).resolve().parents[2]


def test_ties_paper_uses_a_global_threshold(llama_family):
    f = llama_family
    base = load_state(f["base"])
    experts = [load_state(f[k]) for k in ("a", "b", "c")]
    density = 0.2
    out = merge_in_memory(Recipe.from_dict({"merge_method": "ties_paper", "base_model": str(f["base"]),
                                            "models": [str(f[k]) for k in ("a", "b", "c")],
                                            "parameters": {"density": density, "lambda": 1.0}}))
    keys = [k for k in base]  # every tensor here is mergeable
    # hand computation (algorithms.md §4 TIES, paper variant): top-k over the whole flattened model per task
    taus = [torch.cat([(e[k] - base[k]).flatten() for k in keys]) for e in experts]
    trimmed = []
    for t in taus:
        k = int(density * t.numel())
        thr = t.abs().kthvalue(t.numel() - k).values  # FusionBench topk_values_mask: kthvalue(P − ⌊P·d⌋), ≥ keeps
        trimmed.append(t * (t.abs() >= thr))
    T = torch.stack(trimmed)
    sign = torch.sign(T.sum(0))
    agree = (torch.sign(T) == sign) & (T != 0)
    merged = (T * agree).sum(0) / agree.sum(0).clamp(min=1)
    flat = torch.cat([(out[k] - base[k]).flatten() for k in keys])
    nonzero = sign != 0
    torch.testing.assert_close(flat[nonzero], merged[nonzero], rtol=1e-5, atol=1e-7)
    # the kept fraction per task is global, not per tensor: some tensors keep far more than 20 %
    kept = [(trimmed[0].split([base[k].numel() for k in keys])[i] != 0).float().mean().item() for i in range(len(keys))]
    assert max(kept) - min(kept) > 0.2


def test_emr_writes_masks_rescalers_and_materializes_tasks(llama_family, tmp_path):
    f = llama_family
    names = ("a", "b", "c")
    recipe = Recipe.from_dict({"merge_method": "emr", "base_model": str(f["base"]),
                               "models": [str(f[k]) for k in names], "dtype": "float32"})
    out = tmp_path / "emr"
    merge_to_disk(recipe, out, progress=False)
    info = json.loads((out / "emr" / "emr.json").read_text())
    base = load_state(f["base"])
    experts = [load_state(f[k]) for k in names]
    unified = load_state(out)
    # definitions (algorithms.md §4 EMR): τ_uni = s ⊙ max|τᵢ·[sign agrees]|, Mᵢ = τᵢ⊙τ_uni > 0,
    # rᵢ = Σ mean|τᵢ| / Σ mean|Mᵢ⊙τ_uni|
    num = [0.0] * 3
    den = [0.0] * 3
    masks = {}
    for k in base:
        taus = [e[k] - base[k] for e in experts]
        s = torch.where(sum(taus) > 0, 1.0, -1.0)
        mag = torch.stack([(t * (t * s > 0)).abs() for t in taus]).amax(0)
        uni = s * mag
        torch.testing.assert_close(unified[k], base[k] + uni, rtol=1e-6, atol=1e-7)
        for i, t in enumerate(taus):
            m = t * uni > 0
            masks[(i, k)] = m
            num[i] += t.abs().mean().item()
            den[i] += (m * uni).abs().mean().item()
    assert info["rescalers"] == [__import__("pytest").approx(n / d, rel=1e-5) for n, d in zip(num, den)]
    r = subprocess.run([sys.executable, "-m", "studio", "emr", str(out), "1", str(tmp_path / "task1")],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    task1 = load_state(tmp_path / "task1")
    for k in base:
        expect = base[k] + info["rescalers"][1] * masks[(1, k)] * (unified[k] - base[k])
        torch.testing.assert_close(task1[k], expect, rtol=1e-6, atol=1e-7)
