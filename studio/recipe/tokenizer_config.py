"""A recipe's vocabulary settings, as mergekit reads them: ``tokenizer_source`` (base, union or a model reference) or
the ``tokenizer:`` mapping — ``source`` (default union), ``tokens`` (where a token's embedding comes from, and whether
that overrides the models' own rows) and ``pad_to_multiple_of`` — never both."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import RecipeError

TOKENIZER_KEYS = {"source", "tokens", "pad_to_multiple_of"}
TOKEN_KEYS = {"source", "force"}
EMBEDDING_KINDS = {"model_token": {"kind", "model", "token", "token_id"}, "zero": {"kind"}}


@dataclass(frozen=True)
class TokenEmbedding:
    """Where a token's embedding comes from: ``model`` (that model's own row of the token), ``model_token`` (a model's
    row of another token, by text or id) or ``zero``."""

    kind: str
    model: str | None = None
    token: str | None = None
    token_id: int | None = None


@dataclass(frozen=True)
class TokenSetting:
    source: TokenEmbedding | None = None   # None: the rule for tokens without settings
    force: bool = False                    # use ``source`` even in models that have the token


@dataclass(frozen=True)
class TokenizerSettings:
    source: str                            # "union", "base" or a model reference
    tokens: dict[str, TokenSetting] = field(default_factory=dict)
    pad_to_multiple_of: int | None = None


def _unknown(keys, allowed, where):
    extra = [k for k in keys if k not in allowed]
    if extra:
        raise RecipeError(f"unknown key {extra[0]!r}", where=where, hint=f"allowed keys: {', '.join(sorted(allowed))}")


def _text(value, what: str, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise RecipeError(f"{what} must be text, got {value!r}", where=where)
    return value.strip()


def _embedding(value, where: str) -> TokenEmbedding:
    if isinstance(value, str):
        return TokenEmbedding("model", model=_text(value, "source", where))
    if not isinstance(value, dict) or value.get("kind") not in EMBEDDING_KINDS:
        raise RecipeError(f"source must be a model reference, {{kind: model_token, model: M, token: T}} or "
                          f"{{kind: zero}}; got {value!r}", where=where)
    _unknown(value, EMBEDDING_KINDS[value["kind"]], where)
    if value["kind"] == "zero":
        return TokenEmbedding("zero")
    token, token_id = value.get("token"), value.get("token_id")
    if (token is None) == (token_id is None):
        raise RecipeError("a model_token source names exactly one of token and token_id", where=where)
    if token is not None and not isinstance(token, str):
        raise RecipeError(f"token must be text, got {token!r}", where=where)
    if token_id is not None and (isinstance(token_id, bool) or not isinstance(token_id, int) or token_id < 0):
        raise RecipeError(f"token_id must be a whole number ≥ 0, got {token_id!r}", where=where)
    return TokenEmbedding("model_token", model=_text(value.get("model"), "model", where), token=token,
                          token_id=token_id)


def _token_setting(value, where: str) -> TokenSetting:
    if value is None:
        return TokenSetting()
    if not isinstance(value, dict):
        raise RecipeError(f"a token's settings must be a mapping with source and force, got {value!r}", where=where)
    _unknown(value, TOKEN_KEYS, where)
    force = value.get("force", False)
    if not isinstance(force, bool):
        raise RecipeError(f"force must be true or false, got {force!r}", where=where)
    source = value.get("source")
    return TokenSetting(None if source is None else _embedding(source, f"{where}.source"), force)


def tokenizer_settings(tokenizer_source, tokenizer, where: str = "recipe") -> TokenizerSettings | None:
    """The recipe's vocabulary settings (None when it has none); a RecipeError for anything mergekit refuses."""
    if tokenizer_source is not None and tokenizer is not None:
        raise RecipeError("tokenizer_source and tokenizer are both given", where=where,
                          hint="keep one: tokenizer.source says what tokenizer_source says")
    if tokenizer is None:
        return None if tokenizer_source is None else TokenizerSettings(_text(tokenizer_source, "tokenizer_source",
                                                                             where))
    w = f"{where}: tokenizer"
    if not isinstance(tokenizer, dict):
        raise RecipeError(f"tokenizer must be a mapping, got {tokenizer!r}", where=w)
    _unknown(tokenizer, TOKENIZER_KEYS, w)
    source = _text(tokenizer.get("source", "union"), "source", w)
    tokens = tokenizer.get("tokens") or {}
    if not isinstance(tokens, dict) or not all(isinstance(k, str) and k for k in tokens):
        raise RecipeError("tokens must map each token's text to its settings", where=w)
    pad = tokenizer.get("pad_to_multiple_of")
    if pad is not None and (isinstance(pad, bool) or not isinstance(pad, int) or pad < 1):
        raise RecipeError(f"pad_to_multiple_of must be a whole number ≥ 1, got {pad!r}", where=w)
    return TokenizerSettings(source, {k: _token_setting(v, f"{w}.tokens[{k!r}]") for k, v in tokens.items()}, pad)


def check_tokenizer(tokenizer_source, tokenizer, where: str = "recipe") -> None:
    """RecipeError unless the vocabulary settings are well formed (:func:`tokenizer_settings`)."""
    tokenizer_settings(tokenizer_source, tokenizer, where)
