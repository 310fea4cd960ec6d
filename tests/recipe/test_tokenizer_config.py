"""The ``tokenizer:`` mapping and ``tokenizer_source`` as a recipe states them: what is read, what is refused."""

import pytest

from studio.errors import RecipeError
from studio.recipe import Recipe
from studio.recipe.tokenizer_config import TokenEmbedding, TokenSetting, tokenizer_settings

MODELS = {"merge_method": "linear", "models": ["/m/a", "/m/b"]}


def test_settings_are_read_as_mergekit_reads_them():
    s = tokenizer_settings(None, {"tokens": {"<x>": {"source": "/m/b", "force": True},
                                             "<y>": {"source": {"kind": "model_token", "model": "/m/a", "token_id": 3}},
                                             "<z>": {"source": {"kind": "zero"}}, "<w>": None},
                                  "pad_to_multiple_of": 8})
    assert s.source == "union" and s.pad_to_multiple_of == 8  # mergekit's default source is the union
    assert s.tokens == {"<x>": TokenSetting(TokenEmbedding("model", model="/m/b"), True),
                        "<y>": TokenSetting(TokenEmbedding("model_token", model="/m/a", token_id=3)),
                        "<z>": TokenSetting(TokenEmbedding("zero")), "<w>": TokenSetting()}
    assert tokenizer_settings("base", None).source == "base" and tokenizer_settings(None, None) is None


BAD = {
    "both tokenizer_source and tokenizer": ({"tokenizer_source": "union", "tokenizer": {"source": "base"}},
                                            "both given"),
    "an unknown tokenizer key": ({"tokenizer": {"sources": "union"}}, "unknown key 'sources'"),
    "tokens a list": ({"tokenizer": {"tokens": ["<x>"]}}, "tokens must map"),
    "a token's settings a string": ({"tokenizer": {"tokens": {"<x>": "/m/a"}}}, "must be a mapping"),
    "an unknown token key": ({"tokenizer": {"tokens": {"<x>": {"source": "/m/a", "weight": 1}}}}, "unknown key 'weight'"),
    "force not a boolean": ({"tokenizer": {"tokens": {"<x>": {"source": "/m/a", "force": "yes"}}}}, "force must be"),
    "an unknown source kind": ({"tokenizer": {"tokens": {"<x>": {"source": {"kind": "mean"}}}}}, "source must be"),
    "token and token_id both": ({"tokenizer": {"tokens": {"<x>": {"source": {
        "kind": "model_token", "model": "/m/a", "token": "a", "token_id": 1}}}}}, "exactly one"),
    "neither token nor token_id": ({"tokenizer": {"tokens": {"<x>": {"source": {
        "kind": "model_token", "model": "/m/a"}}}}}, "exactly one"),
    "a model_token without a model": ({"tokenizer": {"tokens": {"<x>": {"source": {
        "kind": "model_token", "token_id": 1}}}}}, "model must be text"),
    "a negative token_id": ({"tokenizer": {"tokens": {"<x>": {"source": {
        "kind": "model_token", "model": "/m/a", "token_id": -1}}}}}, "token_id must be"),
    "a zero source with a model": ({"tokenizer": {"tokens": {"<x>": {"source": {"kind": "zero", "model": "/m/a"}}}}},
                                   "unknown key 'model'"),
    "pad_to_multiple_of zero": ({"tokenizer": {"pad_to_multiple_of": 0}}, "pad_to_multiple_of must be"),
    "pad_to_multiple_of a boolean": ({"tokenizer": {"pad_to_multiple_of": True}}, "pad_to_multiple_of must be"),
    "an empty source": ({"tokenizer": {"source": " "}}, "source must be text"),
}


@pytest.mark.parametrize("extra, message", BAD.values(), ids=BAD.keys())
def test_malformed_settings_are_refused_when_the_recipe_is_read(extra, message):
    with pytest.raises(RecipeError, match=message):
        Recipe.from_dict({**MODELS, **extra})


def test_settings_round_trip_through_yaml():
    r = Recipe.from_dict({**MODELS, "tokenizer": {"source": "base", "tokens": {"<x>": {"source": {"kind": "zero"},
                                                                                     "force": True}}}})
    assert Recipe.from_yaml(r.to_yaml()).tokenizer == r.tokenizer
