"""The LLM preview: a causal LM built from config.json whose parameters are the live merger's state — bit-equal to
the CLI merge, logits and generations equal to transformers on the merge written to disk, input models rendered in
the same modules with the merge restored after."""

import math
import shutil

import pytest
import torch
import torch.nn.functional as F

from studio.engine import merge_in_memory, merge_to_disk
from studio.engine.live import LiveMerger
from studio.errors import StudioError
from studio.preview import LLMPreviewer, TextRequest, previewer_for, render_text
from studio.preview.llm import NO_TEMPLATE, detect_causal_lm
from studio.recipe import Recipe
from studio.sources import DictSource, open_source
from tinymodels import add_word_tokenizer, load_state, make_llama

PROMPTS = ["w3 w4 w5", "w10 w20"]


def recipe(f, w_a, lam=1.0):
    return Recipe.from_dict({"merge_method": "task_arithmetic", "base_model": str(f["base"]),
                             "models": [{"model": str(f["a"]), "parameters": {"weight": w_a}},
                                        {"model": str(f["b"]), "parameters": {"weight": 0.5}}],
                             "parameters": {"lambda": lam}})


def preview(f, r, dtype=torch.float32):
    pv = LLMPreviewer(open_source(str(f["base"])), "cpu", dtype)
    live = LiveMerger(r, device="cpu", out_dtype=dtype)
    pv.attach(live)
    return pv, live


def loaded(folder):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return (AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval(),
            AutoTokenizer.from_pretrained(str(folder)))


@pytest.fixture(scope="module")
def written(lm_family, tmp_path_factory):
    """The CLI merge of recipe(0.3) on disk (with the reference's config and tokenizer copied beside it)."""
    out = tmp_path_factory.mktemp("merged") / "m"
    merge_to_disk(recipe(lm_family, 0.3), out, device="cpu", progress=False)
    if not (out / "tokenizer.json").is_file():
        add_word_tokenizer(out)
    return out


def test_the_detector_finds_causal_lms_only(lm_family, tmp_path):
    src = open_source(str(lm_family["base"]))
    assert previewer_for(src) is LLMPreviewer
    bare = DictSource({}, kind="transformers", config={"model_type": "llama"})  # no architectures: by model_type
    assert detect_causal_lm(bare) is LLMPreviewer
    assert detect_causal_lm(DictSource({}, kind="transformers", config={"architectures": ["GPT2LMHeadModel"]})) \
        is LLMPreviewer
    assert detect_causal_lm(DictSource({}, kind="transformers", config={"architectures": ["BertModel"]})) is None
    assert detect_causal_lm(DictSource({}, kind="transformers", config={"model_type": "clip"})) is None
    with pytest.raises(StudioError, match="no preview pipeline"):
        previewer_for(DictSource({"w": torch.zeros(2)}))


def test_merged_weights_are_the_cli_merge_bit_for_bit_and_a_slider_writes_in_place(lm_family):
    f = lm_family
    pv = LLMPreviewer(open_source(str(f["base"])))
    assert all(p.device.type == "meta" for p in pv.model.parameters())  # built from config.json: no weights yet
    live = LiveMerger(recipe(f, 0.3), device="cpu")
    pv.attach(live)
    params = dict(pv.model.named_parameters())
    assert set(params) == set(live.state) and pv.bound == set(live.state) and pv.unused == []
    for k, v in merge_in_memory(recipe(f, 0.3)).items():
        assert torch.equal(params[k], v), k
        assert live.state[k].data_ptr() == params[k].data_ptr()  # the merge's storage is the model's parameter
    ptrs = {k: p.data_ptr() for k, p in params.items()}
    slider = recipe(f, {"L01": 0.9, "*": 0.3})
    changed = live.update(slider)
    pv.refresh(changed)
    assert changed and all(k.startswith("model.layers.1.") for k in changed)
    assert {k: p.data_ptr() for k, p in pv.model.named_parameters()} == ptrs
    for k, v in merge_in_memory(slider).items():
        assert torch.equal(params[k], v), k


def test_logits_equal_transformers_on_the_written_merge(lm_family, written):
    pv, _ = preview(lm_family, recipe(lm_family, 0.3))
    model, _ = loaded(written)
    ids = torch.tensor([[1, 5, 9, 17, 33, 40, 2, 63]])
    with torch.no_grad():
        torch.testing.assert_close(pv.model(input_ids=ids).logits, model(input_ids=ids).logits, rtol=0, atol=0)


def test_greedy_equals_generate_and_sampling_is_deterministic_per_seed(lm_family, written):
    pv, _ = preview(lm_family, recipe(lm_family, 0.3))
    model, tok = loaded(written)
    out = pv.render(TextRequest(prompts=PROMPTS, max_new_tokens=12, text=""))  # no text: generations, no numbers
    assert out["metric"] == "" and out["per_task"] == {} and math.isnan(out["average"])
    for p in PROMPTS:
        ids = tok(p, return_tensors="pt")["input_ids"]
        gen = model.generate(ids, do_sample=False, max_new_tokens=12, pad_token_id=0)
        assert out["samples"][p] == tok.decode(gen[0, ids.shape[1]:], skip_special_tokens=True)
        assert out["samples"][p]  # something was generated
    assert pv.render(TextRequest(prompts=PROMPTS, max_new_tokens=12))["samples"] == out["samples"]

    def sampled(seed, **kw):
        return pv.render(TextRequest(prompts=PROMPTS, max_new_tokens=16, greedy=False, seed=seed, **kw))["samples"]

    assert sampled(5) == sampled(5)
    assert sampled(5) != sampled(6)
    # a nucleus smaller than the top token's probability keeps only that token: sampling is greedy
    assert sampled(7, top_p=1e-6) == pv.render(TextRequest(prompts=PROMPTS, max_new_tokens=16))["samples"]


def test_perplexity_equals_a_direct_cross_entropy(lm_family, written, tmp_path):
    pv, _ = preview(lm_family, recipe(lm_family, 0.3))
    model, tok = loaded(written)
    text = " ".join(f"w{3 + (i * 7) % 61}" for i in range(40))
    out = pv.render(TextRequest(text=text, seq_len=16))
    ids = torch.tensor(tok(text, add_special_tokens=False)["input_ids"][:32]).view(2, 16)  # 2 windows, 8 left out
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    expect = math.exp(F.cross_entropy(logits[:, :-1].reshape(-1, 64), ids[:, 1:].reshape(-1)).item())
    assert out["metric"] == "perplexity" and out["per_task"]["text"] == pytest.approx(expect, rel=1e-5)
    assert out["average"] == out["per_task"]["text"]
    path = tmp_path / "t.txt"
    path.write_text(text)
    assert pv.render(TextRequest(text_file=str(path), seq_len=16))["per_task"] == out["per_task"]
    cut = pv.render(TextRequest(text=text, seq_len=16, max_text_tokens=20))
    assert any("first 20 of 40 tokens" in n for n in cut["notes"])
    with pytest.raises(StudioError, match="text file not found"):
        pv.render(TextRequest(text_file=str(tmp_path / "missing.txt")))


def test_render_source_shows_each_input_and_restores_the_merge(lm_family):
    f = lm_family
    pv, live = preview(f, recipe(f, 0.3))
    text = " ".join(f"w{3 + (i * 5) % 61}" for i in range(30))
    req = TextRequest(prompts=PROMPTS, max_new_tokens=8, text=text, seq_len=16)
    ptrs = {k: p.data_ptr() for k, p in pv.model.named_parameters()}
    for name in ("base", "a", "b"):
        got = pv.render_source(open_source(str(f[name])), req)
        model, tok = loaded(f[name])
        expect = render_text(model, tok, req)
        assert got["samples"] == expect["samples"]
        assert got["per_task"]["text"] == pytest.approx(expect["per_task"]["text"], rel=1e-6)
        params = dict(pv.model.named_parameters())
        for k, v in merge_in_memory(recipe(f, 0.3)).items():
            assert torch.equal(params[k], v), k
        assert {k: p.data_ptr() for k, p in params.items()} == ptrs  # still bound: sliders keep working
    assert pv.render(req)["samples"] != got["samples"]  # the merge is not model b
    live.update(recipe(f, 0.6))
    assert torch.equal(pv.model.model.layers[0].mlp.up_proj.weight,
                       merge_in_memory(recipe(f, 0.6))["model.layers.0.mlp.up_proj.weight"])


def test_render_source_of_a_model_with_other_keys_says_which_and_restores(lm_family):
    f = lm_family
    pv, _ = preview(f, recipe(f, 0.3))
    partial = {k: v for k, v in load_state(f["a"]).items() if k != "model.norm.weight"}
    with pytest.raises(StudioError, match="model.norm.weight"):
        pv.render_source(DictSource(partial, ref="partial"), TextRequest(prompts=PROMPTS))
    params = dict(pv.model.named_parameters())
    for k, v in merge_in_memory(recipe(f, 0.3)).items():
        assert torch.equal(params[k], v), k


def test_chat_template_is_applied_when_the_tokenizer_has_one(lm_family, tmp_path):
    chat = tmp_path / "chat"
    shutil.copytree(lm_family["base"], chat)
    template = ("{% for m in messages %}<s> w60 {{ m['content'] }} w61 {% endfor %}"
                "{% if add_generation_prompt %}w62{% endif %}")
    add_word_tokenizer(chat, chat_template=template)
    fam = {**lm_family, "base": chat}
    pv, _ = preview(fam, recipe(fam, 0.3))
    out = pv.render(TextRequest(prompts=PROMPTS, chat=True, max_new_tokens=10, text=""))
    assert "notes" not in out
    model, tok = loaded(lm_family["base"])
    model.load_state_dict(merge_in_memory(recipe(fam, 0.3)))
    for p in PROMPTS:
        ids = tok(f"<s> w60 {p} w61 w62", add_special_tokens=False, return_tensors="pt")["input_ids"]
        assert ids[0, 0].item() == 1 and ids[0, -1].item() == 62
        gen = model.generate(ids, do_sample=False, max_new_tokens=10, pad_token_id=0)
        assert out["samples"][p] == tok.decode(gen[0, ids.shape[1]:], skip_special_tokens=True)
    plain = pv.render(TextRequest(prompts=PROMPTS, max_new_tokens=10))
    assert plain["samples"] != out["samples"]
    # no template: the prompt as it is, and a note saying so
    pv2, _ = preview(lm_family, recipe(lm_family, 0.3))
    none = pv2.render(TextRequest(prompts=PROMPTS, chat=True, max_new_tokens=10, text=""))
    assert none["notes"] == [NO_TEMPLATE]
    assert none["samples"] == pv2.render(TextRequest(prompts=PROMPTS, max_new_tokens=10))["samples"]


def test_tied_embeddings_are_one_bound_tensor(tied_family, tmp_path):
    f = tied_family
    assert "lm_head.weight" not in open_source(str(f["base"]))
    pv, live = preview(f, recipe(f, 0.3))
    emb = live.state["model.embed_tokens.weight"]
    assert pv.model.lm_head.weight.data_ptr() == emb.data_ptr() == pv.model.model.embed_tokens.weight.data_ptr()
    out = tmp_path / "m"
    merge_to_disk(recipe(f, 0.3), out, device="cpu", progress=False)
    model, _ = loaded(out)
    ids = torch.tensor([[1, 7, 8, 9, 40]])
    with torch.no_grad():
        torch.testing.assert_close(pv.model(input_ids=ids).logits, model(input_ids=ids).logits, rtol=0, atol=0)
    live.update(recipe(f, {"EMB": 0.9, "*": 0.3}))  # the embedding slider moves the head too
    expect = merge_in_memory(recipe(f, {"EMB": 0.9, "*": 0.3}))["model.embed_tokens.weight"]
    assert torch.equal(pv.model.lm_head.weight, expect)


def test_a_half_precision_preview_holds_the_merge_cast_once(lm_family):
    f = lm_family
    pv, live = preview(f, recipe(f, 0.3), dtype=torch.bfloat16)
    params = dict(pv.model.named_parameters())
    assert all(p.dtype == torch.bfloat16 for p in params.values())
    assert pv.model.model.rotary_emb.inv_freq.dtype == torch.float32  # computed by the model's code, as from_pretrained
    for k, v in merge_in_memory(recipe(f, 0.3)).items():
        assert torch.equal(params[k], v.to(torch.bfloat16)), k
    assert pv.render(TextRequest(prompts=PROMPTS, max_new_tokens=4))["samples"][PROMPTS[0]]
    with pytest.raises(ValueError, match="out_dtype"):
        LLMPreviewer(open_source(str(f["base"]))).attach(live)


def test_missing_pieces_are_named(lm_family, tmp_path):
    bare = make_llama(tmp_path / "bare", 0)  # config and weights, no tokenizer files
    with pytest.raises(StudioError, match="tokenizer.json"):
        LLMPreviewer(open_source(str(bare)))
    # a checkpoint without model.norm.weight: the merge cannot fill the model
    from safetensors.torch import save_file

    short = tmp_path / "short"
    shutil.copytree(lm_family["base"], short)
    save_file({k: v for k, v in load_state(lm_family["base"]).items() if k != "model.norm.weight"},
              str(short / "model.safetensors"))
    live = LiveMerger(Recipe.from_dict({"merge_method": "linear", "models": [{"model": str(short), "parameters": {"weight": 1.0}}]}),
                      device="cpu")
    with pytest.raises(StudioError, match=r"does not produce 1 of the model's parameters: model\.norm\.weight"):
        LLMPreviewer(open_source(str(short))).attach(live)
    loose = tmp_path / "loose.safetensors"  # weights without a folder: no config, no tokenizer
    shutil.copy(short / "model.safetensors", loose)
    with pytest.raises(StudioError, match="needs the model's folder"):
        LLMPreviewer(open_source(str(loose)))


@pytest.mark.parametrize("kw, what", [({"greedy": False, "temperature": 0}, "temperature"),
                                      ({"greedy": False, "top_p": 0}, "top_p"),
                                      ({"max_new_tokens": -1}, "max_new_tokens"),
                                      ({"text": "w3 w4", "text_file": "t.txt"}, "both"),
                                      ({"match": "fuzzy"}, "fuzzy")])
def test_bad_requests_are_studio_errors(kw, what):
    with pytest.raises(StudioError, match=what):
        TextRequest(prompts=PROMPTS, **kw).check()


def test_parameters_go_to_meta_only_in_the_building_thread():
    import threading

    from torch import nn

    from studio.preview.llm import parameters_on_meta

    register = nn.Module.register_parameter
    seen, start, done = {}, threading.Event(), threading.Event()

    def other():
        start.wait()
        seen["other thread"] = nn.Linear(2, 2).weight.device.type
        done.set()

    t = threading.Thread(target=other)
    t.start()
    with parameters_on_meta():
        start.set()
        done.wait(10)
        seen["inside"] = nn.Linear(2, 2).weight.device.type
        with parameters_on_meta():
            seen["nested"] = nn.Linear(2, 2).weight.device.type
        seen["after nested"] = nn.Linear(2, 2).weight.device.type
    t.join()
    seen["outside"] = nn.Linear(2, 2).weight.device.type
    assert seen == {"other thread": "cpu", "inside": "meta", "nested": "meta", "after nested": "meta",
                    "outside": "cpu"}
    assert nn.Module.register_parameter is register


def test_a_hub_id_previews_from_the_local_cache(lm_family, monkeypatch, tmp_path):
    """``org/name`` resolves through the HF cache (offline): model, tokenizer and weights from the snapshot."""
    hf = tmp_path / "hf"
    repo = hf / "hub" / "models--acme--tiny-lm"
    commit = "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(lm_family["a"], repo / "snapshots" / commit)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HOME", str(hf))
    monkeypatch.setenv("HF_HUB_CACHE", str(hf / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    pv = LLMPreviewer.from_ref("acme/tiny-lm")
    pv.attach(LiveMerger(Recipe.from_dict({"merge_method": "linear",
                                           "models": [{"model": "acme/tiny-lm", "parameters": {"weight": 1.0}}]}),
                         device="cpu"))
    req = TextRequest(prompts=PROMPTS, max_new_tokens=8)
    model, tok = loaded(lm_family["a"])
    assert pv.render(req)["samples"] == render_text(model, tok, req)["samples"]


def test_a_new_request_shows_generations_and_a_number_before_anything_is_typed(lm_family):
    """A user's own LLM previews something at once: the default prompts, and perplexity on a sample paragraph
    (said in the notes); a text file or an evaluation set replaces the paragraph."""
    from studio.preview.llm import DEFAULT_PROMPTS, DEFAULT_TEXT
    pv, _ = preview(lm_family, recipe(lm_family, 0.3))
    out = pv.render(TextRequest(max_new_tokens=4))
    assert list(out["samples"]) == list(DEFAULT_PROMPTS)
    assert out["metric"] == "perplexity" and out["average"] > 1 and "sample paragraph" in out["notes"][0]
    assert out["per_task"] == pv.render(TextRequest(prompts=[], text=DEFAULT_TEXT))["per_task"]
    TextRequest(text_file="x.txt").check()  # the paragraph gives way to a file
