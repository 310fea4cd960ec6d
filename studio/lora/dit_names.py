"""DiT module names in their two spellings: the original release's (BFL Flux, SD3 MMDiT, Wan) and diffusers'.

A LoRA trained on one spelling must land on a model saved in the other. Most modules are renames; a few are fused
in one spelling and split in the other (Flux ``img_attn.qkv`` ↔ ``attn.to_q/to_k/to_v``, ``linear1`` ↔ q/k/v +
``proj_mlp``), and a final modulation swaps its shift/scale halves (diffusers ``swap_scale_shift``). The facts are
those of diffusers' single-file converters (``convert_flux_transformer_checkpoint_to_diffusers``,
``convert_sd3_transformer_checkpoint_to_diffusers``, ``convert_wan_transformer_to_diffusers``); the code is ours.

A :class:`Group` says: the original module ``orig`` holds, row after row, the diffusers modules ``parts``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

RENAME, SPLIT, QKV_MLP, ADALN = "rename", "split", "qkv+mlp", "adaln"


@dataclass(frozen=True)
class Group:
    orig: str                   # module path in the original spelling (no denoiser prefix, no ".weight")
    parts: tuple[str, ...]      # diffusers module paths whose rows, in order, make up ``orig``'s rows
    kind: str = RENAME          # RENAME (one part), SPLIT (equal row blocks), QKV_MLP (d, d, d, rest), ADALN


def part_rows(g: Group, total: int, hidden: int | None) -> list[tuple[tuple[int, int], tuple[int, int]]] | None:
    """[(rows in ``orig``, rows in the part)] for each part, given ``orig``'s row count; None when they do not fit.
    ADALN: a 2·hidden modulation is stored (shift, scale) in the original and (scale, shift) by diffusers."""
    if g.kind == RENAME:
        return [((0, total), (0, total))]
    if g.kind == ADALN:
        if hidden is None or total != 2 * hidden:
            return [((0, total), (0, total))]
        return [((0, hidden), (hidden, total)), ((hidden, total), (0, hidden))]
    if g.kind == SPLIT:
        n = len(g.parts)
        if total % n:
            return None
        s = total // n
        return [((i * s, (i + 1) * s), (0, s)) for i in range(n)]
    if hidden is None or total <= 3 * hidden:
        return None
    sizes = [hidden, hidden, hidden, total - 3 * hidden]
    starts = [0, hidden, 2 * hidden, 3 * hidden]
    return [((a, a + n), (0, n)) for a, n in zip(starts, sizes)]


def _ids(keys, pattern: str) -> list[int]:
    rx = re.compile(pattern)
    return sorted({int(m[1]) for k in keys if (m := rx.match(k))})


def _flux(keys) -> list[Group]:
    g = [Group("img_in", ("x_embedder",)), Group("txt_in", ("context_embedder",)),
         Group("final_layer.linear", ("proj_out",)), Group("final_layer.adaLN_modulation.1", ("norm_out.linear",), ADALN)]
    for a, b in (("time_in", "timestep_embedder"), ("vector_in", "text_embedder"), ("guidance_in", "guidance_embedder")):
        g += [Group(f"{a}.in_layer", (f"time_text_embed.{b}.linear_1",)),
              Group(f"{a}.out_layer", (f"time_text_embed.{b}.linear_2",))]
    for i in _ids(keys, r"^(?:double_blocks|transformer_blocks)\.(\d+)\."):
        o, d = f"double_blocks.{i}.", f"transformer_blocks.{i}."
        g += [Group(o + "img_mod.lin", (d + "norm1.linear",)), Group(o + "txt_mod.lin", (d + "norm1_context.linear",)),
              Group(o + "img_attn.qkv", (d + "attn.to_q", d + "attn.to_k", d + "attn.to_v"), SPLIT),
              Group(o + "txt_attn.qkv", (d + "attn.add_q_proj", d + "attn.add_k_proj", d + "attn.add_v_proj"), SPLIT),
              Group(o + "img_attn.proj", (d + "attn.to_out.0",)), Group(o + "txt_attn.proj", (d + "attn.to_add_out",)),
              Group(o + "img_mlp.0", (d + "ff.net.0.proj",)), Group(o + "img_mlp.2", (d + "ff.net.2",)),
              Group(o + "txt_mlp.0", (d + "ff_context.net.0.proj",)), Group(o + "txt_mlp.2", (d + "ff_context.net.2",))]
    for i in _ids(keys, r"^(?:single_blocks|single_transformer_blocks)\.(\d+)\."):
        o, d = f"single_blocks.{i}.", f"single_transformer_blocks.{i}."
        g += [Group(o + "modulation.lin", (d + "norm.linear",)),
              Group(o + "linear1", (d + "attn.to_q", d + "attn.to_k", d + "attn.to_v", d + "proj_mlp"), QKV_MLP),
              Group(o + "linear2", (d + "proj_out",))]
    return g


def _sd3(keys) -> list[Group]:
    g = [Group("x_embedder.proj", ("pos_embed.proj",)), Group("context_embedder", ("context_embedder",)),
         Group("t_embedder.mlp.0", ("time_text_embed.timestep_embedder.linear_1",)),
         Group("t_embedder.mlp.2", ("time_text_embed.timestep_embedder.linear_2",)),
         Group("y_embedder.mlp.0", ("time_text_embed.text_embedder.linear_1",)),
         Group("y_embedder.mlp.2", ("time_text_embed.text_embedder.linear_2",)),
         Group("final_layer.linear", ("proj_out",)), Group("final_layer.adaLN_modulation.1", ("norm_out.linear",), ADALN)]
    for i in _ids(keys, r"^(?:joint_blocks|transformer_blocks)\.(\d+)\."):
        o, d = f"joint_blocks.{i}.", f"transformer_blocks.{i}."
        x, c = o + "x_block.", o + "context_block."
        g += [Group(x + "attn.qkv", (d + "attn.to_q", d + "attn.to_k", d + "attn.to_v"), SPLIT),
              Group(c + "attn.qkv", (d + "attn.add_q_proj", d + "attn.add_k_proj", d + "attn.add_v_proj"), SPLIT),
              Group(x + "attn2.qkv", (d + "attn2.to_q", d + "attn2.to_k", d + "attn2.to_v"), SPLIT),
              Group(x + "attn.proj", (d + "attn.to_out.0",)), Group(c + "attn.proj", (d + "attn.to_add_out",)),
              Group(x + "attn2.proj", (d + "attn2.to_out.0",)),
              Group(x + "adaLN_modulation.1", (d + "norm1.linear",)),
              # the last block's context modulation is (shift, scale) only, swapped by diffusers; the others are 6·d
              Group(c + "adaLN_modulation.1", (d + "norm1_context.linear",), ADALN),
              Group(x + "mlp.fc1", (d + "ff.net.0.proj",)), Group(x + "mlp.fc2", (d + "ff.net.2",)),
              Group(c + "mlp.fc1", (d + "ff_context.net.0.proj",)), Group(c + "mlp.fc2", (d + "ff_context.net.2",))]
    return g


def _wan(keys) -> list[Group]:
    g = [Group("text_embedding.0", ("condition_embedder.text_embedder.linear_1",)),
         Group("text_embedding.2", ("condition_embedder.text_embedder.linear_2",)),
         Group("time_embedding.0", ("condition_embedder.time_embedder.linear_1",)),
         Group("time_embedding.2", ("condition_embedder.time_embedder.linear_2",)),
         Group("time_projection.1", ("condition_embedder.time_proj",)), Group("head.head", ("proj_out",)),
         Group("img_emb.proj.1", ("condition_embedder.image_embedder.ff.net.0.proj",)),
         Group("img_emb.proj.3", ("condition_embedder.image_embedder.ff.net.2",))]
    for i in _ids(keys, r"^blocks\.(\d+)\."):
        o, d = f"blocks.{i}.", f"blocks.{i}."
        g += [Group(o + f"{a}.{p}", (d + f"{b}.{q}",))
              for a, b in (("self_attn", "attn1"), ("cross_attn", "attn2"))
              for p, q in (("q", "to_q"), ("k", "to_k"), ("v", "to_v"), ("o", "to_out.0"))]
        g += [Group(o + "cross_attn.k_img", (d + "attn2.add_k_proj",)),
              Group(o + "cross_attn.v_img", (d + "attn2.add_v_proj",)),
              Group(o + "ffn.0", (d + "ffn.net.0.proj",)), Group(o + "ffn.2", (d + "ffn.net.2",)),
              Group(o + "norm3", (d + "norm2",))]        # the cross-attention norm (the other two have no weights)
    return g


def dit_family(rel_keys: set[str]) -> str | None:
    """flux / sd3 / wan from the denoiser's keys (prefix removed), in either spelling; None for other DiTs."""
    def has(*parts):
        return any(k.startswith(parts) or any("." + p in k for p in parts) for k in rel_keys)
    if has("double_blocks.", "single_transformer_blocks.") and has("single_blocks.", "single_transformer_blocks."):
        return "flux"
    if has("joint_blocks.") or (has("pos_embed.proj.") and any(".norm1_context.linear." in k for k in rel_keys)):
        return "sd3"
    if any(re.match(r"^blocks\.\d+\.(self_attn\.q|attn1\.to_q)\.", k) for k in rel_keys) and \
            has("condition_embedder.", "time_projection.", "text_embedding."):
        return "wan"
    return None


HIDDEN_FROM = {"flux": ("img_in", "x_embedder"), "sd3": ("x_embedder.proj", "pos_embed.proj"), "wan": ()}


def spelling_groups(rel_keys: set[str], rows_of) -> tuple[list[Group], int | None]:
    """(groups, hidden size) of the denoiser whose keys (prefix removed) are ``rel_keys``; ``rows_of(module)``: the
    row count of a module's weight. ([], None) when the family has no second spelling."""
    fam = dit_family(rel_keys)
    if fam is None:
        return [], None
    hidden = next((rows_of(m) for m in HIDDEN_FROM[fam] if m + ".weight" in rel_keys), None)
    return {"flux": _flux, "sd3": _sd3, "wan": _wan}[fam](rel_keys), hidden
