"""Image previews of diffusion merges: SD1.x, SD2.x (ε and v), SDXL and Flux.1, from single files (ldm / BFL names)
or diffusers pipeline folders, through diffusers' own pipelines.

The pipeline's modules are built from configs with no weights (meta device, then empty memory in the preview's
dtype on its device) and take the live merger's merged state in:

* a parameter that diffusers' converter returns as the very tensor it was given (a rename), or as that tensor merely
  reshaped (the VAE's 1×1-conv attention ↔ Linear), is **bound**: ``LiveMerger.bind`` makes the parameter the merged
  tensor's storage, so each re-merge writes straight into the module;
* a parameter the converter computes (OpenCLIP's fused ``in_proj`` split into q/k/v, the transposed text projection,
  Flux's fused qkv / linear1 split, its swapped final modulation) is **converted**: filled from the converter's
  output, and :meth:`DiffusionPreviewer.refresh` re-runs the converter after a re-merge with only the changed inputs
  real (the others are meta tensors, which cost nothing), copying the outputs that became real.

The converters are diffusers' own (``convert_ldm_unet_checkpoint``, ``convert_ldm_vae_checkpoint``,
``convert_ldm_clip_checkpoint``, ``convert_open_clip_checkpoint``, ``convert_flux_transformer_checkpoint_to_diffusers``,
``convert_sd3_t5_checkpoint_to_diffusers``): run once on the merged state, they tell which outputs are the same tensor
object as an input. Diffusers folders map by prefix (``unet.`` → the UNet) and bind entirely.

Configs come from the model's own folder, a ``config`` folder the caller names, or the shipped
``assets/configs/<family>`` (:mod:`studio.preview.sd_configs`). What a single file lacks — Flux's T5 encoder and
tokenizer, usually its CLIP-L and VAE — comes from a ``components`` folder (a diffusers pipeline folder or hub id),
or from a Flux pipeline in the local Hugging Face cache; nothing is fetched from the network.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from ..devices import TRIM_EVERY, return_freed_memory
from ..engine.live import LiveMerger
from ..errors import StudioError
from ..evaluate.common import result
from ..layout.sd import detect_family, diffusion_family
from ..layout.sd_keys import UNET_PREFIX
from ..sd.infotext import format_infotext
from ..sources import TensorSource, open_source
from ..sources.resolve import resolve_path
from .base import PREVIEWERS, Previewer
from .sd_configs import clip_tokenizer, component_config, prediction_type, read_json, shipped_folder

SUPPORTED = ("sd1", "sd2", "sdxl", "flux-dev", "flux-schnell")
PIPELINES = {"sd1": "StableDiffusionPipeline", "sd2": "StableDiffusionPipeline", "sdxl": "StableDiffusionXLPipeline",
             "flux-dev": "FluxPipeline", "flux-schnell": "FluxPipeline"}
# sampler name → (diffusers scheduler class, settings); "default" is the checkpoint's own scheduler
SAMPLERS = {
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}),
    "dpm++_2m": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "dpm++_2m_karras": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2,
                                                        "use_karras_sigmas": True}),
    "ddim": ("DDIMScheduler", {}),
}
FLOW_SAMPLERS = {"euler": ("FlowMatchEulerDiscreteScheduler", {})}
GUIDANCE = {"sd1": 7.5, "sd2": 7.5, "sdxl": 5.0, "flux-dev": 3.5, "flux-schnell": 0.0}
FLUX_REPOS = ("black-forest-labs/FLUX.1-dev", "black-forest-labs/FLUX.1-schnell")
T5_MAX_LENGTH = {"flux-dev": 512, "flux-schnell": 256}


@dataclass
class ImageRequest:
    """What to draw: one image per prompt × seed, in that order. ``None`` settings take the model's defaults (size
    from its config: 512 SD1, 768 SD2, 1024 SDXL/Flux; guidance 7.5 SD1/SD2, 5 SDXL, 3.5 Flux dev, 0 schnell).
    ``sampler``: "default" (the checkpoint's scheduler) or a name in :data:`SAMPLERS` (Flux: "euler" only); the
    checkpoint's prediction type (ε / v) is kept whichever is chosen. Flux ignores the negative prompt."""

    prompts: list[str] = dataclasses.field(default_factory=lambda: ["a photograph of an astronaut riding a horse"])
    negative_prompt: str = ""
    seeds: list[int] = dataclasses.field(default_factory=lambda: [0])
    steps: int = 20
    guidance: float | None = None
    width: int | None = None
    height: int | None = None
    sampler: str = "euler"

    def __post_init__(self):
        self.prompts = [self.prompts] if isinstance(self.prompts, str) else [str(p) for p in self.prompts]
        self.seeds = [int(self.seeds)] if isinstance(self.seeds, int) else [int(s) for s in self.seeds]
        if not self.prompts or not self.seeds:
            raise StudioError("an image request needs at least one prompt and one seed")
        if int(self.steps) < 1:
            raise StudioError(f"steps must be at least 1 (got {self.steps})")


# ------------------------------------------------------------------------------------------------- modules
def materialise(module: torch.nn.Module, dtype: torch.dtype, device: torch.device) -> torch.nn.Module:
    """Give a module built on the meta device real, uninitialised parameters in ``dtype`` on ``device`` (tied
    parameters stay tied; integer buffers keep their dtype; modules the class keeps in float32 under fp16 do)."""
    keep32 = set(getattr(module, "_keep_in_fp32_modules", None) or []) if dtype == torch.float16 else set()
    new: dict[int, torch.nn.Parameter] = {}
    for mname, mod in module.named_modules():
        in32 = bool(keep32) and any(part in keep32 for part in mname.split("."))
        for name, p in list(mod._parameters.items()):
            if p is None:
                continue
            if id(p) not in new:
                dt = (torch.float32 if in32 else dtype) if p.dtype.is_floating_point else p.dtype
                new[id(p)] = torch.nn.Parameter(torch.empty(p.shape, dtype=dt, device=device), requires_grad=False)
            mod._parameters[name] = new[id(p)]
        for name, b in list(mod._buffers.items()):
            if b is not None:
                mod._buffers[name] = b.to(device=device, dtype=dtype if b.is_floating_point() else b.dtype)
    return module.eval()


def build_model(cls, config: dict) -> torch.nn.Module:
    """A diffusers or transformers model from its config dict, its parameters on the meta device (no memory, no
    initialisation); :func:`materialise` gives it memory."""
    from accelerate import init_empty_weights  # optional and heavy: only when a preview pipeline is built

    with init_empty_weights():  # parameters on the meta device; buffers (position ids) stay real
        if hasattr(cls, "from_config"):
            return cls.from_config({k: v for k, v in config.items() if not k.startswith("_")})
        model = cls(cls.config_class.from_dict(config))
    model.tie_weights()  # empty init skips transformers' tying (T5's shared ↔ encoder.embed_tokens)
    return model


def _strip_text_model(module: torch.nn.Module, state: dict) -> dict:
    """transformers ≥ 5.6 flattened CLIPTextModel (no ``text_model.`` level); CLIPTextModelWithProjection kept it."""
    if hasattr(module, "text_model"):
        return state
    return {k.removeprefix("text_model."): v for k, v in state.items()}


def _prefix_converter(prefix: str, module: torch.nn.Module) -> Callable[[dict], dict]:
    def convert(state: dict) -> dict:
        return _strip_text_model(module, {k[len(prefix):]: v for k, v in state.items()})
    return convert


@dataclass
class Component:
    """One pipeline module and where its weights come from: the merge (keys chosen by ``select``, mapped to the
    module's names by ``convert``) or, when ``external`` is set, a model of its own that is loaded, not merged."""

    name: str
    module: torch.nn.Module
    select: Callable[[str], bool] | None = None
    convert: Callable[[dict], dict] | None = None
    external: TensorSource | None = None
    keys: list[str] = dataclasses.field(default_factory=list)
    bound: dict[str, str] = dataclasses.field(default_factory=dict)       # parameter name → merged key
    converted: list[str] = dataclasses.field(default_factory=list)        # parameter names filled by conversion
    meta: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)  # merged key → meta twin (refresh)

    def params(self) -> dict[str, torch.nn.Parameter]:
        return dict(self.module.named_parameters())


def _reshape_of(out: torch.Tensor, by_id: dict, by_ptr: dict, state: dict) -> str | None:
    """The merged key whose tensor ``out`` is a contiguous reshape of (a view of it with all its elements — the VAE's
    ``[C, C, 1, 1]`` → ``[C, C]``), or None. Views of meta tensors are recognised by their base."""
    if not out.is_contiguous():
        return None
    key = by_id.get(id(out._base)) if out._base is not None else None
    if key is None and not out.is_meta:
        key = by_ptr.get((out.data_ptr(), out.numel()))
    return key if key is not None and state[key].is_contiguous() and state[key].numel() == out.numel() else None


def _target(param: torch.nn.Parameter, merged: torch.Tensor) -> torch.Tensor:
    """What ``LiveMerger.bind`` gets for a parameter: itself, or a view of it in the merged tensor's shape."""
    return param if tuple(param.shape) == tuple(merged.shape) else param.view(merged.shape)


# ------------------------------------------------------------------------------------------------- the previewer
class DiffusionPreviewer(Previewer):
    """SD1.x / SD2.x / SDXL / Flux.1 images of the live merge (see the module docstring).

    ``reference``: the merge's reference model (its naming is the merged state's). ``config``: a diffusers config
    folder for single files (default: the model's own folder, else the shipped ``assets/configs/<family>``).
    ``components``: a diffusers pipeline folder (or hub id) supplying what the model lacks (Flux's T5, CLIP-L, VAE).
    ``prediction_type``: "epsilon" or "v" when the checkpoint's metadata does not say (SD2 512 vs 768-v).

    Call :meth:`attach` with the live merger, then :meth:`refresh` with ``live.update(...)``'s changed keys after each
    re-merge, and :meth:`render` / :meth:`render_source`. Without a merger, :meth:`load` puts one model's own weights in.
    """

    kind = "image"
    metric = "image"
    Request = ImageRequest

    def preview_request(self) -> ImageRequest:
        # on a CPU a full-size, 20-step image takes minutes: a slider's effect shows at half the native size (SD1
        # 256 px, SDXL 512 px) in 8 steps
        if self.device.type != "cpu":
            return ImageRequest()
        step = self.pipe.vae_scale_factor * (2 if self.flux else 1)
        native = self.native_size()
        side = max(step, native // 2 // step * step)
        return ImageRequest(steps=8, width=side, height=side)

    def native_size(self) -> int:
        """The side in pixels the denoiser was trained at (its config's sample size × the VAE's scale)."""
        cfg = self.pipe.transformer.config if self.flux else self.pipe.unet.config
        size = getattr(cfg, "sample_size", None) or (128 if self.flux else 64)
        size = size[0] if isinstance(size, (list, tuple)) else size
        return int(size) * self.pipe.vae_scale_factor

    def __init__(self, reference: TensorSource, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32, config: str | Path | None = None,
                 components: str | Path | None = None, prediction_type: str | None = None):
        super().__init__(reference, device, dtype)
        self.family = preview_family(reference)
        self.flux = self.family.startswith("flux")
        keys = reference.keys()
        self.diffusers_layout = reference.kind == "diffusers" or not any(
            k.startswith(UNET_PREFIX) or k.startswith(("double_blocks.", "single_blocks.")) for k in keys)
        self.folder = self._config_folder(config)
        self.components_folder = Path(resolve_path(str(components))) if components is not None else None
        self._cached_flux: list[Path] | None = None  # Flux pipelines in the local HF cache, looked up once
        self.prediction_type = self._prediction_type(prediction_type)
        self.components = self._build_components(keys)
        self.pipe = self._pipeline()
        self.bound_share = 0.0

    # -------------------------------------------------------------------------------------------- configs
    def _config_folder(self, config) -> Path:
        if config is not None:
            folder = Path(config)
            if not (folder / "model_index.json").is_file():
                raise StudioError("not a diffusers config folder (no model_index.json)", where=str(folder),
                                  hint="give a diffusers pipeline folder of this model family")
            return folder
        if self.diffusers_layout and self.reference.folder is not None and \
                (Path(self.reference.folder) / "model_index.json").is_file():
            return Path(self.reference.folder)
        if self.diffusers_layout and self.reference.path is not None and \
                (Path(self.reference.path) / "model_index.json").is_file():
            return Path(self.reference.path)
        return shipped_folder(self.family)

    def _config(self, component: str) -> dict:
        for folder in (self.folder, self.components_folder, shipped_folder(self.family)):
            if folder is not None:
                cfg = component_config(folder, component)
                if cfg is not None:
                    return cfg
        raise StudioError(f"no {component} config for this {self.family} model", where=str(self.folder),
                          hint=f"give config=<a diffusers {self.family} pipeline folder>")

    def _prediction_type(self, explicit: str | None) -> str | None:
        return prediction_type(self.reference, explicit)

    # -------------------------------------------------------------------------------------------- building
    def _build_components(self, keys: list[str]) -> list[Component]:
        from diffusers import AutoencoderKL, FluxTransformer2DModel, UNet2DConditionModel  # optional and heavy
        from transformers import CLIPTextModel, CLIPTextModelWithProjection, T5EncoderModel  # optional and heavy

        classes = {"unet": UNet2DConditionModel, "vae": AutoencoderKL, "transformer": FluxTransformer2DModel,
                   "text_encoder": CLIPTextModel,
                   "text_encoder_2": T5EncoderModel if self.flux else CLIPTextModelWithProjection}
        names = ["transformer" if self.flux else "unet", "vae", "text_encoder"]
        if self.flux or self.family == "sdxl":
            names.append("text_encoder_2")
        sources = self._merged_sources(keys)
        plan, missing = [], []  # every missing piece is named before anything is built
        for name in names:
            select, make_convert = sources.get(name, (None, None))
            if select is None:
                folder = self._external_folder(name)
                if folder is None:
                    missing.append(name)
                    continue
                plan.append((name, select, make_convert, folder, component_config(folder, name)))
            elif name in ("unet", "transformer") and self.reference.kind == "diffusers-component" and \
                    (self.reference.config or {}).get("_class_name"):
                plan.append((name, select, make_convert, None, self.reference.config))  # a lone UNet's own config
            else:
                plan.append((name, select, make_convert, None, self._config(name)))
        if self.flux and self._t5_tokenizer_folder() is None:
            missing.append("tokenizer_2")
        if missing:
            raise _missing(self.family, missing, self.reference.ref, self.components_folder)
        out = []
        for name, select, make_convert, folder, config in plan:
            module = build_model(classes[name], config)
            comp = Component(name, module, select, make_convert(module) if make_convert else None)
            if select is not None:
                self._check_fit(comp, keys)
            materialise(module, self.dtype, self.device)
            if folder is not None:
                comp.external = open_source(str(folder / name))
                self._load_external(comp)
            out.append(comp)
        return out

    def _check_fit(self, comp: Component, keys: list[str]) -> None:
        """Convert the reference's headers (meta tensors: no memory, no reading) and compare with the module built
        from the config, so a config that does not fit says so before any memory is spent."""
        sub = {}
        for k in keys:
            if comp.select(k):
                info = self.reference.info(k)
                sub[k] = torch.empty(info.shape, dtype=info.dtype, device="meta")
        try:
            converted = comp.convert(sub)
        except (KeyError, ValueError, RuntimeError, IndexError) as e:
            raise StudioError(f"the {comp.name} weights do not convert to the {self.family} layout ({e!r:.120})",
                              where=self.reference.ref, hint="check the model is a complete checkpoint of this "
                              "family, or give config=<a diffusers folder of it>") from None
        for name, p in comp.module.named_parameters():
            v = converted.get(name)
            if v is None:
                continue  # reported by attach, which knows the merged state
            if tuple(v.shape) != tuple(p.shape):
                shipped = self.folder == shipped_folder(self.family)
                raise StudioError(f"{comp.name}.{name} has shape {tuple(v.shape)} in the model, "
                                  f"{tuple(p.shape)} in the {'shipped ' if shipped else ''}{self.family} config "
                                  f"({self.folder})", where=self.reference.ref,
                                  hint="give config=<a diffusers pipeline folder with this model's configs> "
                                       "(model_index.json, unet/ or transformer/, vae/, text_encoder/ …)")

    def _merged_sources(self, keys: list[str]) -> dict[str, tuple]:
        """component → (which merged keys feed it, converter factory) for the components the merge holds."""
        from diffusers.loaders import single_file_utils as sfu  # optional and heavy: diffusers' own converters

        have = lambda p: any(k.startswith(p) for k in keys)  # noqa: E731
        found: dict[str, tuple] = {}
        if self.diffusers_layout:
            bare = not any("." in k and k.split(".", 1)[0] in ("unet", "transformer", "vae", "text_encoder",
                                                                  "text_encoder_2") for k in keys)
            if bare:  # a lone UNet / transformer folder: everything else comes from components
                name = "transformer" if self.flux else "unet"
                found[name] = (lambda k: True, lambda m: _prefix_converter("", m))
                return found
            for name in ("unet", "transformer", "vae", "text_encoder", "text_encoder_2"):
                p = name + "."
                if have(p):
                    found[name] = (lambda k, p=p: k.startswith(p), lambda m, p=p: _prefix_converter(p, m))
            return found
        fam = self.family
        if self.flux:
            other = ("vae.", "text_encoders.")
            found["transformer"] = (lambda k: not k.startswith(other),
                                    lambda m: lambda sd: sfu.convert_flux_transformer_checkpoint_to_diffusers(dict(sd)))
            if have("vae."):
                found["vae"] = (lambda k: k.startswith("vae."),
                                lambda m: lambda sd: sfu.convert_ldm_vae_checkpoint(sd, dict(m.config)))
            clip_p, t5_p = "text_encoders.clip_l.transformer.", "text_encoders.t5xxl.transformer."
            if have(clip_p):
                found["text_encoder"] = (lambda k: k.startswith(clip_p), lambda m: lambda sd: _strip_text_model(
                    m, sfu.convert_ldm_clip_checkpoint(sd, remove_prefix=clip_p)))
            if have(t5_p):
                found["text_encoder_2"] = (lambda k: k.startswith(t5_p),
                                           lambda m: sfu.convert_sd3_t5_checkpoint_to_diffusers)
            return found
        if have(UNET_PREFIX):
            found["unet"] = (lambda k: k.startswith(UNET_PREFIX),
                             lambda m: lambda sd: sfu.convert_ldm_unet_checkpoint(sd, dict(m.config)))
        if have("first_stage_model."):
            found["vae"] = (lambda k: k.startswith("first_stage_model."),
                            lambda m: lambda sd: sfu.convert_ldm_vae_checkpoint(sd, dict(m.config)))
        clip = {"sd1": "cond_stage_model.transformer.", "sdxl": "conditioner.embedders.0.transformer."}.get(fam)
        if clip and have(clip):
            found["text_encoder"] = (lambda k: k.startswith(clip),
                                     lambda m: lambda sd: _strip_text_model(m, sfu.convert_ldm_clip_checkpoint(sd)))
        openclip = {"sd2": ("text_encoder", "cond_stage_model.model."),
                    "sdxl": ("text_encoder_2", "conditioner.embedders.1.model.")}.get(fam)
        if openclip and have(openclip[1]):
            name, p = openclip
            found[name] = (lambda k: k.startswith(p), lambda m: lambda sd: _strip_text_model(
                m, sfu.convert_open_clip_checkpoint(m, sd, prefix=p)))
        return found

    def _external_folder(self, name: str) -> Path | None:
        """The folder whose ``<name>/`` supplies a component the merge lacks (None when no folder has it)."""
        candidates = [self.components_folder] if self.components_folder is not None else []
        if self.diffusers_layout and self.folder != shipped_folder(self.family):
            candidates.append(self.folder)
        if self.flux and self.components_folder is None:
            candidates += self._flux_in_cache()
        for folder in candidates:
            if folder is not None and component_config(folder, name) is not None and \
                    _has_weights(Path(folder) / name):
                return Path(folder)
        return None

    def _flux_in_cache(self) -> list[Path]:
        if self._cached_flux is None:
            self._cached_flux = _cached_flux_folders()
        return self._cached_flux

    def _tokenizer_folder(self, name: str) -> Path | None:
        for folder in (self.folder, self.components_folder):
            if folder is not None and (Path(folder) / name).is_dir():
                return Path(folder) / name
        return None

    def _t5_tokenizer_folder(self) -> Path | None:
        folders = [f for f in (self.folder, self.components_folder) if f is not None]
        if self.components_folder is None:
            folders += self._flux_in_cache()
        for folder in folders:
            tok = Path(folder) / "tokenizer_2"
            if tok.is_dir() and any(tok.iterdir()):
                return tok
        return None

    def _t5_tokenizer(self):
        from transformers import AutoTokenizer  # optional and heavy: only for Flux

        return AutoTokenizer.from_pretrained(str(self._t5_tokenizer_folder()), local_files_only=True)

    def _pipeline(self):
        import diffusers  # optional and heavy: the pipelines themselves

        mods = {c.name: c.module for c in self.components}
        shipped = shipped_folder(self.family)
        tok = clip_tokenizer(self._tokenizer_folder("tokenizer"), shipped / "tokenizer")
        scheduler = self.scheduler("default")
        cls = getattr(diffusers, PIPELINES[self.family])
        if self.flux:
            pipe = cls(scheduler=scheduler, vae=mods["vae"], text_encoder=mods["text_encoder"], tokenizer=tok,
                       text_encoder_2=mods["text_encoder_2"], tokenizer_2=self._t5_tokenizer(),
                       transformer=mods["transformer"])
        elif self.family == "sdxl":
            tok2 = clip_tokenizer(self._tokenizer_folder("tokenizer_2"), shipped / "tokenizer_2")
            index = read_json(self.folder / "model_index.json")
            pipe = cls(vae=mods["vae"], text_encoder=mods["text_encoder"], text_encoder_2=mods["text_encoder_2"],
                       tokenizer=tok, tokenizer_2=tok2, unet=mods["unet"], scheduler=scheduler,
                       force_zeros_for_empty_prompt=index.get("force_zeros_for_empty_prompt", True),
                       add_watermarker=False)
        else:
            pipe = cls(vae=mods["vae"], text_encoder=mods["text_encoder"], tokenizer=tok, unet=mods["unet"],
                       scheduler=scheduler, safety_checker=None, feature_extractor=None,
                       requires_safety_checker=False)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def scheduler(self, sampler: str):
        """A fresh diffusers scheduler for ``sampler`` on this checkpoint's noise schedule and prediction type."""
        import diffusers  # optional and heavy: the schedulers

        base = self._config("scheduler")
        table = FLOW_SAMPLERS if self.flux else SAMPLERS
        if sampler == "default":
            cls_name, settings = base.get("_class_name", "EulerDiscreteScheduler"), {}
        elif sampler in table:
            cls_name, settings = table[sampler]
        else:
            raise StudioError(f"unknown sampler {sampler!r} for {self.family}",
                              hint=f"use one of: default, {', '.join(table)}")
        config = {k: v for k, v in base.items() if not k.startswith("_")}
        config.update(settings)
        if self.prediction_type is not None and not self.flux:
            config["prediction_type"] = self.prediction_type
        return getattr(diffusers, cls_name).from_config(config)

    # -------------------------------------------------------------------------------------------- the merge
    def classify(self, comp: Component, state: dict[str, torch.Tensor]):
        """Run ``comp``'s converter on ``state`` (merged tensors, or meta tensors of the same shapes) and sort the
        module's parameters: → (bound: parameter name → merged key, converted: parameter name → value, missing)."""
        sub = {k: state[k] for k in state if comp.select(k)}
        by_id = {id(v): k for k, v in sub.items()}
        by_ptr = {(v.data_ptr(), v.numel()): k for k, v in sub.items() if not v.is_meta}
        out = comp.convert(sub)
        bound, converted, missing, used = {}, {}, [], set()
        for name, p in comp.module.named_parameters():
            v = out.get(name)
            if v is None:
                missing.append(f"{comp.name}.{name}")
                continue
            if tuple(v.shape) != tuple(p.shape):
                raise StudioError(f"{comp.name}.{name}: the merge gives shape {tuple(v.shape)}, the pipeline's "
                                  f"config wants {tuple(p.shape)}", where=self.reference.ref,
                                  hint=f"the {self.family} config does not fit this model: give config=<its "
                                       "diffusers folder>")
            key = by_id.get(id(v)) or _reshape_of(v, by_id, by_ptr, sub)
            if key is not None and key not in used:
                bound[name] = key
                used.add(key)
            else:
                converted[name] = v
        return bound, converted, missing

    def attach(self, live: LiveMerger) -> None:
        if live.out_dtype != self.dtype or live.device != self.device:
            raise StudioError(f"the live merger keeps its state in {live.out_dtype} on {live.device}, the preview "
                              f"runs in {self.dtype} on {self.device}",
                              hint="create the LiveMerger with out_dtype and device equal to the previewer's")
        self.live = live
        state = live.state
        bound_n = total_n = 0
        for comp in self.components:
            if comp.select is None:
                continue
            comp.keys = [k for k in state if comp.select(k)]
            bound, converted, missing = self.classify(comp, state)
            if missing:
                raise StudioError(f"the merged model lacks {len(missing)} tensors the {self.family} pipeline needs "
                                  f"(e.g. {missing[0]})", where=self.reference.ref,
                                  hint="check that every input is a complete checkpoint of this family")
            params = comp.params()
            with torch.no_grad():
                for name, v in converted.items():
                    params[name].copy_(v)
            comp.bound, comp.converted = bound, list(converted)
            del converted  # no reference to a merged tensor is left here: each is freed as it is bound
            freed = 0
            for name, key in bound.items():  # one at a time, so the merger's own copy goes as its target fills
                freed += state[key].nbytes
                live.bind({key: _target(params[name], state[key])})
                if freed > TRIM_EVERY:
                    freed = return_freed_memory()
            comp.meta = {k: torch.empty(state[k].shape, dtype=state[k].dtype, device="meta")
                         for k in comp.keys} if comp.converted else {}
            total_n += sum(p.numel() for p in params.values())
            bound_n += sum(params[n].numel() for n in bound)
        return_freed_memory()
        self.bound_share = bound_n / max(total_n, 1)

    def refresh(self, changed: list[str]) -> None:
        """After ``live.update`` re-merged ``changed``: re-convert what depends on them; re-bind any merged tensor
        the merger replaced instead of writing in place."""
        live = self._need_live()
        changed = set(changed)
        for comp in self.components:
            if comp.select is None or not changed.intersection(comp.keys):
                continue
            params = comp.params()
            with torch.no_grad():
                for name, key in comp.bound.items():
                    if key in changed and not _same_memory(live.state[key], params[name]):
                        live.bind({key: _target(params[name], live.state[key])})
                if not comp.converted:
                    continue
                sub = {k: live.state[k] if k in changed else comp.meta[k] for k in comp.keys}
                try:
                    out = comp.convert(sub)
                except (RuntimeError, NotImplementedError):  # an output mixing changed and unchanged inputs
                    out = comp.convert({k: live.state[k] for k in comp.keys})
                for name in comp.converted:
                    v = out.get(name)
                    if v is not None and not v.is_meta:
                        params[name].copy_(v)

    def _need_live(self) -> LiveMerger:
        if self.live is None:
            raise StudioError("the preview is not attached to a live merge", hint="call attach(live) first")
        return self.live

    def _load_external(self, comp: Component) -> None:
        src = comp.external
        with torch.no_grad():
            for names, p in _all_param_names(comp.module).items():
                # files written before transformers 5.6 name CLIPTextModel's weights text_model.*
                hit = next((n for name in names for n in (name, "text_model." + name) if n in src), None)
                if hit is None:
                    raise StudioError(f"{comp.name} weights lack {names[0]}", where=src.ref,
                                      hint=f"give a complete diffusers {self.family} {comp.name}")
                p.copy_(src.get(hit).reshape(p.shape))

    def load(self, source: TensorSource) -> None:
        """Put one model's own weights (named like the merged state, e.g. an input of the merge) into the pipeline.
        With a merger attached this overwrites its bound state: :meth:`render_source` restores the merge after."""
        with torch.no_grad():
            for comp in self.components:
                if comp.select is None:  # loaded from its own files when the pipeline was built
                    continue
                keys = [k for k in (comp.keys or source.keys()) if k in source and comp.select(k)]
                out = comp.convert({k: source.get(k) for k in keys})
                for name, p in comp.params().items():
                    v = out.get(name)
                    if v is not None:
                        p.copy_(v.reshape(p.shape))
                        if name in comp.bound:  # its mapped pages are read: the page cache keeps them, we need not
                            source.release(comp.bound[name])
                del out
                for k in keys:
                    source.release(k)
        return_freed_memory()

    # -------------------------------------------------------------------------------------------- rendering
    def render(self, request: ImageRequest) -> dict:
        """One PIL image per prompt × seed (prompt-major): ``{"metric": "image", "per_task": {}, "samples": [...]}``."""
        req = request if isinstance(request, ImageRequest) else ImageRequest(**request)
        self._check_size(req)
        pipe = self.pipe
        pipe.scheduler = self.scheduler(req.sampler)
        guidance = GUIDANCE[self.family] if req.guidance is None else float(req.guidance)
        images = []
        with torch.no_grad():
            for prompt in req.prompts:
                gens = [torch.Generator(device="cpu").manual_seed(s) for s in req.seeds]
                kw = dict(prompt=[prompt] * len(gens), num_inference_steps=int(req.steps), guidance_scale=guidance,
                          width=req.width, height=req.height, generator=gens)
                if self.flux:
                    kw["max_sequence_length"] = T5_MAX_LENGTH.get(self.family, 512)
                elif req.negative_prompt:
                    kw["negative_prompt"] = [req.negative_prompt] * len(gens)
                for seed, img in zip(req.seeds, pipe(**kw).images):
                    img.info["parameters"] = format_infotext(prompt, "" if self.flux else req.negative_prompt, {
                        "Steps": int(req.steps), "Sampler": req.sampler, "CFG scale": guidance, "Seed": seed,
                        "Size": f"{img.width}x{img.height}"})   # A1111's PNG Info (and the studio) read it back
                    images.append(img)
        self._check_bindings()
        return result(self.metric, {}, images)

    def _check_size(self, req: ImageRequest) -> None:
        step = self.pipe.vae_scale_factor * (2 if self.flux else 1)
        for what, v in (("width", req.width), ("height", req.height)):
            if v is not None and (int(v) < step or int(v) % step):
                raise StudioError(f"{what} {v} is not a positive multiple of {step}",
                                  hint=f"{self.family} images are sized in steps of {step} pixels")

    def _check_bindings(self) -> None:
        """A pipeline that re-cast a module while rendering (SDXL's fp16 VAE upcast) gave it new memory: bind again."""
        if self.live is None:
            return
        for comp in self.components:
            if not comp.bound:
                continue
            params = comp.params()
            stale = {k: params[n] for n, k in comp.bound.items() if not _same_memory(self.live.state[k], params[n])}
            for key, p in stale.items():
                self.live.bind({key: _target(p, self.live.state[key])})

    def render_source(self, source: TensorSource, request: ImageRequest) -> dict:
        """``source``'s own weights rendered the same way; the merge is recomputed into the pipeline afterwards."""
        live = self._need_live()
        self.load(source)
        try:
            return self.render(request)
        finally:
            live.invalidate()
            changed = live.update(live.plan.recipe)
            self.refresh(changed)

    def summary(self) -> dict:
        """What the pipeline is and how it is fed (for the studio's status line and the bench)."""
        comps = {}
        for c in self.components:
            params = c.params()
            n = sum(p.numel() for p in params.values())
            comps[c.name] = {"parameters": n, "from": "external" if c.select is None else "merge",
                             "bound": sum(params[k].numel() for k in c.bound),
                             "converted": sum(params[k].numel() for k in c.converted)}
        return {"family": self.family, "dtype": str(self.dtype).replace("torch.", ""), "device": str(self.device),
                "bound_share": self.bound_share, "components": comps}


# ------------------------------------------------------------------------------------------------- helpers
def _same_memory(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.data_ptr() == b.data_ptr() and a.numel() == b.numel() and a.dtype == b.dtype


def _all_param_names(module: torch.nn.Module) -> dict[tuple[str, ...], torch.nn.Parameter]:
    """Each parameter once, with all the names it has (tied weights: T5's ``shared`` / ``encoder.embed_tokens``)."""
    names: dict[int, list[str]] = {}
    objs: dict[int, torch.nn.Parameter] = {}
    for n, p in module.named_parameters(remove_duplicate=False):
        names.setdefault(id(p), []).append(n)
        objs[id(p)] = p
    return {tuple(names[i]): objs[i] for i in names}


def _has_weights(folder: Path) -> bool:
    return folder.is_dir() and any(f.suffix in (".safetensors", ".bin") or f.name.endswith(".index.json")
                                   for f in folder.iterdir())


def _cached_flux_folders() -> list[Path]:
    """Flux pipelines already in the local Hugging Face cache (never downloaded here)."""
    try:
        from huggingface_hub import snapshot_download  # optional: only to look into the local cache
    except ImportError:  # pragma: no cover
        return []
    # read the cache location now (huggingface_hub fixes its constants at import time)
    cache = os.environ.get("HF_HUB_CACHE") or (os.path.join(os.environ["HF_HOME"], "hub")
                                               if os.environ.get("HF_HOME") else None)
    found = []
    for repo in FLUX_REPOS:
        try:
            found.append(Path(snapshot_download(repo, local_files_only=True, cache_dir=cache)))
        except Exception:  # not cached (or the cache is unreadable): the caller names what to provide
            continue
    return found


PIECES = {"text_encoder": "the CLIP-L text encoder (text_encoder/)", "vae": "the VAE (vae/)",
          "tokenizer_2": "the T5 tokenizer (tokenizer_2/)", "unet": "the UNet (unet/)",
          "transformer": "the transformer (transformer/)"}


def _missing(family: str, names: list[str], where: str, components: Path | None) -> StudioError:
    flux = family.startswith("flux")
    pieces = [PIECES.get(n) or ("the T5-XXL text encoder (text_encoder_2/)" if flux
                                else "the second text encoder (text_encoder_2/)") for n in names]
    what = pieces[0] if len(pieces) == 1 else ", ".join(pieces[:-1]) + " and " + pieces[-1]
    if flux:
        hint = ("give components=<a diffusers Flux pipeline folder that holds them, e.g. a download of "
                "black-forest-labs/FLUX.1-schnell>, or have that repository in the Hugging Face cache")
    else:
        hint = f"give components=<a diffusers {family} pipeline folder that holds them>"
    where_ = f"{where} (components: {components})" if components is not None else where
    return StudioError(f"this {family} model does not hold {what}, and no components folder does", where=where_,
                       hint=hint)


def preview_family(source: TensorSource) -> str:
    """The family a preview pipeline is built for (sd1, sd2, sdxl, flux-dev, flux-schnell); a StudioError for
    diffusion models it cannot show (inpainting, refiner, SD3 …)."""
    family = detect_family(source)
    if family not in SUPPORTED:
        raise StudioError(f"no image preview for {family} models", where=source.ref,
                          hint=f"previews show {', '.join(SUPPORTED)}; the merge itself still works and exports")
    return family


def detect_diffusion_previewer(source: TensorSource) -> type[Previewer] | None:
    """``PREVIEWERS`` entry: DiffusionPreviewer for SD1/SD2/SDXL/Flux models."""
    return DiffusionPreviewer if diffusion_family(source) in SUPPORTED else None


PREVIEWERS.append(detect_diffusion_previewer)
