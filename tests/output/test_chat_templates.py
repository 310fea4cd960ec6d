"""A recipe's chat_template is written into the merged tokenizer as mergekit does: a named template, ``auto`` (the
template most inputs carry), or a literal one; anything else is refused before merging (#19 item 2)."""

from __future__ import annotations

import json

import pytest
from transformers import AutoTokenizer

from tinymodels import add_word_tokenizer, make_llama

from studio.cli import main
from studio.errors import RecipeError
from studio.recipe import Recipe
from studio.recipe.chat_templates import NAMED

T1 = "{% for m in messages %}{{ m['content'] }}|{% endfor %}"
T2 = "{% for m in messages %}[{{ m['role'] }}]{% endfor %}"


@pytest.fixture(scope="module")
def llamas(tmp_path_factory):
    root = tmp_path_factory.mktemp("chat")
    out = {}
    for name, seed, tpl in (("a", 1, T2), ("b", 2, T1), ("c", 3, T1)):
        out[name] = add_word_tokenizer(make_llama(root / name, seed=seed), chat_template=tpl)
    return out


def _merge(llamas, tmp_path, template, capsys=None):
    yml = tmp_path / "r.yml"
    models = "".join(f"  - model: {llamas[k]}\n    parameters: {{weight: 1}}\n" for k in "abc")
    yml.write_text(f"merge_method: linear\nmodels:\n{models}chat_template: {json.dumps(template)}\n")
    assert main(["merge", str(yml), str(tmp_path / "out"), "--quiet"]) == 0
    return AutoTokenizer.from_pretrained(tmp_path / "out")


def test_a_named_template_is_written_and_renders(llamas, tmp_path):
    tok = _merge(llamas, tmp_path, "chatml")
    assert tok.chat_template == NAMED["chatml"]
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def test_auto_takes_the_template_most_inputs_carry(llamas, tmp_path):
    assert _merge(llamas, tmp_path, "auto").chat_template == T1   # b and c carry T1, a (listed first) T2


def test_a_literal_template_is_written_as_given(llamas, tmp_path):
    assert _merge(llamas, tmp_path, T2).chat_template == T2


def test_an_unknown_name_is_refused_before_merging():
    with pytest.raises(RecipeError, match="chat_template 'chatgpt' is neither auto"):
        Recipe.from_dict({"merge_method": "linear", "models": [{"model": "a"}], "chat_template": "chatgpt"})


@pytest.mark.parametrize("name, expected", [
    ("chatml", "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"),
    ("llama3", "<s><|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>\n<|start_header_id|>assistant"
               "<|end_header_id|>\n\n"),
    ("alpaca", "### Instruction:\nhi\n\n### Response:\n"),
    ("mistral", "<s> [INST] hi [/INST]"),
])
def test_every_named_template_renders_its_format(llamas, name, expected):
    tok = AutoTokenizer.from_pretrained(llamas["a"])
    tok.chat_template = NAMED[name]
    assert tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False,
                                   add_generation_prompt=True) == expected


CONVERSATIONS = [[{"role": "user", "content": "hi"}],
                 [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"},
                  {"role": "assistant", "content": "hello"}, {"role": "user", "content": " two "}]]


def _renders(tok):
    return [tok.apply_chat_template(c, tokenize=False, add_generation_prompt=g) for c in CONVERSATIONS
            for g in (False, True)]


@pytest.mark.parametrize("template", ["chatml", "llama3", "mistral", "auto", T2])
def test_the_template_renders_as_mergekits(llamas, tmp_path, template):
    """The prompts a merged model is given equal those of mergekit 0.1.5's output on the same recipe (templates are
    compared by what they render through transformers, the text being ours)."""
    pytest.importorskip("mergekit")
    from mergekit_runner import run_mergekit
    recipe = {"merge_method": "linear", "dtype": "float32", "chat_template": template,
              "models": [{"model": str(llamas[k]), "parameters": {"weight": 1.0}} for k in "abc"]}
    run_mergekit(recipe, tmp_path / "mk", copy_tokenizer=True)
    assert _renders(_merge(llamas, tmp_path, template)) == _renders(AutoTokenizer.from_pretrained(tmp_path / "mk"))


def test_alpaca_keeps_the_blank_line_before_the_response():
    """mergekit 0.1.5's alpaca template, rendered by transformers, runs the instruction into the response header
    ('hi### Response:'); ours keeps the Alpaca format's blank line."""
    from jinja2 import Environment
    env = Environment(trim_blocks=True, lstrip_blocks=True)
    text = env.from_string(NAMED["alpaca"]).render(messages=CONVERSATIONS[0], add_generation_prompt=True,
                                                   eos_token="</s>")
    assert text == "### Instruction:\nhi\n\n### Response:\n"
