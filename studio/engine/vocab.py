"""Vocabularies of LLM merges, as mergekit 0.1.5 handles them: with ``tokenizer_source`` or ``tokenizer:`` in the
recipe, the output tokenizer is built (the base's, a named model's, or the union of all), and every input's
vocabulary tensors (embeddings, LM heads: the tensors outside the layer stack whose first dimension is the model's
``vocab_size``) are seen re-indexed to the output's tokens before anything is merged.

A token a model has keeps that model's row (unless its settings ``force`` another). A token it lacks gets the
default row, the same in every model: the recipe's ``tokens:`` setting, else the row of the one model that has the
token, else the base's, else the mean over the models that have it, else zeros. Rows added by
``pad_to_multiple_of`` hold the mean of the model's real rows.

Everything is decided at plan time from tokenizer files and headers (a ``--dry-run`` refuses what the merge would);
tensor data is read only when a view's tensor is.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import StudioError
from ..layout.llm import EMBED_HINT, LAYER
from ..recipe import Recipe
from ..recipe.tokenizer_config import TokenizerSettings, TokenSetting, tokenizer_settings
from ..sources import TensorInfo, TensorSource, resolve_path
from ..sources.resolve import ModelRef

TOKENIZER_HINT = "vocabulary settings need model folders holding a tokenizer (tokenizer.json or the like)"
_cache: dict[tuple, "Vocabulary"] = {}   # the live engine re-plans on every slider move: build each vocabulary once
_cache_lock = threading.Lock()


def config_vocab_size(config: dict | None) -> int | None:
    """A transformers config's ``vocab_size`` (a multimodal model's text part's when the top level has none)."""
    if not config:
        return None
    for cfg in (config, config.get("text_config")):
        if isinstance(cfg, dict) and isinstance(cfg.get("vocab_size"), int):
            return cfg["vocab_size"]
    return None


def with_vocab_size(config: dict, size: int) -> dict:
    """``config`` with its ``vocab_size`` (where :func:`config_vocab_size` found it) set to ``size``."""
    out = dict(config)
    if isinstance(out.get("vocab_size"), int) or not isinstance(out.get("text_config"), dict):
        out["vocab_size"] = size
    else:
        out["text_config"] = {**out["text_config"], "vocab_size": size}
    return out


@dataclass
class Vocabulary:
    """The output tokenizer and where each model's rows go in it."""

    tokenizer: object                       # a transformers tokenizer, saved into the output
    ids: dict[str, int]                     # output token → id
    size: int                               # output rows: len(ids), padded to pad_to_multiple_of
    rows: dict[str, dict[int, int]]         # model reference → output id → its row (ids it lacks are absent)
    own_ids: dict[str, dict[str, int]]      # model reference → its tokenizer's token → id
    sizes: dict[str, int]                   # model reference → its vocab_size (rows of its vocabulary tensors)
    settings: TokenizerSettings = field(default_factory=lambda: TokenizerSettings("union"))

    def __post_init__(self):
        # Built once and cached (build_vocabulary): what every plan of the live engine — one per slider move — would
        # otherwise recompute over the whole vocabulary
        self.settings_key = repr(self.settings)   # part of a vocabulary tensor's signature in the live engine
        self.token_list = sorted(self.ids, key=self.ids.__getitem__)
        self.default_parts: dict[tuple, tuple[list[int], list]] = {}   # (key, models, base) → ids, their parts
        self.own_rows: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # model → (output ids, its rows) kept

    def tokens(self) -> list[str]:
        """The output tokens in id order."""
        return self.token_list


# ------------------------------------------------------------------------------------------------ tokenizers
def _load_tokenizer(folder: Path | None):
    from transformers import AutoTokenizer  # heavy: only recipes with vocabulary settings load tokenizers

    if folder is None:
        return None
    try:
        return AutoTokenizer.from_pretrained(str(folder), use_fast=True)
    except Exception:  # noqa: BLE001 — any failure means "no usable tokenizer here", as mergekit treats it
        return None


def _copy(tokenizer):
    """A fresh tokenizer equal to ``tokenizer`` (tokens added to it leave the original as it was)."""
    from transformers import AutoTokenizer  # heavy: only recipes with vocabulary settings load tokenizers

    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        return AutoTokenizer.from_pretrained(tmp, use_fast=True)


def _stripped(tokenizer, vocab_size: int, where: str):
    """``tokenizer`` without the tokens whose id is ≥ ``vocab_size`` (the model has no row for them)."""
    from tokenizers import Tokenizer  # heavy: only recipes with vocabulary settings load tokenizers

    unused = {t for t, i in tokenizer.get_vocab().items() if i >= vocab_size}
    if not unused:
        return tokenizer
    backend = getattr(tokenizer, "_tokenizer", None)
    spec = json.loads(backend.to_str()) if backend is not None else None
    if spec is None or not isinstance(spec.get("model", {}).get("vocab"), dict):
        raise StudioError(f"the tokenizer has {len(unused)} token(s) beyond the model's vocab_size {vocab_size} and "
                          "is not a fast BPE / WordLevel / WordPiece tokenizer they could be dropped from", where=where,
                          hint="use a tokenizer without them, or another tokenizer source")
    model = spec["model"]
    model["vocab"] = {t: i for t, i in model["vocab"].items() if t not in unused}
    if "merges" in model:
        model["merges"] = [m for m in model["merges"]
                           if not unused.intersection(m.split(" ") if isinstance(m, str) else m)]
    spec["added_tokens"] = [a for a in spec.get("added_tokens", []) if a["id"] < vocab_size]
    tokenizer = _copy(tokenizer)
    tokenizer._tokenizer = Tokenizer.from_str(json.dumps(spec))
    return tokenizer


def _union(base_tok, toks: dict, sizes: dict):
    """The base's tokenizer plus, in model order and each model's id order, the tokens of the others it lacks, then
    every model's added (special) tokens, the first model's settings for each."""
    plain: list[str] = []
    added: dict[str, object] = {}
    for ref, tok in toks.items():
        specials = {info.content: (i, info) for i, info in tok.added_tokens_decoder.items()}
        for t, i in sorted(tok.get_vocab().items(), key=lambda kv: kv[1]):
            if i < sizes[ref] and t not in specials:
                plain.append(t)
        for t, (i, info) in sorted(specials.items(), key=lambda kv: kv[1][0]):
            if i < sizes[ref]:
                added.setdefault(t, info)
    out = _copy(base_tok)
    base_vocab = base_tok.get_vocab()
    seen = set()
    for t in plain:
        if t not in base_vocab and t not in added and t not in seen:
            seen.add(t)
            out.add_tokens(t)
    for info in added.values():
        out.add_tokens(info)
    return out


def _tokenizer_folder(ref: str) -> Path:
    path = resolve_path(ModelRef.parse(ref).model)
    return path if path.is_dir() else path.parent


def _stamp(folder: Path | None) -> tuple:
    """What the cached vocabulary depends on in ``folder``: its files' names, sizes and times."""
    if folder is None or not Path(folder).is_dir():
        return ()
    out = []
    for e in sorted(os.scandir(folder), key=lambda e: e.name):
        if e.is_file() and not e.name.endswith((".safetensors", ".bin", ".pt", ".pth", ".ckpt")):
            st = e.stat()
            out.append((e.name, st.st_size, st.st_mtime_ns))
    return tuple(out)


def build_vocabulary(settings: TokenizerSettings, refs: list[str], sources: list[TensorSource]) -> Vocabulary:
    """The output tokenizer of ``settings`` over the models ``refs`` (base or reference model first) and each
    model's row map; a StudioError for what cannot be built."""
    folders = [getattr(s, "folder", None) for s in sources]
    key = (repr(settings), tuple(refs), tuple(map(str, folders)), tuple(map(_stamp, folders)),
           tuple(config_vocab_size(s.config) for s in sources))
    if settings.source not in ("base", "union"):
        key += (_stamp(_tokenizer_folder(settings.source)),)
    with _cache_lock:
        if key in _cache:
            return _cache[key]
    vocab = _build(settings, refs, sources, folders)
    with _cache_lock:
        if len(_cache) > 8:
            _cache.clear()
        _cache[key] = vocab
    return vocab


def _build(settings, refs, sources, folders) -> Vocabulary:
    base_ref = refs[0]
    base_tok = _load_tokenizer(folders[0])
    if base_tok is None:
        raise StudioError(f"no tokenizer to build the output vocabulary ({settings.source}) from", where=base_ref,
                          hint=TOKENIZER_HINT)
    sizes = {r: config_vocab_size(s.config) for r, s in zip(refs, sources)}
    sizes[base_ref] = sizes[base_ref] or len(base_tok.get_vocab())
    base_tok = _stripped(base_tok, sizes[base_ref], base_ref)
    toks = {base_ref: base_tok}
    for ref, folder in zip(refs[1:], folders[1:]):
        tok = _load_tokenizer(folder)
        if tok is not None:  # mergekit: a model without a usable tokenizer is taken to share the base's
            toks[ref] = tok
    for ref in refs:
        sizes[ref] = sizes[ref] or len(toks.get(ref, base_tok).get_vocab())
    if settings.source == "base":
        out = _copy(base_tok)  # the tokens: settings add to the output, not to what the base has rows for
    elif settings.source == "union":
        out = _union(base_tok, toks, sizes)
    else:
        out = _load_tokenizer(_tokenizer_folder(settings.source))
        if out is None:
            raise StudioError("no tokenizer found for the tokenizer source", where=settings.source,
                              hint=TOKENIZER_HINT)
    have = out.get_vocab()
    new = [t for t in settings.tokens if t not in have]
    if new:
        out.add_tokens(new)   # in the settings' order, as one by one
    ids = out.get_vocab()
    if ids and max(ids.values()) >= len(ids):
        raise StudioError(f"the output tokenizer's ids are not contiguous ({len(ids)} tokens, highest id "
                          f"{max(ids.values())})", where=settings.source, hint="use another tokenizer source")
    pad = settings.pad_to_multiple_of
    size = -(-len(ids) // pad) * pad if pad else len(ids)
    own_ids = {ref: toks.get(ref, base_tok).get_vocab() for ref in refs}
    rows = {ref: {i: own[t] for t, i in ids.items() if t in own and own[t] < sizes[ref]}
            for ref, own in own_ids.items()}
    return Vocabulary(out, ids, size, rows, own_ids, sizes, settings)


# ------------------------------------------------------------------------------------------------ tensors
def is_vocab_tensor(key: str, info: TensorInfo, vocab_size: int | None) -> bool:
    """A tensor indexed by token: outside the layer stack, 2-D, its first dimension the model's vocab_size."""
    return vocab_size is not None and len(info.shape) == 2 and info.shape[0] == vocab_size and not LAYER.match(key)


@dataclass
class _Defaults:
    """The default rows of one vocabulary tensor: output ids, and for each the (model, row) pairs it is the mean of
    (none: zeros)."""

    ids: list[int]
    parts: list[list[tuple[int, int]]]
    tensor: torch.Tensor | None = None
    readers: int = 0


class _Aligner:
    """What the views of one plan share: the vocabulary, the underlying sources, which models each vocabulary
    tensor is merged from, and the default rows (computed once per tensor, dropped once every model read them)."""

    def __init__(self, vocab: Vocabulary, refs: list[str], sources: list[TensorSource], merged_from):
        self.vocab, self.refs, self.sources = vocab, refs, sources
        self.merged_from = merged_from
        self.defaults: dict[str, _Defaults] = {}
        self.lock = threading.Lock()
        self._tokens = vocab.tokens()

    def models_for(self, key: str) -> list[int]:
        return self.merged_from(key)[0]

    def setting(self, token: str) -> TokenSetting | None:
        return self.vocab.settings.tokens.get(token)

    def forced(self, token: str) -> bool:
        s = self.setting(token)
        return bool(s and s.force)

    def plan_defaults(self, key: str) -> _Defaults:
        """Which output ids of ``key`` need a default row, and from what; StudioError for a setting that names a
        model or token the merge does not have."""
        if key in self.defaults:
            return self.defaults[key]
        models, base = self.merged_from(key)
        known = (key, tuple(self.refs[m] for m in models), base)
        if known not in self.vocab.default_parts:
            rows = self.vocab.rows
            ids, parts = [], []
            for token, i in self.vocab.ids.items():
                has = [m for m in models if i in rows[self.refs[m]]]
                if len(has) == len(models) and not self.forced(token):
                    continue
                ids.append(i)
                parts.append(self._parts(key, token, i, models, has, base))
            self.vocab.default_parts[known] = (ids, parts)
        d = self.defaults[key] = _Defaults(*self.vocab.default_parts[known])
        return d

    def _parts(self, key, token, i, models, has, base_ref) -> list[tuple[int, int]]:
        rows = self.vocab.rows
        setting = self.setting(token)
        src = setting.source if setting else None
        if src is None:  # mergekit's rule for tokens without settings
            if len(has) == 1:
                return [(has[0], rows[self.refs[has[0]]][i])]
            base = next((m for m in has if self.refs[m] == base_ref), None)
            if base is not None:
                return [(base, rows[base_ref][i])]
            return [(m, rows[self.refs[m]][i]) for m in has]
        if src.kind == "zero":
            return []
        where = f"tokenizer.tokens[{token!r}]"
        m = next((m for m in models if self.refs[m] == src.model), None)
        if m is None:
            raise StudioError(f"takes its embedding from {src.model}, which {key} is not merged from", where=where,
                              hint=f"name one of: {', '.join(self.refs[m] for m in models)}")
        if src.kind == "model":
            if i not in rows[src.model]:
                raise StudioError(f"{src.model} has no token {token!r}", where=where,
                                  hint="take another model's row: {kind: model_token, model: M, token: T}")
            return [(m, rows[src.model][i])]
        row = src.token_id
        if row is None:
            row = self.vocab.own_ids[src.model].get(src.token)
            if row is None:
                raise StudioError(f"{src.model} has no token {src.token!r}", where=where)
        n = self.sources[m].info(key).shape[0]
        if row >= n:
            raise StudioError(f"token id {row} is beyond {src.model}'s {n} rows", where=where)
        return [(m, row)]

    def default_rows(self, key: str) -> tuple[_Defaults, torch.Tensor]:
        with self.lock:
            d = self.plan_defaults(key)
            if d.tensor is None:
                d.tensor = self._compute(key, d)
            d.readers += 1
            tensor = d.tensor
            if d.readers >= len(self.models_for(key)):  # every merged model has its copy: free the memory
                d.tensor, d.readers = None, 0
            return d, tensor

    def _compute(self, key: str, d: _Defaults) -> torch.Tensor:
        width = self.sources[self.models_for(key)[0]].info(key).shape[1:]
        acc = torch.zeros((len(d.ids), *width), dtype=torch.float32)
        count = torch.zeros(len(d.ids), dtype=torch.float32)
        # model by model, in merge order, as mergekit sums a mean
        for m in self.models_for(key):
            pos = [p for p, parts in enumerate(d.parts) for mm, _ in parts if mm == m]
            if not pos:
                continue
            src_rows = [r for parts in d.parts for mm, r in parts if mm == m]
            own = self.sources[m].get(key)
            acc[pos] += own[torch.tensor(src_rows)].float()
            count[pos] += 1
        return acc / count.clamp(min=1).view(-1, *([1] * len(width)))

    def read(self, m: int, key: str) -> torch.Tensor:
        """Model ``m``'s ``key`` re-indexed to the output vocabulary, in its stored dtype (its own rows exact; the
        default and padding rows computed in float32)."""
        src, ref = self.sources[m], self.refs[m]
        own = src.get(key)
        n = len(self.vocab.ids)
        out = torch.zeros((self.vocab.size, *own.shape[1:]), dtype=own.dtype)
        if ref not in self.vocab.own_rows:  # which rows it keeps: the same for each of its vocabulary tensors
            mine = [(i, r) for i, r in self.vocab.rows[ref].items() if not self.forced(self._token(i))]
            self.vocab.own_rows[ref] = (torch.tensor([i for i, _ in mine], dtype=torch.long),
                                        torch.tensor([r for _, r in mine], dtype=torch.long))
        dst, src_rows = self.vocab.own_rows[ref]
        if len(dst):
            out[dst] = own[src_rows]
        d, rows = self.default_rows(key)
        keep = [p for p, i in enumerate(d.ids) if i not in self.vocab.rows[ref] or self.forced(self._token(i))]
        if keep:
            out[torch.tensor([d.ids[p] for p in keep])] = rows[torch.tensor(keep)].to(own.dtype)
        if self.vocab.size > n:  # padding rows: the mean of the real ones
            out[n:] = out[:n].float().mean(dim=0).to(own.dtype)
        return out

    def _token(self, i: int) -> str:
        return self._tokens[i]


class VocabView(TensorSource):
    """``inner`` with its vocabulary tensors re-indexed to the output vocabulary (other tensors as they are)."""

    def __init__(self, inner: TensorSource, aligner: _Aligner, index: int):
        config = inner.config if inner.config is None else with_vocab_size(inner.config, aligner.vocab.size)
        super().__init__(ref=inner.ref, path=inner.path, kind=inner.kind, config=config,
                         metadata=dict(inner.metadata), folder=inner.folder)
        self.inner = inner
        self.vocabulary = aligner.vocab
        self._aligner, self._at = aligner, index
        self._index = {k: inner.info(k) for k in inner.keys()}
        # ordered (errors name the first) with O(1) membership (asked for every tensor of every live update)
        self.vocab_keys = dict.fromkeys(k for k, info in self._index.items()
                                        if is_vocab_tensor(k, info, aligner.vocab.sizes[aligner.refs[index]]))
        for k in self.vocab_keys:
            info = self._index[k]
            self._index[k] = TensorInfo((aligner.vocab.size, *info.shape[1:]), info.dtype)

    def _read(self, key):
        if key in self.vocab_keys:
            return self._aligner.read(self._at, key)
        return self.inner.get(key)

    def release(self, key):
        self.inner.release(key)

    def close(self):
        self.inner.close()


def _models_for(recipe: Recipe, refs: list[str]):
    """For each vocabulary tensor, the source indexes it is merged from in mergekit's order (the models, then the base
    when not listed; with slices, the first slice's sources for embeddings and the last slice's for the head), and
    the base model whose row a shared token takes (None without one: the mean)."""
    if recipe.slices is None:
        order = [m.model for m in recipe.models]
        if recipe.base_model and recipe.base_model not in order:
            order.append(recipe.base_model)
        every = ([refs.index(r) for r in dict.fromkeys(order)], recipe.base_model)
        return lambda key: every
    first, last = ([([refs.index(r) for r in dict.fromkeys(s.model for s in sl.sources)],
                     sl.base_model or recipe.base_model) for sl in (recipe.slices[0], recipe.slices[-1])])
    return lambda key: first if EMBED_HINT.search(key) else last


def aligned_sources(recipe: Recipe, refs: list[str], sources: list[TensorSource]) -> list[TensorSource]:
    """``sources`` (one per reference in ``refs``, the base or first model first) as the merge sees them: unchanged
    without vocabulary settings, else :class:`VocabView` s over the output vocabulary, every default row's setting
    checked (a StudioError for one naming a model or token the merge lacks)."""
    settings = tokenizer_settings(recipe.tokenizer_source, recipe.tokenizer)
    if settings is None:
        return sources
    vocab = build_vocabulary(settings, refs, sources)
    aligner = _Aligner(vocab, refs, sources, _models_for(recipe, refs))
    views = [VocabView(s, aligner, i) for i, s in enumerate(sources)]
    for key in views[0].vocab_keys:
        for m in aligner.models_for(key):
            if key in sources[m] and key not in views[m].vocab_keys:
                raise StudioError(f"tensor {key!r} has shape {list(sources[m].info(key).shape)}, not one row per "
                                  f"token of the model's vocab_size {vocab.sizes[refs[m]]}", where=refs[m],
                                  hint="the models do not share an architecture")
        aligner.plan_defaults(key)
    return views


def vocabulary_of(sources: list[TensorSource]) -> Vocabulary | None:
    """The output vocabulary the plan's sources were aligned to (None when the recipe has no vocabulary settings)."""
    return next((s.vocabulary for s in sources if getattr(s, "vocabulary", None) is not None), None)
