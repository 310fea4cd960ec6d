"""The diffusion zoo is a real (tiny) Stable Diffusion 1 pipeline: built quickly here, it is detected as SD1 with the
26 SuperMerger blocks + VAE, loads with diffusers' standard API, is drawn by the studio's own SD1 preview pipeline
(the evaluator's pictures are that pipeline's), and its block weights, merges and PEFT LoRAs act through the studio's
engine."""

from pathlib import Path

import numpy as np
import pytest
import torch

from studio.engine import merge_in_memory
from studio.engine.live import LiveMerger
from studio.errors import StudioError
from studio.layout import detect_layout
from studio.layout.sd import SD1_BLOCKS, detect_family
from studio.layout.sd_keys import unet_to_ldm
from studio.preview import DiffusionPreviewer, ImageRequest
from studio.recipe import Recipe
from studio.recipe import edit as E
from studio.sources import open_source
from studio.zoo import diffusion as D
from studio.zoo.build import build, load_state
from studio.zoo.diffusion import GUIDANCE
from studio.zoo.diffusion_evaluator import DiffusionEvaluator


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    root = tmp_path_factory.mktemp("zoo")
    torch.set_num_threads(1)
    metrics = build(["diffusion"], root=root, quick=True, log=lambda m: None)
    d = root / "diffusion"
    return {"root": root, "base": d / "base", "ember": d / "experts" / "ember", "lora": d / "loras" / "ember",
            "metrics": metrics["diffusion"]}


@pytest.fixture(scope="module")
def evaluator(quick):
    return DiffusionEvaluator(quick["base"], budget="preview")


def test_pipeline_folders_are_sd1_with_26_blocks_and_a_vae(quick):
    for folder in (quick["base"], quick["ember"]):
        for part in ("model_index.json", "unet", "vae", "text_encoder", "tokenizer", "scheduler"):
            assert (folder / part).exists(), part
        assert (folder / "tokenizer" / "vocab.json").is_file() and (folder / "tokenizer" / "merges.txt").is_file()
    src = open_source(str(quick["base"]))
    assert detect_family(src) == "sd1"
    layout = detect_layout(src)
    assert layout.groups == SD1_BLOCKS + ["VAE"] and len(layout.groups) == 27
    used = {layout.group_of(k) for k in src.keys()}
    assert used == set(layout.groups)                                 # every block holds weights
    assert {k.split(".")[0] for k in src.keys()} == {"unet", "text_encoder", "vae"}
    # one value per block from SuperMerger's presets
    vals = E.preset_values("GRAD_V", layout.groups)
    assert len(vals) == 27 and vals[0] == 0.0 and vals[1] == 1.0 and vals[13] == 0.0 and vals[25] == 1.0


def test_loads_with_diffusers_standard_api(quick):
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel

    pipe = StableDiffusionPipeline.from_pretrained(str(quick["base"]), local_files_only=True)
    assert pipe.vae_scale_factor == 8 and pipe.unet.config.sample_size * 8 == 64
    assert [type(b).__name__ for b in pipe.unet.down_blocks] == ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"]
    assert [type(b).__name__ for b in pipe.unet.up_blocks] == ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3
    assert type(pipe.unet.mid_block).__name__ == "UNetMidBlock2DCrossAttn"
    assert pipe.unet.config.layers_per_block == 2 and pipe.tokenizer.model_max_length == 77
    assert pipe.vae.config.scaling_factor != 0.18215                 # measured on the zoo's own latents
    unet = UNet2DConditionModel.from_pretrained(str(quick["ember"] / "unet"))
    assert unet.config.cross_attention_dim == pipe.text_encoder.config.hidden_size


def test_every_unet_key_lands_in_one_of_the_25_unet_blocks(quick):
    src = open_source(str(quick["base"]))
    layout = detect_layout(src)
    unet = [k for k in src.keys() if k.startswith("unet.")]
    groups = {k: layout.group_of(k) for k in unet}
    assert all(unet_to_ldm(k[len("unet."):], layout.up_attn) is not None for k in unet)  # SD1's names, all of them
    assert set(groups.values()) == set(SD1_BLOCKS) - {"BASE"}                          # IN00–IN11, M00, OUT00–OUT11
    assert {layout.group_of(k) for k in src.keys() if k.startswith("text_encoder.")} == {"BASE"}
    assert {layout.group_of(k) for k in src.keys() if k.startswith("vae.")} == {"VAE"}
    # SD1's block layout: resnet + attention in IN01/IN02 (the 2 layers of the first down block), the downsampler
    # alone in IN03, resnets only in IN10/IN11, attention in OUT03–OUT11 (the 3 cross-attention up blocks)
    attn = {g for k, g in groups.items() if ".attentions." in k}
    assert attn == {"IN01", "IN02", "IN04", "IN05", "IN07", "IN08", "M00"} | {f"OUT{i:02d}" for i in range(3, 12)}
    assert all(".downsamplers." in k for k, g in groups.items() if g in ("IN03", "IN06", "IN09"))


def test_evaluator_is_seeded_and_the_prompt_changes_the_picture(quick, evaluator):
    state = load_state("diffusion", str(quick["base"]))
    a, b = evaluator.evaluate(state), evaluator.evaluate(state)
    assert a["metric"] == "style" and list(a["per_task"]) == list(D.STYLES)
    assert a["samples"].shape == (66, 8 * 65 + 1, 3) and a["samples"].dtype.name == "uint8"
    assert (a["samples"] == b["samples"]).all() and a["per_task"] == b["per_task"]
    one = evaluator.images(prompts=["a seven on the left", "a two on the right"], seeds=[3, 3])
    assert one.shape == (2, 3, 64, 64)
    assert (one[0] - one[1]).abs().mean() > 0.01
    with pytest.raises(StudioError, match="missing"):
        evaluator.evaluate({k: v for k, v in state.items() if not k.startswith("vae.")})


def test_evaluator_draws_what_the_studios_sd1_preview_draws(quick, evaluator):
    """The evaluator's pictures are DiffusionPreviewer.render's (the pipeline a user's SD1 checkpoint gets), only
    batched across prompts."""
    evaluator.load_state(load_state("diffusion", str(quick["ember"])))
    prompts, seeds = ["a seven on the left", "a 3 on the right", "a seven on the left"], [4, 4, 9]
    mine = (evaluator.images(prompts, seeds).permute(0, 2, 3, 1).numpy() * 255).round()
    for i, (p, s) in enumerate(zip(prompts, seeds)):
        req = ImageRequest(prompts=[p], seeds=[s], steps=evaluator.steps, guidance=GUIDANCE, sampler="default")
        theirs = np.asarray(evaluator.previewer.render(req)["samples"][0]).astype(np.float64)
        assert theirs.shape == (64, 64, 3)
        assert np.abs(theirs - mine[i]).max() <= 1.0, i          # PIL rounding of a batched float computation


def test_the_studios_sd1_preview_draws_the_zoo_live(quick):
    """The zoo's pipeline folder is an SD1 model to the studio's preview: bound entirely to a live merge, seeded, and
    its pictures follow the block sliders."""
    p = DiffusionPreviewer(open_source(str(quick["base"])))
    assert p.family == "sd1" and p.native_size() == 64
    live = LiveMerger(Recipe.from_dict(_pair(quick, 0.5)), device="cpu")
    p.attach(live)
    assert p.bound_share == 1.0
    req = ImageRequest(prompts=["an eight on the right"], seeds=[1, 2], steps=6, guidance=GUIDANCE, sampler="default")
    flat = [np.asarray(im) for im in p.render(req)["samples"]]
    assert all(im.shape == (64, 64, 3) for im in flat)
    assert np.array_equal(flat[0], np.asarray(p.render(req)["samples"][0]))        # the same seed, the same picture
    assert not np.array_equal(flat[0], flat[1])
    layout = detect_layout(open_source(str(quick["base"])))
    grad = E.apply_preset(_pair(quick, 0.5), E.SettingPath.parse("alpha"), layout, "GRAD_V")
    p.refresh(live.update(Recipe.from_dict(grad)))
    moved = [np.asarray(im) for im in p.render(req)["samples"]]
    assert np.abs(moved[0].astype(int) - flat[0]).mean() > 0.5
    p.refresh(live.update(Recipe.from_dict(_pair(quick, 0.5))))
    assert np.array_equal(np.asarray(p.render(req)["samples"][0]), flat[0])          # back to where it was
    # the zoo's evaluator scores a live previewer like its own pipeline holding the same merge
    ev = DiffusionEvaluator(quick["base"], budget="preview")
    live_scores = ev.evaluate_module(p)
    assert live_scores["per_task"] == ev.evaluate(merge_in_memory(Recipe.from_dict(_pair(quick, 0.5))))["per_task"]


def _pair(quick, alpha) -> dict:
    return {"merge_method": "weighted_sum", "models": [{"model": str(quick["base"])}, {"model": str(quick["ember"])}],
            "parameters": {"alpha": alpha}, "dtype": "float32"}


def _weighted_sum(quick, preset=None, alpha=0.5) -> dict:
    d = _pair(quick, alpha)
    if preset:
        d = E.apply_preset(d, E.SettingPath.parse("alpha"), detect_layout(open_source(str(quick["base"]))), preset)
    return merge_in_memory(Recipe.from_dict(d), device="cpu", seed=0)


def test_block_weights_act_on_the_blocks(quick, evaluator):
    flat, grad = _weighted_sum(quick), _weighted_sum(quick, "GRAD_V")
    base = load_state("diffusion", str(quick["base"]))
    ember = load_state("diffusion", str(quick["ember"]))
    ins, outs = _weighted_sum(quick, "IN_ONLY"), _weighted_sum(quick, "OUT_ONLY")
    conv_in, conv_out = "unet.conv_in.weight", "unet.conv_out.weight"
    mid = "unet.mid_block.resnets.0.conv1.weight"
    # GRAD_V: 1 at IN00 and OUT11, 0 at M00; IN_ONLY / OUT_ONLY: the expert on one side of the U only
    assert torch.equal(grad[conv_in], ember[conv_in]) and torch.equal(grad[mid], base[mid])
    torch.testing.assert_close(flat[mid], 0.5 * base[mid] + 0.5 * ember[mid])
    assert torch.equal(ins[conv_in], ember[conv_in]) and torch.equal(ins[conv_out], base[conv_out])
    assert torch.equal(outs[conv_in], base[conv_in]) and torch.equal(outs[conv_out], ember[conv_out])
    # the text encoder is BASE (0 in both presets: the first model's) and the VAE slot the first model's
    k = next(k for k in base if k.startswith("text_encoder."))
    assert torch.equal(grad[k], base[k]) and torch.equal(ins[k], base[k])
    # and the pictures follow
    pics = {name: evaluator.evaluate(s)["samples"] for name, s in
            (("flat", flat), ("grad", grad), ("in", ins), ("out", outs))}
    assert (pics["flat"] != pics["grad"]).any() and (pics["in"] != pics["out"]).any()


def test_peft_lora_applies_to_the_pipeline_like_peft(quick):
    from diffusers import UNet2DConditionModel
    from peft import PeftModel

    merged = PeftModel.from_pretrained(UNet2DConditionModel.from_pretrained(str(quick["base"] / "unet")),
                                       str(quick["lora"])).merge_and_unload().state_dict()
    src = open_source(f"{quick['base']}+{quick['lora']}")
    base = open_source(str(quick["base"]))
    changed = 0
    for k, v in merged.items():
        got = src.get("unet." + k)
        torch.testing.assert_close(got, v, rtol=1e-5, atol=1e-6)
        changed += not torch.equal(got, base.get("unet." + k))
    assert changed > 50                                             # every targeted conv and attention projection
    k = next(k for k in base.keys() if k.startswith("vae."))
    assert torch.equal(src.get(k), base.get(k))


def test_quick_metrics_recorded(quick):
    m = quick["metrics"]
    assert m["metric"] == "style" and m["quick"] is True and set(m["experts"]) == {"ember"}
    assert set(m["base"]) == {"ember"}                              # a partial family: its own styles
    assert Path(quick["root"] / "metrics.json").is_file()
