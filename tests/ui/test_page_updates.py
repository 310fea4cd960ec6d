"""What an event sends back to the page: only the components whose properties changed, the preview when it is new,
a refused value set back at once, and never a traceback (the studio's Blocks built in-process, no browser)."""

from __future__ import annotations

import shutil

import gradio as gr
import pytest
import yaml

from studio.errors import RecipeError
from studio.ui.app import build_app


@pytest.fixture()
def page(env):
    return build_app(env), env.new_session()


def sent_value(update):
    return update.get("value") if isinstance(update, dict) else update


def test_an_unchanged_page_gets_nothing_but_the_state(page):
    ui, s = page
    first = ui.changes(s, s.preview())
    assert ui.r.yaml in first and ui.p.plot in first and ui.m.table in first
    assert set(ui.changes(s, s.last_preview)) == {ui.state}


def test_a_per_layer_edit_sends_the_recipe_text_the_note_and_the_new_preview(page):
    ui, s = page
    ui.changes(s, s.preview())
    s.set_group_value("L01", 0.9)
    out = ui.changes(s, s.preview())
    sent = set(out) - {ui.state}
    assert {ui.r.yaml, ui.r.layout_note, ui.h.table, ui.p.plot, ui.p.latency, ui.p.formula} <= sent
    assert ui.r.strip[2] in sent and sent_value(out[ui.r.strip[2]]) == 0.9  # the L01 slider (EMB is slot 0)
    # nothing else of the control column: no other strip slider, no plain slider, no model row
    assert not sent & (set(ui.r.strip) - {ui.r.strip[2]}) and not sent & set(ui.r.g_slider)
    assert not sent & {sl for row in ui.r.m_slider for sl in row}
    assert "L01: 0.9" in sent_value(out[ui.r.yaml])


def test_a_refused_value_is_set_back_on_the_control_that_sent_it(page):
    ui, s = page
    s.set_method("slerp")  # three experts: SLERP takes one, so the recipe does not validate
    ui.changes(s, s.last_preview)
    t_slider = ui.r.g_slider[0]
    ui.resend(s, [t_slider])  # the user dragged it to 0.9 …
    with pytest.raises(RecipeError):
        s.set_value("parameters.t", 0.9)  # … and the edit is refused
    out = ui.changes(s, s.last_preview, "refused")
    assert sent_value(out[t_slider]) == 0.5 and out[ui.p.status] == "⚠ refused"


def test_a_recipe_whose_base_cannot_be_opened_still_renders(page, toy_family, tmp_path):
    ui, s = page
    gone = tmp_path / "gone.safetensors"
    shutil.copy(toy_family.base, gone)
    text = yaml.safe_dump(dict(s.recipe, base_model=str(gone)))
    gone.unlink()
    s.set_yaml(text)  # inside the allowed folder: accepted, the dry run says what is wrong
    out = ui.changes(s, s.last_preview)
    assert "Will not merge" in sent_value(out[ui.m.verdict]) and "gone.safetensors" in sent_value(out[ui.m.verdict])
    assert "Layout **flat** · 1 groups" in sent_value(out[ui.r.layout_note])


def test_yaml_reaching_outside_the_allowed_folders_through_vae_or_tokenizer_is_refused(page):
    from studio.ui.paths import PathNotAllowed

    ui, s = page
    for key in ("vae", "tokenizer_source"):
        with pytest.raises(PathNotAllowed):
            s.set_yaml(yaml.safe_dump(dict(s.recipe, **{key: "/etc/hostname"})))


def test_events_use_small_scopes_for_frequent_edits(page):
    ui, _ = page
    blocks = ui.demo.fns.values()
    by_trigger = {}
    for fn in blocks:
        for target in fn.targets:
            by_trigger[(target[0], target[1])] = len(fn.outputs)
    assert isinstance(ui.r.strip[3], gr.Slider)
    assert by_trigger[(ui.r.strip[3]._id, "release")] < 20 < len(ui.outputs)


def test_new_recipe_starts_empty_and_the_next_model_starts_it(page, toy_family, tmp_path):
    ui, s = page
    ui.changes(s, s.preview())
    demo = dict(s.recipe)
    s.new_recipe()
    out = ui.changes(s, s.preview())
    assert s.family is None and s.included() == [] and s.available == [] and s.recipe == {}
    assert "own models" in sent_value(out[ui.m.about]) and sent_value(out[ui.m.family]) is None
    assert ui.p.status not in out  # an empty recipe is not an error …
    assert "no models yet" in sent_value(out[ui.p.latency])  # … the preview says what to do
    mine = tmp_path / "mine.safetensors"
    shutil.copy(toy_family.experts["alpha"], mine)
    s.add_model(str(mine))
    assert s.included() == [str(mine)] and s.recipe["merge_method"] == "linear"
    assert s.undo() and s.recipe == demo and set(s.available) >= set(s.included())  # the empty step is skipped
