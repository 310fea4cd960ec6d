"""What all sessions of one studio share: the demo families, the folders it may touch, the device, the opened
sources and their header reports, and a semaphore that bounds heavy work (merges, evaluations, exports)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import torch

from ..devices import resolve_device
from ..engine.live import CachedOpener
from ..describe import describe
from ..errors import StudioError
from ..layout import detect_layout
from ..layout.inferred import block_map
from .catalog import Catalog
from .paths import AllowedRoots
from .session import Session


# the workspace's folders, one per kind of file the studio makes
WORKSPACE_FOLDERS = ("exports", "grids", "reports", "recipes", "steps", "searches")


class StudioEnv:
    """Shared by every :class:`~studio.ui.session.Session` of one app. Heavy work takes ``heavy`` first."""

    def __init__(self, catalog: Catalog | None = None, roots: AllowedRoots | None = None, device: str = "auto",
                 max_parallel: int = 1, export_dir: str | None = None, memory_budget: int | None = None,
                 workspace: str | Path | None = None):
        self.catalog = catalog if catalog is not None else Catalog(device="cpu")
        self.device = str(resolve_device(device))
        # inputs kept resident on the device by a session's live merger (None: engine.live.default_budget)
        self.memory_budget = memory_budget
        # the demo families' evaluators compare merges exactly: float32; a preview pipeline on a GPU runs in half
        # precision, as people run these models (one copy of the model, half the memory)
        self.state_dtype = torch.float32
        self.pipeline_dtype = torch.float16 if self.device.startswith("cuda") else torch.float32
        self.catalog.device = self.device
        self.roots = roots if roots is not None else AllowedRoots()
        for fam in self.catalog.families.values():  # the zoo's own files are always readable, never written
            self.roots.add(Path(str(fam.base)).parent, writable=False)
            for p in list((getattr(fam, "experts", None) or {}).values()) + list(
                    (getattr(fam, "loras", None) or {}).values()):
                self.roots.add(Path(str(p)).parent, writable=False)
        # the workspace holds what the studio makes (exports, grids, reports, saved recipes, searches)
        self.workspace = None if workspace is None else Path(workspace).expanduser().resolve()
        if self.workspace is not None:
            self.roots.add(self.workspace)
            self.roots.check_write(self.workspace)  # not inside the install folder
            for sub in WORKSPACE_FOLDERS:
                (self.workspace / sub).mkdir(parents=True, exist_ok=True)
        if export_dir:
            self.roots.check_write(export_dir)  # a default export folder the studio could not write is refused now
        self.export_dir = export_dir
        self.opener = CachedOpener()
        self.max_parallel = max(1, int(max_parallel))
        self.heavy = threading.BoundedSemaphore(self.max_parallel)
        self._describe: dict[str, dict] = {}
        self._layouts: dict[str, Any] = {}

    def new_session(self, family: str | None = None) -> Session:
        s = Session(self)
        fam = family or self.catalog.default_family()
        if fam:
            s.load_family(fam)
        return s

    def default_dir(self, kind: str = "exports") -> str:
        """Where a new file of ``kind`` (one of :data:`WORKSPACE_FOLDERS`) goes unless the user says otherwise: the
        workspace's folder for it, else ``--export-dir``, else the first folder the studio may write."""
        if self.export_dir and kind == "exports":
            return self.export_dir
        if self.workspace is not None:
            return str(self.workspace / kind)
        if self.export_dir:
            return self.export_dir
        writable = self.roots.writable()
        if not writable:
            raise StudioError("this studio has no folder to write into",
                              hint="start it with --workspace DIR (or --allow DIR)")
        return str(writable[0])

    def default_export_dir(self) -> str:
        return self.default_dir("exports")

    def describe(self, ref: str) -> dict:
        """The header report of a model reference (kind, architecture, parameters, dtypes, layout), cached."""
        hit = self._describe.get(ref)
        if hit is None:
            hit = self._describe[ref] = describe(self.opener(ref))
        return hit

    def layout(self, ref: str):
        hit = self._layouts.get(ref)
        if hit is None:
            hit = self._layouts[ref] = detect_layout(self.opener(ref))
        return hit

    def block_map(self, ref: str) -> list:
        """The block map of a model (group → label, tensors, parameters, example keys), from headers."""
        return block_map(self.layout(ref), self.opener(ref))
