"""The text zoo's evaluator: perplexity on each corpus' test text plus greedy generations, one prompt per corpus."""

from __future__ import annotations

from pathlib import Path

import torch

from ..errors import StudioError
from ..evaluate.common import check_budget, result
from ..evaluate.text import greedy, perplexity_of
from . import text as T

# (windows per corpus, new tokens per prompt); windows are SEQ_LEN tokens long
BUDGET_SIZES = {"preview": (6, 10), "report": (None, 40)}


class TextEvaluator:
    """Perplexity on each zoo corpus' test text plus greedy generations for one prompt per corpus.

    ``evaluate(state_dict)`` loads the full LM weights (the keys of ``LlamaForCausalLM``; ``lm_head.weight`` may be
    absent because embeddings are tied) into one resident model.
    """

    metric = "perplexity"

    def __init__(self, base: str | Path, corpora: list[str] | None = None, budget: str = "preview",
                 device: str = "cpu"):
        from transformers import AutoModelForCausalLM, AutoTokenizer  # optional and heavy: only when text is scored

        check_budget(budget)
        self.budget = budget
        self.corpora = list(corpora or T.CORPORA)
        self.tokenizer = AutoTokenizer.from_pretrained(str(base))
        self.model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32).to(device).eval()
        n, self.new_tokens = BUDGET_SIZES[budget]
        self.prompts = {c: T.PROMPTS[c] for c in self.corpora}
        self._windows = {c: T.token_batches(self.tokenizer, c, "test", n) for c in self.corpora}

    def batches(self, corpus: str, split: str = "train", n: int | None = 64) -> torch.Tensor:
        """``[n, 64]`` token windows of ``corpus`` (``train`` or ``test`` split), for data-aware merging."""
        if corpus not in self.corpora:
            raise StudioError(f"unknown corpus {corpus!r}", hint=f"corpora: {', '.join(self.corpora)}")
        return T.token_batches(self.tokenizer, corpus, split, n)

    def data(self, task: str, split: str = "unlabeled") -> tuple[torch.Tensor, torch.Tensor]:
        """``(input_ids, labels)`` windows of a corpus; labels are the inputs (next-token targets are shifted
        inside the loss). ``unlabeled`` maps to the training text, ``test`` to the held-out text."""
        ids = self.batches(task, "test" if split == "test" else "train")
        return ids, ids.clone()

    @torch.no_grad()
    def evaluate_module(self, model) -> dict:
        per_task = {c: perplexity_of(model, w) for c, w in self._windows.items()}
        samples = {c: greedy(model, self.tokenizer, p, self.new_tokens) for c, p in self.prompts.items()}
        return result(self.metric, per_task, samples)

    def evaluate(self, state_dict: dict[str, torch.Tensor]) -> dict:
        own = self.model.state_dict()
        tied = {"lm_head.weight"} if self.model.config.tie_word_embeddings else set()
        missing = [k for k in own if k not in state_dict and k not in tied]
        if missing:
            raise StudioError(f"LM weights are missing {len(missing)} keys (e.g. {missing[0]!r})")
        with torch.no_grad():
            for k, v in own.items():
                if k in state_dict:
                    v.copy_(state_dict[k].to(v.dtype))
        return self.evaluate_module(self.model)
