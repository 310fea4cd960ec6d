"""Read any LoRA flavour into one shape: named modules, each able to produce its exact ΔW in float32.

Flavours (formats.md §1.4, §4.2): kohya LoRA / LoCon (1×1, k×k, Tucker ``lora_mid``), LoHa (``hada_*``, optional
Tucker ``hada_t1/t2``), LoKr (``lokr_*``), full (``diff``/``diff_b``), norm (``w_norm``/``b_norm``), DoRA
(``dora_scale``); PEFT adapters (``lora_A``/``lora_B``, ``lora_embedding_A/B``, ``lora_magnitude_vector``, with
``r``/``lora_alpha``/``use_rslora``/``rank_pattern``/``alpha_pattern``/``fan_in_fan_out`` from adapter_config.json);
diffusers LoRA files (``unet.…lora_A.weight``, legacy ``…lora.down.weight`` and ``processor.to_q_lora…``).

Only headers (and the tiny ``alpha`` scalars) are read here; tensors are read when a ΔW is asked for.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field

import torch

from ..errors import StudioError

# suffix → role; longest suffixes first so ".lora_B.bias" wins over ".bias"-like shorter ones
SUFFIX_ROLES = {
    "lora_down.weight": "down", "lora_up.weight": "up", "lora_mid.weight": "mid", "alpha": "alpha",
    "lora_A.weight": "down", "lora_B.weight": "up", "lora_B.bias": "up_bias",
    "lora_embedding_A": "emb_down", "lora_embedding_B": "emb_up",
    "lora_magnitude_vector": "dora", "lora_magnitude_vector.weight": "dora", "dora_scale": "dora",
    "lora.down.weight": "down", "lora.up.weight": "up",
    "lora_linear_layer.down.weight": "down", "lora_linear_layer.up.weight": "up",
    "hada_w1_a": "hada_w1_a", "hada_w1_b": "hada_w1_b", "hada_w2_a": "hada_w2_a", "hada_w2_b": "hada_w2_b",
    "hada_t1": "hada_t1", "hada_t2": "hada_t2",
    "lokr_w1": "lokr_w1", "lokr_w1_a": "lokr_w1_a", "lokr_w1_b": "lokr_w1_b",
    "lokr_w2": "lokr_w2", "lokr_w2_a": "lokr_w2_a", "lokr_w2_b": "lokr_w2_b", "lokr_t2": "lokr_t2",
    "diff": "diff", "diff_b": "diff_b", "w_norm": "w_norm", "b_norm": "b_norm",
}
_SUFFIXES = sorted(SUFFIX_ROLES, key=len, reverse=True)
# diffusers' oldest attention-processor LoRA names: ``attn1.processor.to_q_lora.down.weight``
_LEGACY_PROC = re.compile(r"\.processor\.(to_q|to_k|to_v|to_out)_lora$")
# keys that describe the file rather than a module (ignored, never "unmatched")
_IGNORED = re.compile(r"^(lora_te_text_projection|text_projection)|\.(scale|on_input)$")
PEFT_PREFIX = "base_model.model."
DIFFUSERS_ROOTS = ("unet.", "text_encoder.", "text_encoder_2.", "text_encoder_3.", "transformer.", "prior.")


def _split_key(key: str) -> tuple[str, str] | None:
    for suf in _SUFFIXES:
        if key.endswith("." + suf):
            return key[: -len(suf) - 1], SUFFIX_ROLES[suf]
    return None


def is_lora_key(key: str) -> bool:
    """A LoRA / LyCORIS factor key (``….lora_down.weight``, ``….lora_A.weight``, ``….hada_w1_a`` …)."""
    return _split_key(key) is not None


def normalize_name(name: str) -> str:
    """PEFT ``base_model.model.X`` → ``X``; diffusers legacy processor names → module names."""
    if name.startswith(PEFT_PREFIX):
        name = name[len(PEFT_PREFIX):]
    m = _LEGACY_PROC.search(name)
    if m:
        mod = m[1] if m[1] != "to_out" else "to_out.0"
        name = name[: m.start()] + "." + mod
    return name


@dataclass
class LoraModule:
    name: str                   # normalised module name as the LoRA spells it
    keys: dict[str, str]        # role → key in the LoRA file
    alpha: float | None = None
    scale_override: float | None = None  # PEFT / diffusers: exact scale from the adapter config
    fan_in_fan_out: bool = False
    algo: str = "lora"
    shapes: dict[str, tuple] = field(default_factory=dict)

    # ---- header-only facts -------------------------------------------------------------------
    @property
    def rank(self) -> int | None:
        s = self.shapes
        if "down" in s:
            return s["down"][0]
        if "emb_down" in s:
            return s["emb_down"][0]
        if "hada_w1_b" in s:
            return s["hada_w1_b"][0]
        if "lokr_w1_b" in s:
            return s["lokr_w1_b"][0]
        if "lokr_w2_b" in s:
            return s["lokr_w2_b"][0]
        return None

    @property
    def scale(self) -> float:
        """The module's own multiplier (α/r, PEFT's lora_alpha/r or /√r); strength is applied on top."""
        if self.scale_override is not None:
            return self.scale_override
        if self.algo in ("full", "norm"):
            return 1.0
        r = self.rank
        if r is None or self.alpha is None:
            return 1.0
        return self.alpha / r

    @property
    def has_weight(self) -> bool:
        return any(r in self.keys for r in ("down", "emb_down", "hada_w1_a", "lokr_w1", "lokr_w1_a", "diff", "w_norm",
                                            "replace"))

    @property
    def has_bias(self) -> bool:
        return any(r in self.keys for r in ("diff_b", "b_norm", "up_bias", "replace_b"))

    def delta_shape(self) -> tuple[int, ...] | None:
        """Natural ΔW shape from header shapes (rows first); used to check a target before reading anything."""
        s = self.shapes
        if self.algo in ("lora", "tucker"):
            if "emb_down" in s:
                return (s["emb_down"][1], s["emb_up"][0])  # embedding [num, dim]
            out = s["up"][0]
            if "mid" in s:
                return (out, s["down"][1], *s["mid"][2:])
            shp = (out, *s["down"][1:])
            if self.fan_in_fan_out:
                shp = (shp[1], shp[0], *shp[2:])
            return shp
        if self.algo == "loha":
            if "hada_t1" in s:
                return (s["hada_w1_a"][1], s["hada_w1_b"][1], *s["hada_t1"][2:])
            return (s["hada_w1_a"][0], s["hada_w1_b"][1])
        if self.algo == "lokr":
            a = s["lokr_w1"] if "lokr_w1" in s else (s["lokr_w1_a"][0], s["lokr_w1_b"][1])
            if "lokr_w2" in s:
                b = s["lokr_w2"]
            elif "lokr_t2" in s:
                b = (s["lokr_w2_a"][1], s["lokr_w2_b"][1], *s["lokr_t2"][2:])
            else:
                b = (s["lokr_w2_a"][0], s["lokr_w2_b"][1])
            return (a[0] * b[0], a[1] * b[1], *b[2:])
        if self.algo == "full":
            return s.get("diff")
        if self.algo == "norm":
            return s.get("w_norm")
        if self.algo == "replace":
            return s.get("replace")
        return None

    # ---- tensors --------------------------------------------------------------------------------
    def _t(self, src, role) -> torch.Tensor:
        return src.get(self.keys[role]).to(torch.float32)

    def delta(self, src, target_shape: tuple[int, ...] | None = None, rows: tuple[int, int] | None = None
              ) -> torch.Tensor:
        """ΔW (float32) *including* the module's scale (α/r), excluding the user's strength; shaped like the target.
        ``rows``: only that [start, stop) block of ΔW's rows (a fused module split over several targets)."""
        a = self.algo
        if a in ("lora", "tucker"):
            if "emb_down" in self.keys:  # PEFT embedding: ΔW = (B @ A)ᵀ
                d = (self._t(src, "emb_up") @ self._t(src, "emb_down")).T
            else:
                down, up = self._t(src, "down"), self._t(src, "up")
                if rows is not None and not self.fan_in_fan_out:   # ΔW's rows are up's rows: slice before the product
                    up, rows = up[rows[0]:rows[1]], None
                if "mid" in self.keys:
                    mid = self._t(src, "mid")
                    d = torch.einsum("ij...,pi,jr->pr...", mid, up.flatten(1), down.flatten(1))
                else:
                    d = (up.flatten(1) @ down.flatten(1))
                    if down.dim() > 2:
                        d = d.reshape(up.shape[0], *down.shape[1:])
                    if self.fan_in_fan_out:
                        d = d.T
        elif a == "loha":
            w1 = _factor(self, src, "hada_w1_a", "hada_w1_b", "hada_t1")
            w2 = _factor(self, src, "hada_w2_a", "hada_w2_b", "hada_t2")
            d = w1 * w2
        elif a == "lokr":
            w1 = self._t(src, "lokr_w1") if "lokr_w1" in self.keys else \
                self._t(src, "lokr_w1_a") @ self._t(src, "lokr_w1_b")
            if "lokr_w2" in self.keys:
                w2 = self._t(src, "lokr_w2")
            elif "lokr_t2" in self.keys:
                w2 = torch.einsum("ij...,ip,jr->pr...", self._t(src, "lokr_t2"), self._t(src, "lokr_w2_a"),
                                  self._t(src, "lokr_w2_b"))
            else:
                w2 = self._t(src, "lokr_w2_a") @ self._t(src, "lokr_w2_b")
            if w2.dim() > w1.dim():
                w1 = w1.reshape(*w1.shape, *([1] * (w2.dim() - w1.dim())))
            d = torch.kron(w1, w2)
        elif a == "full":
            d = self._t(src, "diff").clone()
        elif a == "norm":
            d = self._t(src, "w_norm").clone()
        else:  # pragma: no cover
            raise StudioError(f"LoRA module {self.name}: unsupported algorithm {a}")
        if rows is not None:
            d = d[rows[0]:rows[1]]
        s = self.scale
        if s != 1.0:
            d = d * s
        if target_shape is not None and tuple(d.shape) != tuple(target_shape):
            if d.numel() != math.prod(target_shape):
                raise StudioError(f"LoRA module {self.name}: ΔW has shape {tuple(d.shape)}, target is {tuple(target_shape)}",
                                  hint="this LoRA was made for a different model")
            d = d.reshape(target_shape)
        return d

    def bias_delta(self, src) -> torch.Tensor | None:
        if "diff_b" in self.keys:
            return self._t(src, "diff_b").clone()
        if "b_norm" in self.keys:
            return self._t(src, "b_norm").clone()
        if "up_bias" in self.keys:  # PEFT lora_bias: B's bias × scaling
            return self._t(src, "up_bias") * self.scale
        return None

    def magnitude(self, src) -> torch.Tensor | None:
        return self._t(src, "dora") if "dora" in self.keys else None


def _factor(mod: LoraModule, src, ka, kb, kt) -> torch.Tensor:
    if kt in mod.keys:  # Tucker: einsum("i j ..., i p, j r -> p r ...", t, wa, wb)
        return torch.einsum("ij...,ip,jr->pr...", mod._t(src, kt), mod._t(src, ka), mod._t(src, kb))
    return mod._t(src, ka) @ mod._t(src, kb)


def _product(a: tuple, b: tuple, t: tuple | None, names: str) -> tuple[tuple | None, str | None]:
    """The shape of ``a @ b`` (or, with a Tucker core ``t``, of einsum("ij...,ip,jr->pr...", t, a, b)) from the
    factors' header shapes, else None and why they do not multiply (``names``: how the message calls a and b)."""
    na, nb = names.split("/")
    if len(a) != 2 or len(b) != 2:
        return None, f"{na} {a} and {nb} {b} must both be matrices"
    if t is None:
        if a[1] != b[0]:
            return None, f"{na} {a} and {nb} {b} do not multiply (rank {a[1]} vs {b[0]})"
        return (a[0], b[1]), None
    if len(t) < 2 or (t[0], t[1]) != (a[0], b[0]):
        return None, f"Tucker core {t} does not join {na} {a} and {nb} {b} (ranks {a[0]} and {b[0]})"
    return (a[1], b[1], *t[2:]), None


def factor_mismatch(algo: str, s: dict[str, tuple]) -> str | None:
    """Why a module's factors (header shapes by role) cannot make a ΔW, or None when they can: checked when a LoRA is
    read, so a damaged file or one with mixed-up ranks is named there instead of failing in a matmul later."""
    if algo in ("lora", "tucker"):
        if "emb_down" in s or "emb_up" in s:
            if "emb_down" not in s or "emb_up" not in s:
                return "an embedding LoRA needs both lora_embedding_A and lora_embedding_B"
            return _product(s["emb_up"], s["emb_down"], None, "lora_embedding_B/lora_embedding_A")[1]
        if "up" not in s or "down" not in s:
            return "a LoRA module needs both an up and a down matrix"
        up, down = s["up"], s["down"]
        if len(up) < 2 or len(down) < 2 or any(d != 1 for d in up[2:]):
            return f"up {up} and down {down} are not LoRA factors (up: out × rank[×1×1], down: rank × in[×k×k])"
        rank_up = math.prod(up[1:])
        if "mid" in s:
            mid = s["mid"]
            if len(mid) < 2 or (mid[0], mid[1]) != (rank_up, down[0]) or any(d != 1 for d in down[2:]):
                return f"mid {mid} does not join up {up} and down {down}"
        elif rank_up != down[0]:
            return f"up {up} and down {down} do not multiply (rank {rank_up} vs {down[0]})"
        return None
    if algo == "loha":
        missing = [r for r in ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b") if r not in s]
        if missing:
            return f"LoHa factors missing: {', '.join(missing)}"
        w1, why = _product(s["hada_w1_a"], s["hada_w1_b"], s.get("hada_t1"), "hada_w1_a/hada_w1_b")
        w2, why2 = _product(s["hada_w2_a"], s["hada_w2_b"], s.get("hada_t2"), "hada_w2_a/hada_w2_b")
        if why or why2:
            return why or why2
        return None if w1 == w2 else f"the two Hadamard factors have shapes {w1} and {w2}"
    if algo == "lokr":
        if "lokr_w1" not in s and not {"lokr_w1_a", "lokr_w1_b"} <= set(s):
            return "LoKr needs lokr_w1, or lokr_w1_a and lokr_w1_b"
        if "lokr_w2" not in s and not {"lokr_w2_a", "lokr_w2_b"} <= set(s):
            return "LoKr needs lokr_w2, or lokr_w2_a and lokr_w2_b"
        why = None
        if "lokr_w1" not in s:
            why = _product(s["lokr_w1_a"], s["lokr_w1_b"], None, "lokr_w1_a/lokr_w1_b")[1]
        if why is None and "lokr_w2" not in s:
            why = _product(s["lokr_w2_a"], s["lokr_w2_b"], s.get("lokr_t2"), "lokr_w2_a/lokr_w2_b")[1]
        if why is None and len(s.get("lokr_w1", (0, 0))) != 2:
            why = f"lokr_w1 {s['lokr_w1']} must be a matrix"
        return why
    return None


@dataclass
class LoraNetwork:
    """A parsed LoRA file / adapter folder."""

    source: object
    modules: dict[str, LoraModule]
    style: str                       # "kohya", "peft", "diffusers"
    ignored: list[str] = field(default_factory=list)

    @property
    def ref(self) -> str:
        return getattr(self.source, "ref", "<lora>")

    def algos(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for m in self.modules.values():
            name = m.algo + ("+dora" if "dora" in m.keys else "")
            out[name] = out.get(name, 0) + 1
        return out

    @property
    def flavour(self) -> str:
        a = self.algos()
        return f"{self.style} " + ", ".join(f"{k}×{v}" for k, v in sorted(a.items()))

    def is_plain_lora(self) -> bool:
        return all(m.algo == "lora" and "replace" not in m.keys and "dora" not in m.keys and "emb_down" not in m.keys and not m.has_bias
                   and not m.fan_in_fan_out for m in self.modules.values())


def _peft_scale(cfg: dict, module: str, rank: int) -> float:
    r = cfg.get("r", rank) or rank
    alpha = cfg.get("lora_alpha", r)
    rp, ap = cfg.get("rank_pattern") or {}, cfg.get("alpha_pattern") or {}
    for pat, val in rp.items():  # peft utils/other.py get_pattern_key: re.match(rf"(.*\.)?({key})$", name)
        if re.match(rf"(.*\.)?({pat})$", module):
            r = val
            break
    for pat, val in ap.items():
        if re.match(rf"(.*\.)?({pat})$", module):
            alpha = val
            break
    return alpha / math.sqrt(r) if cfg.get("use_rslora") else alpha / r


def _diffusers_meta(metadata: dict) -> dict[str, dict]:
    raw = metadata.get("lora_adapter_metadata") if metadata else None
    if not raw:
        return {}
    try:
        flat = json.loads(raw)
    except (TypeError, json.JSONDecodeError):
        return {}
    out: dict[str, dict] = {}
    for k, v in flat.items():
        root, _, field_ = k.partition(".")
        if field_:
            out.setdefault(root, {})[field_] = v
    return out


def read_lora(src) -> LoraNetwork:
    """Parse a LoRA TensorSource (kohya / LyCORIS file, PEFT folder, diffusers LoRA file)."""
    groups: dict[str, dict[str, str]] = {}
    ignored: list[str] = []
    for key in src.keys():
        hit = _split_key(key)
        if hit is None and key.startswith(PEFT_PREFIX) and key.endswith((".weight", ".bias")):
            # PEFT saves whole tensors too: embedding layers (``….base_layer.weight``) and modules_to_save
            mod, _, last = key.rpartition(".")
            mod = re.sub(r"\.(base_layer|modules_to_save|original_module)$", "", mod)
            hit = (mod, "replace" if last == "weight" else "replace_b")
        if hit is None:
            if _IGNORED.search(key):
                ignored.append(key)
                continue
            raise StudioError(f"not a LoRA tensor name: {key!r}", where=src.ref,
                              hint="expected kohya (lora_unet_…/lora_te…), LyCORIS, PEFT (lora_A/lora_B) or diffusers LoRA keys")
        name, role = hit
        groups.setdefault(normalize_name(name), {})[role] = key
    if not groups:
        raise StudioError("no LoRA modules found", where=src.ref)
    names = list(groups)
    if all(n.startswith("lora_") for n in names):
        style = "kohya"
    elif src.kind == "peft-lora" or any(k.startswith(PEFT_PREFIX) for k in src.keys()):
        style = "peft"
    elif all(n.startswith(DIFFUSERS_ROOTS) for n in names):
        style = "diffusers"
    else:
        style = "peft"
    cfg = src.config if (src.kind == "peft-lora" and isinstance(src.config, dict)) else None
    dmeta = _diffusers_meta(src.metadata) if style == "diffusers" else {}
    modules: dict[str, LoraModule] = {}
    for name, roles in groups.items():
        shapes = {r: tuple(src.info(k).shape) for r, k in roles.items() if r != "alpha"}
        if any(r.startswith("hada_") for r in roles):
            algo = "loha"
        elif any(r.startswith("lokr_") for r in roles):
            algo = "lokr"
        elif "mid" in roles:
            algo = "tucker"
        elif "down" in roles or "emb_down" in roles:
            algo = "lora"
        elif "diff" in roles or "diff_b" in roles:
            algo = "full"
        elif "w_norm" in roles or "b_norm" in roles:
            algo = "norm"
        elif "replace" in roles or "replace_b" in roles:
            algo = "replace"
        else:
            raise StudioError(f"LoRA module {name!r} has only {sorted(roles)} (incomplete)", where=src.ref)
        if algo in ("lora", "tucker") and ("down" in roles) != ("up" in roles):
            raise StudioError(f"LoRA module {name!r} has a down without an up matrix (or the reverse)", where=src.ref)
        why = factor_mismatch(algo, shapes)
        if why:
            raise StudioError(f"LoRA module {name!r}: {why}", where=src.ref,
                              hint="the LoRA file is damaged, or its factors come from different modules or ranks")
        alpha = None
        if "alpha" in roles:
            if src.info(roles["alpha"]).numel != 1:
                raise StudioError(f"LoRA module {name!r}: alpha has shape {tuple(src.info(roles['alpha']).shape)}, "
                                  "not one number", where=src.ref)
            alpha = float(src.get(roles["alpha"]).float().reshape(-1)[0])  # bf16 scalars: .float() first
        mod = LoraModule(name=name, keys=roles, alpha=alpha, algo=algo, shapes=shapes)
        if "dora" in roles and mod.has_weight:
            ds, n = mod.delta_shape() or (), src.info(roles["dora"]).numel
            if len(ds) >= 2 and n not in ds[:2]:
                raise StudioError(f"LoRA module {name!r}: a DoRA magnitude of {n} values fits neither the rows nor the "
                                  f"columns of its ΔW {tuple(ds)}", where=src.ref)
        if cfg is not None:
            mod.scale_override = _peft_scale(cfg, name, mod.rank or 1)
            mod.fan_in_fan_out = bool(cfg.get("fan_in_fan_out")) and "emb_down" not in roles
        elif style == "diffusers" and alpha is None:
            root = name.split(".", 1)[0]
            if root in dmeta and mod.rank:
                mod.scale_override = _peft_scale(dmeta[root], name.split(".", 1)[1], mod.rank)
        modules[name] = mod
    return LoraNetwork(source=src, modules=modules, style=style, ignored=ignored)


def detect_lora_family(net: LoraNetwork) -> str | None:
    """sd1 / sd2 / sdxl / sd3 / flux from names and widths, or None when the LoRA does not say (e.g. LLM adapters)."""
    names = list(net.modules)
    if any(n.startswith(("lora_unet_joint_blocks_", "diffusion_model.joint_blocks.")) for n in names):
        return "sd3"        # kohya SD3 also names CLIP-L/G/T5 lora_te1_/te2_/te3_, as Flux and SDXL do in part
    if any(n.startswith(("lora_te3_", "lora_unet_double_blocks_", "lora_unet_single_blocks_",
                         "transformer.single_transformer_blocks.")) for n in names):
        return "flux"
    if any(n.startswith(("lora_te1_", "lora_te2_", "text_encoder_2.")) for n in names):
        return "sdxl"
    for n, m in net.modules.items():
        if n.endswith(("attn2_to_k", "attn2.to_k")) and n.startswith(("lora_unet_", "unet.")):
            width = (m.delta_shape() or (0, 0))[1]
            fam = {768: "sd1", 1024: "sd2", 2048: "sdxl"}.get(width)
            if fam:
                return fam
    if any(n.startswith("lora_unet_input_blocks_7_1_") or n.startswith("lora_unet_middle_block_1_transformer_blocks_9")
           for n in names):
        return "sdxl"
    if any(n.startswith(("lora_unet_down_blocks_", "lora_unet_up_blocks_", "lora_te_text_model_")) for n in names):
        return "sd"  # SD1 or SD2 — widths decide when the target is known
    return None
