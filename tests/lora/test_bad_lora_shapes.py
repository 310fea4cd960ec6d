"""A LoRA whose factors cannot make a ΔW (ranks that differ between up and down, a Tucker core that joins nothing,
LoHa/LoKr factors of the wrong shapes, a missing factor) or whose ΔW does not fit its target is refused when it is
read, naming the module: never a RuntimeError from a matmul during the merge."""

import pytest
from safetensors.torch import save_file

from badinputs import LORA_ROWS, lora_base
from studio.errors import StudioError
from studio.lora import apply_lora_source, read_lora
from studio.sources import open_source


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    path = tmp_path_factory.mktemp("lora_base") / "base.safetensors"
    save_file(lora_base(), path)
    return path


@pytest.mark.parametrize("row", sorted(LORA_ROWS))
def test_a_lora_that_cannot_apply_is_refused_when_read_naming_the_module(tmp_path, base, row):
    tensors, module = LORA_ROWS[row]
    path = tmp_path / "l.safetensors"
    save_file(tensors, path)
    with pytest.raises(StudioError) as err:
        apply_lora_source(open_source(str(base)), open_source(str(path)))  # headers only: nothing merged yet
    message = str(err.value)
    assert module in message and str(path) in message and "\n" not in message


def test_the_same_flavours_with_fitting_factors_are_read(tmp_path):
    """Every row's flavour (LoRA, LoCon, Tucker, LoHa and its Tucker form, LoKr, PEFT embeddings, DoRA) with factors
    that fit: read without complaint (the rows fail on their one broken factor, not on their flavour)."""
    import torch

    def r(*shape):
        return torch.randn(*shape)

    fine = {"net.fc.lora_A.weight": r(4, 8), "net.fc.lora_B.weight": r(16, 4), "net.fc.lora_magnitude_vector": r(16),
            "net.conv.lora_mid.weight": r(2, 3, 3, 3), "net.conv.lora_up.weight": r(16, 2, 1, 1),
            "net.conv.lora_down.weight": r(3, 8, 1, 1), "net.emb.lora_embedding_A": r(4, 10),
            "net.emb.lora_embedding_B": r(8, 4),
            "a.hada_w1_a": r(2, 16), "a.hada_w1_b": r(2, 8), "a.hada_t1": r(2, 2, 3, 3), "a.hada_w2_a": r(3, 16),
            "a.hada_w2_b": r(3, 8), "a.hada_t2": r(3, 3, 3, 3),
            "b.lokr_w1_a": r(2, 1), "b.lokr_w1_b": r(1, 2), "b.lokr_w2_a": r(2, 8), "b.lokr_w2_b": r(2, 4),
            "b.lokr_t2": r(2, 2, 3, 3)}
    save_file(fine, tmp_path / "fine.safetensors")
    net = read_lora(open_source(str(tmp_path / "fine.safetensors")))
    assert {n: m.delta_shape() for n, m in net.modules.items()} == {
        "net.fc": (16, 8), "net.conv": (16, 8, 3, 3), "net.emb": (10, 8), "a": (16, 8, 3, 3), "b": (16, 8, 3, 3)}
