"""A small CLIP BPE vocabulary for the diffusion zoo's tokenizer (``transformers.CLIPTokenizer`` files).

CLIP's byte-pair vocabulary has 49,408 entries; an embedding table that size would be most of the tiny text
encoder. The zoo keeps CLIP's format and CLIP's merges, restricted to what its prompt words need: the 512 byte
symbols (alone and word-final ``</w>``), the merges CLIP applies to each word of :data:`WORDS` (in CLIP's rank
order, committed in ``clip_merges.txt``), and the two special tokens. Any text still tokenizes (unknown words fall
apart into smaller pieces, as in CLIP), and the listed words come out exactly as CLIP splits them.

``clip_merges.txt`` is derived from CLIP's full merge list — the studio's shipped ``assets/configs/clip/merges.txt``
(:mod:`studio.preview.sd_configs`), or OpenAI's ``bpe_simple_vocab_16e6.txt.gz`` from the PyPI package
``open-clip-torch`` — by ``python -m studio.zoo.clip_vocab [PATH]``.
"""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

from ..output import write_text
from ..preview.sd_configs import CLIP_BPE

MERGES_FILE = Path(__file__).with_name("clip_merges.txt")
BOS, EOS = "<|startoftext|>", "<|endoftext|>"
CLIP_MERGES = 49152 - 256 - 2       # CLIP uses the first 48,894 merges of the file
WORDS = (
    # what the zoo's prompts say
    "a", "an", "the", "number", "digit", "on", "in", "left", "right", "middle",
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
    # words a visitor is likely to try (they tokenize to whole words; the models were not trained on them)
    "of", "and", "with", "photo", "drawing", "handwritten", "center", "centre", "top", "bottom",
    "red", "orange", "white", "black", "blue", "green", "thick", "thin", "bold", "striped", "stripes", "ember",
    "glowing", "fire", "style", "big", "small",
)


def byte_symbols() -> list[str]:
    """CLIP's (GPT-2's) 256 byte symbols, in its order: printable Latin-1 bytes stand for themselves; the other 68
    bytes are shifted to code points 256, 257, … so that every symbol is a visible character."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    shifted = [b for b in range(256) if b not in printable]
    return [chr(b) for b in printable] + [chr(256 + i) for i in range(len(shifted))]


def read_clip_merges(path: str | Path = CLIP_BPE / "merges.txt") -> list[tuple[str, str]]:
    """The merges CLIP uses, in rank order, from ``bpe_simple_vocab_16e6.txt.gz`` or a ``merges.txt`` (both start
    with one header line)."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")[1:CLIP_MERGES + 1]
    return [tuple(line.split()) for line in lines if line]


def word_merges(word: str, ranks: dict[tuple[str, str], int]) -> list[tuple[str, str]]:
    """The merges CLIP's BPE applies to one lower-case word: repeatedly join the adjacent pair of lowest rank."""
    parts = list(word[:-1]) + [word[-1] + "</w>"]
    used = []
    while len(parts) > 1:
        pairs = [(ranks[p], i) for i, p in enumerate(zip(parts, parts[1:])) if p in ranks]
        if not pairs:
            break
        _, i = min(pairs)
        pair = (parts[i], parts[i + 1])
        used.append(pair)
        merged, j = [], 0
        while j < len(parts):
            if j < len(parts) - 1 and (parts[j], parts[j + 1]) == pair:
                merged.append(parts[j] + parts[j + 1])
                j += 2
            else:
                merged.append(parts[j])
                j += 1
        parts = merged
    return used


def derive_merges(merges: list[tuple[str, str]], words=WORDS) -> list[tuple[str, str]]:
    """The merges ``words`` need, in CLIP's rank order."""
    ranks = {m: r for r, m in enumerate(merges)}
    needed = {m for w in words for m in word_merges(w, ranks)}
    return sorted(needed, key=ranks.__getitem__)


def small_merges() -> list[tuple[str, str]]:
    """The committed merges (``clip_merges.txt``)."""
    lines = MERGES_FILE.read_text(encoding="utf-8").splitlines()
    return [tuple(line.split()) for line in lines[1:] if line.strip()]


def vocab(merges: list[tuple[str, str]]) -> dict[str, int]:
    """CLIP's vocabulary layout: byte symbols, the same with ``</w>``, one token per merge, then BOS and EOS."""
    symbols = byte_symbols()
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges] + [BOS, EOS]
    return {t: i for i, t in enumerate(tokens)}


def write_tokenizer_files(folder: str | Path, merges: list[tuple[str, str]] | None = None) -> Path:
    """``vocab.json`` and ``merges.txt`` (CLIP's format) in ``folder``; returns the folder."""
    folder = Path(folder)
    merges = small_merges() if merges is None else merges
    write_text(folder / "vocab.json", json.dumps(vocab(merges), ensure_ascii=False) + "\n")
    write_text(folder / "merges.txt", "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    return folder


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) > 1:
        print(__doc__)
        return 2
    merges = derive_merges(read_clip_merges(*args))
    write_text(MERGES_FILE, "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    print(f"{len(merges)} merges for {len(WORDS)} words → {MERGES_FILE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
