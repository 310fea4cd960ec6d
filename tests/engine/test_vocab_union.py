"""Merges over one vocabulary (``tokenizer_source`` / ``tokenizer:``) of tiny Llamas with their own word lists and
vocab sizes: closed forms, the merged folder as transformers loads it, the dry run refusing what the merge refuses,
and differential checks against mergekit 0.1.5 on the same recipes (skipped without mergekit)."""

import json

import pytest
import torch
import yaml

from mergekit_runner import run_mergekit
from tinymodels import WORDS, add_tokenizer_of, load_state, make_llama
from studio.cli import main
from studio.engine import build_plan, merge_in_memory, merge_to_disk
from studio.engine.live import LiveMerger
from studio.errors import StudioError
from studio.recipe import Recipe

EMBED, HEAD = "model.embed_tokens.weight", "lm_head.weight"
# base: WORDS (64 ids); b: the specials, w40…w4 backwards (other ids than the base's), x0…x29 (72 ids);
# c: the specials, x10…x19, y0…y19 (33 ids)
B_WORDS = WORDS[:3] + [f"w{i}" for i in range(40, 3, -1)] + [f"x{i}" for i in range(30)]
C_WORDS = WORDS[:3] + [f"x{i}" for i in range(10, 20)] + [f"y{i}" for i in range(20)]


@pytest.fixture(scope="module")
def vocab_family(tmp_path_factory):
    root = tmp_path_factory.mktemp("vocab")
    out = {}
    for name, seed, words in (("base", 1, WORDS), ("b", 2, B_WORDS), ("c", 3, C_WORDS)):
        out[name] = make_llama(root / name, seed, layers=2, hidden=16, vocab=len(words))
        add_tokenizer_of(out[name], words)
    for name, seed, words in (("tied_a", 4, WORDS), ("tied_b", 5, C_WORDS)):
        out[name] = make_llama(root / name, seed, layers=2, hidden=16, vocab=len(words), tie=True)
        add_tokenizer_of(out[name], words)
    return {k: str(v) for k, v in out.items()}


def recipes(f):
    base, b, c = f["base"], f["b"], f["c"]
    return {
        "union_linear": {"merge_method": "linear", "tokenizer_source": "union", "models": [
            {"model": base, "parameters": {"weight": 0.5}}, {"model": b, "parameters": {"weight": 0.3}},
            {"model": c, "parameters": {"weight": 0.2}}]},
        "union_ties": {"merge_method": "ties", "base_model": base, "tokenizer": {"source": "union"}, "models": [
            {"model": b, "parameters": {"weight": 0.6, "density": 0.5}},
            {"model": c, "parameters": {"weight": 0.4, "density": 0.7}}]},
        "base_padded": {"merge_method": "linear", "base_model": base, "tokenizer": {"source": "base",
                                                                                   "pad_to_multiple_of": 48},
                        "models": [{"model": base, "parameters": {"weight": 0.6}},
                                   {"model": b, "parameters": {"weight": 0.4}}]},
        "tokens_forced": {"merge_method": "task_arithmetic", "base_model": base, "models": [
            {"model": b, "parameters": {"weight": 0.7}}, {"model": c, "parameters": {"weight": 0.5}}],
            "tokenizer": {"pad_to_multiple_of": 32, "tokens": {
                "x15": {"source": c},
                "x16": {"source": b, "force": True},
                "w7": {"source": {"kind": "model_token", "model": c, "token": "y2"}, "force": True},
                "<s>": {"source": {"kind": "zero"}, "force": True},
                "brandnew": {"source": {"kind": "model_token", "model": b, "token_id": 5}}}}},
        "model_source": {"merge_method": "linear", "tokenizer_source": c, "models": [
            {"model": b, "parameters": {"weight": 0.6}}, {"model": c, "parameters": {"weight": 0.4}}]},
    }


def tokenizer(folder):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(str(folder))


def rows_by_token(state, vocab):
    return {k: {t: state[k][i] for t, i in vocab.items()} for k in (EMBED, HEAD) if k in state}


# ------------------------------------------------------------------------------------------------ closed forms
def test_union_linear_rows_in_closed_form(vocab_family):
    f = vocab_family
    r = Recipe.from_dict({**recipes(f)["union_linear"], "dtype": "float32"})
    out = merge_in_memory(r)
    vocab = build_plan(r).sources[0].vocabulary
    ids = vocab.ids
    base, b, c = (load_state(f[k]) for k in ("base", "b", "c"))
    own = {"base": {w: i for i, w in enumerate(WORDS)}, "b": {w: i for i, w in enumerate(B_WORDS)},
           "c": {w: i for i, w in enumerate(C_WORDS)}}
    assert len(ids) == len(set(WORDS) | set(B_WORDS) | set(C_WORDS)) == out[EMBED].shape[0] == vocab.size
    for key in (EMBED, HEAD):
        # y3 only in c: every model gets c's row, so the mix of three equal rows is c's row
        torch.testing.assert_close(out[key][ids["y3"]], c[key][own["c"]["y3"]])
        # x25 only in b
        torch.testing.assert_close(out[key][ids["x25"]], b[key][own["b"]["x25"]])
        # <s> in all three: the linear mix of each model's own row
        mix = 0.5 * base[key][1] + 0.3 * b[key][1] + 0.2 * c[key][1]
        torch.testing.assert_close(out[key][ids["<s>"]], mix)
        # w9 in base and b at different ids, not in c (no base_model): c gets the mean of theirs
        wb, wbb = base[key][own["base"]["w9"]], b[key][own["b"]["w9"]]
        torch.testing.assert_close(out[key][ids["w9"]], 0.5 * wb + 0.3 * wbb + 0.2 * (wb + wbb) / 2)
        # x12 in b and c, not in the base
        xb, xc = b[key][own["b"]["x12"]], c[key][own["c"]["x12"]]
        torch.testing.assert_close(out[key][ids["x12"]], 0.5 * (xb + xc) / 2 + 0.3 * xb + 0.2 * xc)


def test_base_row_for_shared_tokens_and_padding_in_closed_form(vocab_family):
    f = vocab_family
    r = Recipe.from_dict({"merge_method": "linear", "base_model": f["base"], "dtype": "float32",
                          "tokenizer": {"source": "union", "pad_to_multiple_of": 64},
                          "models": [{"model": f["base"], "parameters": {"weight": 1.0}},
                                     {"model": f["b"], "parameters": {"weight": 0.25}},
                                     {"model": f["c"], "parameters": {"weight": 0.75}}]})
    out = merge_in_memory(r)
    ids = build_plan(r).sources[0].vocabulary.ids
    base, c = load_state(f["base"]), load_state(f["c"])
    n = len(ids)
    assert out[EMBED].shape[0] == 128 and n == 114
    # w9 is not in c: with a base_model, c takes the base's row
    b = load_state(f["b"])
    wb, wbb = base[EMBED][WORDS.index("w9")], b[EMBED][B_WORDS.index("w9")]
    torch.testing.assert_close(out[EMBED][ids["w9"]], (0.25 * wbb + 0.75 * wb + 1.0 * wb) / 2.0)
    # y7 only in c
    torch.testing.assert_close(out[HEAD][ids["y7"]], c[HEAD][C_WORDS.index("y7")])
    # padding rows: each model's mean row; a linear mix of means is the mean of the mix
    for key in (EMBED, HEAD):
        torch.testing.assert_close(out[key][n:], out[key][:n].mean(0).expand(128 - n, -1), rtol=1e-5, atol=1e-6)


def test_token_settings_in_closed_form(vocab_family):
    f = vocab_family
    r = Recipe.from_dict({**recipes(f)["tokens_forced"], "dtype": "float32"})
    ids = build_plan(r).sources[0].vocabulary.ids
    out = merge_in_memory(r)
    base, b, c = (load_state(f[k]) for k in ("base", "b", "c"))
    for key in (EMBED, HEAD):
        # forced: every model (base included) holds the same row, so task arithmetic leaves it as it is
        torch.testing.assert_close(out[key][ids["w7"]], c[key][C_WORDS.index("y2")])
        torch.testing.assert_close(out[key][ids["x16"]], b[key][B_WORDS.index("x16")])
        assert torch.equal(out[key][ids["<s>"]], torch.zeros(16))
        torch.testing.assert_close(out[key][ids["brandnew"]], b[key][5])
        # not forced: b keeps its own x15; base takes c's (its setting)
        xb, xc = b[key][B_WORDS.index("x15")], c[key][C_WORDS.index("x15")]
        torch.testing.assert_close(out[key][ids["x15"]], xc + 0.7 * (xb - xc) + 0.5 * (xc - xc))


def test_merged_folder_loads_and_encodes_the_union(vocab_family, tmp_path):
    from transformers import AutoModelForCausalLM
    f = vocab_family
    out = tmp_path / "merged"
    merge_to_disk(Recipe.from_dict(recipes(f)["union_ties"]), out, progress=False)
    tok = tokenizer(out)
    config = json.loads((out / "config.json").read_text())
    assert config["vocab_size"] == len(tok) == len(tok.get_vocab()) == 114
    text = "w5 x3 y7 x15 w40"
    ids = tok(text).input_ids
    assert tok.convert_ids_to_tokens(ids) == text.split() and tok.unk_token_id not in ids
    words = sorted(set(WORDS[3:]) | set(B_WORDS[3:]) | set(C_WORDS[3:]))
    assert [tok.convert_ids_to_tokens(tok(w).input_ids) for w in words] == [[w] for w in words]
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.get_input_embeddings().weight.shape == (114, 16)
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits
    assert logits.shape == (1, 5, 114) and torch.isfinite(logits).all()


def test_tied_heads_stay_tied(vocab_family, tmp_path):
    from transformers import AutoModelForCausalLM
    f = vocab_family
    out = tmp_path / "tied"
    merge_to_disk(Recipe.from_dict({"merge_method": "linear", "tokenizer_source": "union", "dtype": "float32",
                                    "parameters": {"weight": 1.0}, "models": [f["tied_a"], f["tied_b"]]}), out, progress=False)
    state = load_state(out)
    assert HEAD not in state and state[EMBED].shape == (94, 16)
    a = load_state(f["tied_a"])
    ids = tokenizer(out).get_vocab()
    torch.testing.assert_close(state[EMBED][ids["w50"]], a[EMBED][WORDS.index("w50")])
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()


def test_tokens_beyond_a_models_vocab_size_are_left_out(vocab_family, tmp_path):
    f = vocab_family
    padded = make_llama(tmp_path / "padded", 6, layers=2, hidden=16, vocab=64)
    add_tokenizer_of(padded, WORDS + [f"z{i}" for i in range(6)])  # ids 64…69: no rows in the model
    r = Recipe.from_dict({"merge_method": "linear", "base_model": str(padded), "tokenizer_source": "union",
                          "dtype": "float32", "models": [{"model": str(padded), "parameters": {"weight": 0.5}},
                                                         {"model": f["c"], "parameters": {"weight": 0.5}}]})
    vocab = build_plan(r).sources[0].vocabulary
    assert not any(t.startswith("z") for t in vocab.ids) and vocab.size == len(vocab.ids) == 94
    out = merge_in_memory(r)
    assert out[EMBED].shape == (94, 16)
    torch.testing.assert_close(out[EMBED][vocab.ids["w63"]], load_state(padded)[EMBED][63])


def test_live_engine_sees_the_same_vocabulary(vocab_family):
    r = Recipe.from_dict({**recipes(vocab_family)["union_linear"], "dtype": "float32"})
    live = LiveMerger(r, device="cpu", workers=1)
    streamed = merge_in_memory(r)
    assert set(live.state) == set(streamed)
    for k in streamed:
        torch.testing.assert_close(live.state[k].float(), streamed[k].float())


# ------------------------------------------------------------------------------------------------ refusals
def test_different_vocab_sizes_without_settings_are_refused_with_a_hint(vocab_family):
    f = vocab_family
    with pytest.raises(StudioError, match="tokenizer_source: union") as e:
        build_plan(Recipe.from_dict({"merge_method": "linear", "models": [f["base"], f["b"]]}))
    assert "shape" in str(e.value)


BAD_TOKENS = {
    "a model the tensor is not merged from": (lambda f: {"w3": {"source": f["tied_a"], "force": True}},
                                              "is not merged from"),
    "a model lacking the token": (lambda f: {"y3": {"source": f["b"]}}, "has no token 'y3'"),
    "a token id beyond the rows": (lambda f: {"w3": {"source": {"kind": "model_token", "model": f["c"],
                                                                "token_id": 40}, "force": True}}, "beyond"),
    "an unknown token name": (lambda f: {"w3": {"source": {"kind": "model_token", "model": f["c"], "token": "zz"},
                                                "force": True}}, "has no token 'zz'"),
}


@pytest.mark.parametrize("tokens, message", BAD_TOKENS.values(), ids=BAD_TOKENS.keys())
def test_dry_run_refuses_what_the_merge_refuses(vocab_family, tmp_path, capsys, tokens, message):
    f = vocab_family
    recipe = {"merge_method": "linear", "models": [f["base"], f["b"], f["c"]], "tokenizer": {"tokens": tokens(f)}}
    path = tmp_path / "r.yml"
    path.write_text(yaml.safe_dump(recipe))
    errors = []
    for extra in (["--dry-run"], []):
        assert main(["merge", str(path), str(tmp_path / "out"), "--quiet", *extra]) == 2
        errors.append(capsys.readouterr().err.strip())
    assert errors[0] == errors[1] and message in errors[0] and len(errors[0].splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_dry_run_reports_the_output_vocabulary_shapes(vocab_family):
    plan = build_plan(Recipe.from_dict(recipes(vocab_family)["tokens_forced"]))
    outputs = plan.outputs()
    assert outputs[EMBED].shape == outputs[HEAD].shape == (128, 16)  # 114 tokens + brandnew, padded to 32
    assert plan.reference.config["vocab_size"] == 128


# ------------------------------------------------------------------------------------------------ mergekit
@pytest.mark.parametrize("name", ["union_linear", "union_ties", "base_padded", "tokens_forced", "model_source"])
def test_equal_to_mergekit(vocab_family, tmp_path, name):
    pytest.importorskip("mergekit")
    d = dict(recipes(vocab_family)[name], dtype="float32")
    merge_to_disk(Recipe.from_dict(d), tmp_path / "ours", progress=False)
    run_mergekit(yaml.safe_load(yaml.safe_dump(d)), tmp_path / "mk", copy_tokenizer=True)
    ours_tok, theirs_tok = tokenizer(tmp_path / "ours"), tokenizer(tmp_path / "mk")
    # mergekit appends the union's tokens in hash order (it differs run to run): compare token by token
    assert ours_tok.get_vocab().keys() == theirs_tok.get_vocab().keys()
    ours_cfg, theirs_cfg = (json.loads((tmp_path / d / "config.json").read_text()) for d in ("ours", "mk"))
    assert ours_cfg["vocab_size"] == theirs_cfg["vocab_size"]
    ours, theirs = load_state(tmp_path / "ours"), load_state(tmp_path / "mk")
    assert set(ours) == set(theirs)
    n = len(ours_tok.get_vocab())
    for key, rows in rows_by_token(ours, ours_tok.get_vocab()).items():
        assert ours[key].shape == theirs[key].shape == (ours_cfg["vocab_size"], 16)
        for t, row in rows.items():
            torch.testing.assert_close(row, theirs[key][theirs_tok.get_vocab()[t]], rtol=1e-5, atol=1e-6,
                                       msg=lambda m: f"{name} {key} {t!r}: {m}")
        torch.testing.assert_close(ours[key][n:], theirs[key][n:], rtol=1e-5, atol=1e-6)
    for k in set(ours) - {EMBED, HEAD}:
        torch.testing.assert_close(ours[k], theirs[k], rtol=1e-5, atol=1e-6, msg=lambda m: f"{name} {k}: {m}")
    # (how each splits text is not compared: with mergekit's run-to-run order of added tokens, its tokenizer
    # sometimes reads "x15" as "x1" + "5")


def test_the_live_engine_follows_a_change_of_vocabulary_settings(vocab_family):
    """Under the same references, new tokenizer settings re-map the embedding rows: the live merger recomputes them."""
    r = Recipe.from_dict({**recipes(vocab_family)["union_linear"], "dtype": "float32"})
    live = LiveMerger(r, device="cpu", workers=1)
    padded = Recipe.from_dict({**r.to_dict(), "tokenizer_source": None,
                               "tokenizer": {"source": "union", "pad_to_multiple_of": 32}})
    live.update(padded)
    streamed = merge_in_memory(padded)
    for k in streamed:
        torch.testing.assert_close(live.state[k].float(), streamed[k].float())
