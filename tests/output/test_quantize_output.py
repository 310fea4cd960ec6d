"""merge --quantize: the float32 merge written as GGUF or fp8, read back through our own sources, with the error the
command reports (and stores in the file) equal to the error computed here from the float32 merge and the file."""

import json
import math
import subprocess
import sys
from dataclasses import dataclass

import gguf
import numpy as np
import pytest
import torch

from studio.cli import main
from studio.output.quantize import ErrorTally, family, write_gguf
from studio.sources import DictSource, open_source
from studio.sources.safetensors_file import read_header
from tinymodels import load_state, make_llama


@dataclass
class Done:
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def merge(capsys):
    """``python -m studio merge`` in this process (its own start would take seconds per call)."""
    def run(tmp_path, base, tuned, out, *extra) -> Done:
        recipe = tmp_path / "r.yml"
        recipe.write_text(f"merge_method: task_arithmetic\nbase_model: {base}\nmodels:\n"
                          f"  - model: {tuned}\n    parameters: {{weight: 0.6}}\ndtype: bfloat16\n")
        capsys.readouterr()
        status = main(["merge", str(recipe), str(out), "--quiet", *extra])
        captured = capsys.readouterr()
        return Done(status, captured.out, captured.err)
    return run


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    root = tmp_path_factory.mktemp("pair")
    base = make_llama(root / "base", 0)
    tuned = make_llama(root / "tuned", 1, base_state=load_state(base), noise=0.05)
    return base, tuned


@pytest.fixture(scope="module")
def exact(pair, tmp_path_factory):
    """The float32 merge the quantized outputs approximate."""
    root = tmp_path_factory.mktemp("exact")
    recipe = root / "r.yml"
    recipe.write_text(f"merge_method: task_arithmetic\nbase_model: {pair[0]}\nmodels:\n"
                      f"  - model: {pair[1]}\n    parameters: {{weight: 0.6}}\nout_dtype: float32\n")
    done = subprocess.run([sys.executable, "-m", "studio", "merge", str(recipe), str(root / "out"), "--quiet"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return load_state(root / "out")


def _direct(exact: dict, got: dict, quantized) -> dict:
    """Relative Frobenius and max abs error per family, computed here."""
    fams: dict = {}
    for k in quantized:
        d = (got[k].double() - exact[k].double())
        row = fams.setdefault(family(k), [0.0, 0.0, 0.0])
        row[0] += float((d * d).sum())
        row[1] += float((exact[k].double() ** 2).sum())
        row[2] = max(row[2], float(d.abs().max()))
    return {f: (math.sqrt(a / b), m) for f, (a, b, m) in fams.items()}


def _check_report(report: dict, direct: dict):
    assert set(report["families"]) == set(direct)
    for f, (rel, mx) in direct.items():
        assert report["families"][f]["relative_error"] == pytest.approx(rel, rel=1e-6), f
        assert report["families"][f]["max_abs_error"] == pytest.approx(mx, rel=1e-6), f


def test_q8_0_gguf_reads_back_with_the_reported_error(merge, tmp_path, pair, exact):
    out = tmp_path / "merged.gguf"
    done = merge(tmp_path, *pair, out, "--quantize", "q8_0", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)["quantization"]
    assert report["scheme"] == "q8_0" and "relative error" in done.stderr and "mlp.up_proj" in done.stderr
    src = open_source(str(out))  # written in llama.cpp's names: read back in transformers'
    assert src.kind == "transformers" and sorted(src.keys()) == sorted(exact)
    assert src.config["num_hidden_layers"] == 3 and src.config["num_key_value_heads"] == 2
    got = {k: src.get(k) for k in exact}
    matrices = [k for k, v in exact.items() if v.dim() == 2]
    assert all(src.quant_type(k) == "Q8_0" for k in matrices)
    for k, v in exact.items():
        if v.dim() == 1:
            assert torch.equal(got[k], v), k  # norms stay float32
        else:
            blocks = v.reshape(-1, 32)  # half a step of rounding, plus the f16 scale's rounding
            step = blocks.abs().amax(1, keepdim=True) / 127
            assert ((got[k].reshape(-1, 32) - blocks).abs() <= step * 0.5 + blocks.abs() * 2 ** -10 + 1e-8).all(), k
    _check_report(report, _direct(exact, got, matrices))
    stored = gguf.GGUFReader(str(out)).fields["studio.quantization_error"].contents()
    assert json.loads(stored)["overall"] == report["overall"]
    assert 1e-4 < report["overall"]["relative_error"] < 1e-2
    assert (tmp_path / "merged.recipe.yml").is_file() and not list(tmp_path.glob(".merged*"))


@pytest.mark.parametrize("scheme,bound", [("q4_0", 0.15), ("q5_1", 0.05), ("f16", 1e-3)])
def test_other_gguf_types_error_shrinks_with_bits(merge, tmp_path, pair, exact, scheme, bound):
    done = merge(tmp_path, *pair, tmp_path / "m.gguf", "--quantize", scheme, "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)["quantization"]
    src = open_source(str(tmp_path / "m.gguf"))
    got = {k: src.get(k) for k in exact}
    _check_report(report, _direct(exact, got, [k for k, v in exact.items() if v.dim() == 2]))
    assert 0 < report["overall"]["relative_error"] < bound


def test_fp8_scaled_single_file_round_trip(merge, tmp_path, pair, exact):
    out = tmp_path / "m.safetensors"
    done = merge(tmp_path, *pair, out, "--quantize", "fp8-scaled", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)["quantization"]
    entries, meta, _ = read_header(out)
    assert entries["scaled_fp8"]["dtype"] == "F8_E4M3"
    assert entries["model.layers.0.mlp.up_proj.weight"]["dtype"] == "F8_E4M3"
    assert entries["model.layers.0.mlp.up_proj.scale_weight"]["shape"] == []
    assert entries["model.norm.weight"]["dtype"] == "F32"
    assert json.loads(meta["quantization_error"]) == {k: v for k, v in report.items() if k != "scheme"}
    src = open_source(str(out))
    assert sorted(src.keys()) == sorted(exact)  # scales and marker hidden
    matrices = [k for k, v in exact.items() if v.dim() == 2]
    for k in matrices:
        w = exact[k]
        scale = w.abs().max() / 448
        assert torch.equal(src.get(k), (w / scale).to(torch.float8_e4m3fn).float() * scale), k
    _check_report(report, _direct(exact, {k: src.get(k) for k in matrices}, matrices))
    assert (tmp_path / "m.recipe.yml").is_file()


def test_fp8_folder_keeps_config_and_reads_back(merge, tmp_path, pair, exact):
    out = tmp_path / "fp8"
    done = merge(tmp_path, *pair, out, "--quantize", "fp8")
    assert done.returncode == 0, done.stderr
    assert json.loads((out / "config.json").read_text())["num_hidden_layers"] == 3
    src = open_source(str(out))
    for k, v in exact.items():
        expected = v.to(torch.float8_e4m3fn).float() if v.dim() == 2 else v
        assert torch.equal(src.get(k).float(), expected), k


def test_write_gguf_keeps_odd_and_high_dim_tensors(tmp_path):
    torch.manual_seed(0)
    tensors = {"conv.weight": torch.randn(4, 2, 3, 2, 32), "odd.weight": torch.randn(3, 7), "vec": torch.randn(5),
               "lin.weight": torch.randn(8, 64), "steps": torch.arange(4, dtype=torch.int32)}
    path = tmp_path / "m.gguf"
    report = write_gguf(DictSource(tensors), path, "q8_0")
    src = open_source(str(path))
    assert src.info("conv.weight").shape == (4, 2, 3, 2, 32)  # stored flattened, shape from its metadata
    assert src.quant_type("conv.weight") == "Q8_0" and src.quant_type("odd.weight") == "F32"
    assert torch.equal(src.get("odd.weight"), tensors["odd.weight"]) and torch.equal(src.get("vec"), tensors["vec"])
    assert torch.equal(src.get("steps"), tensors["steps"])
    assert set(report["families"]) == {"conv.weight", "lin.weight"}
    rel = (src.get("lin.weight") - tensors["lin.weight"]).norm() / tensors["lin.weight"].norm()
    assert report["families"]["lin.weight"]["relative_error"] == pytest.approx(float(rel), rel=1e-5)


def test_error_tally_closed_form():
    tally = ErrorTally()
    tally.add("model.layers.0.w", torch.tensor([3.0, 4.0]), torch.tensor([3.0, 4.5]))
    tally.add("model.layers.1.w", torch.tensor([0.0, 0.0]), torch.tensor([0.0, -1.0]))
    s = tally.summary()
    row = s["families"]["model.layers.*.w"]
    assert row["relative_error"] == pytest.approx(math.sqrt(1.25 / 25)) and row["max_abs_error"] == 1.0
    assert row["tensors"] == 2 and s["overall"] == row


@pytest.mark.parametrize("out,scheme,says", [("o.gguf", "q3_k", "unknown quantization"), ("o", "q8_0", ".gguf"),
                                             ("o.gguf", "fp8", "not GGUF")])
def test_bad_requests_exit_2_one_line_and_write_nothing(merge, tmp_path, pair, out, scheme, says):
    done = merge(tmp_path, *pair, tmp_path / out, "--quantize", scheme)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1 and says in lines[0], done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.yml"]


def test_existing_target_refused_before_merging(merge, tmp_path, pair):
    (tmp_path / "o.gguf").write_bytes(b"keep")
    done = merge(tmp_path, *pair, tmp_path / "o.gguf", "--quantize", "q8_0")
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1
    assert (tmp_path / "o.gguf").read_bytes() == b"keep"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.gguf", "r.yml"]


@pytest.mark.parametrize("keep_norms, arch", [(True, "flux"), (False, "studio")])
def test_a_diffusion_gguf_names_the_architecture_comfyui_gguf_loads(tmp_path, keep_norms, arch):
    from studio.sd.synth import bfl_flux_table

    # BFL Flux names with the qk-norm marker keys are Flux.1; without them an unknown DiT
    table = bfl_flux_table(double=2, single=2, width=32, prefix="")
    src = DictSource({k: torch.randn(s) for k, (s, _) in table.items() if keep_norms or "norm" not in k})
    write_gguf(src, tmp_path / "m.gguf", "q8_0")
    reader = gguf.GGUFReader(str(tmp_path / "m.gguf"))
    field = reader.fields["general.architecture"]
    assert bytes(field.parts[field.data[0]]).decode() == arch


def byte_level_bpe(folder, vocab_size: int):
    """A GPT-2-style byte-level BPE (Llama 3 / Qwen2 kind) trained here on a few sentences, saved as transformers
    does, with a BOS/EOS pair and a chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(["the cat sat on the mat", "a merge of two models", "the models sat"] * 20, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>")
    fast.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    fast.save_pretrained(folder)
    return fast


def field_value(reader, name):
    f = reader.fields[name]
    values = [f.parts[i] for i in f.data]
    as_text = [bytes(v).decode() if v.dtype == np.uint8 else v.tolist()[0] for v in values]
    return as_text if len(as_text) > 1 or name.endswith(("tokens", "merges")) else as_text[0]


def test_an_llm_gguf_carries_its_tokenizer_for_llama_cpp(merge, tmp_path):
    base = make_llama(tmp_path / "base", 0, vocab=320)
    tuned = make_llama(tmp_path / "tuned", 1, vocab=320, base_state=load_state(base))
    fast = byte_level_bpe(base, 300)                     # 300 tokens for 320 embedding rows: 20 padding tokens
    done = merge(tmp_path, base, tuned, tmp_path / "m.gguf", "--quantize", "q8_0", "--json")
    assert done.returncode == 0 and json.loads(done.stdout)["quantization"]["tokenizer"] == "bpe"
    reader = gguf.GGUFReader(str(tmp_path / "m.gguf"))
    tokens = field_value(reader, "tokenizer.ggml.tokens")
    by_id = sorted(fast.get_vocab().items(), key=lambda kv: kv[1])
    assert len(tokens) == 320 and tokens[:len(by_id)] == [t for t, _ in by_id]
    assert tokens[len(by_id):] == [f"[PAD{i}]" for i in range(len(by_id), 320)]
    assert field_value(reader, "tokenizer.ggml.model") == "gpt2"
    merges = json.loads((base / "tokenizer.json").read_text())["model"]["merges"]
    assert field_value(reader, "tokenizer.ggml.merges") == [m if isinstance(m, str) else " ".join(m) for m in merges]
    assert field_value(reader, "tokenizer.ggml.bos_token_id") == fast.bos_token_id
    assert field_value(reader, "tokenizer.chat_template") == fast.chat_template


def test_an_llm_gguf_without_a_tokenizer_it_can_read_says_so(merge, tmp_path, pair):
    done = merge(tmp_path, *pair, tmp_path / "m.gguf", "--quantize", "q8_0", "--json")
    assert done.returncode == 0 and json.loads(done.stdout)["quantization"]["tokenizer"] is None
    assert "no tokenizer embedded" in done.stderr


@pytest.mark.parametrize("model_type", ["llama", "qwen2"])
def test_an_llm_gguf_written_reads_back_as_the_model(tmp_path, model_type):
    """llama.cpp permutes llama's q/k rows only: a qwen2 GGUF keeps them in the HF order, and our reader undoes
    exactly what our writer did (F16: every tensor within half-precision rounding)."""
    transformers = pytest.importorskip("transformers")
    if model_type == "llama":
        folder = make_llama(tmp_path / "m", 0)
    else:
        cfg = transformers.Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
        torch.manual_seed(0)
        transformers.Qwen2ForCausalLM(cfg).save_pretrained(tmp_path / "m")
        folder = tmp_path / "m"
    write_gguf(open_source(str(folder)), tmp_path / "m.gguf", "f16")
    back, want = open_source(str(tmp_path / "m.gguf")), load_state(folder)
    assert back.config["model_type"] == model_type
    for k, w in want.items():
        torch.testing.assert_close(back.get(k), w.half().float(), rtol=0, atol=0, msg=k)
