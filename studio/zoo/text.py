"""The text zoo: a tiny Llama pretrained on a mix of three offline corpora and fine-tuned into one expert per corpus.

Corpora (all shipped with Python or scikit-learn, so the build needs no network):

* ``prose``  — English documentation prose: the help topics of ``pydoc_data.topics``;
* ``code``   — Python source: a fixed list of standard-library modules;
* ``tables`` — numeric CSV tables: scikit-learn's bundled breast-cancer, wine, iris and diabetes data.

The tokenizer is a byte-level BPE (``tokenizer.json``) trained on the mix, so ``AutoTokenizer`` loads it offline.
Each corpus is split by document position into ``train`` (first 90 %) and ``test`` (last 10 %) text.
"""

from __future__ import annotations

import gzip
import math
import os
import sysconfig
from functools import lru_cache
from pathlib import Path

import torch
import torch.nn.functional as F

from .training import optimizer_step, warmup_cosine

CORPORA: tuple[str, ...] = ("prose", "code", "tables")

CORPUS_DOC = {
    "prose": "English documentation prose (pydoc_data help topics)",
    "code": "Python standard-library source code",
    "tables": "numeric CSV tables (scikit-learn's bundled datasets)",
}

PROMPTS: dict[str, str] = {
    "prose": "The statement",
    "code": "def get_",
    "tables": "5.1,3.5,",
}

STDLIB_MODULES = (
    "abc", "argparse", "base64", "bisect", "calendar", "cmd", "colorsys", "contextlib", "copy", "csv",
    "dataclasses", "difflib", "enum", "fileinput", "fnmatch", "fractions", "functools", "getopt", "glob",
    "heapq", "hmac", "ipaddress", "keyword", "linecache", "numbers", "operator", "optparse", "pprint",
    "queue", "random", "sched", "secrets", "selectors", "shlex", "statistics", "string", "textwrap",
    "timeit", "tokenize", "uuid", "weakref",
)

SEQ_LEN = 64
VOCAB = 512
CORPUS_CHARS = 200_000


def _prose() -> str:
    from pydoc_data.topics import topics  # a megabyte of help text: read only when a corpus is built

    return "\n\n".join(topics[k].strip() for k in sorted(topics))


def _code() -> str:
    root = Path(sysconfig.get_paths()["stdlib"])
    parts = []
    for name in STDLIB_MODULES:
        path = root / f"{name}.py"
        if path.exists():
            parts.append(path.read_text(encoding="utf-8", errors="replace"))
    return "\n\n".join(parts)


def _tables() -> str:
    import sklearn  # optional and heavy: only its bundled CSV files are read

    data = Path(sklearn.__file__).parent / "datasets" / "data"
    parts = []
    for name in ("breast_cancer.csv", "wine_data.csv", "iris.csv", "diabetes_data_raw.csv.gz"):
        path = data / name
        if not path.exists():
            continue
        raw = gzip.decompress(path.read_bytes()) if name.endswith(".gz") else path.read_bytes()
        text = raw.decode("utf-8", errors="replace").replace(" ", ",") if name.endswith(".gz") else raw.decode()
        parts.append(text.strip())
    return "\n\n".join(parts)


@lru_cache(maxsize=8)
def corpus_text(corpus: str, split: str) -> str:
    """The ``train`` (first 90 %) or ``test`` (last 10 %) text of ``corpus``, at most ``CORPUS_CHARS`` in all."""
    text = {"prose": _prose, "code": _code, "tables": _tables}[corpus]()
    text = text[:CORPUS_CHARS]
    cut = int(len(text) * 0.9)
    cut = text.rfind("\n", 0, cut) + 1 or cut
    return text[:cut] if split == "train" else text[cut:]


# ------------------------------------------------------------------------------------------------------- tokenizer


def train_tokenizer():
    """Byte-level BPE with ``VOCAB`` entries trained on the three training corpora (deterministic)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers  # optional: building only
    from transformers import PreTrainedTokenizerFast  # optional and heavy: building only

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB, special_tokens=["<|endoftext|>"], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator([corpus_text(c, "train") for c in CORPORA], trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                                   unk_token="<|endoftext|>", pad_token="<|endoftext|>")


def token_ids(tokenizer, corpus: str, split: str) -> torch.Tensor:
    """All token ids of ``corpus``'s split as one 1-D tensor."""
    return _token_ids(id(tokenizer), tokenizer, corpus, split)


_TOKEN_CACHE: dict = {}


def _token_ids(key, tokenizer, corpus, split):
    k = (key, corpus, split)
    if k not in _TOKEN_CACHE:
        ids = tokenizer(corpus_text(corpus, split), add_special_tokens=False)["input_ids"]
        _TOKEN_CACHE[k] = torch.tensor(ids, dtype=torch.long)
    return _TOKEN_CACHE[k]


def token_batches(tokenizer, corpus: str, split: str = "test", n: int | None = None,
                  seq_len: int = SEQ_LEN) -> torch.Tensor:
    """``[n, seq_len]`` non-overlapping token windows of ``corpus`` (evenly spaced through the split; all if n=None)."""
    ids = token_ids(tokenizer, corpus, split)
    total = len(ids) // seq_len
    windows = ids[: total * seq_len].view(total, seq_len)
    if n is None or n >= total:
        return windows
    pick = torch.linspace(0, total - 1, n).round().long()
    return windows[pick]


# ----------------------------------------------------------------------------------------------------------- model


def model_config(vocab_size: int):
    from transformers import LlamaConfig  # optional and heavy: the text family only

    return LlamaConfig(
        vocab_size=vocab_size, hidden_size=96, intermediate_size=256, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=4, max_position_embeddings=SEQ_LEN * 2, tie_word_embeddings=True,
        bos_token_id=0, eos_token_id=0, pad_token_id=0, rms_norm_eps=1e-5,
    )


def _random_windows(ids: torch.Tensor, batch: int, gen: torch.Generator, seq_len: int = SEQ_LEN) -> torch.Tensor:
    start = torch.randint(0, len(ids) - seq_len - 1, (batch,), generator=gen)
    return torch.stack([ids[s:s + seq_len] for s in start.tolist()])


def lm_loss(model, batch: torch.Tensor) -> torch.Tensor:
    logits = model(input_ids=batch).logits
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))


def train_lm(model, tokenizer, corpora: tuple[str, ...], steps: int, lr: float, seed: int, batch: int = 16):
    """AdamW with warm-up + cosine decay on random windows drawn evenly from ``corpora``'s training text."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    streams = [token_ids(tokenizer, c, "train") for c in corpora]
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    model.train()
    for step in range(steps):
        warmup_cosine(opt, lr, step, steps, steps // 10)
        per = [batch // len(streams) + (1 if i < batch % len(streams) else 0) for i in range(len(streams))]
        x = torch.cat([_random_windows(s, k, gen) for s, k in zip(streams, per) if k])
        loss = lm_loss(model, x)
        optimizer_step(opt, loss, params)
    model.eval()
    return model


@torch.no_grad()
def perplexity(model, batches: torch.Tensor, chunk: int = 64) -> float:
    total, count = 0.0, 0
    for i in range(0, len(batches), chunk):
        b = batches[i:i + chunk]
        logits = model(input_ids=b).logits
        total += F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), b[:, 1:].reshape(-1),
                                 reduction="sum").item()
        count += b[:, 1:].numel()
    return math.exp(total / count)


def lora_config():
    from peft import LoraConfig  # optional and heavy: building the LoRAs only

    return LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, bias="none", task_type="CAUSAL_LM",
                      target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])


def threads_env() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
