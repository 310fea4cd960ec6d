"""The zoo's hooks into studio.learn: its vision-backbone adapter and its `zoo` data spec, found through learn's
registries (learn itself never imports the zoo)."""

from __future__ import annotations

import pytest
import torch

from studio.errors import StudioError
from studio.learn import adapters, data
from studio.learn.adapters import make_adapter
from studio.learn.data import resolve_data
from studio.zoo import vision as V
from studio.zoo.unlabeled_data import resolve_zoo_data
from studio.zoo.vision_adapter import VisionAdapter, detect_vision_backbone


def test_importing_studio_registers_the_zoo_hooks():
    assert detect_vision_backbone in adapters.ADAPTER_DETECTORS
    assert adapters.ADAPTER_DETECTORS.index(detect_vision_backbone) > 0  # after the transformers kinds
    assert resolve_zoo_data in data.DATA_RESOLVERS


def test_zoo_backbone_gets_the_vision_adapter_and_zoo_data(vision_zoo):
    ad = make_adapter(vision_zoo["base"], vision_zoo["experts"], device=torch.device("cpu"))
    assert type(ad) is VisionAdapter and ad.tasks == vision_zoo["tasks"]
    assert ad.module.cfg == V.CONFIG
    got = resolve_data("zoo", ad, max_items=20)
    for t in ad.tasks:
        torch.testing.assert_close(got[t], V.task_data(t, "unlabeled")[0][:20])
    assert detect_vision_backbone(vision_zoo["experts"][0], None) is VisionAdapter
    assert resolve_zoo_data("images/", ad) is None


def test_zoo_data_needs_a_family_with_data(vision_zoo):
    class Kind:
        kind, tasks = "clip", ["a"]

    with pytest.raises(StudioError, match="no data for clip models"):
        resolve_zoo_data("zoo", Kind())


def test_an_adapter_detector_registered_elsewhere_is_used(vision_zoo, monkeypatch):
    seen = []

    class Traced(VisionAdapter):
        kind = "traced"

    def detect(base, config):
        seen.append((base, config))
        return Traced

    monkeypatch.setattr(adapters, "ADAPTER_DETECTORS", [adapters.detect_transformers, detect])
    ad = make_adapter(vision_zoo["base"], vision_zoo["experts"][:1], device=torch.device("cpu"), tasks=["digits"])
    assert type(ad) is Traced and seen == [(vision_zoo["base"], None)]
    monkeypatch.setattr(adapters, "ADAPTER_DETECTORS", [adapters.detect_transformers])
    with pytest.raises(StudioError, match="learned merging supports"):
        make_adapter(vision_zoo["base"], vision_zoo["experts"][:1], device=torch.device("cpu"))
