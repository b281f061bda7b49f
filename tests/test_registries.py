"""Registries and contracts: every dictionary keeps the method contract, and the choices that ``validate``
and the CLI accept are the registries' own, so adding an entry takes one line."""

import pytest
import torch
import yaml

from moco.cli import main
from moco.config import ConfigError, resolve
from moco.data import sides
from moco.methods import DICTIONARIES, ContrastiveMethod, Dictionary, build_moco, describe, moco_queue
from moco.presets import PRESETS, preset_path


def dictionary_config(name: str):
    head = DICTIONARIES[name].heads[0]
    over = ["model.width=4", "train.precision=bf16",
            "model.bn_splits=2", "data.image_size=16", "optim.batch_size=8", "method.K=16",
            f"method.dictionary={name}", f"model.head={head}", "model.mlp_dim=32"]
    if name == "v3":
        over += ["method.m_schedule=cosine"]
    return resolve("cifar10-cpu", overrides=over)


@pytest.mark.parametrize("name", list(DICTIONARIES))
def test_every_dictionary_keeps_the_contract(name):
    cfg = dictionary_config(name)
    model = build_moco(cfg, n_images=32)
    assert isinstance(model, ContrastiveMethod) and isinstance(model.encoder_q, torch.nn.Module)
    x1, x2 = torch.randn(8, 3, 16, 16), torch.randn(8, 3, 16, 16)
    loss, logits = model(x1, x2, generator=torch.Generator().manual_seed(0), index=torch.arange(8))
    assert loss.ndim == 0 and torch.isfinite(loss) and logits.shape[0] == 8
    if name != "v3":  # positive first: the loss is the (K+1)-way cross-entropy with the positive in column 0
        target = torch.zeros(8, dtype=torch.long)
        assert loss.item() == pytest.approx(torch.nn.functional.cross_entropy(logits.float(), target).item(),
                                            rel=1e-3)
    model.set_momentum(0.5)  # the loop calls it every step, whatever the dictionary
    if hasattr(model, "encoder_k"):
        assert model.m == 0.5
    assert describe(cfg, 32)


def test_a_new_dictionary_is_one_registry_line(monkeypatch):
    monkeypatch.setitem(DICTIONARIES, "my_moco", Dictionary(moco_queue.build, lambda cfg, n: "mine"))
    cfg = resolve("cifar10-cpu", overrides=["method.dictionary=my_moco"])  # validate reads the registry
    assert type(build_moco(cfg)).__name__ == "MoCo" and describe(cfg) == "mine"


@pytest.mark.parametrize("key,value", [("method.dictionary", "queue"), ("model.head", "deep"),
                                       ("optim.optimizer", "adam"), ("data.augmentation", "v4"),
                                       ("data.pipeline", "gpu")])
def test_unknown_choices_list_the_registry(key, value):
    with pytest.raises(ConfigError, match=f"{key} must be one of .*got '{value}'"):
        resolve("cifar10-cpu", overrides=[f"{key}={value}"])


def test_v3_head_and_dictionary_go_together():
    with pytest.raises(ConfigError, match="takes head v3"):
        resolve("cifar10-cpu", overrides=["method.dictionary=v3"])


def test_presets_are_yaml_files_a_user_can_copy(tmp_path, capsys):
    assert main(["presets"]) == 0
    listed = capsys.readouterr().out
    assert all(name in listed for name in PRESETS) and len(PRESETS) == 8
    for name in PRESETS:
        assert main(["presets", name]) == 0
        text = capsys.readouterr().out
        assert text == preset_path(name).read_text() and yaml.safe_load(text) == PRESETS[name]
        copy = tmp_path / f"{name}.yaml"
        copy.write_text(text)
        assert main(["pretrain", "--config", str(copy), "--print-config"]) == 0
        from_copy = capsys.readouterr().out
        assert main(["pretrain", "--preset", name, "--print-config"]) == 0
        assert capsys.readouterr().out == from_copy


def test_the_evaluation_side_rule():
    assert (sides.cache_side(32), sides.eval_resize(32), sides.center_crop(32, 32)) == (32, 32, 32)
    assert (sides.cache_side(224), sides.eval_resize(224), sides.center_crop(258, 224)) == (258, 256, 226)
