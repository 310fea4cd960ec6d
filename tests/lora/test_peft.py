"""Differential: a PEFT adapter baked by us equals peft's merge_and_unload (LoRA, rsLoRA + patterns, DoRA, GPT-2
Conv1D fan_in_fan_out, embeddings)."""

from __future__ import annotations

import pytest
import torch

from studio.lora.bake import LoraSpec, bake
from studio.sources import open_source


def _randomize_lora(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
            if "lora_magnitude_vector" in name:
                p.mul_(1 + 0.2 * torch.rand(p.shape, generator=g))


def _check(tmp_path, model_fn, cfg_kwargs, seed):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    base = model_fn()
    base.save_pretrained(tmp_path / "base")
    ref_state = {k: v.clone() for k, v in base.state_dict().items()}
    peft_model = get_peft_model(base, LoraConfig(**cfg_kwargs))
    _randomize_lora(peft_model, seed)
    peft_model.save_pretrained(tmp_path / "adapter")
    merged = peft_model.merge_and_unload().state_dict()
    bake(str(tmp_path / "base"), tmp_path / "out", [LoraSpec(str(tmp_path / "adapter"))], progress=False)
    out = open_source(str(tmp_path / "out"))
    assert (tmp_path / "out" / "config.json").is_file()
    changed = 0
    for k in out.keys():
        exp = merged[k]
        torch.testing.assert_close(out.get(k), exp, rtol=1e-5, atol=1e-6, msg=k)
        changed += not torch.equal(exp, ref_state[k])
    assert changed > 0


def _llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    return LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False))


def _gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    return GPT2LMHeadModel(GPT2Config(vocab_size=64, n_positions=32, n_embd=32, n_layer=2, n_head=4,
                                      tie_word_embeddings=False))


@pytest.mark.parametrize("kw", [
    dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"]),
    dict(r=4, lora_alpha=8, use_rslora=True, target_modules=["q_proj", "k_proj", "o_proj", "up_proj", "embed_tokens"],
         rank_pattern={"k_proj": 2, r"layers\.1\.self_attn\.q_proj": 6}, alpha_pattern={"o_proj": 3}),
    dict(r=4, lora_alpha=16, use_dora=True, target_modules=["q_proj", "gate_proj"]),
], ids=["lora", "rslora-patterns-embedding", "dora"])
def test_peft_llama_equals_merge_and_unload(tmp_path, kw):
    _check(tmp_path, _llama, kw, seed=3)


def test_peft_gpt2_fan_in_fan_out(tmp_path):
    _check(tmp_path, _gpt2, dict(r=4, lora_alpha=8, target_modules=["c_attn", "c_fc"], fan_in_fan_out=True), seed=5)


def test_peft_adapter_of_a_unet_applies_to_its_pipeline(tmp_path, pipelines):
    """An adapter trained on the UNet module alone (PEFT names ``down_blocks.…``) applied to the whole diffusers
    pipeline (keys ``unet.down_blocks.…``) equals peft's merge_and_unload on that UNet; nothing else moves."""
    from diffusers import UNet2DConditionModel
    from peft import LoraConfig, get_peft_model

    folder = pipelines["sd1"]
    unet = UNet2DConditionModel.from_pretrained(str(folder / "unet"))
    peft_model = get_peft_model(unet, LoraConfig(r=4, lora_alpha=8, target_modules=["to_q", "to_out.0", "conv1"]))
    _randomize_lora(peft_model, 7)
    peft_model.save_pretrained(tmp_path / "adapter")
    merged = peft_model.merge_and_unload().state_dict()
    src, base = open_source(f"{folder}+{tmp_path / 'adapter'}"), open_source(str(folder))
    changed = 0
    for k in base.keys():
        got = src.get(k)
        if k.startswith("unet."):
            torch.testing.assert_close(got, merged[k[5:]], rtol=1e-5, atol=1e-6, msg=k)
            changed += not torch.equal(got, base.get(k))
        else:
            assert torch.equal(got, base.get(k)), k
    assert changed == sum(1 for k in merged if k.endswith(("to_q.weight", "to_out.0.weight", "conv1.weight")))
