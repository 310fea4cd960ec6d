"""Diffusion transformers (DiTs): which family a denoiser is, and its block layout, for the families that the SD/Flux
tables in sd.py do not cover — Chroma, Flux.2, SD3/3.5, Qwen-Image, Wan 2.1/2.2, HiDream, Lumina-Image-2 / Z-Image,
and Flux.1 as a bare diffusers transformer (no ``transformer.`` prefix).

Both namings are read: the original single files (BFL / Stability / Wan / Lumina repositories, with or without
ComfyUI's ``model.diffusion_model.`` prefix) and diffusers (a bare transformer folder, or ``transformer.*`` inside a
pipeline). The marker keys are those diffusers' single-file loader tells families apart by (its CHECKPOINT_KEY_NAMES);
the block stacks are those of diffusers' transformer classes and of the original checkpoints they convert from.

A family's layout is an InferredLayout whose runs come from the family's table instead of the stack-name guess:
IN, each stack's blocks in forward order, OUT — plus TE / VAE slots when a single file also holds text encoders or a
VAE (left out of gradient positions, as sd.py's VAE slot). A denoiser under a diffusion prefix that no family matches
but that has block runs is an *unknown DiT*: merged with the layout inferred from its key names.
"""

from __future__ import annotations

from dataclasses import dataclass

from .inferred import InferredLayout, Run, infer_layout
from .sd_keys import UNET_PREFIX, VAE_PREFIXES

DENOISER_PREFIXES = (UNET_PREFIX, "transformer.", "")
TEXT_ENCODER_PREFIXES = ("text_encoders.", "text_encoder.", "text_encoder_2.", "text_encoder_3.", "cond_stage_model.",
                         "conditioner.")
UNKNOWN_DIT = "dit"


@dataclass(frozen=True)
class Stack:
    name: str      # the stack's module name below the denoiser prefix (both namings listed where they differ)
    letter: str    # block id letter
    label: str     # what one block is, in words


@dataclass(frozen=True)
class DiTFamily:
    name: str
    title: str
    stacks: tuple[Stack, ...]          # in forward order
    out: tuple[str, ...]               # denoiser-relative name starts of the final layer (OUT)


DOUBLE = (Stack("double_blocks", "D", "double block"), Stack("transformer_blocks", "D", "double block"))
SINGLE = (Stack("single_blocks", "S", "single block"), Stack("single_transformer_blocks", "S", "single block"))
FLUX_OUT = ("final_layer.", "norm_out.", "proj_out.")

FAMILIES = {f.name: f for f in (
    DiTFamily("flux", "Flux.1", DOUBLE + SINGLE, FLUX_OUT),
    DiTFamily("chroma", "Chroma", DOUBLE + SINGLE, FLUX_OUT),
    DiTFamily("flux2", "Flux.2", DOUBLE + SINGLE, FLUX_OUT),
    DiTFamily("sd3", "SD3 / SD3.5 (MMDiT)",
              (Stack("joint_blocks", "J", "joint block"), Stack("transformer_blocks", "J", "joint block")), FLUX_OUT),
    DiTFamily("qwen-image", "Qwen-Image", (Stack("transformer_blocks", "B", "block"),), ("norm_out.", "proj_out.")),
    # Wan's head modulation is a top-level `scale_shift_table` in diffusers, `head.modulation` in the original
    DiTFamily("wan", "Wan 2.x", (Stack("blocks", "B", "block"), Stack("vace_blocks", "V", "VACE block")),
              ("head.", "proj_out.", "scale_shift_table")),
    DiTFamily("hidream", "HiDream-I1", (Stack("double_stream_blocks", "D", "double-stream block"),
                                        Stack("single_stream_blocks", "S", "single-stream block")), ("final_layer.",)),
    # both refiners run before the main layers, on the image (noise) and the caption (context) tokens
    DiTFamily("lumina2", "Lumina-Image-2 / Z-Image", (Stack("noise_refiner", "N", "noise refiner"),
                                                      Stack("context_refiner", "C", "context refiner"),
                                                      Stack("layers", "L", "layer")),
              ("final_layer.", "norm_out.", "norm_final.", "all_final_layer.")),
)}

# family name → its layout table (variants of one family share one)
FAMILY_TABLES = {"flux-dev": "flux", "flux-schnell": "flux", "flux-dev-fill": "flux", "flux-dev-depth": "flux",
                 "chroma": "chroma", "flux2": "flux2", "sd3": "sd3", "sd3.5-medium": "sd3", "sd3.5-large": "sd3",
                 "qwen-image": "qwen-image", "wan": "wan", "wan2.1": "wan", "wan2.2": "wan", "hidream": "hidream",
                 "lumina2": "lumina2", "z-image": "lumina2"}


@dataclass(frozen=True)
class DiTMatch:
    family: str    # e.g. "wan2.2", or UNKNOWN_DIT
    prefix: str    # the denoiser's key prefix: "model.diffusion_model.", "transformer." or ""


class _Keys:
    """A source's keys and shapes seen below one denoiser prefix."""

    def __init__(self, source, prefix: str):
        self.source, self.prefix = source, prefix
        self.rel = [k[len(prefix):] for k in source.keys() if k.startswith(prefix)]
        self.names = set(self.rel)

    def has(self, *names: str) -> bool:
        return any(n in self.names for n in names)

    def starts(self, *starts: str) -> bool:
        return any(k.startswith(starts) for k in self.rel)

    def shape(self, name: str):
        return tuple(self.source.info(self.prefix + name).shape) if name in self.names else None


def _flux1(k: _Keys, prefix: str) -> str | None:
    # diffusers names, bare or under ComfyUI's prefix; a pipeline's `transformer.*` is sd.py's (the hand-written table
    # then wins wherever sd.py names the prefix)
    if prefix == "transformer." or not (k.starts("single_transformer_blocks.") and k.starts("time_text_embed.")):
        return None
    if not k.starts("time_text_embed.guidance_embedder."):
        return "flux-schnell"
    x = k.shape("x_embedder.weight")
    return "flux-dev" + {384: "-fill", 128: "-depth"}.get(x[1] if x and len(x) == 2 else 64, "")


def _sd3(k: _Keys, prefix: str) -> str | None:
    bfl = k.has("joint_blocks.0.context_block.adaLN_modulation.1.bias", "joint_blocks.0.x_block.attn.qkv.weight")
    diffusers = k.has("transformer_blocks.0.attn.add_q_proj.weight", "transformer_blocks.0.attn.add_k_proj.weight") \
        and k.starts("pos_embed.") and not k.starts("single_transformer_blocks.")
    if not (bfl or diffusers):
        return None
    stack = "joint_blocks.{}.x_block." if bfl else "transformer_blocks.{}."
    if k.starts(stack.format(37)):
        return "sd3.5-large"
    # SD3.5 medium (MMDiT-X) adds a second self-attention to its first blocks
    if k.starts(stack.format(0) + "attn2."):
        return "sd3.5-medium"
    return "sd3"


def _wan(k: _Keys, prefix: str) -> str | None:
    if not k.has("patch_embedding.weight") or not k.starts("blocks.0.") or \
            not (k.has("head.modulation") or k.starts("condition_embedder.")):
        return None
    dim, in_ch = (k.shape("patch_embedding.weight") or (0, 0))[:2]
    image_embedding = k.starts("img_emb.", "condition_embedder.image_embedder.")
    # 2.2's TI2V-5B VAE has 48 latent channels; its A14B image-to-video experts take 36 input channels without
    # 2.1's CLIP image embedding; 2.1's image-to-video has that embedding, its 1.3B text-to-video a width of 1536
    if in_ch == 48 or (in_ch == 36 and not image_embedding):
        return "wan2.2"
    if image_embedding or dim == 1536:
        return "wan2.1"
    return "wan"  # 14B text-to-video: 2.1 and 2.2's two experts share every name and shape


def _lumina(k: _Keys, prefix: str) -> str | None:
    if not (k.starts("noise_refiner.") and k.starts("context_refiner.") and k.starts("layers.")):
        return None
    if k.has("layers.0.adaLN_modulation.0.weight") or k.starts("all_x_embedder."):
        return "z-image"
    return "lumina2"


MARKERS = (  # tried in this order: Flux.2 and Chroma carry Flux.1's markers, Qwen-Image has SD3's add_q_proj
    lambda k, p: "flux2" if k.has("single_stream_modulation.lin.weight", "single_stream_modulation.linear.weight")
    else None,
    lambda k, p: "chroma" if k.starts("distilled_guidance_layer.") else None,
    lambda k, p: "qwen-image" if k.starts("transformer_blocks.0.img_mod.") else None,
    lambda k, p: "hidream" if k.starts("double_stream_blocks.0.block.") else None,
    _sd3, _wan, _lumina, _flux1,
)


def dit_family(source) -> DiTMatch | None:
    """The DiT family of a model's denoiser, from key names and shapes; UNKNOWN_DIT for a denoiser under
    ``model.diffusion_model.`` / ``transformer.`` with block runs that no family matches, None for anything else
    (SD UNets and Flux.1 single files are sd.py's)."""
    keys = source.keys()
    for prefix in DENOISER_PREFIXES:
        if prefix and not any(k.startswith(prefix) for k in keys):
            continue
        k = _Keys(source, prefix)
        for marker in MARKERS:
            family = marker(k, prefix)
            if family is not None:
                return DiTMatch(family, prefix)
    return None


def unknown_dit(source, prefix: str) -> DiTMatch | None:
    """A denoiser under a diffusion prefix that is not a UNet and has runs of blocks: an unknown but mergeable DiT."""
    if not prefix:
        return None
    rel = [k[len(prefix):] for k in source.keys() if k.startswith(prefix)]
    if any(k.startswith(("input_blocks.", "down_blocks.")) for k in rel) or infer_layout(rel) is None:
        return None
    return DiTMatch(UNKNOWN_DIT, prefix)


# --------------------------------------------------------------------------------------------- layouts
class DiTLayout(InferredLayout):
    """IN, the family's stacks' blocks in forward order, OUT (+ TE / VAE slots for whole single files)."""

    def __init__(self, keys, family: str, prefix: str):
        table = FAMILIES[FAMILY_TABLES[family]]
        self.family, self.prefix, self.table = family, prefix, table
        self.stack_of: dict[str, Stack] = {}
        runs: dict[str, Run] = {}
        outside = {"TE": False, "VAE": False}
        for n, key in enumerate(keys):
            slot = self._slot(key)
            if slot is not None:
                outside[slot] = True
                continue
            hit = self._split(key[len(prefix):])
            if hit is not None:
                stack, i = hit
                runs.setdefault(stack.name, Run(prefix + stack.name, n, [], stack.letter)).indices.append(i)
                self.stack_of[prefix + stack.name] = stack
        order = [s.name for s in table.stacks]
        ordered = sorted(runs.values(), key=lambda r: order.index(r.prefix[len(prefix):]))
        for r in ordered:
            r.indices = sorted(set(r.indices))
        super().__init__(ordered, has_in=True, has_out=True)
        for r in ordered:
            for i in r.indices:
                self.labels[self._block_id[(r.prefix, i)]] = f"{self.stack_of[r.prefix].label} {i}"
        self.blocks = list(self.groups)
        self.mbw_ids = list(self.blocks)
        if outside["TE"]:
            self.groups.append("TE")
            self.labels["TE"] = "text encoder(s)"
        if outside["VAE"]:
            self.groups.append("VAE")
            self.labels["VAE"] = "VAE"
        self.name, self.shape = f"{family}-blocks", "flat"
        counts = ", ".join(f"{len(r.indices)} {self.stack_of[r.prefix].label}s" for r in ordered)
        self.description = f"{table.title} ({family}): IN, {counts}, OUT" + (f" · prefix {prefix}" if prefix else "")

    def _slot(self, key: str) -> str | None:
        if self.prefix and key.startswith(self.prefix):
            return None
        if key.startswith(VAE_PREFIXES):
            return "VAE"
        if self.prefix or key.startswith(TEXT_ENCODER_PREFIXES):
            return "TE"
        return None

    def _split(self, rel: str) -> tuple[Stack, int] | None:
        head, _, rest = rel.partition(".")
        index = rest.partition(".")[0]
        if not index.isdigit():
            return None
        stack = next((s for s in self.table.stacks if s.name == head), None)
        return (stack, int(index)) if stack is not None else None

    def group_of(self, key: str) -> str:
        slot = self._slot(key)
        if slot is not None:
            return slot if slot in self.groups else "IN"
        rel = key[len(self.prefix):]
        hit = self._split(rel)
        block = self.block_at(self.prefix + hit[0].name, hit[1]) if hit is not None else None
        if block is not None:
            return block
        return "OUT" if rel.startswith(self.table.out) else "IN"

    def group_position(self, group: str) -> float:
        # TE / VAE slots are left out of gradient positions: a list of one value per block maps 1:1 onto the blocks
        return 0.0 if group not in self.blocks else self.blocks.index(group) / (len(self.blocks) - 1)


def dit_layout(source, match: DiTMatch) -> InferredLayout:
    """The block layout of a DiT family; the inferred one, named as such, for an unknown DiT."""
    keys = source.keys()
    if match.family in FAMILY_TABLES:
        return DiTLayout(keys, match.family, match.prefix)
    layout = infer_layout(keys)
    layout.name = "unknown-dit-inferred"
    layout.description = "unknown DiT, layout inferred from key names: " + layout.description.split(": ", 1)[-1]
    return layout

