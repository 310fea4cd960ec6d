"""Ctrl-C (SIGINT) and SIGTERM in the middle of a merge end as SIGKILL does — no target — and better: no temporary
``.partial-*`` sibling either, exit status 130 / 143 and one line on stderr. A real merge in a subprocess, signalled
once its first shard is on disk."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parents[2]
TENSORS = 12   # × 4 MB per model; a Karcher mean of 100 steps keeps each tensor busy for most of a second


@pytest.fixture(scope="module")
def slow_recipe(tmp_path_factory):
    root = tmp_path_factory.mktemp("signal_models")
    for name, seed in (("a", 1), ("b", 2)):
        g = torch.Generator().manual_seed(seed)
        save_file({f"layer.{i}.weight": torch.randn(1024, 1024, generator=g) for i in range(TENSORS)},
                  str(root / f"{name}.safetensors"))
    recipe = root / "slow.yml"
    recipe.write_text(f"merge_method: karcher\nparameters: {{max_iter: 100, tol: 0}}\n"
                      f"models: [{root / 'a.safetensors'}, {root / 'b.safetensors'}]\n")
    return recipe


def first_shard_written(folder: Path) -> bool:
    """A temporary sibling holding a finished shard: the merge is well under way."""
    for partial in folder.glob(".*.partial-*"):
        shards = list(partial.glob("*.safetensors")) if partial.is_dir() else [partial]
        if any(p.stat().st_size > 4_000_000 for p in shards if p.exists()):
            return True
    return False


def restore_default_signals():
    # a test runner may start us with SIGINT ignored (a background job); the merge's CLI keeps an ignored signal
    # ignored, as it should, so the child starts with the defaults a terminal gives
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


@pytest.mark.parametrize("sig, status, single", [(signal.SIGINT, 130, False), (signal.SIGTERM, 143, True)],
                         ids=["SIGINT into a folder", "SIGTERM into a single file"])
def test_signal_mid_merge_leaves_nothing(slow_recipe, tmp_path, sig, status, single):
    out = tmp_path / ("merged.safetensors" if single else "merged")
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "studio", "merge", str(slow_recipe), str(out), "--quiet",
                             "--device", "cpu", "--shard-size", "4M"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=restore_default_signals)
    try:
        deadline = time.monotonic() + 120
        while not first_shard_written(tmp_path):
            assert proc.poll() is None, f"the merge ended before it could be signalled: {proc.communicate()}"
            assert time.monotonic() < deadline, "no shard was written in two minutes"
            time.sleep(0.05)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == status, err
    assert err.strip().splitlines() == ["interrupted: nothing written"]
    assert sorted(p.name for p in tmp_path.iterdir()) == []   # no target, no .partial-*, no .recipe.yml


def test_handlers_are_the_callers_again_after_a_command(tmp_path, capsys):
    from studio.cli import main
    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    assert main(["merge", str(tmp_path / "missing.yml"), str(tmp_path / "out")]) == 2
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
