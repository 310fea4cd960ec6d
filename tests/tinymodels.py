"""Tiny Llama-shaped transformers models built in tmp dirs (no network), shared by the tests."""

from __future__ import annotations

import json
from pathlib import Path

import torch


def make_llama(path: Path, seed: int, *, layers: int = 3, hidden: int = 32, vocab: int = 64, dtype=torch.float32,
               base_state: dict | None = None, noise: float = 0.02, shard: str | None = None, tie: bool = False
               ) -> Path:
    """Save a tiny LlamaForCausalLM at ``path``. With ``base_state``, the weights are base + noise (a fine-tune);
    ``tie``: the head is the embedding (``tie_word_embeddings``, no ``lm_head.weight`` saved)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      tie_word_embeddings=tie)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg)
    if base_state is not None:
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            sd = {k: v + noise * torch.randn(v.shape, generator=g) for k, v in base_state.items()}
            model.load_state_dict(sd, strict=not tie)  # tied: the saved state has no lm_head.weight
    model = model.to(dtype)
    kw = {"max_shard_size": shard} if shard else {}
    model.save_pretrained(path, **kw)
    (path / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 64}))
    return path


def load_state(path: Path) -> dict[str, torch.Tensor]:
    from studio.sources import open_source

    src = open_source(str(path))
    return {k: src.get(k).float().clone() for k in src.keys()}


WORDS = ["<unk>", "<s>", "</s>"] + [f"w{i}" for i in range(3, 64)]  # token i is WORDS[i]: w3 … w63


def add_word_tokenizer(path: Path, chat_template: str | None = None) -> Path:
    """Save a whitespace word-level tokenizer over the tiny Llama's 64 ids into ``path`` (``<s>``=1 is BOS, ``</s>``=2
    is EOS, as in LlamaConfig), built with ``tokenizers`` (no network); optionally with a chat template."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    if chat_template is not None:
        fast.chat_template = chat_template
    fast.save_pretrained(path)
    return path


def tagged_png(path: Path, **chunks: str) -> Path:
    """A 4×4 PNG at ``path`` with these text chunks (a recipe, A1111's ``parameters``)."""
    from PIL import Image, PngImagePlugin

    info = PngImagePlugin.PngInfo()
    for k, v in chunks.items():
        info.add_text(k, v)
    Image.new("RGB", (4, 4)).save(path, pnginfo=info)
    return path


def add_word_tokenizer_extra(path: Path, extra: list[str], chat_template: str | None = None) -> Path:
    """Like :func:`add_word_tokenizer`, with ``extra`` words after the 64 (ids 64, 65, …): a model saved with
    ``vocab=64 + len(extra)`` then has a vocabulary the others lack (what ``tokenizer_source: union`` unites)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = WORDS + list(extra)
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   additional_special_tokens=list(extra))
    if chat_template is not None:
        fast.chat_template = chat_template
    fast.save_pretrained(path)
    return path


def make_peft_lora(path: Path, base: Path, seed: int, r: int = 2, targets: tuple = ("q_proj", "v_proj")) -> Path:
    """Save a PEFT LoRA adapter for the tiny model at ``base`` into ``path``, with random (nonzero) A and B."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base), LoraConfig(r=r, lora_alpha=2 * r,
                                                                                  target_modules=list(targets)))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    model.save_pretrained(path)
    return path


def add_tokenizer_of(path: Path, words: list[str]) -> Path:
    """Save a whitespace word-level tokenizer into ``path`` whose token i is ``words[i]`` (``<unk>``, ``<s>`` and
    ``</s>`` are special when listed), built with ``tokenizers`` (no network): models with their own vocabularies."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    specials = {k: w for k, w in (("unk_token", "<unk>"), ("bos_token", "<s>"), ("eos_token", "</s>")) if w in words}
    PreTrainedTokenizerFast(tokenizer_object=tok, **specials).save_pretrained(path)
    return path
