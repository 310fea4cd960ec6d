"""The one safetensors writer: planned shards written header first, one-file streaming writes, dicts of tensors."""

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from studio.errors import StudioError
from studio.output import ShardWriter, plan_shards, save_tensors, write_index, write_safetensors
from studio.sources import TensorInfo


def tensors():
    g = torch.Generator().manual_seed(0)
    return {"emb.weight": torch.randn(10, 4, generator=g), "scale": torch.tensor(0.5),
            "h.0.w": torch.randn(4, 4, generator=g).to(torch.bfloat16), "h.0.ids": torch.arange(6),
            "h.1.w": torch.randn(4, 4, generator=g).half(), "mask": torch.tensor([True, False, True]),
            "empty": torch.zeros(0, 3)}


def entries(ts):
    return [(k, tuple(v.shape), v.dtype) for k, v in ts.items()]


def metadata_of(path):
    with safe_open(str(path), "pt") as f:
        return f.metadata()


def test_plan_shards_splits_in_order_and_names_files():
    es = [("a", (10, 10), torch.float32), ("b", (10,), torch.float16), ("c", (30, 10), torch.float32),
          ("d", (), torch.float32)]
    shards = plan_shards(es, 500)
    assert [s.names for s in shards] == [["a", "b"], ["c"], ["d"]]   # c alone exceeds the limit: a shard of its own
    assert [s.filename for s in shards] == [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
    assert [s.nbytes for s in shards] == [420, 1200, 4]
    one = plan_shards(es, 1 << 40, prefix="diffusion_pytorch_model", single_name="unet.safetensors")
    assert len(one) == 1 and one[0].filename == "unet.safetensors" and one[0].names == ["a", "b", "c", "d"]


def test_shard_writer_files_load_with_safetensors_and_index_maps_every_tensor(tmp_path):
    ts = tensors()
    shards = plan_shards(entries(ts), 100)
    w = ShardWriter(tmp_path, shards, {"format": "pt", "note": "ü"})
    for k, v in ts.items():
        w.write(k, v)
    w.close()
    loaded = {}
    for sh in shards:
        raw = (tmp_path / sh.filename).read_bytes()
        n = int.from_bytes(raw[:8], "little")
        assert n % 8 == 0 and json.loads(raw[8:8 + n])["__metadata__"] == {"format": "pt", "note": "ü"}
        loaded.update(load_file(tmp_path / sh.filename))
    assert list(loaded) == list(ts)
    for k, v in ts.items():
        assert loaded[k].dtype == v.dtype and torch.equal(loaded[k], v), k
    write_index(tmp_path, w, extra_metadata={"merge_studio_version": "t"})
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert index["metadata"] == {"total_size": sum(v.numel() * v.element_size() for v in ts.values()),
                                 "merge_studio_version": "t"}
    assert index["weight_map"] == {k: sh.filename for sh in shards for k in sh.names}


def test_shard_writer_refuses_out_of_plan_tensors(tmp_path):
    shards = plan_shards([("a", (2,), torch.float32), ("b", (2,), torch.float32)], 1 << 20)
    w = ShardWriter(tmp_path, shards)
    with pytest.raises(RuntimeError, match="expected a, got b"):
        w.write("b", torch.zeros(2))
    with pytest.raises(RuntimeError, match="planned"):
        w.write("a", torch.zeros(3))
    w.write("a", torch.zeros(2))
    with pytest.raises(RuntimeError, match="after 1 of 2"):
        w.close()


def test_save_tensors_matches_save_file_values_and_metadata(tmp_path):
    ts = tensors()
    meta = {"format": "pt", "learned_method": "fisher"}
    ours = save_tensors(tmp_path / "ours.safetensors", ts, meta)
    save_file(ts, str(tmp_path / "ref.safetensors"), metadata=meta)
    got, ref = load_file(ours), load_file(tmp_path / "ref.safetensors")
    assert list(got) == list(ts) and set(ref) == set(got)
    for k in ts:
        assert got[k].dtype == ref[k].dtype and torch.equal(got[k], ref[k]), k
    assert metadata_of(ours) == metadata_of(tmp_path / "ref.safetensors") == meta
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ours.safetensors", "ref.safetensors"]


def test_save_tensors_casts_only_floating_tensors(tmp_path):
    ts = tensors()
    got = load_file(save_tensors(tmp_path / "h.safetensors", ts, dtype=torch.float16))
    assert got["emb.weight"].dtype == torch.float16 and torch.equal(got["emb.weight"], ts["emb.weight"].half())
    assert got["h.0.w"].dtype == torch.float16 and torch.equal(got["h.0.w"], ts["h.0.w"].half())
    assert got["h.0.ids"].dtype == torch.int64 and torch.equal(got["h.0.ids"], torch.arange(6))
    assert got["mask"].dtype == torch.bool and got["mask"].tolist() == [True, False, True]
    assert got["scale"].shape == () and got["scale"].item() == 0.5


def test_write_safetensors_streams_and_leaves_nothing_when_a_tensor_is_wrong(tmp_path):
    infos = {"a": TensorInfo((2, 3), torch.float32), "b": TensorInfo((4,), torch.float32)}
    calls = []

    def fetch(name):
        calls.append(name)
        return torch.full(infos[name].shape, float(len(calls)))

    path = write_safetensors(tmp_path / "s.safetensors", infos, fetch, {"format": "pt"}, torch.bfloat16)
    assert calls == ["a", "b"]                     # one fetch per tensor, in order
    got = load_file(path)
    assert got["a"].dtype == torch.bfloat16 and got["a"].float().tolist() == [[1.0] * 3] * 2
    assert got["b"].float().tolist() == [2.0] * 4
    with pytest.raises(StudioError, match=r"'b' has shape \(5,\), expected \(4,\)"):
        write_safetensors(tmp_path / "bad.safetensors", infos,
                          lambda n: torch.zeros(5) if n == "b" else torch.zeros(2, 3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.safetensors"]


def test_an_empty_tensor_set_is_a_valid_header_only_file(tmp_path):
    path = save_tensors(tmp_path / "empty.safetensors", {}, metadata={"format": "pt"})
    assert load_file(str(path)) == {}
    with safe_open(str(path), "pt") as f:
        assert f.metadata() == {"format": "pt"}
