"""What a preview pipeline is: the merged weights rendered as a person looks at them — images from their prompts,
text from their prompts, perplexity, accuracy on their own evaluation set — without writing the merge to disk.

A :class:`Previewer` holds the modules of one model kind (a diffusers pipeline, a transformers causal LM) built from
the reference model's configs, takes a :class:`~studio.engine.live.LiveMerger`'s merged state into them
(:meth:`Previewer.attach`: parameters that are plain renames of merged tensors are *bound*, so each re-merge writes
straight into the module; the rest are converted), and renders a request. Renders of each input model (for side by
side comparison) reuse the same modules: they are loaded with that model's weights, rendered, and the merge is
restored.

Previewers register themselves in :data:`PREVIEWERS` (like ``layout.DETECTORS``): each entry looks at the reference
model's source and returns a Previewer class for it, or None.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from ..engine.live import LiveMerger
from ..errors import StudioError
from ..sources import DictSource, TensorSource


class Previewer:
    """One model kind's preview pipeline. Subclasses set ``kind`` ("image" or "text") and implement the methods."""

    kind = ""
    metric = ""
    #: the request this pipeline renders (prompts, seeds, …): a dataclass whose defaults make a usable preview
    Request: type = type(None)

    def __init__(self, reference: TensorSource, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32):
        self.reference = reference
        self.device = torch.device(device)
        self.dtype = dtype
        self.live: LiveMerger | None = None

    def preview_request(self) -> Any:
        """The request an interactive preview starts from on this previewer's device (the request's defaults,
        unless a pipeline knows a lighter start that still shows what a slider does)."""
        return self.Request()

    def attach(self, live: LiveMerger) -> None:
        """Take ``live``'s merged state into the pipeline (bind what can be bound, convert the rest)."""
        raise NotImplementedError

    def refresh(self, changed: list[str]) -> None:
        """After ``live.update`` re-merged ``changed``: bring the converted (not bound) parameters up to date."""
        raise NotImplementedError

    def render(self, request: Any) -> dict:
        """The current merge rendered: ``{"metric", "per_task", "average", "samples"}`` (evaluate.common.result)."""
        raise NotImplementedError

    def render_source(self, source: TensorSource, request: Any) -> dict:
        """One input model's own weights rendered the same way; the pipeline holds the merge again afterwards."""
        raise NotImplementedError

    def render_state(self, state: dict[str, torch.Tensor], request: Any) -> dict:
        """Any weights in the checkpoint's naming (a landscape's point) rendered the same way, the merge restored."""
        return self.render_source(DictSource(state, ref="<landscape point>"), request)


# Each detector takes the reference model's source and returns a Previewer subclass that can show it, or None.
PREVIEWERS: list[Callable[[TensorSource], type[Previewer] | None]] = []


def previewer_for(reference: TensorSource) -> type[Previewer]:
    """The Previewer class for a model (StudioError naming what it is when no pipeline can show it)."""
    for detect in PREVIEWERS:
        found = detect(reference)
        if found is not None:
            return found
    raise StudioError(f"no preview pipeline for this model ({reference.kind})", where=reference.ref,
                      hint="previews show diffusion pipelines (SD1/SD2/SDXL/Flux) and transformers causal LMs; "
                           "other models still merge and export")
