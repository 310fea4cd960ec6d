"""Three people's first hour, in Chromium, end to end, with screenshots in test-artifacts/journey-*.png:

- a teacher: the demo, a slider, the analysis, the history (restore an entry), and a page reload that keeps it all;
- an artist: two SD pipelines opened from the file browser into a new recipe, a block preset, exports into the
  workspace that diffusers loads (a folder with ``from_pretrained``, a single file with ``from_single_file``);
- an LLM practitioner: a Llama folder from the file browser, a mergekit YAML pasted in, an export that transformers
  loads, equal to the CLI's merge of the same YAML.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tinymodels import add_word_tokenizer, make_llama  # noqa: E402
from test_browser import ARTIFACTS, CHROMIUM, studio_page  # noqa: E402

from studio.engine import merge_in_memory  # noqa: E402
from studio.recipe import Recipe  # noqa: E402

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Chromium is not installed")


@pytest.fixture(scope="module")
def journey_server(toy_family, tmp_path_factory):
    """The studio as ``python app.py --workspace WS --allow OWN`` starts it: the demo zoo (the toy family when the
    zoo is not built), a workspace, and a folder of the user's own SD pipelines and Llama models."""
    from conftest import _free_port
    from studio.sd import synth
    from studio.ui.app import build_app
    from studio.ui.catalog import Catalog, zoo_families
    from studio.ui.env import StudioEnv
    from studio.ui.paths import AllowedRoots

    own = tmp_path_factory.mktemp("own")
    for name, seed in (("my-sd-a", 1), ("my-sd-b", 2)):
        synth.write_random_pipeline(own / name, "sd1", seed=seed, tiny=True, runnable=True, tokenizers=True)
    base = make_llama(own / "llama-base", seed=0)
    from safetensors.torch import load_file
    state = load_file(str(base / "model.safetensors"))
    for name, seed in (("llama-a", 1), ("llama-b", 2)):
        add_word_tokenizer(make_llama(own / name, seed=seed, base_state=state))
    families = zoo_families() or {"toy": toy_family}
    ws = tmp_path_factory.mktemp("ws")
    env = StudioEnv(Catalog(families), AllowedRoots([own]), device="cpu", workspace=ws)
    ui = build_app(env)
    port = _free_port()
    ui.launch(port=port, prevent_thread_lock=True, quiet=True)
    yield {"url": f"http://127.0.0.1:{port}", "own": own, "ws": ws}
    ui.demo.close()


def _shot(page, name):
    page.screenshot(path=str(ARTIFACTS / f"journey-{name}.png"), full_page=True)


def _idle(page, expect, timeout=120_000):
    expect(page.get_by_text("processing")).to_have_count(0, timeout=timeout)


def _open_place(page, expect, folder: Path):
    """The file browser (opened) on one of the allowed folders."""
    if not page.locator("#files-place").is_visible():
        page.get_by_text("Open your files").click()
    page.locator("#files-place input").click()
    page.get_by_role("option", name=f"allowed · {folder}").click()
    expect(page.locator("#files-table")).to_contain_text("my-sd-a", timeout=30_000)


def _pick(page, expect, name: str):
    page.locator("#files-table").get_by_text(name, exact=True).filter(visible=True).first.click()
    expect(page.locator("#files-where")).to_contain_text(f"selected {name}", timeout=30_000)


def _export(page, expect, fmt: str, name: str):
    page.get_by_role("tab", name="Export").click()
    page.locator("#export-format").get_by_text(fmt, exact=False).click()
    page.locator("#export-name input, #export-name textarea").first.fill(name)
    page.locator("#export-btn").click()
    expect(page.locator("#export-result")).to_contain_text("Exported", timeout=120_000)


def test_teacher(journey_server):
    expect = pytest.importorskip("playwright.sync_api").expect
    with studio_page(journey_server["url"]) as page:
        latency = page.locator("#latency")
        _shot(page, "teacher-1-demo")
        page.get_by_role("tab", name="Recipe").click()
        first = page.locator("#yaml").inner_text()
        shown = latency.inner_text()
        slider = page.locator("#g-slider-1 input[type=number]")  # λ (slot 0 is the normalize box)
        slider.fill("0.65")
        slider.press("Enter")
        expect(latency).not_to_have_text(shown, timeout=60_000)
        expect(page.locator("#yaml")).to_contain_text("0.65", timeout=10_000)
        _shot(page, "teacher-2-slider")

        page.get_by_role("tab", name="Analysis").click()
        page.locator("#sweep-btn").click()
        expect(page.locator("#landscape .js-plotly-plot")).to_be_visible(timeout=120_000)
        _idle(page, expect)
        _shot(page, "teacher-3-analysis")

        page.get_by_role("tab", name="History").click()
        table = page.locator("#history-table")
        expect(table).to_contain_text("lambda=0.65", timeout=30_000)   # the demo's recipe, then λ = 0.65
        expect(table).to_contain_text("lambda=0.3")
        page.locator("#history-entry input").fill("1")
        page.locator("#history-restore").click()
        page.get_by_role("tab", name="Recipe").click()
        expect(page.locator("#yaml")).not_to_contain_text("0.65", timeout=30_000)
        _idle(page, expect)
        restored = page.locator("#yaml").inner_text()
        assert restored.split() == first.split()
        _shot(page, "teacher-4-restored")

        # a reload keeps the tab's recipe and history (the browser stores them)
        page.get_by_role("tab", name="Recipe").click()
        slider.fill("0.45")
        slider.press("Enter")
        expect(page.locator("#yaml")).to_contain_text("0.45", timeout=60_000)
        _idle(page, expect)
        page.reload()
        expect(latency).to_contain_text("ms", timeout=120_000)
        page.get_by_role("tab", name="Recipe").click()
        expect(page.locator("#yaml")).to_contain_text("0.45", timeout=60_000)
        page.get_by_role("tab", name="History").click()
        expect(page.locator("#history-table")).to_contain_text("0.65", timeout=30_000)
        _shot(page, "teacher-5-after-reload")


def test_artist(journey_server):
    expect = pytest.importorskip("playwright.sync_api").expect
    own, ws = journey_server["own"], journey_server["ws"]
    with studio_page(journey_server["url"]) as page:
        _open_place(page, expect, own)
        _pick(page, expect, "my-sd-a")
        page.locator("#files-start").click()
        expect(page.locator("#include-models")).to_contain_text("my-sd-a", timeout=60_000)
        _pick(page, expect, "my-sd-b")
        expect(page.locator("#files-open")).to_have_text("Add to recipe")
        page.locator("#files-open").click()
        expect(page.locator("#include-models")).to_contain_text("my-sd-b", timeout=60_000)
        expect(page.locator("#gallery img").first).to_be_visible(timeout=180_000)
        _idle(page, expect, 180_000)
        _shot(page, "artist-1-opened")

        page.get_by_role("tab", name="Recipe").click()
        page.locator("#preset input").click()
        page.get_by_role("option", name="GRAD_V", exact=True).click()
        expect(page.locator("#yaml")).to_contain_text("OUT11", timeout=60_000)
        _idle(page, expect, 180_000)
        _shot(page, "artist-2-preset")

        _export(page, expect, "folder", "artist-mix")
        _shot(page, "artist-3-export")
        _export(page, expect, "single .safetensors", "artist-mix")
    folder, single = ws / "exports" / "artist-mix", ws / "exports" / "artist-mix.safetensors"
    recipe = Recipe.load(folder / "mergekit_config.yml")
    assert recipe.merge_method == "linear" and "IN00" in str(recipe.to_dict())
    expected = merge_in_memory(recipe)
    from diffusers import StableDiffusionPipeline
    pipe = StableDiffusionPipeline.from_pretrained(folder, local_files_only=True)

    def plain(key):  # CLIP's ``text_model.`` level: files and transformers versions differ on it
        return key.replace("text_model.", "")
    state = {plain(f"{name}.{k}"): v for name in ("unet", "vae", "text_encoder")
             for k, v in getattr(pipe, name).state_dict().items()}
    for k, v in expected.items():
        torch.testing.assert_close(state[plain(k)], v.to(state[plain(k)].dtype))
    # the single file has the original (ldm) names A1111, ComfyUI and diffusers' from_single_file read
    assert (ws / "exports" / "artist-mix.recipe.yml").is_file()
    one = StableDiffusionPipeline.from_single_file(str(single), config=str(own / "my-sd-a"), local_files_only=True)
    for name in ("unet", "vae", "text_encoder"):
        for k, v in getattr(one, name).state_dict().items():
            torch.testing.assert_close(v.float(), getattr(pipe, name).state_dict()[k].float())  # both float16 data


def test_llm_practitioner(journey_server):
    expect = pytest.importorskip("playwright.sync_api").expect
    own, ws = journey_server["own"], journey_server["ws"]
    yaml_text = (f"merge_method: slerp\nbase_model: {own / 'llama-a'}\nmodels:\n  - model: {own / 'llama-a'}\n"
                 f"  - model: {own / 'llama-b'}\nparameters:\n  t: [0.0, 0.5, 1.0]\ndtype: float32\n")
    with studio_page(journey_server["url"]) as page:
        _open_place(page, expect, own)
        _pick(page, expect, "llama-a")
        page.locator("#files-start").click()
        expect(page.locator("#include-models")).to_contain_text("llama-a", timeout=60_000)
        expect(page.locator("#latency")).to_contain_text("perplexity", timeout=120_000)  # at once, nothing typed
        _idle(page, expect)
        _shot(page, "llm-1-opened")

        page.get_by_role("tab", name="Recipe").click()
        editor = page.locator("#yaml .cm-content")
        editor.click()
        page.keyboard.press("Control+a")
        page.keyboard.press("Delete")
        editor.fill(yaml_text)
        page.locator("#apply-yaml").click()
        expect(page.locator("#verdict")).to_contain_text("slerp", timeout=60_000)
        expect(page.locator("#include-models")).to_contain_text("llama-b", timeout=60_000)
        _idle(page, expect)
        _shot(page, "llm-2-yaml")

        _export(page, expect, "folder", "llm-slerp")
        _shot(page, "llm-3-export")
    out = ws / "exports" / "llm-slerp"
    from transformers import AutoModelForCausalLM, AutoTokenizer
    model = AutoModelForCausalLM.from_pretrained(out, local_files_only=True)
    AutoTokenizer.from_pretrained(out, local_files_only=True)
    expected = merge_in_memory(Recipe.from_yaml(yaml_text))
    got = model.state_dict()
    for k, v in expected.items():
        torch.testing.assert_close(got[k], v.to(got[k].dtype))
