"""SD exports in the layout of their target, whatever the inputs' naming (registered as an engine OUTPUT_FORMS hook).

* A single ``.safetensors`` file is what A1111, Forge, ComfyUI and diffusers' ``from_single_file`` load: ldm names
  with the VAE and the text encoder(s) in it. A merge of diffusers pipelines is renamed on the way out.
* A folder is a diffusers pipeline ``from_pretrained`` loads: ``model_index.json``, ``unet/``, ``vae/``,
  ``text_encoder(_2)/``, ``tokenizer(_2)/``, ``scheduler/``. A merge of ldm files is renamed on the way out and
  its configs are the shipped ones of its family (``assets/configs``) with every size read from the tensors.

Heads and norm groups cannot be read from weights: they come from the family's published config, kept where they
fit the tensors' widths (every full-size SD1/SD2/SDXL), else the largest count that divides them (shrunk models).
A merge already in its target's layout (diffusers → folder, ldm → file) is written as before.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from ..engine import OUTPUT_FORMS
from ..layout.sd_keys import UNET_PREFIX
from ..output import write_json
from ..output.forms import OutputForm
from .configs import prediction_type, read_json, shipped_folder, write_config_folder
from .convert import convertible_family, count_indexed, to_diffusers, to_ldm

COMPONENTS = ("unet", "vae", "text_encoder", "text_encoder_2")
Shapes = dict[str, tuple[int, ...]]


def sd_output_form(plan, single_file: bool) -> OutputForm | None:
    """The OUTPUT_FORMS hook: ldm names for a single file from a diffusers pipeline, a diffusers pipeline folder
    from an ldm checkpoint; None (as computed) when the merge is already in its target's layout."""
    family = convertible_family(getattr(plan.layout, "family", None))
    if family is None:
        return None
    naming, prefix = plan.layout.naming, plan.layout.unet_prefix
    if single_file and naming == "diffusers" and prefix == "unet.":
        converted = to_ldm(plan.outputs(), family)
        return OutputForm(converted.entries, left_out=converted.left_out)
    if not single_file and naming == "ldm" and prefix == UNET_PREFIX:
        converted = to_diffusers(plan.outputs(), family)
        shapes = {e.name: tuple(e.info.shape) for e in converted.entries}
        stems = {c: "model" for c in COMPONENTS if c.startswith("text_encoder")}
        scheduler = {"prediction_type": p} if (p := prediction_type(plan.reference)) else {}

        def side_files(folder: Path) -> None:
            write_pipeline_configs(folder, family, shapes, scheduler)

        return OutputForm(converted.entries, components=True, stems=stems, side_files=side_files,
                          library="diffusers", left_out=converted.left_out)
    return None


def write_pipeline_configs(folder: Path, family: str, shapes: Shapes, scheduler: dict | None = None) -> None:
    """The configs, tokenizers and scheduler of a diffusers ``family`` pipeline whose tensors have ``shapes``
    (diffusers names, ``unet.…``) into ``folder``; components without tensors are marked absent."""
    overrides = pipeline_config_overrides(family, shapes)
    overrides["scheduler"] = dict(scheduler or {})
    write_config_folder(folder, family, overrides)
    index = read_json(folder / "model_index.json")
    for comp in COMPONENTS:
        if comp in index and not any(k.startswith(comp + ".") for k in shapes):
            shutil.rmtree(folder / comp, ignore_errors=True)
            index[comp] = [None, None]
    write_json(folder / "model_index.json", index)


def pipeline_config_overrides(family: str, shapes: Shapes) -> dict[str, dict]:
    """component → the config fields read from the tensors' shapes, over the shipped ``family`` configs."""
    shipped = shipped_folder(family)
    comps = {c: {k[len(c) + 1:]: v for k, v in shapes.items() if k.startswith(c + ".")} for c in COMPONENTS}
    out = {}
    if comps["unet"]:
        out["unet"] = unet_config(comps["unet"], read_json(shipped / "unet" / "config.json"), comps["text_encoder_2"])
    if comps["vae"]:
        out["vae"] = vae_config(comps["vae"], read_json(shipped / "vae" / "config.json"))
    for comp in ("text_encoder", "text_encoder_2"):
        if comps[comp]:
            out[comp] = text_config(comps[comp], read_json(shipped / comp / "config.json"))
    return out


def _divisor(most: int, widths: list[int]) -> int:
    """The largest count ≤ ``most`` that divides every width."""
    return next(n for n in range(max(1, most), 0, -1) if all(w % n == 0 for w in widths))


def _heads(width: int, shipped_width: int, shipped_heads: int) -> int:
    """Attention heads for ``width``: the shipped head size where it divides the width, else the most heads ≤ the
    shipped count that divide it."""
    size = shipped_width // shipped_heads
    return width // size if width % size == 0 else _divisor(shipped_heads, [width])


def _per_level(value, n: int) -> list:
    return list(value) if isinstance(value, (list, tuple)) else [value] * n


def _first(shapes: Shapes, suffix: str) -> tuple[int, ...]:
    return next(v for k, v in shapes.items() if k.endswith(suffix))


def unet_config(s: Shapes, shipped: dict, text_encoder_2: Shapes) -> dict:
    """UNet2DConditionModel fields from the UNet's shapes (diffusers names without ``unet.``)."""
    levels = count_indexed(s, r"down_blocks\.(\d+)\.")
    channels = [s[f"down_blocks.{i}.resnets.0.conv1.weight"][0] for i in range(levels)]
    has_attn = lambda side, i: any(k.startswith(f"{side}_blocks.{i}.attentions.") for k in s)  # noqa: E731
    ship_ch = _per_level(shipped["block_out_channels"], levels)
    ship_heads = _per_level(shipped["attention_head_dim"], len(ship_ch))
    heads = [_heads(c, ship_ch[min(i, len(ship_ch) - 1)], ship_heads[min(i, len(ship_heads) - 1)])
             for i, c in enumerate(channels)]
    cfg = {"block_out_channels": channels, "layers_per_block": count_indexed(s, r"down_blocks\.0\.resnets\.(\d+)\."),
           "in_channels": s["conv_in.weight"][1], "out_channels": s["conv_out.weight"][0],
           "down_block_types": [("CrossAttnDownBlock2D" if has_attn("down", i) else "DownBlock2D")
                                for i in range(levels)],
           "up_block_types": [("CrossAttnUpBlock2D" if has_attn("up", i) else "UpBlock2D") for i in range(levels)],
           "cross_attention_dim": _first(s, "attn2.to_k.weight")[1],
           "use_linear_projection": len(_first(s, "proj_in.weight")) == 2,
           "attention_head_dim": heads[0] if isinstance(shipped["attention_head_dim"], int) and
           len(set(heads)) == 1 else heads,
           "norm_num_groups": _divisor(shipped.get("norm_num_groups", 32), channels)}
    blocks = [count_indexed(s, rf"down_blocks\.{i}\.attentions\.0\.transformer_blocks\.(\d+)\.") or 1
              for i in range(levels)]
    if "transformer_layers_per_block" in shipped or set(blocks) != {1}:
        cfg["transformer_layers_per_block"] = blocks
    if "add_embedding.linear_1.weight" in s:  # SDXL: six size/crop embeddings + the pooled text projection
        total = s["add_embedding.linear_1.weight"][1]
        cfg["projection_class_embeddings_input_dim"] = total
        if "text_projection.weight" in text_encoder_2:  # a UNet alone keeps the shipped size embedding
            cfg["addition_time_embed_dim"] = (total - text_encoder_2["text_projection.weight"][0]) // 6
    return cfg


def vae_config(s: Shapes, shipped: dict) -> dict:
    """AutoencoderKL fields from the VAE's shapes (diffusers names without ``vae.``)."""
    levels = count_indexed(s, r"encoder\.down_blocks\.(\d+)\.")
    channels = [s[f"encoder.down_blocks.{i}.resnets.0.conv1.weight"][0] for i in range(levels)]
    return {"block_out_channels": channels, "in_channels": s["encoder.conv_in.weight"][1],
            "layers_per_block": count_indexed(s, r"encoder\.down_blocks\.0\.resnets\.(\d+)\."),
            "out_channels": s["decoder.conv_out.weight"][0], "latent_channels": s["post_quant_conv.weight"][0],
            "down_block_types": ["DownEncoderBlock2D"] * levels, "up_block_types": ["UpDecoderBlock2D"] * levels,
            "norm_num_groups": _divisor(shipped.get("norm_num_groups", 32), channels)}


def text_config(s: Shapes, shipped: dict) -> dict:
    """CLIP text-encoder fields from its shapes (names with ``text_model.``)."""
    vocab, width = s["text_model.embeddings.token_embedding.weight"]
    cfg = {"vocab_size": vocab, "hidden_size": width,
           "max_position_embeddings": s["text_model.embeddings.position_embedding.weight"][0],
           "intermediate_size": s["text_model.encoder.layers.0.mlp.fc1.weight"][0],
           "num_hidden_layers": count_indexed(s, r"text_model\.encoder\.layers\.(\d+)\."),
           "num_attention_heads": _heads(width, shipped["hidden_size"], shipped["num_attention_heads"])}
    if "text_projection.weight" in s:
        cfg["projection_dim"] = s["text_projection.weight"][0]
    return cfg


OUTPUT_FORMS.append(sd_output_form)
