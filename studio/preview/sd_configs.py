"""The configs and tokenizers a diffusion preview needs, offline.

``from_single_file`` would fetch a diffusers config folder from the hub for every single-file checkpoint; the ones a
preview needs ship under ``assets/configs/<family>/`` instead (read by :mod:`studio.sd.configs`, whose names this
module re-exports; exports use them too). The CLIP BPE vocabulary is shared by every family's tokenizers (they
differ only in their pad token: SD2's and SDXL's second tokenizer pad with ``!``): it ships once, as the
``vocab.json`` / ``merges.txt`` pair built by :func:`build_clip_bpe` from OpenAI's ``bpe_simple_vocab_16e6.txt.gz``
(the file the PyPI package ``open-clip-torch`` carries).

Flux's T5 encoder and tokenizer are not in single files and too large to ship: they come from a Flux pipeline folder
(see :mod:`studio.preview.diffusion`).
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

from ..errors import StudioError
from ..output import write_text
from ..sd.configs import (CLIP_BPE, component_config, prediction_type, read_json, shipped_folder,
                          write_config_folder)

__all__ = ["CLIP_BPE", "CLIP_MERGES", "build_clip_bpe", "clip_tokenizer", "component_config", "has_bpe_files",
           "prediction_type", "read_json", "shipped_folder", "write_config_folder"]

# OpenAI CLIP: 49152 BPE ranks minus the 256 byte tokens and 2 specials are merges (the first line is a header)
CLIP_MERGES = 49152 - 256 - 2


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2 / CLIP byte → printable character table, in CLIP's vocabulary order: the 188 printable Latin-1 bytes
    (mapped to themselves) first, then the other 68 bytes in byte order (mapped to code points 256…323)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in keep}
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + len(table) - len(keep))
    return table


def build_clip_bpe(gz_path: str | Path, out_dir: str | Path) -> tuple[Path, Path]:
    """OpenAI's ``bpe_simple_vocab_16e6.txt.gz`` → ``vocab.json`` + ``merges.txt`` as transformers' CLIPTokenizer
    reads them. The vocabulary is CLIP's: the 256 byte characters, the same with ``</w>``, one token per merge in
    rank order, then ``<|startoftext|>`` (49406) and ``<|endoftext|>`` (49407)."""
    lines = gzip.open(gz_path).read().decode("utf-8").split("\n")
    merges = lines[1:1 + CLIP_MERGES]
    if len(merges) != CLIP_MERGES or any(len(m.split()) != 2 for m in merges):
        raise StudioError("not CLIP's BPE merge list", where=str(gz_path),
                          hint="use bpe_simple_vocab_16e6.txt.gz from the open-clip-torch wheel")
    chars = list(_bytes_to_unicode().values())
    tokens = chars + [c + "</w>" for c in chars] + ["".join(m.split()) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    out = Path(out_dir)
    vocab = write_text(out / "vocab.json", json.dumps({t: i for i, t in enumerate(tokens)}, ensure_ascii=False))
    merges_file = write_text(out / "merges.txt", "#version: 0.2\n" + "\n".join(merges) + "\n")
    return vocab, merges_file








def has_bpe_files(folder: Path) -> bool:
    return (Path(folder) / "vocab.json").is_file() and (Path(folder) / "merges.txt").is_file()


def clip_tokenizer(folder: Path | None, fallback: Path):
    """A CLIP tokenizer: ``folder``'s own when it holds one (vocab.json + merges.txt), else the shipped BPE files with
    the special-token settings of ``folder`` (or of ``fallback``, a shipped tokenizer folder)."""
    from transformers import CLIPTokenizer  # optional and heavy: only when a diffusion preview is built

    if folder is not None and has_bpe_files(folder):
        return CLIPTokenizer.from_pretrained(str(folder), local_files_only=True)
    settings_dir = folder if folder is not None and (Path(folder) / "tokenizer_config.json").is_file() else fallback
    settings = read_json(Path(settings_dir) / "tokenizer_config.json")
    kwargs = {k: settings[k] for k in ("bos_token", "eos_token", "pad_token", "unk_token", "model_max_length",
                                       "errors") if k in settings}
    return CLIPTokenizer(vocab=str(CLIP_BPE / "vocab.json"), merges=str(CLIP_BPE / "merges.txt"), **kwargs)

