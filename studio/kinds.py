"""What a file or folder on disk is, for a file browser: a model, a LoRA, a VAE, a recipe, an image with merge
settings, evaluation data — and so what opening it does. Cheap: marker files and safetensors headers only."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from .errors import StudioError
from .lora.network import is_lora_key
from .recipe.files import RECIPE_FILE, RECIPE_KEY, YAML_SUFFIXES, png_text
from .sources.resolve import PICKLE_SUFFIXES
from .sources.safetensors_file import read_header

# what opening an entry does
MODEL, LORA, VAE, RECIPE, EVAL_SET, TEXT, FOLDER = "model", "lora", "vae", "recipe", "eval_set", "text", "folder"
VAE_ROOTS = ("encoder.", "decoder.", "quant_conv.", "post_quant_conv.", "first_stage_model.")
RECIPE_CHUNKS = (RECIPE_KEY, "sd_merge_recipe")


@dataclass(frozen=True)
class Entry:
    path: Path
    action: str        # MODEL | LORA | VAE | RECIPE | EVAL_SET | TEXT | FOLDER
    label: str         # what it is, in words ("· recipe inside": a merge that carries its recipe)
    hub_id: str | None = None  # a model of the Hugging Face cache: opened by its id, not its snapshot's path

    @property
    def name(self) -> str:
        return self.hub_id or self.path.name

    @property
    def ref(self) -> str:
        """How the studio refers to it: the hub id, else the path."""
        return self.hub_id or str(self.path)


def _model(path: Path, what: str, recipe: bool) -> Entry:
    return Entry(path, MODEL, what + (" · recipe inside" if recipe else ""))


def _safetensors(path: Path) -> Entry:
    entries, meta, _ = read_header(path)
    keys = [k for k in entries if k != "__metadata__"]
    if keys and sum(map(is_lora_key, keys)) * 2 >= len(keys):
        return Entry(path, LORA, "LoRA")
    if keys and all(k.startswith(VAE_ROOTS) for k in keys):
        return Entry(path, VAE, "VAE")
    return _model(path, "checkpoint", isinstance(meta, dict) and any(k in meta for k in RECIPE_CHUNKS))


def _folder(path: Path) -> Entry:
    def has(name):
        return (path / name).is_file()
    recipe = has(RECIPE_FILE)
    if has("model_index.json"):
        return _model(path, "diffusers pipeline", recipe)
    if has("adapter_config.json"):
        return Entry(path, LORA, "PEFT LoRA adapter")
    weights = any(path.glob("*.safetensors")) or any(path.glob("*.bin")) or any(path.glob("*.index.json"))
    if has("config.json") and weights:
        text = (path / "config.json").read_text(errors="replace")
        if '"AutoencoderKL"' in text:
            return Entry(path, VAE, "VAE (diffusers)")
        return _model(path, "diffusers component" if '"_class_name"' in text else "transformers model", recipe)
    return Entry(path, FOLDER, "folder")


def what_is(path: str | Path) -> Entry | None:
    """The entry for ``path``, or None for a file the studio has no use for."""
    path = Path(path)
    suffix = path.suffix.lower()
    try:
        if path.is_dir():
            return _folder(path)
        if suffix == ".safetensors":
            return _safetensors(path)
        if suffix in PICKLE_SUFFIXES:
            return Entry(path, MODEL, "checkpoint (pickle, read as weights only)")
        if suffix == ".gguf":
            return Entry(path, MODEL, "GGUF checkpoint (dequantized to float32 when read)")
        if suffix in YAML_SUFFIXES:
            return Entry(path, RECIPE, "recipe")
        if suffix == ".png":
            chunks = png_text(path)
            settings = any(k in chunks for k in RECIPE_CHUNKS) or "ModelMixer" in chunks.get("parameters", "")
            return Entry(path, RECIPE, "image with merge settings") if settings else None
        if suffix == ".jsonl":
            return Entry(path, EVAL_SET, "evaluation set (JSONL)")
        if suffix in (".txt", ".md"):
            return Entry(path, TEXT, "text (perplexity)")
    except (StudioError, OSError):  # a broken header, a name too long: listed, and opening it says why
        return Entry(path, MODEL, "unreadable")
    return None


def list_folder(folder: str | Path, limit: int = 500) -> list[Entry]:
    """The entries of ``folder`` the studio can use: folders first, then files, by name; hidden ones left out."""
    folder = Path(folder)
    try:
        children = sorted(folder.iterdir(), key=lambda p: (not p.is_dir(), p.name.lower()))
    except OSError as e:
        raise StudioError(f"cannot list the folder ({e.strerror or e})", where=str(folder)) from None
    out = []
    for child in children:
        if child.name.startswith(".") or child.name == "__pycache__":
            continue
        entry = what_is(child)
        if entry is not None:
            out.append(entry)
        if len(out) >= limit:
            break
    return out


def hub_models(cache: str | Path) -> list[Entry]:
    """The models of a Hugging Face cache folder (``models--org--name``), each as its newest snapshot, by id."""
    out = []
    for repo in sorted(Path(cache).glob("models--*--*")):
        snapshots = sorted((repo / "snapshots").glob("*"), key=lambda p: p.stat().st_mtime, reverse=True)
        entry = what_is(snapshots[0]) if snapshots else None
        if entry is not None and entry.action != FOLDER:
            hub_id = repo.name.removeprefix("models--").replace("--", "/", 1)
            out.append(replace(entry, hub_id=hub_id))
    return out
