"""``moco evaluate``: does pretraining pay off on my data? One command, one report.

On a labelled set (``train/`` and ``test/``, folders or shards) it judges each pretrained backbone frozen (kNN
on all labels, the linear probe on all labels and on each share of them) and fine-tunes it, and the same
network from random init (and, if given, a supervised network), at a ladder of label shares (by default 1%,
10% and 100% of each class), 2 seeds each. Every init and seed of a share learns from the same images: one
``labels.txt`` per share under ``RUN/labels/``. The headline is the labels saved (:mod:`.savings`).

Every fine-tune is an ordinary ``moco finetune`` run under ``RUN/runs/``, the frozen protocols one folder per
backbone beside them; each writes its ``results.json`` when it ends. So an interrupted evaluation resumes
(``--resume auto``): finished runs are skipped, an interrupted fine-tune continues from its checkpoint, and the
report is rebuilt from what exists (``--report-only``). ``RUN/evaluation.json`` keeps the settings, the label
shares and the time spent.

One time budget serves the whole evaluation: a short measurement of the network's step and forward speed
plans it up front (refused in one line, with the time needed, when even the shortest runs do not fit), the
frozen protocols run first, and each fine-tune gets an equal share of the time left when it starts, so what one
run leaves unused goes to the next. A fine-tune's share is time, not images: at 1% of the labels it makes as
many steps as at 100%, passing over its few images many times.
"""

from __future__ import annotations

import datetime
import json
import logging
import math
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from moco.config import MIN_BUDGET_S, Config, parse_labels
from moco.core.errors import CheckpointError, ConfigError, DataError
from moco.data import sets
from moco.data.folder import ImageList

log = logging.getLogger("moco")
EVALUATION = "evaluation.json"
DEFAULT_LABELS = ("1%", "10%", "100%")
REPORT_RESERVE_S = 5.0  # kept at the end of a budget for the report and its pictures
FINETUNE_SETTINGS = ("train.eval_every=0",)
"""Over ``moco finetune``'s recipe (``--set`` overrides them): each fine-tune is scored once, at its end, so that
its time goes to training (at 1% of CIFAR-10 an epoch is 21 steps, and a test pass every 5 of them would cost
a tenth of the run)."""


@dataclass(frozen=True)
class Init:
    """A way to start a fine-tune: ``kind`` checkpoint (a pretrained backbone), supervised (a network trained
    with labels) or random (the architecture of ``path``, from scratch)."""

    name: str
    kind: str
    path: str

    @property
    def pretrained(self) -> bool:
        return self.kind != "random"

    def finetune_args(self) -> dict[str, Any]:
        if self.kind == "supervised":
            return {"checkpoint": None, "init": f"supervised:{self.path}"}
        return {"checkpoint": self.path, "init": self.kind}


@dataclass
class Spec:
    """What an evaluation runs; kept in ``RUN/evaluation.json`` so that a resume runs the same."""

    inits: list[Init]
    train: str | list[str]
    test: str | list[str]
    labels: list[str]  # the ladder, fewest labels first
    seeds: int = 2
    budget_s: float = 0.0  # the whole evaluation's time budget (0: none)
    each_s: float = 0.0  # each fine-tune's, without a whole budget (0: epochs)
    epochs: int = 0  # each fine-tune's epochs without either (0: the recipe's)
    overrides: list[str] = field(default_factory=list)  # --set, for every fine-tune and the frozen protocols
    frozen: bool = True

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Spec:
        return cls(**{**d, "inits": [Init(**i) for i in d["inits"]]})


@dataclass(frozen=True)
class FineTune:
    """One fine-tuning run of the evaluation."""

    labels: str
    init: Init
    seed: int

    @property
    def folder(self) -> str:
        return f"ft-{share_slug(self.labels)}-{self.init.name}-s{self.seed}"

    @property
    def what(self) -> str:
        return f"{self.init.name} init, {self.labels} of the labels, seed {self.seed}"


def share_slug(spec: str) -> str:
    """A label share in a folder name: ``1%`` -> ``1pct``, ``50`` (per class) -> ``50each``."""
    kind, _ = parse_labels(spec)
    return spec.rstrip("%").replace(".", "p") + ("pct" if kind == "fraction" else "each")


def ladder(labels: list[str] | tuple[str, ...] | None) -> list[str]:
    """The label shares, checked (``1%``, ``10%``, ``100%``, or ``50`` images per class), without repeats."""
    out: list[str] = []
    for spec in labels or DEFAULT_LABELS:
        parse_labels(spec)
        if spec not in out:
            out.append(spec)
    return out


def make_inits(checkpoints: Any, baselines: Any = None) -> list[Init]:
    """The inits: each checkpoint (a path, ``NAME=PATH``, a list of them or a ``{name: path}`` mapping;
    named ``MoCo`` when alone, else by its run folder), random init of the first one's architecture, and each
    baseline (``supervised:CKPT``, or ``{name: "supervised:CKPT"}``)."""
    named = _named(checkpoints, "MoCo")
    if not named:
        raise ConfigError("evaluate needs --checkpoint: the pretrained backbone to judge")
    inits = [Init(n, "checkpoint", p) for n, p in named]
    for n, spec in _named(baselines, "supervised"):
        kind, _, path = spec.partition(":")
        if kind != "supervised" or not path:
            raise ConfigError(f"--baseline takes supervised:CKPT (a network trained with labels), got {spec!r}")
        inits.append(Init(n, "supervised", path))
    inits.insert(len(named), Init("random", "random", named[0][1]))
    names = [i.name for i in inits]
    if len(set(names)) < len(names) or any(not re.fullmatch(r"[\w.+-]+", n) for n in names):
        raise ConfigError(f"each init needs its own name of letters, digits, '.', '-', '+' or '_' (NAME=PATH), got "
                          f"{', '.join(names)}")
    return inits


def _named(given: Any, alone: str) -> list[tuple[str, str]]:
    """(name, value) pairs from a value, ``NAME=VALUE`` strings, a list of them or a mapping."""
    if not given:
        return []
    if isinstance(given, dict):
        return [(str(k), str(v)) for k, v in given.items()]
    items = [str(g) for g in ([given] if isinstance(given, (str, Path)) else given)]
    out = []
    for i, item in enumerate(items):
        name, sep, value = item.partition("=")
        if not sep or "/" in name or ":" in name:
            name, value = (alone if len(items) == 1 else _run_name(item, i)), item
        out.append((name, value))
    return out


def _run_name(path: str, i: int) -> str:
    """A checkpoint's name in the report: its run folder's (``runs/photos/checkpoint_last.pt`` -> photos), else
    its file's stem."""
    p = Path(path.partition(":")[2] if path.startswith("supervised:") else path)
    name = p.parent.name if p.name.startswith("checkpoint") and p.parent.name else p.stem
    return re.sub(r"[^\w.+-]", "_", name) or f"init{i}"


def plan_runs(spec: Spec) -> list[FineTune]:
    """Every fine-tune, in the order they run: share by share, init by init, seed by seed."""
    return [FineTune(lab, init, s) for lab in spec.labels for init in spec.inits for s in range(spec.seeds)]


@dataclass
class Data:
    """The labelled sets, listed once: the training listing, the test listing, and each share's fraction."""

    train: ImageList
    test: ImageList
    shares: dict[str, float]


def open_data(spec: Spec, cfg: Config, progress: bool) -> Data:
    """The sets listed and checked: labelled, every test class known to training; each share's fraction."""
    from moco.tasks.finetune import map_test_labels
    from moco.transfer.labels import balanced_subset

    found = []
    for what, data in (("--train", spec.train), ("--test", spec.test)):
        listing = sets.listing(sets.resolve(data), cfg.data.strict, True, progress)
        if listing.labels is None:
            raise DataError(f"{what} {sets.root(sets.resolve(data))} has no class sub-folders: evaluate needs "
                            "labelled images (one sub-folder per class)")
        found.append(listing)
    train, test = found
    map_test_labels(train, test)  # a test class that training lacks: refused before any run
    seed = cfg.finetune.labels_seed
    shares = {lab: len(balanced_subset(train, lab, seed)) / len(train) for lab in spec.labels}
    return Data(train, test, shares)


def label_files(out: Path, spec: Spec, data: Data, seed: int) -> dict[str, Path]:
    """``RUN/labels/SHARE.txt`` of every share (the ladder's and 100% for the probe), written once: every init
    and seed of a share learns from the images its file lists."""
    from moco.transfer.labels import balanced_subset, write_labels

    folder = out / "labels"
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for lab in dict.fromkeys([*spec.labels, "100%"]):
        path = folder / f"{share_slug(lab)}.txt"
        if not path.is_file():
            write_labels(balanced_subset(data.train, lab, seed), path, f"{lab} of each class, seed {seed}")
        files[lab] = path
    return files


@dataclass
class Costs:
    """The network's measured speed on this machine, for the plan."""

    step_s: float  # one fine-tuning step at the batch size
    image_s: float  # one image's forward pass in eval mode
    probe_step_s: float  # one linear-probe step on cached features

    def frozen_s(self, data: Data, ladder_: list[str], epochs: int = 100, batch: int = 256) -> float:
        """A backbone's frozen protocols: features of every image, then a probe per share."""
        n = len(data.train)
        steps = sum(epochs * math.ceil(n * data.shares.get(lab, 1.0) / batch) for lab in {*ladder_, "100%"})
        return 1.2 * self.image_s * (n + len(data.test)) + steps * self.probe_step_s + 2.0

    def shortest_finetune_s(self, n_test: int, min_steps: int) -> float:
        """The shortest fine-tune worth running: start-up, a first epoch of ``min_steps`` and two test passes."""
        return max(MIN_BUDGET_S, 3.0 + min_steps * self.step_s + 2 * self.image_s * n_test)


def measure(cfg: Config, num_classes: int) -> Costs:
    """Time what the evaluation will run, on random data: the trainer's own fine-tuning step (``train_step`` on
    the fine-tuning task's model and optimiser: the run's batch, image size, precision, memory format, BatchNorm
    mode and lr groups), a forward pass in eval mode, and the linear probe's own fit; the global random state
    is left as it was."""
    from moco.core.precision import memory_format, pick_device, resolve_precision
    from moco.evaluation.linear import LinearClassifier, LinearConfig, fit_classifier
    from moco.tasks.finetune import finetune_task
    from moco.training.loop import seconds_per_call, train_step
    from moco.training.run import training_parts
    from moco.training.task import StepModule
    from moco.transfer.classifier import Classifier
    from moco.transfer.init import build_network

    device = pick_device(cfg.train.device)
    precision = resolve_precision(cfg.train.precision, device)
    b, s = cfg.optim.batch_size, cfg.data.image_size
    with torch.random.fork_rng(devices=[]):
        model = Classifier(build_network(cfg, num_classes), cfg.finetune.bn, cfg.finetune.label_smoothing)
        model, opt, scaler = training_parts(cfg, model, device, lambda m: m.param_groups(cfg.finetune.backbone_lr))
        net, gen = StepModule(model, finetune_task(cfg).step), torch.Generator().manual_seed(0)
        batch = (torch.randn(b, 3, s, s, device=device), torch.randint(0, num_classes, (b,), device=device), None)
        step_s = seconds_per_call(lambda: train_step(net, opt, scaler, batch, gen, precision, device)[0].item(), 2)
        model.eval()
        with torch.no_grad():
            x = batch[0].contiguous(memory_format=memory_format(cfg.train.channels_last))
            image_s = seconds_per_call(lambda: model.encoder_q(x), 1) / b
        n, probe = 2560, LinearConfig(epochs=1)  # one epoch of 10 steps of the probe's own fit
        feats, labels = torch.randn(n, 512), torch.randint(0, num_classes, (n,))
        clf = LinearClassifier(512, num_classes, probe.feature_norm)
        probe_s = seconds_per_call(lambda: fit_classifier(clf, lambda _, idx: feats[idx], labels, probe, gen,
                                                torch.device("cpu"), False), 1) / (n // probe.batch_size)
    return Costs(step_s, image_s, probe_s)


@dataclass
class Budget:
    """The whole evaluation's clock: its deadline on the :func:`time.perf_counter` clock (None: no budget)."""

    deadline: float | None
    started: float
    spent_before: float

    def spent(self) -> float:
        return self.spent_before + time.perf_counter() - self.started

    def share(self, runs_left: int, frozen_left_s: float = 0.0) -> float:
        """Seconds for the next fine-tune: an equal share of what is left after the frozen protocols still to
        run and the report, at least the shortest budget a run accepts."""
        assert self.deadline is not None
        left = self.deadline - time.perf_counter() - REPORT_RESERVE_S - frozen_left_s
        return max(MIN_BUDGET_S, left / max(runs_left, 1))


def check_budget(budget: Budget, costs: Costs, frozen_s: float, runs: int, shortest_s: float,
                 given: float) -> None:
    """Refuse, in one line saying how much is needed, a budget that cannot hold the frozen protocols, ``runs``
    fine-tunes of at least ``shortest_s`` each and the report."""
    assert budget.deadline is not None
    left = budget.deadline - time.perf_counter()
    needed = frozen_s + runs * shortest_s + REPORT_RESERVE_S
    if left < needed:
        total = budget.spent() + needed
        raise ConfigError(
            f"--time-budget {duration(given)} is too small: {runs} fine-tunes of at least {shortest_s:.0f} s each "
            f"(a step takes {costs.step_s:.2f} s here) and the frozen protocols ({frozen_s:.0f} s) need about "
            f"{duration(total)} in all; give --time-budget {duration(math.ceil(round(total) / 60) * 60)} or more, or "
            "fewer --labels or --seeds")


def duration(seconds: float) -> str:
    s = round(seconds)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def bar(done: int, total: int, width: int = 20) -> str:
    """``[#####---------------] 3/12``: the whole plan's progress, in a log line."""
    filled = round(width * done / max(total, 1))
    return f"[{'#' * filled}{'-' * (width - filled)}] {done}/{total}"


def read_state(out: Path) -> dict[str, Any] | None:
    path = out / EVALUATION
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: cannot be read ({e}); remove it and start again with --overwrite") from None


def write_state(out: Path, state: dict[str, Any]) -> None:
    tmp = out / f".{EVALUATION}.tmp"
    tmp.write_text(json.dumps(state, indent=2) + "\n")
    tmp.replace(out / EVALUATION)


def new_state(spec: Spec, data: Data, command: str) -> dict[str, Any]:
    return {"spec": asdict(spec), "shares": data.shares, "started": datetime.date.today().isoformat(),
            "spent_s": 0.0, "command": command}


def build_spec(checkpoint: Any, data: str | Path | None, train_dir: Any, test_dir: Any, labels: Any,
               seeds: int | None, baselines: Any, time_budget: float | None, each: float | None,
               epochs: int | None, overrides: list[str] | None, frozen: bool) -> Spec:
    """The evaluation the arguments describe, checked: one length, a labelled test set, at least one seed."""
    if sum(bool(x) for x in (time_budget, each, epochs)) > 1:
        raise ConfigError("--time-budget (the whole evaluation), --each (each fine-tune) and --epochs (each "
                          "fine-tune) all set how long to train; give one of them")
    if each is not None and 0 < each < MIN_BUDGET_S:
        raise ConfigError(f"--each must be at least {MIN_BUDGET_S:.0f} s, time for a fine-tune's start-up, a step "
                          f"and its test, got {each:g} s")
    if seeds is not None and seeds < 1:
        raise ConfigError(f"--seeds must be at least 1, got {seeds}")
    if data is None and (train_dir is None or test_dir is None):
        raise ConfigError("evaluate needs --data DIR (with train/ and test/) or --train and --test")
    test = sets.resolve(test_dir) if test_dir is not None else None
    if train_dir is None:
        train, found = sets.split(data)
        test = test or found
        if test is None:
            raise DataError(f"{data} has no test/ (or val/) folder: evaluate scores every run on held-out labelled "
                            "images; add one, or give --train and --test")
    else:
        train = sets.resolve(train_dir)
    return Spec(make_inits(checkpoint, baselines), sets.record(train), sets.record(test), ladder(labels),
                seeds or 2, float(time_budget or 0.0), float(each or 0.0), int(epochs or 0), list(overrides or []),
                frozen)


def run_config(spec: Spec) -> Config:
    """Every init's checkpoint checked (a file that is not one is refused in one line), and the fine-tuning
    config of the first: its data, device and precision settings serve the frozen protocols and the plan."""
    from moco.export.backbone import load_backbone_and_config
    from moco.tasks.finetune import finetune_config

    sources = {}
    for init in spec.inits:
        if init.pretrained:
            try:
                sources[init.path] = load_backbone_and_config(init.path)[1]
            except (CheckpointError, OSError) as e:
                raise CheckpointError(f"{init.name} ({init.kind}) {init.path}: {e}") from None
    first = spec.inits[0]
    return finetune_config(sources[first.path], "checkpoint", first.path, overrides=spec.overrides)


def frozen_protocols(init: Init, spec: Spec, data: Data, cfg: Config, files: dict[str, Path], out: Path,
                     progress: bool) -> dict[str, Any]:
    """kNN (k=200, t=0.1) on all labels and the linear probe (``moco linear``'s defaults) on each share's
    labels.txt, of ``init``'s frozen backbone: one feature pass over train and test. Kept in
    ``out/results.json`` (read back when there)."""
    if (out / "results.json").is_file():
        return json.loads((out / "results.json").read_text())
    import torch.nn.functional as F

    from moco.core.precision import pick_device, resolve_precision
    from moco.data.sides import cache_side
    from moco.evaluation.knn import extract_features, knn_accuracy
    from moco.evaluation.linear import probe_features
    from moco.export.backbone import load_backbone_and_config
    from moco.tasks.finetune import map_test_labels
    from moco.transfer.common import write_results
    from moco.transfer.labels import read_labels

    t0 = time.perf_counter()
    net, src = load_backbone_and_config(init.path)
    device = pick_device(cfg.train.device)
    precision = resolve_precision(cfg.train.precision, device)
    net = net.to(device, memory_format=torch.channels_last)
    size, d = src.data.image_size, cfg.data
    train, test = (sets.decode(x, cache_side(size), d.cache_dir or None, d.workers, d.strict, progress)
                   for x in (spec.train, spec.test))
    f_train, f_test = (extract_features(net, x, size, device, precision, normalize=False, progress=progress,
                                        norm=src.data.normalize) for x in (train, test))
    y_train, y_test = torch.tensor(train.images.labels), map_test_labels(train.images, test.images)
    classes = len(train.images.classes or [])
    knn = knn_accuracy(F.normalize(f_train, dim=1), y_train, F.normalize(f_test, dim=1), y_test, classes)
    row = {p: i for i, p in enumerate(train.images.paths)}
    linear = {}
    for lab, txt in files.items():  # the images of the share that decoded
        idx = torch.tensor([row[p] for p in read_labels(data.train, txt).paths if p in row])
        linear[lab] = probe_features(f_train[idx], y_train[idx], f_test, y_test, classes, device=device)[0]
    out.mkdir(parents=True, exist_ok=True)
    body = {"init": init.name, "kind": init.kind, "checkpoint": init.path, "knn": {**knn, "k": 200, "t": 0.1},
            "linear": linear, "precision": precision, "seconds": round(time.perf_counter() - t0, 1)}
    write_results(out, body)
    return body


def run_finetune(ft: FineTune, out: Path, spec: Spec, files: dict[str, Path], length: dict[str, Any],
                 progress: bool) -> dict[str, Any] | None:
    """``ft`` as a ``moco finetune`` run in ``out`` (one not finished: :func:`_run_all` skips the others), run or
    resumed from its checkpoint (which knows its init, labels and length): its results.json, or None when it
    was interrupted."""
    from moco.tasks.finetune import finetune

    resume = "auto" if (out / "checkpoint_last.pt").is_file() else None
    kw = {} if resume else {**ft.init.finetune_args(), "labels_file": files[ft.labels], **length}
    res = finetune(train_dir=spec.train, test_dir=spec.test, out=out, overrides=[*FINETUNE_SETTINGS, *spec.overrides],
                   flags={"train.seed": ft.seed}, progress=progress, resume=resume, started=time.perf_counter(),
                   **kw)
    return None if res.stopped else json.loads((out / "results.json").read_text())


@dataclass
class EvaluateResult:
    """How an evaluation ended: its report, the labels-saved lines, and whether it stopped before the end."""

    out: Path
    report: Path | None
    lines: list[str]
    stopped: bool

    def summary(self) -> dict[str, Any]:
        return {"out": str(self.out), "report": str(self.report) if self.report else None, "labels_saved": self.lines,
                "stopped": self.stopped}


def conflicts(spec: Spec, checkpoint: Any, baselines: Any, data: Any, train_dir: Any, test_dir: Any,
              labels: Any, seeds: int | None) -> list[str]:
    """The settings among those given that differ from ``spec``'s (a resumed evaluation runs as it was)."""
    out = []
    if checkpoint is not None and make_inits(checkpoint, baselines) != spec.inits:
        out.append("checkpoints")
    if data is not None or train_dir is not None:
        train, test = (sets.split(data) if train_dir is None else (sets.resolve(train_dir), None))
        test = sets.resolve(test_dir) if test_dir is not None else test
        if sets.record(train) != spec.train or (test is not None and sets.record(test) != spec.test):
            out.append("data")
    if labels is not None and ladder(labels) != spec.labels:
        out.append("labels")
    if seeds is not None and seeds != spec.seeds:
        out.append("seeds")
    return out


def open_evaluation(out: Path, given: Any, resume: str | None, overwrite: bool, lengths: dict[str, Any],
                    changed: Any) -> tuple[Spec, dict[str, Any] | None]:
    """The spec to run and the state of the evaluation in ``out`` (None: a new one). ``given()`` builds the
    spec from the call's arguments; a resumed evaluation keeps its own, with a new length if one is given, and
    refuses arguments that describe another evaluation (``changed(spec)`` lists them)."""
    import shutil

    if resume not in (None, "auto"):
        raise ConfigError(f"--resume takes auto (continue the evaluation in --out), got {resume!r}")
    state = read_state(out)
    if state is not None and overwrite:
        for name in ("runs", "labels"):
            shutil.rmtree(out / name, ignore_errors=True)
        (out / EVALUATION).unlink()
        state = None
    if state is None:
        return given(), None
    if not resume:
        raise ConfigError(f"{out} holds an evaluation already: --resume auto continues it, --report-only rebuilds "
                          "its report, --overwrite starts it again")
    spec = Spec.from_dict(state["spec"])
    differ = changed(spec)
    if differ:
        raise ConfigError(f"{out} holds an evaluation with other {', '.join(differ)}: --resume auto continues it as "
                          "it was; drop the changed arguments, or give another --out")
    if any(lengths.values()):
        spec.budget_s, spec.each_s, spec.epochs = (float(lengths.get("budget_s") or 0),
                                                   float(lengths.get("each_s") or 0), int(lengths.get("epochs") or 0))
    return spec, state


def _length(spec: Spec, budget: Budget, runs_left: int) -> dict[str, Any]:
    """The next fine-tune's length: its share of the whole budget, the fixed seconds, the epochs, or the
    recipe's."""
    if spec.budget_s:
        return {"time_budget": budget.share(runs_left)}
    if spec.each_s:
        return {"time_budget": spec.each_s}
    return {"epochs": spec.epochs} if spec.epochs else {}


def announce(spec: Spec, data: Data, costs: Costs, cfg: Config, runs: int, frozen: int, budget: Budget) -> None:
    """The plan in two lines: what runs, and how long each fine-tune trains."""
    b = cfg.optim.batch_size
    log.info("evaluate: %d fine-tunes to run (%s of the labels; %s; %d seed%s), frozen protocols of %d backbone%s; "
             "a step takes %.2f s here", runs, ", ".join(spec.labels), ", ".join(f"{i.name} init" for i in spec.inits),
             spec.seeds, "s" * (spec.seeds > 1), frozen, "s" * (frozen != 1), costs.step_s)
    if spec.budget_s:
        each = budget.share(runs, frozen * costs.frozen_s(data, spec.labels))
        log.info("evaluate: %s in all, so each fine-tune gets about %.0f s (~%d steps), re-planned as runs finish",
                 duration(spec.budget_s), each, each / costs.step_s)
        return
    if spec.each_s:
        log.info("evaluate: each fine-tune %.0f s; about %s in all", spec.each_s,
                 duration(runs * spec.each_s + frozen * costs.frozen_s(data, spec.labels)))
        return
    epochs = spec.epochs or cfg.optim.epochs
    per_run = {lab: epochs * _steps_per_epoch(round(data.shares[lab] * len(data.train)), b,
                                              cfg.finetune.min_epoch_steps) for lab in spec.labels}
    steps = sum(per_run.values()) * (len(spec.inits) * spec.seeds) * runs / max(len(plan_runs(spec)), 1)
    log.info("evaluate: each fine-tune %d epochs; about %s in all on this machine (--time-budget sets a total)",
             epochs, duration(steps * costs.step_s))


def _steps_per_epoch(n: int, batch: int, min_steps: int) -> int:
    from moco.transfer.labels import passes_per_epoch

    return max(1, n * passes_per_epoch(n, batch, min_steps) // batch)


def evaluate(
    checkpoint: Any = None,
    data: str | Path | None = None,
    out: str | Path = "runs/evaluate",
    *,
    train_dir: str | Path | list[str] | None = None,
    test_dir: str | Path | list[str] | None = None,
    labels: list[str] | tuple[str, ...] | None = None,
    seeds: int | None = None,
    baselines: Any = None,
    time_budget: float | None = None,
    each: float | None = None,
    epochs: int | None = None,
    overrides: list[str] | None = None,
    frozen: bool = True,
    resume: str | None = None,
    overwrite: bool = False,
    report_only: bool = False,
    progress: bool = True,
    started: float | None = None,
    command: str | None = None,
) -> EvaluateResult:
    """Judge ``checkpoint`` (a path, ``NAME=PATH``, or several) on the labelled ``data`` (a folder with
    ``train/`` and ``test/``, or shards; or ``train_dir`` and ``test_dir``): frozen (kNN, linear probe) and
    fine-tuned at each share of ``labels`` (default 1%, 10%, 100%) against random init (and ``baselines``,
    ``supervised:CKPT``), ``seeds`` seeds each (default 2). ``time_budget`` (seconds) is shared by the whole
    evaluation; or ``each`` seconds or ``epochs`` per fine-tune (default: the recipe's). Writes ``out/report.md``,
    ``out/results.json`` and ``out/evaluate.png``; ``resume="auto"`` continues an interrupted evaluation,
    ``report_only`` rebuilds the report from the runs that exist. The budget counts from ``started`` (a
    :func:`time.perf_counter` time; default: the call)."""
    from moco.experiments.evaluate_report import write_report

    t_start = time.perf_counter() if started is None else started
    out = Path(out)
    if report_only:
        return write_report(out, stopped=False)
    spec, state = open_evaluation(
        out, lambda: build_spec(checkpoint, data, train_dir, test_dir, labels, seeds, baselines, time_budget, each,
                                epochs, overrides, frozen),
        resume, overwrite, {"budget_s": time_budget, "each_s": each, "epochs": epochs},
        lambda spec: conflicts(spec, checkpoint, baselines, data, train_dir, test_dir, labels, seeds))
    cfg = run_config(spec)
    data_ = open_data(spec, cfg, progress)
    out.mkdir(parents=True, exist_ok=True)
    state = state or new_state(spec, data_, command or "")
    state["spec"] = asdict(spec)
    write_state(out, state)
    files = label_files(out, spec, data_, cfg.finetune.labels_seed)
    budget = Budget(t_start + spec.budget_s - state["spent_s"] if spec.budget_s else None, t_start, state["spent_s"])
    try:
        stopped = not _run_all(spec, data_, cfg, files, out, budget, progress)
    finally:
        state["spent_s"] = round(budget.spent(), 1)
        write_state(out, state)
    return write_report(out, stopped=stopped)


def _run_all(spec: Spec, data: Data, cfg: Config, files: dict[str, Path], out: Path, budget: Budget,
             progress: bool) -> bool:
    """The frozen protocols, then every fine-tune not finished yet, one progress line each; False if a fine-tune
    was interrupted."""
    runs = plan_runs(spec)
    todo = [r for r in runs if not (out / "runs" / r.folder / "results.json").is_file()]
    frozen = [i for i in spec.inits if i.pretrained and spec.frozen
              and not (out / "runs" / f"frozen-{i.name}" / "results.json").is_file()]
    total, done = len(runs) + len(frozen), len(runs) - len(todo)
    if not todo and not frozen:
        log.info("evaluate: every run in %s is finished", out / "runs")
        return True
    costs = measure(cfg, len(data.train.classes or []))
    announce(spec, data, costs, cfg, len(todo), len(frozen), budget)
    if spec.budget_s:
        check_budget(budget, costs, len(frozen) * costs.frozen_s(data, spec.labels), len(todo),
                     costs.shortest_finetune_s(len(data.test), cfg.finetune.min_epoch_steps), spec.budget_s)
    for init in frozen:
        t0 = time.perf_counter()
        r = frozen_protocols(init, spec, data, cfg, files, out / "runs" / f"frozen-{init.name}", progress)
        done += 1
        log.info("%s frozen %s: kNN %.2f%%, linear %s (%.0f s)", bar(done, total), init.name, r["knn"]["top1"],
                 ", ".join(f"{lab} {v['top1']:.2f}%" for lab, v in r["linear"].items()), time.perf_counter() - t0)
    for i, ft in enumerate(todo):
        t0 = time.perf_counter()
        r = run_finetune(ft, out / "runs" / ft.folder, spec, files, _length(spec, budget, len(todo) - i), progress)
        if r is None:
            log.warning("evaluate: stopped during %s; `--resume auto` continues it", ft.what)
            return False
        done += 1
        left = f", {duration(budget.deadline - time.perf_counter())} left" if budget.deadline else ""
        log.info("%s %s: top-1 %.2f%% (%.0f s, %d steps%s)", bar(done, total), ft.what, r["top1"],
                 time.perf_counter() - t0, r["steps"], left)
    return True
