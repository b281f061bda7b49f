"""Run health: each sign fires on the records of its failure and stays silent on a healthy run's; the trainer
shows each sign once, records it, and a resumed run does not repeat it; `moco info` says it."""

import json
import math

from moco.cli import main
from moco.evaluation.health import HealthMonitor, Setting, Thresholds, _stale, diagnose, setting_for
from moco.tasks.pretrain import pretrain
from moco.training.logging import read_metrics
from tests.conftest import tiny_config

SPE = 195
MOCO = Setting(candidates=4097, steps_per_epoch=SPE, queue=4096, batch=256, m=0.99)  # cifar10-cpu
CHANCE = math.log(4097)


def run(losses, accs=None, knn=(), every=20):
    """Step records every ``every`` steps with these losses (and pretext accuracies), then epoch records with
    these kNN scores."""
    recs = []
    for i, loss in enumerate(losses):
        step = (i + 1) * every
        recs.append({"type": "step", "epoch": step // SPE + 1, "step": step, "loss": loss, "lr": 0.06,
                     "pretext_acc1": (accs[i] if accs else 8.0)})
    for e, k in enumerate(knn, 1):
        recs.append({"type": "epoch", "epoch": e, "step": e * SPE, "loss": 6.0, "knn_top1": k})
    return recs


def names(signs):
    return [s.name for s in signs]


def test_a_healthy_run_shows_no_sign():
    # cifar10-cpu's first epochs as measured: 7.2 at step 20, 6.4 by step 40, slowly down; kNN rising
    losses = [7.19, 6.39, 6.47, 6.5, 6.44, 6.5, 6.36, 6.41, 6.37, 6.38] + [6.3 - 0.02 * i for i in range(40)]
    assert diagnose(run(losses, knn=[35.0, 40.2, 43.1]), MOCO) == []


def test_a_loss_at_chance_after_the_warm_up_is_not_learning():
    stuck = [CHANCE - 0.01] * 30
    signs = diagnose(run(stuck), MOCO)
    assert names(signs) == ["not_learning"] and signs[0].step == 100  # the first judgement: settle_steps
    assert "ln 4097 = 8.32" in signs[0].message and "optim.lr" in signs[0].message
    assert diagnose(run([0.9 * CHANCE] * 30), MOCO) == []  # well below chance: learning
    warm = Setting(4097, SPE, warmup_steps=400, queue=4096, batch=256, m=0.99)
    assert diagnose(run(stuck[:24]), warm) == []  # step 480 < warm-up + settle: not judged yet
    assert diagnose(run(stuck[:26]), warm)[0].step == 500


def test_a_schedule_at_zero_is_named():
    recs = run([CHANCE] * 10)
    for r in recs:
        r["lr"] = 0.0
    assert "the lr is 0 (a schedule at 0?)" in diagnose(recs, MOCO)[0].message


def test_a_pretext_task_solved_at_once_is_cheating_but_late_mastery_is_not():
    signs = diagnose(run([1.0] * 10, accs=[95.0] * 10), MOCO)
    assert names(signs) == ["cheating"] and signs[0].step == 60  # the mean of 3 records crosses 90%
    assert "shuffle_bn" in signs[0].message
    late = run([1.0] * 40, accs=[10.0] * 25 + [95.0] * 15)  # steps 520-800: after the first 2 epochs
    assert diagnose(late, MOCO) == []


def test_a_loss_climbing_back_towards_chance_or_a_falling_knn_is_collapse():
    climb = [6.0, 5.0, 4.0, 4.0, 4.0] + [4.0 + 0.4 * i for i in range(1, 12)]
    signs = diagnose(run(climb), MOCO)
    assert names(signs) == ["collapse"]
    lowest = 4.0
    first = next(i for i in range(3, len(climb)) if sum(climb[i - 2:i + 1]) / 3 - lowest >= 0.5 * (CHANCE - lowest))
    assert signs[0].step == (first + 1) * 20  # where the 3-record mean is half-way back to chance
    assert names(diagnose(run([6.0] * 10, knn=[40.0, 38.5, 36.9]), MOCO)) == ["collapse"]  # falls twice
    assert diagnose(run([6.0] * 10, knn=[40.0, 39.5, 39.1]), MOCO) == []  # by less than a point: noise
    assert diagnose(run([6.0] * 10, knn=[40.0, 38.0, 38.5]), MOCO) == []  # once only


def test_a_queue_older_than_the_key_encoder_remembers_is_stale():
    fast = Setting(4097, SPE, queue=4096, batch=256, m=0.9)  # 16 steps old, memory 10 steps
    signs = diagnose(run([6.0] * 3), fast)
    assert names(signs) == ["stale_queue"] and signs[0].step == 20
    assert "16 steps old" in signs[0].message and "10 steps" in signs[0].message
    assert diagnose(run([6.0] * 3), MOCO) == []  # 16 steps old, memory 100
    cpu = setting_for(tiny_config_of("optim.batch_size=256", "method.K=4096"), SPE)
    assert (cpu.candidates, cpu.queue, cpu.batch, cpu.m) == (4097, 4096, 256, 0.99)  # the key and K negatives
    assert cpu.chance_loss == math.log(4097) and _stale(cpu, Thresholds()) is None
    v3 = setting_for(tiny_config_of("method.dictionary=v3", "model.head=v3", "method.T=0.2"), SPE)
    assert v3.queue == 0 and v3.chance_loss == 4 * 0.2 * math.log(8)  # no queue; v3's loss is scaled by 4T


def tiny_config_of(*overrides):
    from moco.config import resolve

    return resolve("cifar10-cpu", overrides=["optim.batch_size=8", "method.K=40", *overrides])


def test_each_sign_is_shown_once_and_a_health_record_counts_as_shown():
    mon = HealthMonitor(Setting(4097, SPE, queue=4096, batch=256, m=0.9))
    shown = [s.name for rec in run([CHANCE] * 20) for s in mon.observe(rec)]
    assert shown == ["stale_queue", "not_learning"]
    resumed = HealthMonitor(Setting(4097, SPE, queue=4096, batch=256, m=0.9))
    resumed.observe({"type": "health", "step": 20, "sign": "stale_queue"})
    assert [s.name for rec in run([6.0] * 3) for s in resumed.observe(rec)] == []
    assert Thresholds().stuck == 0.95  # the measured thresholds (benchmarks/README.md, "Run health")


def test_the_trainer_shows_a_sign_once_records_it_and_a_resumed_run_does_not_repeat_it(tmp_path, tiny_data,
                                                                                        caplog, capsys):
    # K=40 keys at 8 a step are 5 steps old; m=0.5 remembers 2: a stale queue from the first record
    cfg = tiny_config(tmp_path, "method.m=0.5", "optim.epochs=2")
    pretrain(cfg, tiny_data, tmp_path / "run", progress=False, max_steps=5)
    pretrain(cfg, tiny_data, tmp_path / "run", progress=False, resume="auto")
    records = read_metrics(tmp_path / "run" / "metrics.jsonl")
    health = [r for r in records if r["type"] == "health"]
    assert [(r["sign"], r["step"]) for r in health] == [("stale_queue", 2)]
    assert sum("health: stale queue" in m for m in caplog.messages) == 1
    assert main(["info", str(tmp_path / "run")]) == 0
    line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("health"))
    assert "stale queue: its oldest keys are 5 steps old" in line and "(step 2)" in line
    assert main(["info", str(tmp_path / "run"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["health"].startswith("stale queue")


def test_a_healthy_tiny_run_says_so_in_moco_info(tmp_path, tiny_data, capsys):
    pretrain(tiny_config(tmp_path, "optim.epochs=1"), tiny_data, tmp_path / "run", progress=False)
    assert main(["info", str(tmp_path / "run" / "checkpoint_last.pt")]) == 0
    assert "health      no sign of trouble in 6 steps" in capsys.readouterr().out


def test_batchnorm_can_leak_where_the_key_batch_is_not_shuffled_across_groups():
    def leak(*overrides, processes=1, batchnorm=True):
        return setting_for(tiny_config_of(*overrides), SPE, processes, batchnorm).bn_leak

    assert leak("model.bn_splits=8") == ""  # cifar10-cpu: 8 groups, keys shuffled across them
    assert "shuffle BN is off" in leak("method.shuffle_bn=false", "model.bn_splits=8")
    assert "one BatchNorm group" in leak("model.bn_splits=1")  # shuffling one group changes no statistic
    assert leak("model.bn_splits=1", processes=2) == ""  # each process's BN is a group: the paper's shuffle BN
    assert leak("method.shuffle_bn=false", batchnorm=False) == ""  # LayerNorm/GroupNorm: no batch statistic
    assert leak("method.dictionary=memory_bank", "method.shuffle_bn=false") == ""  # keys from the bank
    assert "shuffle BN is off" in leak("method.dictionary=end_to_end", "method.shuffle_bn=false")
    signs = diagnose(run([6.0] * 3), setting_for(tiny_config_of("model.bn_splits=1"), SPE))
    assert names(signs) == ["bn_leak"] and signs[0].step == 20 and "method.shuffle_bn=true" in signs[0].message


def test_moco_info_on_a_folder_without_a_checkpoint_is_one_line(tmp_path, capsys):
    assert main(["info", str(tmp_path)]) == 1
    assert capsys.readouterr().err.strip() == f"moco: error: {tmp_path} holds no checkpoint yet"
