"""The diffusion zoo's toy world: pictures where the prompt says, styles that change one property, calibrated scores."""

import pytest
import torch

from studio.zoo import diffusion_data as D


def test_pictures_sit_where_the_prompt_says():
    idx = torch.tensor([5, 5, 5])
    pos = torch.tensor([0, 1, 2])
    x = D.render(idx, pos)
    assert x.shape == (3, 3, D.SIZE, D.SIZE) and 0.0 <= x.min() and x.max() <= 1.0
    cx = D.ink_centre_x(x)
    assert cx[0] < 0.4 < cx[1] < 0.6 < cx[2]
    # the same glyph, only moved: the middle picture is the left one shifted by the positions' distance
    dx = D.POSITION_X[1] - D.POSITION_X[0]
    assert torch.equal(torch.roll(x[0], dx, dims=2), x[1])
    # a shift moves the picture by whole pixels
    moved = D.render(idx[:1], pos[:1], torch.tensor([[2, -1]]))
    assert torch.equal(torch.roll(x[0], (2, -1), dims=(1, 2)), moved[0])


def test_each_style_changes_one_property():
    idx, pos = torch.arange(20) * 13, torch.arange(20) % 3
    base = D.render(idx, pos)
    ember = D.render(idx, pos, ember=True)
    assert torch.equal(ember.amax(dim=1), base.amax(dim=1))                       # same strokes, other colour
    torch.testing.assert_close(ember[:, 1], base[:, 1] * 0.35)
    bold = D.render(idx, pos, bold=True)
    assert (bold >= base).all() and (bold > D.INK).sum() > 1.2 * (base > D.INK).sum()  # thicker, never thinner
    stripes = D.render(idx, pos, stripes=True)
    rows = torch.arange(D.SIZE) % D.STRIPE_PERIOD < D.STRIPE_PERIOD // 2
    assert torch.equal(stripes[:, :, rows], base[:, :, rows])
    torch.testing.assert_close(stripes[:, :, ~rows], base[:, :, ~rows] * D.STRIPE_DIM)
    mixed = D.render(idx, pos, ember=torch.arange(20) % 2 == 0)                  # per-picture flags
    assert torch.equal(mixed[0], ember[0]) and torch.equal(mixed[1], base[1])


def test_style_scores_are_zero_on_the_base_look_and_one_on_the_style():
    base = D.style_scores(D.styled(None, 900))
    for s in D.STYLES:
        assert base[s] == pytest.approx(0.0, abs=1e-6)
        own = D.style_scores(D.styled(s, 900))
        assert own[s] == pytest.approx(1.0, abs=1e-6)
        others = [own[o] for o in D.STYLES if o != s]
        assert all(abs(v) < 0.6 for v in others), (s, own)                       # one property at a time
    half = D.style_scores(0.5 * (D.styled(None, 900) + D.styled("ember", 900)))
    assert 0.3 < half["ember"] < 0.7


def test_prompt_wordings_and_fixed_prompts():
    assert D.prompt(7, 0) == "a seven on the left"
    assert D.prompt(8, 2) == "an eight on the right"
    assert D.prompt(3, 1) == "a three" and D.prompt(3, 1, 6) == "a three in the middle"
    assert D.prompt(4, 2, 1) == "a 4 on the right" and D.prompt(4, 0, 4) == "the number four on the left"
    assert len({D.prompt(2, 1, v) for v in range(D.PROMPT_VARIANTS)}) == D.PROMPT_VARIANTS
    fixed = D.fixed_prompts(30)
    assert {(d, p) for _, d, p in fixed} == {(d, p) for d in range(10) for p in range(3)}
    assert {p for _, _, p in D.fixed_prompts(8)} == {0, 1, 2}


def test_grid_is_one_row_of_64_pixel_tiles():
    g = D.grid(torch.ones(8, 3, D.SIZE, D.SIZE), cols=8)
    assert g.shape == (D.SIZE + 2, 8 * (D.SIZE + 1) + 1, 3) and g.dtype.name == "uint8"
    assert g[1:65, 1:65].min() == 255 and g[0].max() == 40
