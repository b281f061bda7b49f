"""Config resolution: presets, YAML, overrides, type and range checks with one-line errors."""

import pytest

from moco.config import PRESETS, ConfigError, resolve


def test_presets_resolve_to_the_documented_recipes():
    demo = resolve("cifar10-demo")
    assert (demo.method.K, demo.method.m, demo.method.T) == (4096, 0.99, 0.1)
    assert (demo.optim.batch_size, demo.optim.lr, demo.optim.weight_decay) == (512, 0.06, 5e-4)
    assert demo.model.cifar_stem and demo.model.bn_splits == 8 and demo.optim.schedule == "cosine"
    v1 = resolve("imagenet-v1")
    assert (v1.method.K, v1.method.m, v1.method.T, v1.model.head) == (65536, 0.999, 0.07, "linear")
    assert v1.optim.milestones == [120, 160] and v1.optim.lr == 0.03
    v2 = resolve("imagenet-v2")
    assert (v2.method.T, v2.model.head, v2.data.augmentation, v2.optim.schedule) == (0.2, "mlp", "v2", "cosine")
    cpu = resolve("cifar10-cpu")
    assert cpu.model.width < 64
    for name in PRESETS:
        resolve(name)


def test_precedence_preset_file_flags_set(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("method:\n  K: 8192\n  m: 0.9\noptim:\n  epochs: 3\n")
    cfg = resolve("cifar10-cpu", str(f), {"optim.epochs": 5}, ["method.m=0.95", "model.head=linear"])
    assert cfg.method.K == 8192
    assert cfg.optim.epochs == 5
    assert cfg.method.m == 0.95
    assert cfg.model.head == "linear"


def test_set_parses_types():
    cfg = resolve("cifar10-cpu", overrides=["method.symmetric=true", "optim.milestones=[2, 4]", "method.T=0.2",
                                            "detect.anchor_ratios=[1, 0.5]"])
    assert cfg.method.symmetric is True and cfg.optim.milestones == [2, 4] and cfg.method.T == 0.2
    assert cfg.detect.anchor_ratios == [1.0, 0.5] and all(type(r) is float for r in cfg.detect.anchor_ratios)


@pytest.mark.parametrize(
    "override, message",
    [
        ("method.k=4096", "did you mean 'method.K'"),
        ("optim.epoch=3", "did you mean 'optim.epochs'"),
        ("K=100", "did you mean 'method.K'"),
        ("method.m=fast", "must be a number"),
        ("optim.epochs=2.5", "must be an integer"),
        ("method.symmetric=maybe", "must be true or false"),
        ("method.m=1.0", "method.m must be in [0, 1)"),
        ("method.m=-0.1", "method.m must be in [0, 1)"),
        ("method.T=0", "method.T must be > 0"),
        ("model.width=0", "model.width must be >= 1"),
        ("method.K=100", "method.K (100) must be >="),
        ("model.arch=resnet19", "model.arch must be one of"),
        ("optim.lr=-1", "optim.lr must be > 0"),
        ("detect.anchor_ratios=[a]", "must be a list of numbers"),
        ("detect.anchor_ratios=[]", "detect.anchor_ratios must be a non-empty list"),
        ("detect.anchor_ratios=[0, 1]", "positive height/width ratios"),
        ("detect.rpn_per_image=0", "detect.rpn_per_image must be >= 1"),
    ],
)
def test_bad_values_give_one_line_errors(override, message):
    with pytest.raises(ConfigError) as e:
        resolve("cifar10-cpu", overrides=[override])
    assert message in str(e.value)
    assert "\n" not in str(e.value)


def test_queue_must_hold_a_symmetric_step():
    with pytest.raises(ConfigError, match="symmetric"):
        resolve("cifar10-cpu", overrides=["method.K=300", "method.symmetric=true"])


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        resolve(config_file=str(tmp_path / "nope.yaml"))
    f = tmp_path / "bad.yaml"
    f.write_text("method: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        resolve(config_file=str(f))
    f.write_text("methd:\n  K: 5\n")
    with pytest.raises(ConfigError, match="did you mean 'method"):
        resolve(config_file=str(f))
    with pytest.raises(ConfigError, match="unknown preset"):
        resolve("cifar10-gpu")


def test_the_old_knn_every_key_still_sets_the_evaluation_interval_with_one_warning(tmp_path, caplog):
    import logging

    from moco import config as config_module
    from moco.config import from_dict

    config_module._warned.clear()
    f = tmp_path / "old.yaml"
    f.write_text("train:\n  knn_every: 3\n")
    with caplog.at_level(logging.WARNING, logger="moco"):
        cfg = resolve("cifar10-cpu", str(f), overrides=["train.knn_every=4"])
        again = resolve("cifar10-cpu", overrides=["train.knn_every=5"])
    assert cfg.train.eval_every == 4 and again.train.eval_every == 5  # the --set one came last
    assert caplog.text.count("train.knn_every is now train.eval_every") == 1  # once, not per use
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="moco"):
        old = from_dict({"train": {"knn_every": 7}})  # an old checkpoint's config: taken as it is, silently
    assert old.train.eval_every == 7 and "knn_every" not in caplog.text
    assert "knn_every" not in old.to_dict()["train"]


def test_each_task_validates_its_own_section_besides_the_shared_ones():
    from moco.config import validate

    cfg = resolve("cifar10-cpu", overrides=["method.K=16"], sections=("finetune",))  # a queue smaller than a batch
    assert cfg.method.K == 16  # is no concern of fine-tuning's (the method is a record there)
    with pytest.raises(ConfigError, match=r"method.K \(16\) must be >="):
        validate(cfg, "method")  # but it is of pretraining's
    with pytest.raises(ConfigError, match="finetune.bn must be one of"):
        resolve("cifar10-cpu", overrides=["finetune.bn=off"], sections=("finetune",))
    resolve("cifar10-cpu", overrides=["finetune.bn=off"], sections=("method",))  # pretraining ignores it
    with pytest.raises(ConfigError, match="optim.lr must be > 0"):  # the shared sections: always
        resolve("cifar10-cpu", overrides=["optim.lr=0"], sections=("finetune",))
    with pytest.raises(ConfigError, match="detect.flip"):
        resolve("cifar10-cpu", overrides=["detect.flip=2"])  # no section named: all of them
