"""Perplexity and greedy generations for causal LMs (any transformers model; the text zoo's evaluator builds on
these)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from ..errors import StudioError
from .common import check_budget, result


@torch.no_grad()
def continuation(model, ids: torch.Tensor, max_new_tokens: int, stop: set[int] | frozenset = frozenset(),
                 pick: Callable[[torch.Tensor], torch.Tensor] | None = None) -> list[int]:
    """The new token ids after ``ids`` (``[1, L]``), one forward per token with a KV cache.

    ``pick(logits [1, V]) -> [1, 1]`` chooses each token (the argmax when None: greedy); generation ends after a
    token in ``stop`` (included) or after ``max_new_tokens``."""
    generated: list[int] = []
    if max_new_tokens <= 0:
        return generated
    ids = ids.to(model.device)
    out = model(input_ids=ids, use_cache=True)
    while True:
        logits = out.logits[:, -1]
        nxt = logits.argmax(-1, keepdim=True) if pick is None else pick(logits)
        generated.append(int(nxt.item()))
        if generated[-1] in stop or len(generated) >= max_new_tokens:
            return generated
        out = model(input_ids=nxt.view(1, 1).to(model.device), past_key_values=out.past_key_values, use_cache=True)


def sampler(seed: int, temperature: float = 1.0, top_p: float = 1.0, device: str | torch.device = "cpu"
            ) -> Callable[[torch.Tensor], torch.Tensor]:
    """A ``pick`` for :func:`continuation`: sampling from softmax(logits / temperature), restricted to the smallest
    set of most likely tokens whose probability reaches ``top_p`` (nucleus), from a generator seeded with ``seed`` —
    the same seed gives the same tokens."""
    g = torch.Generator(device=device)
    g.manual_seed(int(seed))

    def pick(logits: torch.Tensor) -> torch.Tensor:
        probs = torch.softmax(logits.float() / temperature, dim=-1)
        if top_p >= 1.0:
            return torch.multinomial(probs, 1, generator=g)
        sorted_p, order = probs.sort(dim=-1, descending=True)
        keep = sorted_p.cumsum(-1) - sorted_p < top_p  # the mass before a token is still short of top_p
        return order.gather(-1, torch.multinomial(sorted_p * keep, 1, generator=g))

    return pick


def greedy(model, tokenizer, prompt: str, max_new_tokens: int) -> str:
    """Greedy continuation of ``prompt`` with a KV cache; returns prompt + continuation as text."""
    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]
    stop = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    new = continuation(model, ids, max_new_tokens, stop)
    return tokenizer.decode(ids[0].tolist() + new, skip_special_tokens=True)


def token_windows(ids: list[int], seq_len: int, where: str) -> torch.Tensor:
    """Token ids cut into ``[N, seq_len]`` windows for :func:`perplexity_of` (one shorter window when the text is
    shorter than ``seq_len``; the tail that does not fill a window is left out)."""
    n = len(ids) // seq_len
    if n == 0:
        seq_len, n = len(ids), 1
    if seq_len < 2:
        raise StudioError("the text is too short to measure perplexity (fewer than 2 tokens)", where=where,
                          hint="give a longer text")
    return torch.tensor(ids[: n * seq_len]).view(n, seq_len)


@torch.no_grad()
def perplexity_of(model, windows: torch.Tensor, chunk: int = 32) -> float:
    """exp(mean next-token cross-entropy) over ``[N, L]`` token windows."""
    total, count = 0.0, 0
    for i in range(0, len(windows), chunk):
        b = windows[i:i + chunk].to(model.device)
        logits = model(input_ids=b).logits.float()
        total += F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), b[:, 1:].reshape(-1),
                                 reduction="sum").item()
        count += b[:, 1:].numel()
    return math.exp(total / max(1, count))


class LLMEvaluator:
    """Users' own causal LMs: perplexity on a text file and greedy generations for prompts.

    ``LLMEvaluator(model_dir, text_file, prompts)``; ``evaluate_module(model)`` or ``evaluate(state_dict)``.
    The budget caps the tokens scored (preview 2,048, report 32,768) and the new tokens per prompt (16 / 64).
    """

    metric = "perplexity"
    LIMITS = {"preview": (2048, 16), "report": (32768, 64)}

    def __init__(self, model_dir: str | Path, text_file: str | Path | None = None, prompts: list[str] | None = None,
                 budget: str = "preview", device: str = "cpu", seq_len: int = 512, model=None):
        from transformers import AutoModelForCausalLM, AutoTokenizer  # optional and heavy: only when text is scored

        check_budget(budget)
        self.tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        self.model = model if model is not None else AutoModelForCausalLM.from_pretrained(
            str(model_dir), dtype=torch.float32).to(device).eval()
        max_tokens, self.new_tokens = self.LIMITS[budget]
        self.prompts = list(prompts or [])
        self.windows = None
        if text_file is not None:
            path = Path(text_file)
            if not path.is_file():
                raise StudioError("text file not found", where=str(path))
            ids = self.tokenizer(path.read_text(encoding="utf-8", errors="replace"),
                                 add_special_tokens=False)["input_ids"][:max_tokens]
            seq_len = min(seq_len, getattr(self.model.config, "max_position_embeddings", seq_len) or seq_len)
            self.windows = token_windows(ids, seq_len, str(path))

    @torch.no_grad()
    def evaluate_module(self, model) -> dict:
        per_task = {"text": perplexity_of(model, self.windows)} if self.windows is not None else {}
        samples = {p: greedy(model, self.tokenizer, p, self.new_tokens) for p in self.prompts}
        return result(self.metric, per_task, samples)

    def evaluate(self, state_dict: dict[str, torch.Tensor]) -> dict:
        self.model.load_state_dict(state_dict, strict=False)
        return self.evaluate_module(self.model)
