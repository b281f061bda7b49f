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


def pin_mismatches(preset: str, cfg) -> list[str]:
    """Where ``cfg`` breaks ``preset``'s pins: a value that is not the authors' without a reason, or a stated
    deviation that is no longer one (a stale reason would hide a change)."""
    out = []
    for row in PROVENANCE[preset]:
        if row.authors is OURS:
            continue
        ours = _value(cfg, row.key)
        if row.differs and ours == row.authors:
            out.append(f"{preset} {row.key}: equals the authors' now; drop the 'differs' reason")
        elif not row.differs and ours != row.authors:
            out.append(f"{preset} {row.key}: ours {ours!r}, the authors' {row.authors!r}")
    return out


@pytest.mark.parametrize("preset", sorted(PROVENANCE))
def test_preset_equals_the_authors_values_except_where_a_reason_is_given(preset):
    assert pin_mismatches(preset, resolve(preset)) == []


@pytest.mark.parametrize("preset", sorted(PROVENANCE))
def test_every_value_a_preset_sets_has_a_source(preset):
    written = yaml.safe_load(preset_path(preset).read_text())
    keys = {f"{section}.{key}" for section, values in written.items() for key in values}
    listed = {row.key for row in PROVENANCE[preset]}
    assert keys <= listed, f"{preset}: no source for {sorted(keys - listed)}"
    assert len(listed) == len(PROVENANCE[preset]), f"{preset}: a key is listed twice"


def test_the_pins_catch_a_changed_value():
    changed = resolve("cifar10-demo", overrides=["data.crop_min_scale=0.2"])  # what the demo preset used to have
    assert [m for m in pin_mismatches("cifar10-demo", changed) if "data.crop_min_scale" in m]
    deviation = next((p, r) for p in PROVENANCE for r in PROVENANCE[p] if r.differs and r.authors is not OURS)
    preset, row = deviation  # a stated deviation set back to the authors' value: the reason is stale
    section, name = row.key.split(".")
    back = resolve(preset)
    setattr(getattr(back, section), name, row.authors)
    assert [m for m in pin_mismatches(preset, back) if row.key in m and "drop the 'differs'" in m]


def test_the_deviations_found_in_review_are_fixed():
    demo = resolve("cifar10-demo")
    assert demo.data.crop_min_scale == 0.08 and demo.data.normalize == "cifar10"
    assert "head" in demo.train.knn_features
    assert resolve("imagenet-v3-r50").data.crop_min_scale == 0.2  # CONFIG.md's ResNet-50 command
    assert resolve("imagenet-v2").data.normalize == "imagenet"


def test_docs_presets_md_is_current():
    assert DOCS.read_text() == render(resolve), "regenerate: python scripts/presets_doc.py > docs/presets.md"
