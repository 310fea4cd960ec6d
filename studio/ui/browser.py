"""The file browser of one session: walk the folders this studio may read (its workspace, the ``--allow`` folders,
the Hugging Face cache, the demo zoo), see what each entry is (:func:`studio.kinds.what_is`), and open it — a model
joins the recipe (or starts one), a LoRA applies to the base, a VAE bakes in, a recipe / merged model / tagged image
restores its recipe, evaluation data goes to the preview. Dropped files arrive here too. Plain Python, no gradio."""

from __future__ import annotations

import re
from pathlib import Path

from ..engine import merge_intermediates
from ..errors import StudioError
from ..kinds import EVAL_SET, FOLDER, LORA, MODEL, RECIPE, TEXT, VAE, Entry, hub_models, list_folder, what_is
from ..recipe.files import read_recipe
from ..recipe.multi import MultiRecipe, load_multi, step_name
from ..sources import paths

HUB = "Hugging Face cache"
OPEN_LABEL = {MODEL: "Add to recipe", LORA: "Apply LoRA to the base", VAE: "Use this VAE", RECIPE: "Open recipe",
              EVAL_SET: "Use as evaluation set", TEXT: "Measure perplexity on it", FOLDER: "Open folder"}


def places(env) -> list[tuple[str, str]]:
    """(label, path) of every folder a studio may read, its workspace first."""
    roots = env.roots
    out = []
    if env.workspace is not None:
        out.append((f"workspace · {env.workspace}", str(env.workspace)))
    for r in roots.top():
        if r != env.workspace:
            out.append((f"{'demo zoo (read only)' if r in roots.read_only else 'allowed'} · {r}", str(r)))
    if roots.hub_cache is not None and roots.hub_cache.is_dir():
        out.append((f"{HUB} · {roots.hub_cache}", str(roots.hub_cache)))
    return out


class FileBrowser:
    def __init__(self, session):
        self.s = session
        self.cwd: Path | None = None          # None: nothing listed yet
        self.entries: list[Entry] = []
        self.selected: Entry | None = None
        self.message = ""                     # what the last open did, or what a recipe could not carry over

    # ------------------------------------------------------------------------------------------- places
    def places(self) -> list[tuple[str, str]]:
        return places(self.s.env)

    def go(self, folder: str | None) -> None:
        """List ``folder`` (only inside the allowed folders; the hub cache lists its models by id)."""
        if not folder:
            self.cwd, self.entries, self.selected, self.message = None, [], None, ""
            return
        path = self.s.env.roots.check_path(str(folder))  # a refused folder leaves the listing as it was
        if not path.is_dir():
            raise StudioError("not a folder", where=str(path))
        self.selected, self.message = None, ""
        hub = self.s.env.roots.hub_cache
        self.entries = hub_models(path) if hub is not None and path == hub else list_folder(path)
        self.cwd = path

    @property
    def place(self) -> str | None:
        """The allowed folder the listing is in."""
        return None if self.cwd is None else next((p for _, p in self.places() if self.cwd.is_relative_to(p)), None)

    def up(self) -> None:
        if self.cwd is None:
            return
        parent = self.cwd.parent
        try:
            self.go(str(self.s.env.roots.check_path(str(parent))))
        except StudioError:  # at the top of an allowed folder: back to the places
            self.go(None)

    def rows(self) -> list[list[str]]:
        return [[("📁 " if e.action == FOLDER else "") + e.name, e.label] for e in self.entries]

    def select(self, index: int) -> None:
        """Click on a row: a plain folder opens, anything else is selected for the buttons."""
        if not 0 <= index < len(self.entries):
            return
        entry = self.entries[index]
        if entry.action == FOLDER:
            self.go(str(entry.path))
        else:
            self.selected, self.message = entry, ""

    def open_label(self) -> str:
        return OPEN_LABEL[self.selected.action] if self.selected else "Open"

    # ------------------------------------------------------------------------------------------- opening
    def need(self) -> Entry:
        if self.selected is None:
            raise StudioError("choose a file first", hint="click a row of the file list")
        return self.selected

    def open(self) -> None:
        """What the selected entry is for (see the module's doc)."""
        e, s = self.need(), self.s
        if e.action == MODEL:
            s.add_model(e.ref)
            self.message = f"added {e.name}"
        elif e.action == LORA:
            base = s.recipe.get("base_model") or (s.included() or [None])[0]
            if base is None:
                raise StudioError("a LoRA applies to a model: add that model first", where=e.name)
            s.add_lora(base, e.ref, 1.0)
            self.message = f"added {s.label(base)} + {e.name} at strength 1 (change it in Add your own model or LoRA)"
        elif e.action == VAE:
            s.set_vae(e.ref)
            self.message = f"the merge bakes in the VAE {e.name}"
        elif e.action == RECIPE:
            self.open_recipe(e.path)
        elif e.action in (EVAL_SET, TEXT):
            name = "eval_set" if e.action == EVAL_SET else "text_file"
            if name not in {f.name for f in s.previewing.request_fields()}:
                raise StudioError(f"this preview takes no {'evaluation set' if e.action == EVAL_SET else 'text'}",
                                  hint="a preview of your own LLM does: add a transformers model first")
            s.previewing.set_request(name, str(e.path))
            self.message = f"the preview now uses {e.name}"

    def start_with(self) -> None:
        """A new recipe of the selected model alone (the demo and the current recipe put away; Undo brings it back)."""
        e = self.need()
        if e.action != MODEL:
            raise StudioError(f"{e.name} is a {e.label}, not a model", hint="choose a model to start a recipe with")
        self.s.start_own([self.s.shelf.add(e.ref)[0]])
        self.message = f"new recipe with {e.name}"

    def open_recipe(self, path: str | Path, dropped: bool = False) -> None:
        """The recipe ``path`` carries becomes the session's; its models must lie inside the allowed folders (a
        dropped file is an upload's copy: only its recipe is read)."""
        path = Path(str(path)) if dropped else self.s.env.roots.check_path(str(path))
        name = path.name
        multi = load_multi(path)
        if multi is not None:
            self._open_steps(multi, Path(path))
            return
        folders = [Path(p) for _, p in self.places()]
        found = read_recipe(path, folders=folders)
        self.s.open_recipe(found.recipe)
        self.message = f"opened the recipe of {name}" + "".join(f"\n\n⚠ {n}" for n in found.notes + found.warnings)

    def _open_steps(self, multi: MultiRecipe, path: Path) -> None:
        """A multi-step recipe: its earlier steps are merged into the workspace's ``steps/`` (once; reused while
        unchanged) and its output step opens, live, reading them there."""
        env = self.s.env
        for step in multi.steps:  # every model a step reads must lie in the allowed folders, as for one recipe
            for ref in step.recipe.input_references():
                if step_name(ref, multi.names) is None:
                    env.roots.check_reference(ref)
        folder = Path(env.default_dir("steps")) / re.sub(r"[^A-Za-z0-9_.-]", "_", path.stem)[:80]
        with env.heavy:
            recipe, merged = merge_intermediates(multi, folder, device=env.device)
        self.s.open_recipe(recipe.to_dict())
        warnings = [w for step in multi.steps for w in step.recipe.warnings]
        self.message = (f"opened the output step of {path.name}: "
                        + (f"merged {', '.join(merged)} into {paths.shown(folder)}" if merged
                           else f"its earlier steps are in {paths.shown(folder)}")
                        + "".join(f"\n\n⚠ {w}" for w in warnings))

    def drop(self, path: str | None) -> None:
        """A file dropped on the page: a recipe, a merged .safetensors or an image with merge settings."""
        if not path:
            return
        entry = what_is(str(path))
        if entry is not None and entry.action not in (RECIPE, MODEL, LORA):
            raise StudioError(f"a dropped {entry.label} has no recipe to open",
                              hint="drop a recipe YAML, a merged .safetensors or a PNG with merge settings; "
                                   "open models and data from the file list")
        self.open_recipe(path, dropped=True)
