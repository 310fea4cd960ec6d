"""Published mergekit recipes (tests/recipe/published/, origins in each file's first comment) merge with our engine
through `python -m studio merge`, and what they write loads with transformers (#19: a corpus of real recipes).

The model names are placeholders for tiny local Llamas (see published/README.md); everything else stays as
published, so a recipe fails here exactly where a user's copy of it would."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import yaml

from studio.cli import main
from tinymodels import add_word_tokenizer, add_word_tokenizer_extra, load_state, make_llama, make_peft_lora

PUBLISHED = Path(__file__).parent / "published"
RECIPES = sorted(PUBLISHED.glob("*.yml"))
LAYERS, HIDDEN = 40, 16  # 40 layers: the published layer ranges (up to [0, 40]) fit unchanged
PLACEHOLDER = re.compile(r"\{\{([A-Z]+[0-9]*)\}\}")
TEMPLATE = "{% for m in messages %}{{ m['content'] }} {% endfor %}"
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }} {{ m['content'] }}<|im_end|> {% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant {% endif %}")
EXTRA_WORDS = ["<|im_start|>", "<|im_end|>"]
# one tensor to check against the closed form where the method has one
PROBE = "model.layers.3.mlp.down_proj.weight"


def _padded(state: dict, rows: int, seed: int) -> dict:
    """The base's state with ``rows`` more (random) token rows in the embedding and the head."""
    g = torch.Generator().manual_seed(seed)
    out = dict(state)
    for k in ("model.embed_tokens.weight", "lm_head.weight"):
        out[k] = torch.cat([state[k], 0.02 * torch.randn(rows, state[k].shape[1], generator=g)])
    return out


@pytest.fixture(scope="session")
def zoo(tmp_path_factory) -> dict[str, Path]:
    return build_zoo(tmp_path_factory.mktemp("published_zoo"))


def build_zoo(root: Path) -> dict[str, Path]:
    """The tiny models the placeholders name (also built by bench/published_recipes.py)."""
    kw = dict(layers=LAYERS, hidden=HIDDEN)
    base = add_word_tokenizer(make_llama(root / "base", 0, **kw), chat_template=TEMPLATE)
    state = load_state(base)
    models = {"BASE": base}
    for i in range(1, 14):
        p = make_llama(root / f"m{i}", i, base_state=state, **kw)
        models[f"M{i}"] = add_word_tokenizer(p, chat_template=TEMPLATE if i <= 3 else None)
    chatml = make_llama(root / "chatml", 99, vocab=64 + len(EXTRA_WORDS), base_state=_padded(state, 2, 99), **kw)
    models["CHATML"] = add_word_tokenizer_extra(chatml, EXTRA_WORDS, chat_template=CHATML)
    for i in range(1, 8):
        models[f"LORA{i}"] = make_peft_lora(root / f"lora{i}", base, seed=100 + i)
    return models


def _fill(text: str, models: dict[str, Path]) -> str:
    return PLACEHOLDER.sub(lambda m: str(models[m.group(1)]), text)


def _closed_form(recipe: str, models: dict[str, Path]) -> torch.Tensor | None:
    """The probe tensor as the recipe's method defines it, for the methods with a closed form (linear: Σwᵢxᵢ/Σwᵢ;
    task_arithmetic without normalize or lambda: base + Σwᵢ(xᵢ − base)); None for the others."""
    docs = [d for d in yaml.safe_load_all(recipe) if d]
    if len(docs) != 1:
        return None
    r = docs[0]
    method = r.get("merge_method")
    if method not in ("linear", "task_arithmetic") or "slices" in r or "parameters" in r:
        return None
    ws = [((m.get("parameters") or {}).get("weight"), m["model"]) for m in r["models"]]
    if not all(isinstance(w, (int, float)) or w is None for w, _ in ws):
        return None
    x = {ref: load_state(Path(ref))[PROBE] for _, ref in ws}
    if method == "linear":
        return sum(w * x[ref] for w, ref in ws) / sum(w for w, _ in ws)
    base = load_state(Path(r["base_model"]))[PROBE]
    return base + sum((w or 0.0) * (x[ref] - base) for w, ref in ws if ref != r["base_model"])


def _final_document(text: str) -> dict:
    """The document whose output is the merge's (the last one, in mergekit-multi's files)."""
    docs = [d for d in yaml.safe_load_all(text) if isinstance(d, dict)]
    return docs[-1] if docs else {}


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_published_recipe_merges_and_loads(path, zoo, tmp_path, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer  # heavy: imported by the test that loads

    text = _fill(path.read_text(), zoo)
    recipe = tmp_path / path.name
    recipe.write_text(text)
    out = tmp_path / "out"
    # from the folder the recipe is in: mergekit-multi's relative intermediate paths resolve there as well
    code = main(["merge", str(recipe), str(out), "--quiet", "--seed", "0"])
    err = capsys.readouterr().err.strip()
    assert code == 0, f"{path.name}: exit {code}: {err}"
    model = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    assert tok("w3 w4")["input_ids"][-1] == tok.convert_tokens_to_ids("w4")
    assert len(tok) <= model.get_input_embeddings().weight.shape[0]
    state = load_state(out)
    bad = [k for k, v in state.items() if not torch.isfinite(v).all()]
    assert not bad, f"non-finite tensors: {bad[:3]}"
    final = _final_document(text)
    if final.get("chat_template"):  # a named or "auto" template is written into the merged tokenizer
        assert tok.chat_template, "the recipe sets chat_template; the output's tokenizer has none"
    if "union" in (final.get("tokenizer_source"), (final.get("tokenizer") or {}).get("source")):
        assert set(EXTRA_WORDS) <= set(tok.get_vocab()), "union vocabulary lacks {{CHATML}}'s tokens"
        assert model.get_input_embeddings().weight.shape[0] >= 64 + len(EXTRA_WORDS)
    expected = _closed_form(text, zoo)
    if expected is not None:
        torch.testing.assert_close(state[PROBE], expected, rtol=1e-2, atol=2e-3)
