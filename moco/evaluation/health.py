"""Is a pretraining run healthy? Signs read off its metrics records against what the method predicts.

A contrastive run picks the positive among ``N`` candidates (MoCo: the key and ``K`` negatives, ``N = K + 1``;
v3 and end-to-end: the batch's keys), so chance is a loss of ``ln N`` and a pretext accuracy of ``1/N``. Signs:

* ``not_learning``: once the warm-up is over, the loss has never left ``ln N`` (never below
  :attr:`Thresholds.stuck` of it). A learning run is far below within a few dozen steps (``cifar10-cpu``: 0.86
  of ``ln N`` at step 20).
* ``cheating``: the pretext task is solved too easily: accuracy above :attr:`Thresholds.cheat_acc` within the
  first epochs. Real instance discrimination among thousands of keys stays far from it that early; a leak does
  not (BatchNorm statistics shared by a query and its key, without shuffle BN), nor does a key encoder that
  follows the query encoder too closely.
* ``collapse``: the loss climbs back towards ``ln N`` after it fell (by :attr:`Thresholds.climb` of the way), or
  the kNN monitor falls epoch after epoch (:attr:`Thresholds.knn_falls` times in a row, each by more than
  :attr:`Thresholds.knn_drop` points).
* ``stale_queue``: the queue's oldest keys were encoded more steps ago (``K / batch``) than the key encoder
  remembers (``1 / (1 - m)`` steps): the negatives come from an encoder that no longer exists. Read off the
  config, at the first record.
* ``bn_leak``: the recipe lets BatchNorm carry a query's batch statistics to its key (shuffle BN off, or one
  BatchNorm group on one process, in MoCo or end-to-end with a BatchNorm backbone): the paper's Section 3.3
  mechanism. Read off the config: on CIFAR-10 its harm needs more than the 3 epochs measured here to show in
  the records (the authors' demo loses about 4 kNN points at 800 epochs).

:func:`diagnose` is a pure function of the records (``moco info`` runs it on a finished or running run);
:class:`HealthMonitor` feeds it record by record while training and returns each sign once. The thresholds
are measured: ``benchmarks/health_cpu.py`` induces each failure on CIFAR-10 and runs the shipped CPU presets.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from moco.schema import Config


@dataclass(frozen=True)
class Thresholds:
    """Where a sign starts (measured: benchmarks/README.md, "Run health")."""

    stuck: float = 0.95  # loss / ln N above this after the warm-up and the settling steps: not learning
    settle_steps: int = 100  # steps after the warm-up before "not learning" is judged
    window: int = 3  # step records averaged for a judgement (one record is noisy)
    cheat_acc: float = 90.0  # pretext acc@1 (%) that says the task is solved too easily...
    cheat_epochs: float = 2.0  # ... when reached within this many epochs
    climb: float = 0.5  # loss back up by this share of the way from its lowest to ln N: collapse
    knn_falls: int = 2  # epochs in a row whose kNN fell...
    knn_drop: float = 1.0  # ... each by more than this many points
    stale_ratio: float = 1.0  # queue age K / batch over this many times 1 / (1 - m): stale


@dataclass(frozen=True)
class Setting:
    """What the signs are read against: the run's number of candidates and its recipe."""

    candidates: int  # N: the positive and its negatives (K + 1 for a queue)
    steps_per_epoch: int
    warmup_steps: int = 0
    queue: int = 0  # K for a queue (MoCo, memory bank), 0 without one
    batch: int = 256  # global batch: keys enqueued per step
    m: float = 0.0  # key-encoder momentum (0 without a key encoder)
    loss_scale: float = 1.0  # the recorded loss per ln N at chance: 2 for a symmetric loss, 4T for v3's
    bn_leak: str = ""  # why BatchNorm can carry the positive's statistics to its key (empty: it cannot)

    @property
    def chance_loss(self) -> float:
        return self.loss_scale * math.log(self.candidates)


def bn_leak(cfg: Config, processes: int = 1, batchnorm: bool = True) -> str:
    """Why the key encoder's BatchNorm can see the positive's batch (the paper's Section 3.3), or "". A key is
    encoded in a batch of the same images as its query's, in the same order, unless shuffle BN permutes it
    across BatchNorm groups; on one process with one group the permutation changes no statistic."""
    me, m = cfg.method, cfg.model
    if not batchnorm or me.dictionary not in ("moco", "end_to_end"):
        return ""  # v3 and the memory bank draw keys another way; LayerNorm / GroupNorm share no batch statistic
    if not me.shuffle_bn:
        return "shuffle BN is off (method.shuffle_bn=false)"
    if m.bn_splits == 1 and processes == 1:
        return "shuffle BN has one BatchNorm group to shuffle across (model.bn_splits=1 on one process)"
    return ""


def setting_for(cfg: Config, steps_per_epoch: int, processes: int = 1, batchnorm: bool = True) -> Setting:
    """A pretraining config's :class:`Setting`: a queue's K + 1 candidates (MoCo, memory bank), or the global
    batch's keys (v3, end-to-end), the warm-up in steps, the loss's scale at chance, and whether BatchNorm can
    leak the positive (``processes`` training, ``batchnorm``: the encoder has BatchNorm layers)."""
    me, o = cfg.method, cfg.optim
    warm = round(o.warmup_epochs * steps_per_epoch)
    sym = 2.0 if me.symmetric else 1.0
    leak = bn_leak(cfg, processes, batchnorm)
    if me.dictionary == "v3":  # symmetric, each side scaled by 2T
        return Setting(o.batch_size, steps_per_epoch, warm, batch=o.batch_size, m=me.m, loss_scale=4 * me.T)
    if me.dictionary == "end_to_end":
        return Setting(o.batch_size, steps_per_epoch, warm, batch=o.batch_size, loss_scale=sym, bn_leak=leak)
    moco = me.dictionary == "moco"  # a memory bank's entries are refreshed per image, not by a key encoder
    return Setting(me.K + 1, steps_per_epoch, warm, queue=me.K if moco else 0, batch=o.batch_size,
                   m=me.m if moco else 0.0, loss_scale=sym, bn_leak=leak)


def health_monitor(cfg: Config, steps_per_epoch: int, model: nn.Module, processes: int) -> HealthMonitor:
    """The monitor a pretraining run feeds (:class:`~moco.training.task.Task`'s ``health``)."""
    batchnorm = any(isinstance(x, nn.modules.batchnorm._BatchNorm) for x in model.modules())
    return HealthMonitor(setting_for(cfg, steps_per_epoch, processes, batchnorm))


@dataclass(frozen=True)
class Sign:
    """One problem: its name, the step it was seen at, and a line saying what is wrong and what to change."""

    name: str
    step: int
    message: str


def _stale(s: Setting, t: Thresholds) -> str | None:
    if not s.queue or s.m <= 0:
        return None
    age, memory = s.queue / s.batch, 1.0 / (1.0 - s.m)
    if age <= t.stale_ratio * memory:
        return None
    return (f"stale queue: its oldest keys are {age:.0f} steps old (K={s.queue} / batch {s.batch}) but the key "
            f"encoder at m={s.m} remembers about {memory:.0f} steps; raise method.m (0.99-0.999) or lower method.K")


@dataclass
class _Trace:
    """What the rules need of the records so far: the last ``window`` losses and accuracies, the kNN of every
    epoch, the lowest smoothed loss, the last lr."""

    window: int
    losses: deque[float] = field(init=False)
    accs: deque[float] = field(init=False)
    knn: list[float] = field(default_factory=list)
    lowest: float = math.inf
    last_lr: float | None = None

    def __post_init__(self) -> None:
        self.losses, self.accs = deque(maxlen=self.window), deque(maxlen=self.window)


def _mean(xs: deque[float]) -> float:
    return sum(xs) / len(xs)


def _rules(tr: _Trace, rec: dict[str, Any], s: Setting, t: Thresholds) -> Iterable[tuple[str, str]]:
    """The signs ``rec`` shows, given what came before it (``tr``, already holding ``rec``)."""
    step, chance = int(rec.get("step", 0)), s.chance_loss
    if rec.get("type") == "step" and len(tr.losses) >= t.window:
        loss = _mean(tr.losses)
        never_learnt = min(tr.lowest, loss) >= t.stuck * chance  # a loss that fell and came back is collapse
        if step >= s.warmup_steps + t.settle_steps and never_learnt:
            lr = tr.last_lr
            why = (f"the lr is {lr:g}" + (" (a schedule at 0?)" if lr is not None and lr < 1e-5 else "")
                   if lr is not None else "check optim.lr")
            scale = "" if s.loss_scale == 1 else f"{s.loss_scale:g} x "
            yield ("not_learning",
                   f"not learning: the loss is {loss:.2f} at step {step}, {loss / chance:.0%} of chance "
                   f"({scale}ln {s.candidates} = {chance:.2f}); {why}: check optim.lr (and its schedule), an "
                   f"augmentation too strong for the images (data.augmentation, data.crop_min_scale), or method.T")
        if tr.accs and step <= t.cheat_epochs * s.steps_per_epoch and _mean(tr.accs) >= t.cheat_acc:
            yield ("cheating",
                   f"the pretext task is solved too easily: acc@1 {_mean(tr.accs):.0f}% among "
                   f"{s.candidates} candidates at step {step}; the positive leaks (shuffle BN off with one "
                   f"BatchNorm group: set method.shuffle_bn=true or model.bn_splits=8 on one device) or the key "
                   f"encoder follows too closely (method.m={s.m}: use 0.99-0.999)")
        if tr.lowest < chance and loss - tr.lowest >= t.climb * (chance - tr.lowest) and step > s.warmup_steps:
            yield ("collapse",
                   f"collapse: the loss climbed back to {loss:.2f} at step {step} after reaching {tr.lowest:.2f} "
                   f"(chance {chance:.2f}); likely method.m too low (now {s.m}) or an lr too high (now "
                   f"{tr.last_lr:g}): lower optim.lr or raise method.m")
    if rec.get("type") == "epoch" and len(tr.knn) > t.knn_falls:
        last = tr.knn[-1 - t.knn_falls:]
        if all(a - b > t.knn_drop for a, b in zip(last, last[1:])):
            first = last[0]
            yield ("collapse",
                   f"collapse: the kNN monitor fell {t.knn_falls} epochs in a row, from {first:.1f}% to "
                   f"{last[-1]:.1f}% at epoch {rec.get('epoch')}; likely method.m too low (now {s.m}) or an "
                   f"lr too high")


class HealthMonitor:
    """Feed records as a run writes them; :meth:`observe` returns the signs not yet shown, each once."""

    def __init__(self, setting: Setting, thresholds: Thresholds | None = None) -> None:
        self.setting, self.t = setting, thresholds or Thresholds()
        self.trace = _Trace(self.t.window)
        self.shown: set[str] = set()

    def observe(self, rec: dict[str, Any]) -> list[Sign]:
        kind, step, new = rec.get("type"), int(rec.get("step", 0)), []
        if kind == "health":  # a sign a run already showed (a resumed run reads its records back)
            self.shown.add(rec.get("sign", ""))
            return []
        if "stale_queue" not in self.shown and (msg := _stale(self.setting, self.t)):
            new.append(Sign("stale_queue", step, msg))
        if "bn_leak" not in self.shown and self.setting.bn_leak:
            new.append(Sign("bn_leak", step, f"BatchNorm can leak the positive: {self.setting.bn_leak}, so a key is "
                                             "normalised with its own query's batch statistics and the pretext "
                                             "task can be solved without learning; use method.shuffle_bn=true "
                                             "with model.bn_splits=8 on one device (or several processes)"))
        tr = self.trace
        if kind == "step" and "loss" in rec:
            tr.losses.append(float(rec["loss"]))
            if "pretext_acc1" in rec:
                tr.accs.append(float(rec["pretext_acc1"]))
            tr.last_lr = rec.get("lr", tr.last_lr)
        if kind == "epoch" and rec.get("knn_top1") is not None:
            tr.knn.append(float(rec["knn_top1"]))
        for name, msg in _rules(tr, rec, self.setting, self.t):
            if name not in self.shown and all(s.name != name for s in new):
                new.append(Sign(name, step, msg))
        if kind == "step" and len(tr.losses) >= self.t.window:  # the lowest smoothed loss, after the rules
            tr.lowest = min(tr.lowest, _mean(tr.losses))
        self.shown.update(s.name for s in new)
        return new


def diagnose(records: Iterable[dict[str, Any]], setting: Setting, thresholds: Thresholds | None = None) -> list[Sign]:
    """Every sign ``records`` (a run's metrics.jsonl, in order) show, at the step each first appears."""
    monitor = HealthMonitor(setting, thresholds)
    signs: list[Sign] = []
    for rec in records:
        if rec.get("type") != "health":
            signs += monitor.observe(rec)
    return signs


def summary(signs: list[Sign], records: list[dict[str, Any]]) -> str:
    """One line for ``moco info``: healthy so far, or the signs."""
    steps = max((int(r.get("step", 0)) for r in records if r.get("type") == "step"), default=0)
    if not steps:
        return "no training records yet"
    if not signs:
        return f"no sign of trouble in {steps} steps"
    return "; ".join(f"{s.message} (step {s.step})" for s in signs)
