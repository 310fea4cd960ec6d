"""The diffusion preview pipeline against diffusers' own loading and rendering of the same merge (tiny SD1 / SD2 /
SDXL single files, tiny Flux folders; float32, bit-equal)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from studio.engine import merge_to_disk
from studio.engine.live import LiveMerger
from studio.errors import StudioError
from studio.layout.sd_keys import UNET_PREFIX
from studio.preview import DiffusionPreviewer, ImageRequest, previewer_for
from studio.preview.diffusion import SAMPLERS
from studio.preview.sd_configs import clip_tokenizer, shipped_folder
from studio.recipe import Recipe
from studio.sources import DictSource, open_source

REQUEST = dict(prompts=["a red cat", "a blue house"], negative_prompt="blurry", seeds=[0, 3], steps=2, width=32,
               height=32)
TEXT_PREFIXES = ("cond_stage_model.", "conditioner.")


def recipe(f, in04=0.5, base=0.5, key="IN04"):
    return Recipe.from_dict({"merge_method": "linear", "models": [
        {"model": str(f["a"]), "parameters": {"weight": {key: in04, "BASE": base, "*": 0.5}}},
        {"model": str(f["b"]), "parameters": {"weight": 0.5}}]})


def pipeline_class(fam):
    import diffusers

    return diffusers.StableDiffusionXLPipeline if fam == "sdxl" else diffusers.StableDiffusionPipeline


def diffusers_loading(fam, f, r, out):
    """The CLI merge written to disk and loaded by diffusers' from_single_file with the tiny config folder."""
    merge_to_disk(r, out, device="cpu", progress=False, overwrite=True)
    return pipeline_class(fam).from_single_file(str(out), config=str(f["cfg"]), local_files_only=True)


def assert_same_parameters(pipe, ref):
    for comp in ("unet", "transformer", "vae", "text_encoder", "text_encoder_2"):
        mine, theirs = getattr(pipe, comp, None), getattr(ref, comp, None)
        if mine is None and theirs is None:
            continue
        a, b = dict(mine.named_parameters()), dict(theirs.named_parameters())
        assert a.keys() == b.keys(), comp
        for k in a:
            assert a[k].dtype == b[k].dtype == torch.float32
            assert torch.equal(a[k], b[k]), f"{comp}.{k}"


def pixels(result):
    return [np.asarray(im) for im in result["samples"]]


def diffusers_images(ref, fam, req: ImageRequest, scheduler):
    ref.scheduler = scheduler
    ref.set_progress_bar_config(disable=True)
    guidance = {"sd1": 7.5, "sd2": 7.5, "sdxl": 5.0}[fam]
    out = []
    for prompt in req.prompts:
        gens = [torch.Generator().manual_seed(s) for s in req.seeds]
        out += ref(prompt=[prompt] * len(gens), negative_prompt=[req.negative_prompt] * len(gens),
                   num_inference_steps=req.steps, guidance_scale=guidance, width=req.width, height=req.height,
                   generator=gens).images
    return [np.asarray(im) for im in out]


@pytest.mark.parametrize("fam", ["sd1", "sd2", "sdxl"])
def test_attached_parameters_equal_diffusers_loading_before_and_after_block_sliders(fam, tiny_sd, tmp_path):
    f = tiny_sd(fam)
    p = DiffusionPreviewer(open_source(str(f["a"])), config=f["cfg"])
    assert previewer_for(p.reference) is DiffusionPreviewer and p.family == fam
    live = LiveMerger(recipe(f), device="cpu")
    p.attach(live)
    assert_same_parameters(p.pipe, diffusers_loading(fam, f, recipe(f), tmp_path / "m0.safetensors"))
    # bound: the UNet's parameters are the merged tensors; the VAE's 1×1-conv attention is bound through a view
    unet = dict(p.pipe.unet.named_parameters())
    assert live.state[UNET_PREFIX + "input_blocks.4.0.in_layers.0.weight"] is unet["down_blocks.1.resnets.0.norm1.weight"]
    q = p.pipe.vae.decoder.mid_block.attentions[0].to_q.weight
    assert live.state["first_stage_model.decoder.mid.attn_1.q.weight"].data_ptr() == q.data_ptr()
    ptrs = {n: t.data_ptr() for n, t in unet.items()}

    # one block slider: only IN04's tensors are re-merged, in place
    changed = live.update(recipe(f, in04=0.9))
    p.refresh(changed)
    assert changed and all(k.startswith(UNET_PREFIX + "input_blocks.4.") for k in changed)
    assert {n: t.data_ptr() for n, t in p.pipe.unet.named_parameters()} == ptrs
    assert_same_parameters(p.pipe, diffusers_loading(fam, f, recipe(f, in04=0.9), tmp_path / "m1.safetensors"))

    # the BASE slider re-merges the text encoders: OpenCLIP's q/k/v (SD2, SDXL) are converted, then refreshed
    changed = live.update(recipe(f, in04=0.9, base=0.1))
    p.refresh(changed)
    assert changed and all(k.startswith(TEXT_PREFIXES) for k in changed)
    te = p.components[-1]
    assert bool(te.converted) == (fam != "sd1")
    assert_same_parameters(p.pipe, diffusers_loading(fam, f, recipe(f, in04=0.9, base=0.1),
                                                     tmp_path / "m2.safetensors"))
    assert p.bound_share == 1.0 if fam == "sd1" else 0.98 < p.bound_share < 1.0


@pytest.mark.parametrize("fam", ["sd1", "sd2", "sdxl"])
def test_images_are_deterministic_and_equal_the_diffusers_pipeline(fam, tiny_sd, tmp_path):
    f = tiny_sd(fam)
    p = DiffusionPreviewer(open_source(str(f["a"])), config=f["cfg"])
    live = LiveMerger(recipe(f), device="cpu")
    p.attach(live)
    req = ImageRequest(**REQUEST)
    first = p.render(req)
    assert first["metric"] == "image" and first["per_task"] == {} and len(first["samples"]) == 4
    assert all(im.size == (32, 32) for im in first["samples"])
    again = pixels(p.render(req))
    assert all(np.array_equal(x, y) for x, y in zip(pixels(first), again))
    ref = diffusers_loading(fam, f, recipe(f), tmp_path / "m.safetensors")
    want = diffusers_images(ref, fam, req, p.scheduler("euler"))
    assert all(np.array_equal(x, y) for x, y in zip(pixels(first), want))
    assert not np.array_equal(again[0], again[1])  # not a constant image: the seed shows


def test_samplers_keep_the_checkpoint_prediction_type(tiny_sd):
    f = tiny_sd("sd2")
    p = DiffusionPreviewer(open_source(str(f["a"])), config=f["cfg"], device="cpu")
    for name in ["default", *SAMPLERS]:
        assert p.scheduler(name).config.prediction_type == "v_prediction"  # SD2.1 768-v, as shipped
    assert type(p.scheduler("euler_a")).__name__ == "EulerAncestralDiscreteScheduler"
    eps = DiffusionPreviewer(open_source(str(f["a"])), config=f["cfg"], prediction_type="epsilon")
    assert eps.scheduler("dpm++_2m").config.prediction_type == "epsilon"
    with pytest.raises(StudioError, match="unknown sampler 'lms'"):
        p.scheduler("lms")
    with pytest.raises(StudioError, match="multiple of 2"):
        p.render(ImageRequest(prompts=["x"], width=33, height=32, steps=1))


@pytest.mark.parametrize("fam", ["sd1", "sd2"])
def test_render_source_equals_rendering_that_input_and_restores_the_merge(fam, tiny_sd):
    f = tiny_sd(fam)
    p = DiffusionPreviewer(open_source(str(f["a"])), config=f["cfg"])
    live = LiveMerger(recipe(f, base=0.3), device="cpu")
    p.attach(live)
    req = ImageRequest(prompts=["a red cat"], seeds=[1], steps=2, width=32, height=32)
    merged = pixels(p.render(req))
    params = {n: t.clone() for n, t in p.pipe.text_encoder.named_parameters()}
    a = open_source(str(f["a"]))
    got = pixels(p.render_source(a, req))
    alone = DiffusionPreviewer(a, config=f["cfg"])
    alone.load(a)
    assert all(np.array_equal(x, y) for x, y in zip(got, pixels(alone.render(req))))
    assert not np.array_equal(got[0], merged[0])
    # the merge is back: bound and converted parameters alike
    assert all(torch.equal(t, params[n]) for n, t in p.pipe.text_encoder.named_parameters())
    assert all(np.array_equal(x, y) for x, y in zip(pixels(p.render(req)), merged))


def test_flux_folder_binds_entirely_and_equals_diffusers(tiny_flux, tmp_path):
    from diffusers import FluxPipeline

    f = tiny_flux

    def flux_recipe(d0):
        return Recipe.from_dict({"merge_method": "linear", "models": [
            {"model": str(f["a"]), "parameters": {"weight": {"D00": d0, "*": 0.5}}},
            {"model": str(f["b"]), "parameters": {"weight": 0.5}}]})

    p = DiffusionPreviewer(open_source(str(f["a"])))
    assert p.family == "flux-dev"
    live = LiveMerger(flux_recipe(0.5), device="cpu")
    p.attach(live)
    assert p.bound_share == 1.0
    changed = live.update(flux_recipe(0.9))
    p.refresh(changed)
    assert changed and all(k.startswith("transformer.transformer_blocks.0.") for k in changed)
    merge_to_disk(flux_recipe(0.9), tmp_path / "m", device="cpu", progress=False)
    tok = clip_tokenizer(None, shipped_folder("flux-dev") / "tokenizer")
    ref = FluxPipeline.from_pretrained(str(tmp_path / "m"), tokenizer=tok, local_files_only=True)
    assert_same_parameters(p.pipe, ref)
    req = ImageRequest(prompts=["a red cat"], seeds=[0, 2], steps=2, width=32, height=32, guidance=3.5)
    got = pixels(p.render(req))
    ref.set_progress_bar_config(disable=True)
    want = ref(prompt=["a red cat"] * 2, generator=[torch.Generator().manual_seed(s) for s in (0, 2)],
               num_inference_steps=2, guidance_scale=3.5, width=32, height=32, max_sequence_length=512).images
    assert all(np.array_equal(x, np.asarray(y)) for x, y in zip(got, want))
    assert all(np.array_equal(x, y) for x, y in zip(got, pixels(p.render(req))))


def bfl_keys(guidance=True):
    """A few Black Forest Labs single-file keys (enough to be recognised; nothing is converted before the error)."""
    keys = ["double_blocks.0.img_attn.norm.key_norm.scale", "img_in.weight", "final_layer.linear.weight",
            "single_blocks.0.linear1.weight"] + (["guidance_in.in_layer.bias"] if guidance else [])
    return DictSource({UNET_PREFIX + k: torch.empty(4, 4, device="meta") for k in keys}, ref="flux1-dev.safetensors")


def test_a_flux_single_file_names_the_pieces_it_lacks(tiny_flux, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty_cache"))  # no Flux in the Hugging Face cache
    with pytest.raises(StudioError) as e:
        DiffusionPreviewer(bfl_keys())
    msg = str(e.value)
    assert "the VAE (vae/), the CLIP-L text encoder (text_encoder/), the T5-XXL text encoder (text_encoder_2/) " \
           "and the T5 tokenizer (tokenizer_2/)" in msg and "components=" in msg and "FLUX.1" in msg
    with pytest.raises(StudioError) as e:
        DiffusionPreviewer(bfl_keys(), components=tiny_flux["no_t5"])
    msg = str(e.value)
    assert "does not hold the T5-XXL text encoder (text_encoder_2/)," in msg and str(tiny_flux["no_t5"]) in msg


def test_configs_that_do_not_fit_or_are_missing_say_what_to_provide(tiny_sd, tmp_path):
    f = tiny_sd("sd1")
    with pytest.raises(StudioError) as e:  # a tiny file against the shipped full-size SD1.5 configs
        DiffusionPreviewer(open_source(str(f["a"])))
    assert "in the shipped sd1 config" in str(e.value) and "config=<a diffusers pipeline folder" in str(e.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(StudioError, match="no model_index.json"):
        DiffusionPreviewer(open_source(str(f["a"])), config=tmp_path / "empty")
    p = DiffusionPreviewer(open_source(str(f["a"])), config=f["cfg"])
    with pytest.raises(StudioError, match="attach"):
        p.refresh(["x"])
    with pytest.raises(StudioError, match="float16"):
        p.attach(LiveMerger(recipe(f), device="cpu", out_dtype=torch.float16))
    inpaint = {k: torch.empty(s, device="meta") for k, (s, _) in _inpaint_table().items()}
    with pytest.raises(StudioError, match="no image preview for sd1-inpaint"):
        DiffusionPreviewer(DictSource(inpaint))


def _inpaint_table():
    from studio.sd.synth import ldm_table

    t = ldm_table("sd1", tiny=True)
    s, d = t[UNET_PREFIX + "input_blocks.0.0.weight"]
    t[UNET_PREFIX + "input_blocks.0.0.weight"] = ((s[0], 9, *s[2:]), d)
    return t


def test_an_sd1_diffusers_folder_binds_entirely_and_renders_like_diffusers(tmp_path):
    """An ordinary SD1 pipeline folder (its own configs and scheduler; no tokenizer: the shipped one serves)."""
    from diffusers import StableDiffusionPipeline

    from studio.sd.synth import write_random_pipeline

    a = write_random_pipeline(tmp_path / "a", "sd1", seed=1, runnable=True)
    b = write_random_pipeline(tmp_path / "b", "sd1", seed=2, runnable=True)
    r = Recipe.from_dict({"merge_method": "linear", "models": [
        {"model": str(a), "parameters": {"weight": {"OUT03": 0.8, "*": 0.5}}},
        {"model": str(b), "parameters": {"weight": 0.5}}]})
    p = DiffusionPreviewer(open_source(str(a)))
    live = LiveMerger(r, device="cpu")
    p.attach(live)
    assert p.bound_share == 1.0 and p.folder == a
    merge_to_disk(r, tmp_path / "m", device="cpu", progress=False)
    tok = clip_tokenizer(None, shipped_folder("sd1") / "tokenizer")
    ref = StableDiffusionPipeline.from_pretrained(str(tmp_path / "m"), tokenizer=tok, safety_checker=None,
                                                  feature_extractor=None, local_files_only=True)
    assert_same_parameters(p.pipe, ref)
    req = ImageRequest(prompts=["a red cat"], seeds=[5], steps=2, width=32, height=32, sampler="default")
    ref.set_progress_bar_config(disable=True)
    want = ref(prompt=["a red cat"], generator=[torch.Generator().manual_seed(5)], num_inference_steps=2,
               guidance_scale=7.5, width=32, height=32).images
    assert np.array_equal(pixels(p.render(req))[0], np.asarray(want[0]))


def test_sdxls_fp16_vae_upcast_keeps_the_vae_bound(tiny_sd):
    """diffusers upcasts SDXL's fp16 VAE to decode and casts it back: new memory, which is bound again."""
    f = tiny_sd("sdxl")
    p = DiffusionPreviewer(open_source(str(f["a"])), config=f["cfg"], dtype=torch.float16)
    live = LiveMerger(recipe(f), device="cpu", out_dtype=torch.float16)
    p.attach(live)
    assert p.pipe.vae.config.force_upcast
    p.render(ImageRequest(prompts=["a cat"], seeds=[0], steps=1, width=32, height=32))
    for comp in p.components:
        params = comp.params()
        assert all(params[n].dtype == torch.float16 for n in params)
        assert all(live.state[k].data_ptr() == params[n].data_ptr() for n, k in comp.bound.items()), comp.name
