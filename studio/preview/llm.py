"""The text preview: any transformers causal LM (a folder or a hub id in the HF cache), fed in place by the live
engine, rendering the user's prompts (greedy or seeded sampling, the chat template when asked), perplexity on a
pasted text or a text file, and accuracy on their own evaluation set (:mod:`studio.preview.evalset`).

The model is built from the reference folder's ``config.json`` with its parameters on the meta device (nothing is
allocated or initialised for them; buffers such as rotary frequencies are computed by the model's own code), then
:meth:`LLMPreviewer.attach` makes the live merger's merged tensors the parameters' storage (``LiveMerger.bind`` with
the state's own tensors: nothing is copied). The merged weights exist once, inside the model, and each re-merge
writes into them in place.
"""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..devices import resolve_device
from ..engine.live import LiveMerger
from ..errors import StudioError
from ..evaluate.common import result
from ..evaluate.text import continuation, perplexity_of, sampler, token_windows
from ..sources import TensorSource, open_source, resolve_path
from .base import PREVIEWERS, Previewer
from .evalset import MATCHES, load_eval_set, score_eval_set

# what a folder needs for AutoTokenizer (any one of these, besides tokenizer_config.json)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "spiece.model", "tokenizer.tiktoken",
                   "vocab.txt")
NO_TEMPLATE = "the tokenizer has no chat template: the prompts were used as they are"


# What a preview of a user's own LLM shows before they type anything: a few generations, and perplexity on a short
# plain-English paragraph (a number that moves with every slider; paste your own text or give a file for a real one).
DEFAULT_PROMPTS = ("Once upon a time,", "The three primary colours are", "def fibonacci(n):")
DEFAULT_TEXT = ("The river starts as a thin stream high in the hills. It gathers water from many small brooks, grows "
                "wider as it flows through the valley, and turns the wheels of an old mill before it reaches the town. "
                "In spring the water rises and covers the fields; in late summer it is slow and clear, and children "
                "walk along its banks looking for smooth stones. Near the sea the river divides into several channels, "
                "and the water becomes salty as the tide comes in.")


@dataclass
class TextRequest:
    """What a person asks of the text preview.

    - ``prompts``: generated for, one sample each (``samples[prompt]`` = the generated text only);
    - ``chat``: wrap each prompt (and eval-set question) as a user message in the tokenizer's chat template (with
      the generation prompt); without a template the prompt is used as it is and the result's notes say so;
    - ``max_new_tokens``; ``greedy`` (argmax) or sampling with ``seed``, ``temperature`` and ``top_p`` (each prompt
      sampled from its own generator seeded with ``seed``: the same seed gives the same text);
    - ``text`` (pasted) or ``text_file``: perplexity over its first ``max_text_tokens`` tokens in windows of
      ``seq_len``;
    - ``eval_set``: a JSONL file (:mod:`studio.preview.evalset`), its first ``eval_items`` items scored; prompt /
      expected answers compared by ``match`` ("contains" or "exact").
    """

    prompts: list[str] = field(default_factory=lambda: list(DEFAULT_PROMPTS))
    chat: bool = False
    max_new_tokens: int = 32
    greedy: bool = True
    seed: int = 0
    temperature: float = 0.8
    top_p: float = 0.95
    text: str = DEFAULT_TEXT
    text_file: str | Path | None = None
    max_text_tokens: int = 2048
    seq_len: int = 512
    eval_set: str | Path | None = None
    eval_items: int = 20
    match: str = "contains"

    def check(self) -> "TextRequest":
        """The request itself, or a StudioError saying which setting is out of range."""
        def bad(what: str, hint: str) -> StudioError:
            return StudioError(what, where="text preview", hint=hint)

        if self.max_new_tokens < 0:
            raise bad(f"max_new_tokens is {self.max_new_tokens}", "use 0 or more new tokens")
        if not self.greedy and not self.temperature > 0:
            raise bad(f"temperature is {self.temperature}", "sampling needs a temperature above 0 (or use greedy)")
        if not self.greedy and not 0 < self.top_p <= 1:
            raise bad(f"top_p is {self.top_p}", "top_p is a probability in (0, 1]")
        if self.text and self.text != DEFAULT_TEXT and self.text_file:
            raise bad("both a pasted text and a text file were given", "measure perplexity on one of them")
        if self.max_text_tokens < 2 or self.seq_len < 2:
            raise bad("the perplexity budget is under 2 tokens", "use max_text_tokens and seq_len of 2 or more")
        if self.eval_items < 1:
            raise bad(f"eval_items is {self.eval_items}", "score at least one item")
        if self.match not in MATCHES:
            raise bad(f"unknown answer match {self.match!r}", "use exact or contains")
        return self


# ----------------------------------------------------------------------------------------------------- building
def model_folder(source: TensorSource) -> Path:
    """The folder holding a causal LM's config.json and tokenizer (its own folder, or a hub id's cached snapshot)."""
    candidates = [source.folder] if source.folder is not None else []
    if source.path is not None:
        candidates.append(Path(source.path).parent)
    for folder in candidates:
        if (Path(folder) / "config.json").is_file():
            return Path(folder)
    try:
        path = resolve_path(source.ref)
    except StudioError:
        path = None  # an in-memory source, or a reference that names no folder
    if path is not None and path.is_dir() and (path / "config.json").is_file():
        return path
    raise StudioError("a text preview needs the model's folder (config.json and the tokenizer files)",
                      where=source.ref, hint="give the transformers folder or hub id, not a single weights file")


def load_tokenizer(folder: Path):
    """``AutoTokenizer`` from ``folder`` (local files only), or a StudioError naming the files a tokenizer needs."""
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise StudioError("no tokenizer in the model's folder", where=str(folder),
                          hint=f"a text preview needs one of {', '.join(TOKENIZER_FILES)} (with tokenizer_config.json)"
                               " — copy them from the model this one was fine-tuned from")
    from transformers import AutoTokenizer  # optional and heavy: only when a text preview is built

    try:
        return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise StudioError(f"the tokenizer cannot be loaded ({first})", where=str(folder),
                          hint="check tokenizer_config.json and the tokenizer files") from None


_META = threading.local()  # whether this thread's new parameters go to the meta device
_META_LOCK = threading.Lock()
_META_USERS = [0, None]  # threads inside parameters_on_meta, and the register_parameter they replaced


def _register_parameter(module, name, param):
    if getattr(_META, "on", False) and param is not None and param.device.type != "meta":
        param = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
    _META_USERS[1](module, name, param)


@contextlib.contextmanager
def parameters_on_meta():
    """Every parameter a module registers in this thread inside this block lives on the meta device (no memory,
    no initialisation cost); buffers are created as the model's code makes them (rotary frequencies, masks are real
    values). Other threads building modules meanwhile are not affected."""
    with _META_LOCK:
        if _META_USERS[0] == 0:
            _META_USERS[1] = nn.Module.register_parameter
            nn.Module.register_parameter = _register_parameter
        _META_USERS[0] += 1
    before = getattr(_META, "on", False)
    _META.on = True
    try:
        yield
    finally:
        _META.on = before
        with _META_LOCK:
            _META_USERS[0] -= 1
            if _META_USERS[0] == 0:
                nn.Module.register_parameter = _META_USERS[1]


@dataclass
class ParamSlot:
    """One parameter of a model: every name it has (tied weights have several), the (module, attribute) pairs that
    hold it, and its shape and dtype as the model's code declared them (``spec``, on the meta device)."""

    names: list[str]
    owners: list[tuple[nn.Module, str]]
    spec: torch.Tensor

    def place(self, tensor: torch.Tensor) -> nn.Parameter:
        """Make ``tensor``'s storage this parameter's, in every module that holds it (no copy; no gradients)."""
        param = nn.Parameter(tensor, requires_grad=False)
        for module, attr in self.owners:
            module._parameters[attr] = param
        return param


def parameter_slots(model: nn.Module) -> list[ParamSlot]:
    """The model's parameters, each once (tied ones with all their names), in registration order."""
    slots: dict[int, ParamSlot] = {}
    for mod_name, module in model.named_modules(remove_duplicate=False):
        for attr, p in module._parameters.items():
            if p is not None:
                slot = slots.setdefault(id(p), ParamSlot([], [], p))
                slot.names.append(f"{mod_name}.{attr}" if mod_name else attr)
                slot.owners.append((module, attr))
    return list(slots.values())


def build_causal_lm(folder: Path, dtype: torch.dtype, device: torch.device, vocab_size: int | None = None,
                    num_layers: int | None = None):
    """``AutoModelForCausalLM`` from ``folder``'s config.json (``vocab_size`` and the layer count — a slices
    merge's — replaced when given) in eval mode: buffers (computed by the model's code) on ``device``, parameters in
    ``dtype`` still on the meta device — no memory until :class:`ParamSlot` places a tensor in each."""
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig  # optional and heavy

    try:
        config = AutoConfig.from_pretrained(str(folder), local_files_only=True)
        if vocab_size is not None:
            config.vocab_size = vocab_size
        if num_layers is not None:
            config.num_hidden_layers = num_layers
            if isinstance(getattr(config, "layer_types", None), list):  # per-layer attention kinds follow the count
                config.layer_types = (config.layer_types * num_layers)[:num_layers]
        with parameters_on_meta():
            model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    except (OSError, ValueError, KeyError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise StudioError(f"transformers cannot build a causal LM from config.json ({first})", where=str(folder),
                          hint="previews run AutoModelForCausalLM architectures that transformers ships "
                               "(remote code is not run)") from None
    for module in model.modules():
        for name, b in module._buffers.items():
            if b is not None:
                module._buffers[name] = b.to(device)
    if (folder / "generation_config.json").is_file():
        model.generation_config = GenerationConfig.from_pretrained(str(folder), local_files_only=True)
    return model.eval()


def stop_tokens(model, tokenizer) -> set[int]:
    """Token ids that end a generation: the tokenizer's EOS and the generation config's (one id or several)."""
    stop = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    stop.update([eos] if isinstance(eos, int) else list(eos or []))
    return stop


# ---------------------------------------------------------------------------------------------------- rendering
def prompt_text(tokenizer, text: str, chat: bool) -> tuple[str, bool]:
    """(the text the model sees, whether the tokenizer adds its special tokens): with ``chat`` and a template, the
    prompt as a user message with the generation prompt (the template writes the special tokens itself)."""
    if chat and getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                             tokenize=False), False
    return text, True


def generate(model, tokenizer, prompt: str, request: TextRequest, stop: set[int]) -> str:
    """The generated text (without the prompt) for one prompt, greedy or sampled as the request says."""
    text, special = prompt_text(tokenizer, prompt, request.chat)
    ids = tokenizer(text, add_special_tokens=special, return_tensors="pt")["input_ids"]
    pick = None if request.greedy else sampler(request.seed, request.temperature, request.top_p, model.device)
    return tokenizer.decode(continuation(model, ids, request.max_new_tokens, stop, pick), skip_special_tokens=True)


def _text_of(request: TextRequest) -> tuple[str, str]:
    if request.text_file:
        path = Path(request.text_file)
        if not path.is_file():
            raise StudioError("text file not found", where=str(path), hint="give a UTF-8 text file")
        return path.read_text(encoding="utf-8", errors="replace"), str(path)
    return request.text, "pasted text"


@torch.no_grad()
def render_text(model, tokenizer, request: TextRequest) -> dict:
    """``request`` rendered on ``model``: the evaluate.common.result shape.

    ``metric`` is "perplexity" when a text is given (``per_task {"text": ppl}``), else "accuracy" when an eval set
    is (``per_task`` = the set's accuracies in %, ``choice`` length-normalised), else "" with no numbers;
    ``samples`` is ``{prompt: generated text}``; ``table`` the eval set's rows (when one is given); ``notes``
    what a person should know (no chat template, a text or set cut to the budget)."""
    request.check()
    text, where = _text_of(request)  # a missing file or a malformed set is said before any work is done
    items, more = load_eval_set(request.eval_set, request.eval_items) if request.eval_set else ([], False)
    stop = stop_tokens(model, tokenizer)
    notes = []
    if request.chat and not getattr(tokenizer, "chat_template", None) and (request.prompts or request.eval_set):
        notes.append(NO_TEMPLATE)
    samples = {p: generate(model, tokenizer, p, request, stop) for p in request.prompts}
    metric, per_task, table = "", {}, None
    if request.eval_set:
        if more:
            notes.append(f"evaluation set: the first {len(items)} items were scored (the preview budget)")
        greedy = TextRequest(chat=request.chat, max_new_tokens=request.max_new_tokens)
        table = score_eval_set(model, tokenizer, items, lambda t: prompt_text(tokenizer, t, request.chat),
                               lambda p: generate(model, tokenizer, p, greedy, stop), request.match,
                               str(request.eval_set))
        metric = "accuracy"
        per_task = {k: v for k, v in table["accuracy"].items() if k != "choice_raw"}
    if text == DEFAULT_TEXT:  # the sample paragraph stands in only while nothing else is chosen
        text = "" if request.eval_set else text
        if text:
            notes.append("perplexity on a sample paragraph: paste your own text or choose a text file")
    if text:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) > request.max_text_tokens:
            notes.append(f"perplexity over the first {request.max_text_tokens} of {len(ids)} tokens of the text "
                         "(the preview budget)")
        limit = getattr(model.config, "max_position_embeddings", None) or request.seq_len
        windows = token_windows(ids[:request.max_text_tokens], min(request.seq_len, limit), where)
        metric, per_task = "perplexity", {"text": perplexity_of(model, windows)}
    return result(metric, per_task, samples, table=table, notes=notes)


# ---------------------------------------------------------------------------------------------------- previewer
class LLMPreviewer(Previewer):
    """A transformers causal LM whose parameters are the live merger's merged state.

    ``LLMPreviewer(reference_source, device, dtype)`` builds the model (from config.json, no weights loaded, no
    parameter memory) and the tokenizer; ``attach(live)`` makes each parameter its merged tensor (the merger must
    produce ``dtype`` on ``device``: ``LiveMerger(..., out_dtype=previewer.dtype)``); ``render(TextRequest)``;
    ``render_source(source, TextRequest)`` shows one input model in the same modules, then restores the merge.

    ``slots``: the model's parameters (:class:`ParamSlot`); ``targets``: merged key → the model tensor it lives in;
    ``bound``: the keys the merger writes in place (the rest — a dtype the merge does not produce, checkpoint
    buffers — are copied by ``refresh``); ``unused``: merged keys the model has
    no place for (e.g. a saved ``lm_head.weight`` when the embeddings are tied).
    """

    kind = "text"
    metric = "perplexity"
    Request = TextRequest

    def __init__(self, reference: TensorSource, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32, num_layers: int | None = None):
        super().__init__(reference, resolve_device(device) if isinstance(device, str) else device, dtype)
        self.folder = model_folder(reference)
        # a recipe with vocabulary settings (tokenizer_source: union, …) previews with the tokenizer it builds, and
        # the embedding rows it maps to it (the reference is then the plan's view of the reference model)
        vocab = getattr(reference, "vocabulary", None)
        self.tokenizer = load_tokenizer(self.folder) if vocab is None else vocab.tokenizer
        self.model = build_causal_lm(self.folder, dtype, self.device, None if vocab is None else vocab.size,
                                     num_layers)
        self.slots = parameter_slots(self.model)
        self.targets: dict[str, torch.Tensor] = {}
        self.bound: set[str] = set()
        self.unused: list[str] = []

    @classmethod
    def from_ref(cls, ref: str, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
        """The previewer for a folder or hub id (HF cache; offline)."""
        return cls(open_source(ref), device, dtype)

    def _buffers(self) -> list[tuple[str, torch.Tensor]]:
        """The persistent buffers (those a checkpoint holds; rotary frequencies are not among them)."""
        return [(f"{m_name}.{name}" if m_name else name, b) for m_name, module in self.model.named_modules()
                for name, b in module._buffers.items()
                if b is not None and name not in module._non_persistent_buffers_set]

    def _key_for(self, names: list[str], state) -> str | None:
        """The merged key of a model tensor: one of its names, or one with/without the base model's prefix (a
        checkpoint saved from the bare ``*Model``)."""
        prefix = getattr(self.model, "base_model_prefix", "") or ""
        for name in names:
            options = [name]
            if prefix:
                options += [name[len(prefix) + 1:]] if name.startswith(prefix + ".") else [f"{prefix}.{name}"]
            for key in options:
                if key in state:
                    return key
        return None

    def _check_shape(self, key: str, merged: torch.Tensor, expected) -> None:
        if tuple(merged.shape) != tuple(expected):
            raise StudioError(f"{key}: the merge has shape {list(merged.shape)}, the model built from config.json "
                              f"expects {list(expected)}", where=str(self.folder),
                              hint="the models' config.json and weights disagree (vocabulary or size)")

    def attach(self, live: LiveMerger) -> None:
        """Each parameter's storage becomes its merged tensor (tied parameters: one tensor), so re-merges land in
        the model without a copy; a merged tensor of another dtype than the parameter's is copied into memory of
        its own (and by :meth:`refresh` after each re-merge). A parameter the merge does not produce is a
        StudioError naming it; buffers are the model's own unless the checkpoint holds them."""
        same_device = live.device == self.device or (live.device.type == self.device.type
                                                     and None in (live.device.index, self.device.index))
        if not same_device or live.out_dtype != self.dtype:
            raise ValueError(f"the merger produces {live.out_dtype} on {live.device}, the preview runs {self.dtype} "
                             f"on {self.device}: build LiveMerger(..., device=, out_dtype=) to match")
        state = live.state
        placed, missing = [], []
        for slot in self.slots:
            key = self._key_for(slot.names, state)
            if key is None:
                missing.append(slot.names[0])
            else:
                self._check_shape(key, state[key], slot.spec.shape)
                placed.append((key, slot))
        if missing:
            shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            raise StudioError(f"the merge does not produce {len(missing)} of the model's parameters: {shown}",
                              where=str(self.folder),
                              hint="the checkpoints' tensor names must be the ones AutoModelForCausalLM uses")
        targets, bound = {}, set()
        for key, slot in placed:
            if state[key].dtype == slot.spec.dtype:
                targets[key] = state[key]
                bound.add(key)
            else:  # a dtype the merge does not produce: memory of its own, refreshed by copying
                targets[key] = torch.empty(slot.spec.shape, dtype=slot.spec.dtype, device=self.device)
            slot.place(targets[key])
        for name, buf in self._buffers():
            key = self._key_for([name], state)
            if key is not None:  # a buffer the checkpoint does not hold keeps the value the model's code computed
                self._check_shape(key, state[key], buf.shape)
                targets[key] = buf
        live.bind({k: state[k] for k in bound})  # the state's own tensors: bound without a copy
        self.targets, self.bound, self.live = targets, bound, live
        self.unused = sorted(set(state) - set(targets))
        self.refresh(list(targets))

    def refresh(self, changed: list[str]) -> None:
        """Copy what the merger did not write in place: converted keys, and any binding the merger replaced."""
        with torch.no_grad():
            for key in changed:
                target = self.targets.get(key)
                merged = self.live.state.get(key) if self.live is not None else None
                if target is not None and merged is not None and merged.data_ptr() != target.data_ptr():
                    target.copy_(merged)

    def render(self, request: TextRequest) -> dict:
        if self.live is None:
            raise ValueError("attach a LiveMerger before rendering")
        return render_text(self.model, self.tokenizer, request)

    def render_source(self, source: TensorSource, request: TextRequest) -> dict:
        if self.live is None:
            raise ValueError("attach a LiveMerger before rendering an input model")
        request.check()
        try:
            with torch.no_grad():
                for key, target in self.targets.items():
                    if key not in source:
                        raise StudioError(f"tensor {key!r} is missing", where=source.ref,
                                          hint="this model's tensor names differ from the reference model's")
                    if tuple(source.info(key).shape) != tuple(target.shape):
                        raise StudioError(f"{key}: shape {list(source.info(key).shape)}, the preview model has "
                                          f"{list(target.shape)}", where=source.ref)
                    target.copy_(source.get(key))
                    source.release(key)
            return self.render(request)
        finally:  # the modules hold the merge again, whatever happened
            self.live.invalidate()
            self.refresh(self.live.update(self.live.plan.recipe))


def detect_causal_lm(source: TensorSource) -> type[Previewer] | None:
    """LLMPreviewer for a transformers folder whose config names a ``*ForCausalLM`` architecture, or another
    architecture (``GPT2LMHeadModel``) or, without architectures, a model_type that AutoModelForCausalLM knows."""
    config = source.config
    if source.kind != "transformers" or not isinstance(config, dict):
        return None
    archs = [str(a) for a in config.get("architectures") or []]
    if any(a.endswith("ForCausalLM") for a in archs):
        return LLMPreviewer
    model_type = config.get("model_type")
    if not archs and not isinstance(model_type, str):
        return None
    # optional and heavy: read only for configs that do not say ForCausalLM
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES as known

    if archs:
        return LLMPreviewer if any(a in set(known.values()) for a in archs) else None
    return LLMPreviewer if model_type in known else None


PREVIEWERS.append(detect_causal_lm)
