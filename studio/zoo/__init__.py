"""The demo zoo: small models built offline into ``assets/zoo`` and a catalogue the UI and CLI list.

``list_families()`` → ``["vision", "text", "diffusion"]`` (those whose files exist);
``get_family(name)`` → :class:`ZooFamily` with paths of the base, the experts and the LoRAs, and
``family.evaluator(budget, device)`` → the family's evaluator (``vision_evaluator``, ``text_evaluator``,
``diffusion_evaluator``: the shape of :mod:`studio.evaluate`); ``zoo_models("zoo:text/code")`` → the paths a
``zoo:`` reference names on the command line.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import StudioError
from .diffusion_data import STYLE_DOC, STYLES
from .diffusion_evaluator import DiffusionEvaluator
from .text import CORPORA, CORPUS_DOC, token_batches
from .text_evaluator import TextEvaluator
from .vision import TASK_DOC, TASKS, sample_sheet, task_data
from .vision_evaluator import VisionEvaluator

FAMILIES = ("vision", "text", "diffusion")


def assets_root() -> Path:
    """``$STUDIO_ZOO_DIR`` if set, else ``<repo>/assets/zoo``."""
    env = os.environ.get("STUDIO_ZOO_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "assets" / "zoo"


@dataclass
class ZooFamily:
    """One family of the zoo. ``base``/``experts``/``loras`` are paths usable as model references in recipes."""

    name: str
    kind: str                      # "vision" | "text" | "diffusion"
    base: str
    experts: dict[str, str]
    loras: dict[str, str]
    tasks: list[str]
    description: str
    root: str
    heads: dict[str, str] = field(default_factory=dict)       # vision: task → head file
    task_docs: dict[str, str] = field(default_factory=dict)

    def evaluator(self, budget: str = "preview", device: str = "cpu", split: str = "test"):
        """The family's evaluator (vision: accuracy %, text: perplexity + generations, diffusion: style scores);
        ``split="train"``: a validation split from the training data (vision only)."""
        if self.kind == "vision":
            return VisionEvaluator(self.root, self.tasks, budget, device, split)
        if split != "test":
            raise StudioError(f"the {self.kind} family has no {split!r} evaluation split", hint="use its test split")
        if self.kind == "text":
            return TextEvaluator(self.base, self.tasks, budget, device)
        return DiffusionEvaluator(self.base, self.tasks, budget, device)

    def sample_sheet(self):
        """A picture of the family's tasks (vision: a row of test images per dataset, uint8 ``[H, W]``), or None."""
        if self.kind != "vision":
            return None
        return sample_sheet(self.tasks)

    def data(self, task: str, split: str = "unlabeled"):
        """``(inputs, labels)`` of a task for data-aware merging (vision images; text token windows).

        Diffusion has no task data (returns None)."""
        if task not in self.tasks:
            raise StudioError(f"unknown task {task!r} in zoo family {self.name!r}", hint=", ".join(self.tasks))
        if self.kind == "vision":
            return task_data(task, split)
        if self.kind == "text":
            ids = token_batches(_tokenizer(self.base), task, "test" if split == "test" else "train", 64)
            return ids, ids.clone()
        return None

    def to_dict(self) -> dict:
        return {"name": self.name, "kind": self.kind, "base": self.base, "experts": self.experts,
                "loras": self.loras, "tasks": self.tasks, "description": self.description,
                "task_docs": self.task_docs}


_TOKENIZERS: dict = {}


def _tokenizer(path: str):
    if path not in _TOKENIZERS:
        from transformers import AutoTokenizer  # optional and heavy: only the text family's data needs it

        _TOKENIZERS[path] = AutoTokenizer.from_pretrained(path)
    return _TOKENIZERS[path]


def describe_family(name: str, root: Path) -> ZooFamily:
    if name == "vision":
        d = root / "vision"
        return ZooFamily(
            name, "vision", str(d / "base.safetensors"),
            {t: str(d / "experts" / f"{t}.safetensors") for t in TASKS}, {}, list(TASKS),
            f"Tiny residual-MLP backbone pretrained on {len(TASKS)} 8×8 image datasets ({', '.join(TASKS)}), "
            "fine-tuned fully into one expert per dataset (CLIP's multi-task "
            "setting in miniature). Backbones merge; each task keeps its frozen head.",
            str(d), heads={t: str(d / "heads" / f"{t}.safetensors") for t in TASKS}, task_docs=dict(TASK_DOC))
    if name == "text":
        d = root / "text"
        return ZooFamily(
            name, "text", str(d / "base"), {c: str(d / "experts" / c) for c in CORPORA},
            {c: str(d / "loras" / c) for c in CORPORA}, list(CORPORA),
            "Tiny Llama (3 layers, 96 wide, byte-level BPE 512) pretrained on a mix, fine-tuned per corpus; "
            "PEFT LoRA (r=8) versions of the experts.", str(d), task_docs=dict(CORPUS_DOC))
    if name == "diffusion":
        d = root / "diffusion"
        return ZooFamily(
            name, "diffusion", str(d / "base"), {s: str(d / "experts" / s) for s in STYLES},
            {s: str(d / "loras" / s) for s in STYLES}, list(STYLES),
            "Tiny Stable Diffusion 1 pipeline (diffusers folders: SD1's UNet blocks — 26 SuperMerger ids — with "
            "cross-attention on a small CLIP text encoder, SD1's 4-stage VAE, 64×64 pictures) drawing handwritten "
            "digits from prompts such as \"a seven on the left\"; style experts fine-tuned for colour, stroke and "
            "texture, plus PEFT LoRA adapters on the UNet.", str(d), task_docs=dict(STYLE_DOC))
    raise StudioError(f"unknown zoo family {name!r}", hint=f"families: {', '.join(FAMILIES)}")


def _built(fam: ZooFamily) -> bool:
    return Path(fam.base).exists() and all(Path(p).exists() for p in fam.experts.values())


def list_families(root: str | Path | None = None) -> list[str]:
    """Names of the families whose assets are present."""
    root = Path(root) if root else assets_root()
    return [n for n in FAMILIES if _built(describe_family(n, root))]


def family_holding(refs, every: bool = False) -> ZooFamily | None:
    """The built family whose files (base, experts, LoRAs) hold the model references ``refs``: one of them, or with
    ``every`` all of them; None when no family does."""
    wanted = {Path(r).resolve() for r in refs}
    if not wanted:
        return None
    for name in list_families():
        fam = get_family(name)
        files = {Path(p).resolve() for p in (fam.base, *fam.experts.values(), *(fam.loras or {}).values())}
        if (wanted <= files) if every else (wanted & files):
            return fam
    return None


def get_family(name: str, root: str | Path | None = None) -> ZooFamily:
    """The catalogue entry of family ``name``; raises ``StudioError`` if unknown or not built."""
    fam = describe_family(name, Path(root) if root else assets_root())
    if not _built(fam):
        raise StudioError(f"the zoo family {name!r} is not built", where=fam.root,
                          hint=f"run `python -m studio zoo build --family {name}`")
    return fam


ZOO_SCHEME = "zoo:"


def zoo_models(ref: str, family_means: str = "all", root: str | Path | None = None) -> list[str]:
    """The model paths a ``zoo:`` reference names; any other reference comes back as it is (``[ref]``).

    ``zoo:FAMILY/base`` is the family's base and ``zoo:FAMILY/TASK`` that task's expert. ``zoo:FAMILY`` alone is
    ``family_means``: ``"all"`` (the base, then every expert: what ``inspect`` shows), ``"base"`` (``learn --base``)
    or ``"experts"`` (``learn --experts``). Raises ``StudioError`` naming the families or tasks when one is unknown."""
    if not ref.startswith(ZOO_SCHEME):
        return [ref]
    name, _, part = ref[len(ZOO_SCHEME):].partition("/")
    fam = get_family(name, root)
    if part == "base" or (not part and family_means == "base"):
        return [fam.base]
    if not part:
        experts = list(fam.experts.values())
        return experts if family_means == "experts" else [fam.base, *experts]
    if part not in fam.experts:
        raise StudioError(f"the zoo family {name!r} has no model {part!r}", where=ref,
                          hint=f"use zoo:{name}, zoo:{name}/base or zoo:{name}/TASK with a task of "
                               f"{', '.join(fam.experts)}")
    return [fam.experts[part]]


def expand_zoo_refs(refs: list[str], family_means: str = "all", root: str | Path | None = None) -> list[str]:
    """Every reference of ``refs`` with its ``zoo:`` ones replaced by the paths they name (:func:`zoo_models`)."""
    return [path for ref in refs for path in zoo_models(ref, family_means, root)]


__all__ = ["ZooFamily", "list_families", "get_family", "describe_family", "assets_root", "FAMILIES", "ZOO_SCHEME",
           "zoo_models", "expand_zoo_refs"]
