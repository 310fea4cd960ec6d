"""``MODEL+SUFFIX`` references go through studio.sources.REFERENCE_MODIFIERS, which the upper floors fill."""

import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file

from studio.errors import SourceError
from studio.sources import DictSource, open_source, resolve


def test_importing_the_sources_alone_registers_lora_references():
    code = ("import studio.sources.resolve as r; "
            "print(' '.join(f'{f.__module__}.{f.__name__}' for f in r.REFERENCE_MODIFIERS))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["studio.lora.apply.lora_reference"]


def test_first_modifier_that_answers_wins_and_an_unknown_suffix_is_an_error(tmp_path, monkeypatch):
    w = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    save_file({"w": w}, tmp_path / "m.safetensors")
    calls = []

    def declines(base, suffix, ref):
        calls.append(("declines", suffix))
        return None

    def doubles(base, suffix, ref):
        calls.append(("doubles", suffix))
        return DictSource({k: base.get(k) * 2 for k in base.keys()}, ref=ref) if suffix == "x2" else None

    monkeypatch.setattr(resolve, "REFERENCE_MODIFIERS", [declines, doubles])
    src = open_source(f"{tmp_path / 'm.safetensors'}+x2")
    torch.testing.assert_close(src.get("w"), 2 * w)
    assert src.ref == f"{tmp_path / 'm.safetensors'}+x2"
    assert calls == [("declines", "x2"), ("doubles", "x2")]
    with pytest.raises(SourceError, match=r"nothing understands '\+x3'"):
        open_source(f"{tmp_path / 'm.safetensors'}+x3")


def test_short_names_of_references():
    from studio.sources.resolve import short_name

    assert short_name("/m/base.safetensors+/l/ink.safetensors:0.8") == "base+ink"
    assert short_name("/models/my-llama/") == "my-llama" and short_name("org/name@main") == "name@main"
    assert short_name("lora:prose") == "lora:prose" and short_name("current") == "current"
    assert short_name("x.ckpt") == "x" and short_name(r"C:\m\x.safetensors") == "x"
