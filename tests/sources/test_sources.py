import os
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from studio.errors import SourceError, UnsafeFileError
from studio.sources import open_source


class Evil:
    def __reduce__(self):
        return (os.system, (f"touch {os.environ['EVIL_MARKER']}",))


def test_malicious_pickle_is_refused_without_running(tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    monkeypatch.setenv("EVIL_MARKER", str(marker))
    path = tmp_path / "evil.ckpt"
    with open(path, "wb") as fh:
        pickle.dump({"state_dict": {"w": Evil()}}, fh)
    torch_style = tmp_path / "evil.bin"
    torch.save({"w": torch.ones(2), "x": Evil()}, torch_style)
    for p in (path, torch_style):
        with pytest.raises(UnsafeFileError, match="refused"):
            open_source(str(p))
    assert not marker.exists()


def test_pickle_checkpoint_with_state_dict(tmp_path):
    sd = {"a.weight": torch.randn(3, 4), "step": 5}
    torch.save({"state_dict": sd, "global_step": 10}, tmp_path / "m.ckpt")
    src = open_source(str(tmp_path / "m.ckpt"))
    assert src.keys() == ["a.weight"]
    torch.testing.assert_close(src.get("a.weight"), sd["a.weight"])


def test_safetensors_lazy_and_exact(tmp_path):
    tensors = {"h": torch.randn(5, 3, dtype=torch.float16), "b": torch.randn(7, dtype=torch.bfloat16),
               "i": torch.arange(4), "odd": torch.randn(3, dtype=torch.float32)}
    save_file(tensors, tmp_path / "m.safetensors", metadata={"format": "pt"})
    src = open_source(str(tmp_path / "m.safetensors"))
    assert src.info("h").shape == (5, 3) and src.info("b").dtype == torch.bfloat16
    for k, v in tensors.items():
        assert torch.equal(src.get(k), v)
    assert src.metadata == {"format": "pt"}


def test_sharded_folder_and_missing_shard(tmp_path):
    from tinymodels import make_llama

    p = make_llama(tmp_path / "m", 0, shard="30KB")
    src = open_source(str(p))
    assert src.kind == "transformers" and len(src.files) > 1 and src.config["model_type"] == "llama"
    shard = sorted(p.glob("model-*.safetensors"))[-1]
    shard.unlink()
    with pytest.raises(SourceError, match="missing"):
        open_source(str(p))


def test_hub_id_offline_error_is_clear(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(SourceError) as e:
        open_source("someorg/some-model@main")
    assert "someorg/some-model" in str(e.value) and "cache" in str(e.value)


def test_hub_id_resolves_from_cache(monkeypatch, tmp_path):
    """A cached snapshot is used without network (the layout huggingface_hub itself writes)."""
    from tinymodels import make_llama

    hf = tmp_path / "hf"
    repo = hf / "hub" / "models--acme--tiny"
    commit = "0123456789abcdef0123456789abcdef01234567"
    snap = repo / "snapshots" / commit
    make_llama(snap, 0)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HOME", str(hf))
    monkeypatch.setenv("HF_HUB_CACHE", str(hf / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    src = open_source("acme/tiny")
    assert Path(src.folder).resolve() == snap.resolve() and "model.embed_tokens.weight" in src


def test_pickle_transformers_folder_merges_like_safetensors(tmp_path):
    """A transformers folder saved as pytorch_model.bin (weights_only-loadable) merges with a safetensors one."""
    from tinymodels import load_state, make_llama
    from studio.engine import merge_in_memory
    from studio.recipe import Recipe

    a = make_llama(tmp_path / "a", 0)
    b = make_llama(tmp_path / "b", 1)
    state_b = load_state(b)
    (b / "model.safetensors").unlink()
    torch.save(state_b, b / "pytorch_model.bin")
    src = open_source(str(b))
    assert src.kind == "transformers" and src.path.name == "pytorch_model.bin"
    out = merge_in_memory(Recipe.from_dict({"merge_method": "linear", "models": [
        {"model": str(a), "parameters": {"weight": 1}}, {"model": str(b), "parameters": {"weight": 1}}]}))
    state_a = load_state(a)
    for k in out:
        torch.testing.assert_close(out[k], (state_a[k] + state_b[k]) / 2)
