"""The reproduction presets are the authors' recipes, value by value (moco/presets/provenance.py)."""

from pathlib import Path

import pytest
import yaml

from moco.config import resolve
from moco.presets import preset_path
from moco.presets.provenance import OURS, PROVENANCE, render

DOCS = Path(__file__).resolve().parents[1] / "docs" / "presets.md"


def _value(cfg, key):
    section, name = key.split(".")
    return getattr(getattr(cfg, section), name)


@pytest.mark.parametrize("preset", sorted(PROVENANCE))
def test_preset_equals_the_authors_values_except_where_a_reason_is_given(preset):
    cfg = resolve(preset)
    for row in PROVENANCE[preset]:
        if row.authors is OURS:
            continue
        ours = _value(cfg, row.key)
        if row.differs:  # a stated deviation must still be one: a stale reason would hide a change
            assert ours != row.authors, f"{preset} {row.key}: equals the authors' now; drop the 'differs' reason"
        else:
            assert ours == row.authors, f"{preset} {row.key}: ours {ours!r}, the authors' {row.authors!r}"


@pytest.mark.parametrize("preset", sorted(PROVENANCE))
def test_every_value_a_preset_sets_has_a_source(preset):
    written = yaml.safe_load(preset_path(preset).read_text())
    keys = {f"{section}.{key}" for section, values in written.items() for key in values}
    listed = {row.key for row in PROVENANCE[preset]}
    assert keys <= listed, f"{preset}: no source for {sorted(keys - listed)}"
    assert len(listed) == len(PROVENANCE[preset]), f"{preset}: a key is listed twice"


def test_the_pins_catch_a_changed_value():
    cfg = resolve("cifar10-demo", overrides=["data.crop_min_scale=0.2"])  # what the demo preset used to have
    row = next(r for r in PROVENANCE["cifar10-demo"] if r.key == "data.crop_min_scale")
    assert _value(cfg, row.key) != row.authors


def test_the_deviations_found_in_review_are_fixed():
    demo = resolve("cifar10-demo")
    assert demo.data.crop_min_scale == 0.08 and demo.data.normalize == "cifar10"
    assert "head" in demo.train.knn_features
    assert resolve("imagenet-v3-r50").data.crop_min_scale == 0.2  # CONFIG.md's ResNet-50 command
    assert resolve("imagenet-v2").data.normalize == "imagenet"


def test_docs_presets_md_is_current():
    assert DOCS.read_text() == render(resolve), "regenerate: python scripts/presets_doc.py > docs/presets.md"
