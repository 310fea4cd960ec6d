"""CLIP image classifiers (the seed papers' benchmark) in the learned merges: a tiny CLIP model built in the test,
vision-tower experts saved both as transformers ≥ 5 writes them and with FusionBench's ``vision_model.`` names.

The adapter's logits are checked against transformers' own ``CLIPModel.logits_per_image``, the zero-shot head
against ``get_text_features``, and every method end to end (library and CLI)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

transformers = pytest.importorskip("transformers")

from studio.errors import StudioError  # noqa: E402
from studio.learn.adapters import ClipAdapter, make_adapter  # noqa: E402
from studio.learn.api import run_learned  # noqa: E402

CLASSES = {"pets": ["cat", "dog", "bird"], "colors": ["red", "blue"]}


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    from safetensors.torch import save_file
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer, CLIPVisionModel

    root = tmp_path_factory.mktemp("clip")
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in "abcdefghijklmnopqrstuvwxyz.,":
        vocab[c] = len(vocab)
        vocab[c + "</w>"] = len(vocab)
    (root / "vocab.json").write_text(json.dumps(vocab))
    (root / "merges.txt").write_text("#version: 0.2\n")
    tok = CLIPTokenizer(str(root / "vocab.json"), str(root / "merges.txt"))
    torch.manual_seed(0)
    cfg = CLIPConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=40, bos_token_id=0, eos_token_id=1,
                         pad_token_id=1),
        vision_config=dict(image_size=16, patch_size=8, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                           num_attention_heads=2),
        projection_dim=16)
    model = CLIPModel(cfg).eval()
    model.save_pretrained(root / "base")
    tok.save_pretrained(root / "base")
    experts = []
    for i, task in enumerate(CLASSES):
        tower = CLIPVisionModel(cfg.vision_config)
        tower.load_state_dict(model.vision_model.state_dict())
        with torch.no_grad():
            for p in tower.parameters():
                p.add_(0.05 * torch.randn_like(p))
        folder = root / task
        if i == 0:  # as transformers ≥ 5 saves a vision tower: no ``vision_model.`` prefix
            tower.save_pretrained(folder)
        else:  # as FusionBench's checkpoints (transformers 4): ``vision_model.…``
            folder.mkdir()
            (folder / "config.json").write_text(cfg.vision_config.to_json_string())
            save_file({f"vision_model.{k}": v.contiguous() for k, v in tower.state_dict().items()},
                      str(folder / "model.safetensors"))
        experts.append(str(folder))
        (root / f"{task}.txt").write_text("\n".join(CLASSES[task]) + "\n")
    heads = {t: str(root / f"{t}.txt") for t in CLASSES}
    return {"root": root, "base": str(root / "base"), "experts": experts, "heads": heads, "model": model,
            "tok": transformers.AutoTokenizer.from_pretrained(root / "base"), "cfg": cfg}


@pytest.fixture(scope="module")
def adapter(clip):
    return make_adapter(clip["base"], clip["experts"], device=torch.device("cpu"), heads=clip["heads"])


def _text_features(clip, prompts):
    enc = clip["tok"](prompts, padding=True, return_tensors="pt")
    with torch.no_grad():
        return F.normalize(clip["model"].get_text_features(**enc).pooler_output, dim=-1), enc


def test_clip_is_detected_and_only_the_vision_tower_is_merged(adapter, clip):
    assert isinstance(adapter, ClipAdapter)
    assert adapter.tasks == list(CLASSES)
    assert adapter.keys and all(k.startswith("vision_model.") for k in adapter.keys)
    vision = {f"vision_model.{k}" for k, v in clip["model"].vision_model.named_parameters()}
    assert set(adapter.keys) == vision
    # both expert naming styles land on the base's names, with the saved values
    from safetensors.torch import load_file

    saved = load_file(f"{clip['experts'][0]}/model.safetensors")
    k = "embeddings.patch_embedding.weight"
    assert torch.equal(adapter.experts["pets"][f"vision_model.{k}"], saved[k])
    saved = load_file(f"{clip['experts'][1]}/model.safetensors")
    assert torch.equal(adapter.experts["colors"][f"vision_model.{k}"], saved[f"vision_model.{k}"])
    # FDA units: the residual attention blocks, anchors of (patches + CLS) tokens
    assert adapter.units() == [(f"vision_model.encoder.layers.{i}", (5, 32)) for i in range(2)]


def test_logits_equal_transformers_logits_per_image(adapter, clip):
    torch.manual_seed(1)
    x = torch.randn(5, 3, 16, 16)
    w, enc = _text_features(clip, ["a photo of a cat.", "a photo of a dog."])
    with torch.no_grad():
        ref = clip["model"](input_ids=enc.input_ids, attention_mask=enc.attention_mask, pixel_values=x).logits_per_image
    saved = adapter.heads["pets"]
    try:
        adapter.heads["pets"] = w
        got = adapter.logits(adapter.base, "pets", x)
    finally:
        adapter.heads["pets"] = saved
    assert torch.allclose(got, ref, atol=1e-5)


def test_zero_shot_head_is_the_mean_of_normalised_template_embeddings(adapter, clip):
    rows = []
    for name in CLASSES["pets"]:
        w, _ = _text_features(clip, [t.format(name) for t in ClipAdapter.TEMPLATES])
        rows.append(F.normalize(w.mean(0), dim=-1))
    assert torch.allclose(adapter.heads["pets"], torch.stack(rows), atol=1e-6)
    assert adapter.heads["colors"].shape == (2, 16)


@pytest.mark.parametrize("method,kw", [("samerging", {"steps": 40}), ("adamerging", {"steps": 40}),
                                       ("fda", {"steps": 15, "epochs": 5}), ("regmean", {}), ("fisher", {})])
def test_every_method_improves_its_objective_on_clip(adapter, clip, method, kw):
    torch.manual_seed(0)
    data = {t: torch.rand(48, 3, 16, 16) * 2 - 1 for t in CLASSES}
    res = run_learned(method, clip["base"], clip["experts"], data=data, adapter=adapter, **kw)
    assert res.metrics["objective_end"] < res.metrics["objective_start"]
    assert set(res.state_dict) == set(adapter.keys)
    assert res.recipe is None  # a full CLIP base and vision-tower experts share no one tensor set
    if method in ("samerging", "adamerging"):
        assert set(res.coefficients) == set(CLASSES)
        assert set(res.coefficients["pets"]) == set(adapter.keys)


def test_cli_learns_on_image_folders_and_the_output_loads_as_a_vision_tower(clip, adapter, tmp_path):
    from PIL import Image
    from safetensors.torch import load_file
    from transformers import CLIPVisionModel

    g = torch.Generator().manual_seed(0)
    for t in CLASSES:
        (tmp_path / "data" / t).mkdir(parents=True)
        for i in range(6):
            px = (torch.rand(20, 24, 3, generator=g) * 255).to(torch.uint8).numpy()
            Image.fromarray(px).save(tmp_path / "data" / t / f"{i}.png")
    # one task's head from --heads, the other's from classes.txt beside its images (never read as data)
    (tmp_path / "data" / "pets" / "classes.txt").write_text("\n".join(CLASSES["pets"]))
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "studio", "learn", "samerging", "--base", clip["base"], "--experts", *clip["experts"],
           "--tasks", *CLASSES, "--heads", f"colors={clip['heads']['colors']}",
           "--data", str(tmp_path / "data"), "--steps", "10", "--out", str(out), "--quiet", "--json"]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    info = json.loads(run.stdout)
    # the output folder is a transformers model: config.json + model.safetensors (CLIPModel's tensor names)
    assert info["files"] == ["config.json", "model.safetensors", "trajectory.json"]
    merged = load_file(str(out / "model.safetensors"))
    assert set(merged) == set(adapter.keys)
    tower = CLIPVisionModel.from_pretrained(out).eval()
    traj = json.loads((out / "trajectory.json").read_text())
    assert set(traj["coefficients"]) == set(CLASSES)
    # the written tower computes what the coefficients say: θ0 + Σ λ τ per tensor
    ad = make_adapter(clip["base"], clip["experts"], device=torch.device("cpu"), tasks=list(CLASSES),
                      heads={"colors": clip["heads"]["colors"]}, data_root=tmp_path / "data")
    k = "vision_model.encoder.layers.1.mlp.fc1.weight"
    expect = ad.base[k] + sum(traj["coefficients"][t][k] * (ad.experts[t][k] - ad.base[k]) for t in CLASSES)
    assert torch.allclose(ad.heads["pets"], adapter.heads["pets"])  # classes.txt built the same zero-shot head
    assert torch.allclose(merged[k], expect, atol=1e-5)
    # …and, loaded as a transformers CLIPVisionModel, classifies exactly as the adapter's merged model
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        emb = F.normalize(F.linear(tower(pixel_values=x).pooler_output, ad.proj), dim=-1)
        assert torch.allclose(ad.scale * emb @ ad.heads["pets"].T, ad.logits(merged, "pets", x), atol=1e-5)


def test_clear_errors(clip, tmp_path):
    with pytest.raises(StudioError, match="zero-shot head"):
        make_adapter(clip["base"], clip["experts"], device=torch.device("cpu"))
    with pytest.raises(StudioError, match="not a full CLIP model"):
        make_adapter(clip["experts"][0], clip["experts"], device=torch.device("cpu"), heads=clip["heads"])
    one = tmp_path / "one.txt"
    one.write_text("cat\n")
    with pytest.raises(StudioError, match="at least two class names"):
        make_adapter(clip["base"], clip["experts"], device=torch.device("cpu"),
                     heads={"pets": str(one), "colors": clip["heads"]["colors"]})
    ad = make_adapter(clip["base"], clip["experts"], device=torch.device("cpu"), heads=clip["heads"])
    with pytest.raises(StudioError, match="no data for clip"):
        run_learned("samerging", clip["base"], clip["experts"], data="zoo", adapter=ad, steps=1)
    with pytest.raises(StudioError, match="pixel_values"):
        ad.load_data("pets", torch.zeros(2, 1, 16, 16))


def test_studio_learns_on_clip_models_from_a_data_folder_and_exports_a_vision_tower(clip, tmp_path):
    """The studio path: CLIP models opened by path (no demo family), data folder with classes.txt per task,
    SAMerging in the Optimize panel, the learned tower exported as a loadable folder."""
    from PIL import Image
    from transformers import CLIPVisionModel

    from studio.ui.catalog import Catalog
    from studio.ui.paths import AllowedRoots
    from studio.ui.env import StudioEnv

    g = torch.Generator().manual_seed(1)
    for t in CLASSES:
        d = tmp_path / "data" / t
        d.mkdir(parents=True)
        (d / "classes.txt").write_text("\n".join(CLASSES[t]))
        for i in range(4):
            Image.fromarray((torch.rand(16, 16, 3, generator=g) * 255).to(torch.uint8).numpy()).save(d / f"{i}.png")
    env = StudioEnv(Catalog({}), AllowedRoots([clip["root"], tmp_path]), device="cpu", export_dir=str(tmp_path))
    s = env.new_session()
    for ref in (clip["base"], *clip["experts"]):
        s.add_model(ref)
    s.set_base(clip["base"])
    assert [s.labels[e] for e in s.experts()] == list(CLASSES)
    lr = s.learning.learn("samerging", steps=5, data=str(tmp_path / "data"))
    assert lr.recipe is None and lr.scores == {}
    assert lr.result.metrics["objective_end"] < lr.result.metrics["objective_start"]
    with pytest.raises(StudioError, match="cannot become a recipe"):
        s.learning.load()
    res = s.learning.export(str(tmp_path / "exported"))
    assert (tmp_path / "exported" / "config.json").is_file(), res
    tower = CLIPVisionModel.from_pretrained(tmp_path / "exported")
    got = {f"vision_model.{k}": v for k, v in tower.state_dict().items()}
    k = "vision_model.encoder.layers.0.self_attn.q_proj.weight"
    assert torch.allclose(got[k], lr.result.state_dict[k])
