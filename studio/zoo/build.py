"""``python -m studio zoo build``: train the zoo deterministically from offline data into ``assets/zoo``.

Each family is written into ``<root>/<family>.tmp`` and renamed into place when complete; ``metrics.json`` records
the base's and each expert's evaluation (report budget) so tests can check the committed assets reproduce them.
"""

from __future__ import annotations

import copy
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file

from ..errors import StudioError
from ..output import write_text
from ..sources import open_source
from . import FAMILIES, assets_root, describe_family, get_family
from . import diffusion as D
from . import text as T
from . import vision as V


@dataclass(frozen=True)
class Steps:
    pretrain: int
    expert: int
    lora: int = 0
    vae: int = 0            # diffusion: the autoencoder's training steps
    text: int = 0           # diffusion: the text encoder's pretraining steps


# vision experts: Steps.expert = 0 means each task's own length from vision.EXPERT_STEPS
FULL = {"vision": Steps(3000, 0), "text": Steps(600, 200, 150), "diffusion": Steps(1200, 300, 200, vae=500, text=300)}
QUICK = {"vision": Steps(250, 100), "text": Steps(40, 30, 15), "diffusion": Steps(40, 10, 8, vae=30, text=40)}
QUICK_TASKS = {"vision": ("digits", "letters", "arrows"), "text": ("prose", "tables"), "diffusion": ("ember",)}


def build_vision(out: Path, quick: bool = False, tasks=None) -> None:
    steps = (QUICK if quick else FULL)["vision"]
    tasks = list(tasks or (QUICK_TASKS["vision"] if quick else V.TASKS))
    bb = V.pretrain(steps.pretrain, seed=0, batch=64)
    V.save_part(out, bb, "base")
    for i, task in enumerate(tasks):
        head = V.fit_head(bb, task, shots=V.HEAD_SHOTS, seed=i)
        V.save_part(out, head, "head", task)
        expert = V.finetune(bb, head, task, steps.expert or V.EXPERT_STEPS[task], seed=100 + i, lr=V.EXPERT_LR)
        V.save_part(out, expert, "expert", task)


def build_text(out: Path, quick: bool = False, tasks=None) -> None:
    from peft import get_peft_model  # optional and heavy: building only
    from transformers import LlamaForCausalLM  # optional and heavy: building only

    T.threads_env()
    steps = (QUICK if quick else FULL)["text"]
    corpora = list(tasks or (QUICK_TASKS["text"] if quick else T.CORPORA))
    tok = T.train_tokenizer()
    torch.manual_seed(0)
    base = LlamaForCausalLM(T.model_config(len(tok)))
    T.train_lm(base, tok, T.CORPORA, steps.pretrain, 3e-3, seed=0)
    base.save_pretrained(out / "base")
    tok.save_pretrained(out / "base")
    state = {k: v.clone() for k, v in base.state_dict().items()}
    for i, corpus in enumerate(corpora):
        expert = LlamaForCausalLM(T.model_config(len(tok)))
        expert.load_state_dict(state)
        T.train_lm(expert, tok, (corpus,), steps.expert, 1e-3, seed=10 + i)
        expert.save_pretrained(out / "experts" / corpus)
        tok.save_pretrained(out / "experts" / corpus)
        lora_base = LlamaForCausalLM(T.model_config(len(tok)))
        lora_base.load_state_dict(state)
        peft_model = get_peft_model(lora_base, T.lora_config())
        T.train_lm(peft_model, tok, (corpus,), steps.lora, 3e-3, seed=20 + i)
        peft_model.save_pretrained(out / "loras" / corpus)


def build_diffusion(out: Path, quick: bool = False, tasks=None) -> None:
    from peft import get_peft_model  # optional and heavy: building only

    steps = (QUICK if quick else FULL)["diffusion"]
    styles = list(tasks or (QUICK_TASKS["diffusion"] if quick else D.STYLES))
    per_style = 300 if quick else None           # pictures encoded per style (None: every digit × position)
    parts = D.make_components(seed=0)
    tok = D.make_tokenizer()
    D.train_vae(parts["vae"], steps.vae, 2e-3, seed=1)
    D.pretrain_text(parts["text_encoder"], tok, steps.text, 3e-3, seed=2)
    pictures = D.encode_pictures(parts["vae"], None, seed=3, count=per_style)
    # the text encoder stays frozen while the UNet learns to listen to it (SD1 trained on a frozen CLIP)
    D.train_denoiser(parts["unet"], parts["text_encoder"], tok, pictures, steps.pretrain, 2e-3, seed=4, ema=0.995)
    D.save_pipeline(parts, tok, out / "base")
    for i, style in enumerate(styles):
        pictures = D.encode_pictures(parts["vae"], style, seed=10 + i, count=per_style or D.EXPERT_PICTURES)
        expert = {**parts, "unet": copy.deepcopy(parts["unet"]), "text_encoder": copy.deepcopy(parts["text_encoder"])}
        D.train_denoiser(expert["unet"], expert["text_encoder"], tok, pictures, steps.expert, 1.5e-3, seed=20 + i,
                         text_lr=1.5e-4)
        D.save_pipeline(expert, tok, out / "experts" / style)
        peft_model = get_peft_model(copy.deepcopy(parts["unet"]), D.lora_config())
        D.train_denoiser(peft_model, parts["text_encoder"], tok, pictures, steps.lora, 3e-3, seed=30 + i)
        peft_model.save_pretrained(out / "loras" / style)


BUILDERS = {"vision": build_vision, "text": build_text, "diffusion": build_diffusion}


def family_metrics(fam) -> dict:
    """Base and experts of a built family under the report budget: ``{"metric", "base": per_task,
    "experts": {task: value on its own task}}``."""
    ev = fam.evaluator("report")
    base = ev.evaluate(load_state(fam.kind, fam.base))
    experts = {}
    for task, path in fam.experts.items():
        r = ev.evaluate(load_state(fam.kind, path))
        experts[task] = r["per_task"][task]
    return {"metric": base["metric"], "base": base["per_task"], "experts": experts}


def load_state(kind: str, path: str) -> dict[str, torch.Tensor]:
    """All tensors of a zoo model: a weights file, a model folder, or a diffusers pipeline folder (its keys
    prefixed by component: ``unet.…``, ``text_encoder.…``, ``vae.…``)."""
    p = Path(path)
    if p.is_file():
        return load_file(str(p))
    if (p / "model_index.json").is_file():
        src = open_source(str(p))
        return {k: src.get(k) for k in src.keys()}
    for name in ("model.safetensors", "diffusion_pytorch_model.safetensors"):
        if (p / name).exists():
            return load_file(str(p / name))
    raise StudioError("no weights found", where=str(p))


def build(families=None, root: str | Path | None = None, quick: bool = False, tasks=None,
          log=print) -> dict:
    """Build ``families`` (all by default) into ``root``; returns and records the metrics per family."""
    root = Path(root) if root else assets_root()
    root.mkdir(parents=True, exist_ok=True)
    families = list(families or FAMILIES)
    metrics_path = root / "metrics.json"
    metrics: dict = {}
    torch.set_num_threads(1)   # deterministic, and robust on a shared 2-core machine
    for name in families:
        if name not in BUILDERS:
            raise StudioError(f"unknown zoo family {name!r}", hint=f"families: {', '.join(FAMILIES)}")
        t0 = time.time()
        tmp = root / f"{name}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        BUILDERS[name](tmp, quick=quick, tasks=tasks)
        final = root / name
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        seconds = time.time() - t0
        fam = get_family(name, root) if tasks is None and not quick else _partial(name, root, final)
        m = family_metrics(fam)
        m["build_seconds"] = round(seconds, 1)
        m["quick"] = quick
        metrics[name] = m
        _record(metrics_path, name, m)
        log(f"{name}: built in {seconds:.0f} s — base {_fmt(m['base'])}; experts {_fmt(m['experts'])}")
    return metrics


def _record(metrics_path: Path, name: str, m: dict) -> None:
    """Update one family's entry of ``metrics.json`` (re-read first: families may be built by parallel runs)."""
    metrics = json.loads(metrics_path.read_text()) if metrics_path.exists() else {}
    metrics[name] = m
    write_text(metrics_path, json.dumps(metrics, indent=2, sort_keys=True) + "\n")


def _partial(name: str, root: Path, folder: Path):
    """A catalogue entry restricted to the experts that a quick/partial build produced."""
    fam = describe_family(name, root)
    present = [t for t in fam.tasks if Path(fam.experts[t]).exists()]
    fam.tasks = present
    fam.experts = {t: fam.experts[t] for t in present}
    fam.loras = {t: p for t, p in fam.loras.items() if t in present}
    fam.heads = {t: p for t, p in fam.heads.items() if t in present}
    return fam


def _fmt(d: dict) -> str:
    return ", ".join(f"{k} {v:.2f}" for k, v in d.items())
