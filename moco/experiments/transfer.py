"""Transfer, the paper's main claim in miniature: what pretraining is worth once fine-tuned on a new task.

The classes of the data set (by name) are split in two halves. The first half (CIFAR-10: airplane, automobile,
bird, cat, deer) is the *pretext* data: MoCo pretrains on its images without labels, and a supervised network of
the same architecture trains on the same images with their labels for the same wall time (the "supervised
pre-training counterpart"). The second half (dog, frog, horse, ship, truck) is the *downstream* task, judged by
``moco evaluate`` (:mod:`moco.experiments.evaluate`): each network, and the same architecture from random init,
is fine-tuned with 1%, 10% and 100% of its labels (the same images for every init), 2 seeds each, at an equal
budget; the pretrained networks are also judged frozen (kNN, linear probe). The paper's own transfer task is
detection: the downstream training images, pasted onto canvases (:mod:`moco.data.pasted`), make a small
detection set on which Faster R-CNN is trained from the three initialisations at an equal budget and scored with
COCO AP, and DeepLabV3 on the canvases' class maps, scored with mIoU (:data:`DENSE`). Every run is an ordinary
``moco pretrain``, ``moco finetune``, ``moco detect`` or ``moco segment`` run under ``runs/``, skipped when
finished and resumed when interrupted.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import platform
import shlex
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from moco.config import MIN_BUDGET_S, resolve
from moco.core.errors import DataError
from moco.data.folder import find_split, scan_images
from moco.data.pasted import PastedSpec, make_pasted_set
from moco.experiments import base as ex
from moco.experiments.base import Setting
from moco.experiments.evaluate import Spec, make_inits, plan_runs

log = logging.getLogger("moco")
INITS = ("MoCo", "supervised", "random")
CLAIM = ("Paper, Section 4.2 and Table 2: fine-tuned on a downstream task, MoCo's features match or beat supervised "
         "pre-training on the same data (Pascal VOC detection with Faster R-CNN R50-C4, AP: supervised 53.5, MoCo v1 "
         "55.9, MoCo v2 57.0), and both beat random init. The everyday form of the question: how many labels "
         "does pretraining save on a new task?")


@dataclass(frozen=True)
class TransferBudget:
    preset: str  # MoCo's recipe on the pretext images
    overrides: list[str]
    pretrain_s: float  # MoCo's time budget; 0: the recipe's epochs. The supervised network gets what MoCo used.
    finetune_s: float  # each fine-tune's time budget; 0: finetune_epochs epochs
    finetune_epochs: int
    labels: tuple[str, ...]
    seeds: int
    about: str
    detect_s: float = 240.0  # each detection run's time budget; 0: detect_epochs epochs
    detect_epochs: int = 12
    detect_set: PastedSpec = PastedSpec()  # the pasted detection set made from the downstream training images
    detect_overrides: tuple[str, ...] = ()  # over moco detect's recipe (128 RoIs, the CPU probe's, since #39)
    segment_s: float = 240.0  # each segmentation run's time budget (on the pasted set's class maps); 0: epochs
    segment_epochs: int = 30
    segment_overrides: tuple[str, ...] = ()  # over moco segment's recipe


TRANSFER_BUDGETS = {
    "small": TransferBudget("cifar10-cpu", [], 600.0, 60.0, 0, ("1%", "10%", "100%"), 2,
                            "MoCo with the `cifar10-cpu` recipe for 10 minutes on the pretext images, the supervised "
                            "network for the same time, each fine-tune 60 s, each detection and segmentation run "
                            "240 s (about 2 hours in all on 2 CPU cores)"),
    "paper": TransferBudget("cifar10-demo", ["optim.epochs=200"], 0.0, 0.0, 100, ("1%", "10%", "100%"), 2,
                            "MoCo with the authors' CIFAR-10 demo recipe for 200 epochs on the pretext images, the "
                            "supervised network for the same time, each fine-tune 100 epochs, each detection run 12 "
                            "epochs, each segmentation run 30 (GPUs)"),
}


def split_classes(data: Path, work: Path) -> dict[str, Path]:
    """``pretext`` and ``downstream`` folders (each with ``train/`` and ``test/``) of links to the class folders
    of ``data``'s first and second half of classes by name."""
    train_dir, test_dir = find_split(data)
    if test_dir is None:
        raise DataError(f"{data} needs train/ and test/ ImageFolders: transfer is scored on the test split")
    classes = scan_images(train_dir).classes
    if not classes or len(classes) < 4:
        raise DataError(f"{train_dir} needs at least 4 classes (class sub-folders) to split into pretext and "
                        "downstream halves")
    half = len(classes) // 2
    out = {}
    for name, names in (("pretext", classes[:half]), ("downstream", classes[half:])):
        for split, src in (("train", train_dir), ("test", test_dir)):
            folder = work / name / split
            folder.mkdir(parents=True, exist_ok=True)
            for c in names:
                link = folder / c
                if not link.is_symlink():
                    link.symlink_to((src / c).resolve(), target_is_directory=True)
        out[name] = work / name
    return out


def _finetune_overrides(extra: list[str]) -> list[str]:
    """The ``--set`` values that concern how fine-tuning runs (data and train settings, seed aside)."""
    return [x for x in extra if x.split("=", 1)[0].split(".")[0] in ("data", "train", "finetune")
            and not x.startswith("train.seed=")]


def _once(name: str, out: Path, run: Any) -> dict[str, Any] | None:
    """A transfer run into ``out``: its results.json when finished (skipped), else ``run(resume)`` (resumed when
    a checkpoint is there); None when it was interrupted."""
    done = out / "results.json"
    if done.is_file():
        log.info("[done] %s (%s)", name, out)
        return json.loads(done.read_text())
    log.info("[run] %s -> %s", name, out)
    res = run("auto" if (out / "checkpoint_last.pt").is_file() else None)
    return None if res.stopped else json.loads(done.read_text())


def _finetune(name: str, out: Path, data: Path, budget: TransferBudget, time_s: float, extra: list[str],
              progress: bool, **kw: Any) -> dict[str, Any] | None:
    """A fine-tuning run, skipped when finished; None when it was interrupted."""
    from moco.tasks.finetune import finetune

    length = _length(time_s, budget.finetune_epochs)
    return _once(name, out, lambda resume: finetune(  # resumed, the checkpoint supplies its init and labels
        data=data, out=out, overrides=_finetune_overrides(extra), progress=progress, resume=resume, **length, **kw))


def _length(seconds: float, epochs: int) -> dict[str, Any]:
    """A run's length: a time budget of ``seconds``, or ``epochs`` epochs when it is 0."""
    return {"time_budget": seconds} if seconds else {"epochs": epochs}


def _detect(out: Path, pasted: Path, budget: TransferBudget, extra: list[str], **kw: Any) -> Any:
    from moco.tasks.detect import detect

    return detect(train_ann=pasted / "train.json", train_images=pasted / "train", val_ann=pasted / "val.json",
                  val_images=pasted / "val", out=out, overrides=[*budget.detect_overrides, *extra], **kw)


def _segment(out: Path, pasted: Path, budget: TransferBudget, extra: list[str], **kw: Any) -> Any:
    from moco.tasks.segment import segment

    return segment(train_images=pasted / "train", train_masks=pasted / "train_maps", val_images=pasted / "val",
                   val_masks=pasted / "val_maps", out=out, overrides=[*budget.segment_overrides, *extra], **kw)


@dataclass(frozen=True)
class Dense:
    """A dense transfer task on the pasted set: how it runs, where its runs go, what it reports."""

    key: str  # results.json's section
    prefix: str  # run folders: PREFIX-INIT-sSEED
    what: str  # in the plan and the report
    run: Any  # (out, pasted, budget, extra, **init, length, flags, progress, resume) -> the task's result
    length: Any  # budget -> (seconds a run, epochs a run when seconds is 0)
    metrics: tuple[str, ...]  # the results kept; the first is the headline
    scored: str  # the table's heading: what the scores are


DENSE = (
    Dense("detection", "det", "detection", _detect, lambda b: (b.detect_s, b.detect_epochs), ("AP", "AP50", "AP75"),
          "COCO AP %, Faster R-CNN (`moco detect`), pycocotools' COCOeval"),
    Dense("segmentation", "seg", "segmentation", _segment, lambda b: (b.segment_s, b.segment_epochs),
          ("mIoU", "pixel_acc"),
          "mIoU and pixel accuracy %, DeepLabV3 (`moco segment`) on the canvases' class maps"),
)
"""The dense tasks the experiment trains from each init, in order."""


def _dense_runs(task: Dense, work: Path, pasted: Path, b: TransferBudget, extra: list[str], progress: bool,
                sources: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]] | None:
    """``task``'s runs for every init and seed on the pasted downstream set; None if interrupted."""
    runs: dict[str, dict[str, Any]] = {}
    for init in INITS:
        for s in range(b.seeds):
            folder = f"{task.prefix}-{init}-s{s}"
            out = work / folder
            r = _once(f"{init} init, {task.what}, seed {s}", out, lambda resume, out=out, init=init, s=s: task.run(
                out, pasted, b, _finetune_overrides(extra), flags={"train.seed": s}, progress=progress,
                resume=resume, **_length(*task.length(b)), **sources[init]))
            if r is None:
                return None
            runs[folder] = {"init": init, "seed": s, **{k: r[k] for k in (*task.metrics, "steps", "epochs",
                                                                          "images_per_sec", "train_seconds")}}
    return runs


def _plan(b: TransferBudget) -> list[tuple[str, str]]:
    """(what, its folder) of every run the experiment makes, in order."""
    plan = [("MoCo on the pretext images (no labels)", "moco"), ("supervised on the pretext images", "supervised")]
    spec = Spec(make_inits({"MoCo": "moco"}, {"supervised": "supervised:supervised"}), "", "", list(b.labels), b.seeds)
    plan += [(f"{ft.what} (downstream)", f"evaluate/runs/{ft.folder}") for ft in plan_runs(spec)]
    plan += [(f"{init} init, {t.what} on the pasted downstream objects, seed {s}", f"{t.prefix}-{init}-s{s}")
             for t in DENSE for init in INITS for s in range(b.seeds)]
    return plan


def _downstream(work: Path, down: Path, b: TransferBudget, extra: list[str], progress: bool, moco_ckpt: Path,
                sup_ckpt: Path) -> dict[str, Any] | None:
    """The downstream half judged by ``moco evaluate`` (:mod:`moco.experiments.evaluate`) in ``work/evaluate``:
    MoCo's backbone and the supervised network fine-tuned at each share of the labels against random init, and
    probed frozen; its collected results (:func:`~moco.experiments.evaluate_report.collect`), None if
    interrupted."""
    from moco.experiments.evaluate import evaluate
    from moco.experiments.evaluate_report import collect

    length = {"each": b.finetune_s} if b.finetune_s else {"epochs": b.finetune_epochs}
    res = evaluate({"MoCo": str(moco_ckpt)}, down, work / "evaluate", labels=b.labels, seeds=b.seeds,
                   baselines={"supervised": f"supervised:{sup_ckpt}"}, overrides=_finetune_overrides(extra),
                   resume="auto", progress=progress, **length)
    return None if res.stopped else collect(work / "evaluate")


def reproduce_transfer(data: Path, out: Path, runs: Path, budget: str = "small", extra: list[str] | None = None,
                       progress: bool = True, dry_run: bool = False) -> Path | None:
    """Run the transfer experiment (see the module docstring) and write ``out/report.md``; None if stopped."""
    from moco.experiments.runner import run_dir, run_setting  # the runner dispatches here: imported when run

    b, extra = TRANSFER_BUDGETS[budget], list(extra or [])
    moco_over = [*b.overrides, *extra] + ([f"optim.time_budget={b.pretrain_s}"] if b.pretrain_s else [])
    cfg = resolve(b.preset, overrides=moco_over)
    key = hashlib.sha1(json.dumps([str(data.resolve()), cfg.to_dict(), b.finetune_s, b.finetune_epochs,
                                   extra]).encode()).hexdigest()[:10]
    work = runs / f"transfer-{key}"
    if dry_run:
        for name, folder in _plan(b):
            print(f"transfer    {name:56s} {work / folder}")
        return None
    halves = split_classes(data, work / "data")
    pre, down = halves["pretext"], halves["downstream"]
    moco_dir = run_dir(work, cfg, pre)
    moco_res = run_setting(Setting("MoCo, pretext", moco_over), cfg, pre, work, progress)
    if moco_res is None:
        return None
    moco_ckpt = moco_dir / "checkpoint_last.pt"
    moco_s = moco_res["train_time"] + sum(r.get("eval_time", 0.0) for r in moco_res["metrics"]
                                          if r.get("type") == "epoch")
    sup_s = max(round(moco_s, 1), MIN_BUDGET_S)
    sup = _finetune("supervised, pretext", work / "supervised", pre, b, sup_s, extra, progress,
                    checkpoint=moco_ckpt, init="random", labels="100%")
    if sup is None:
        return None
    sources = {"MoCo": {"checkpoint": moco_ckpt, "init": "checkpoint"},
               "supervised": {"checkpoint": None, "init": f"supervised:{work / 'supervised' / 'checkpoint_last.pt'}"},
               "random": {"checkpoint": moco_ckpt, "init": "random"}}
    judged = _downstream(work, down, b, extra, progress, moco_ckpt, work / "supervised" / "checkpoint_last.pt")
    if judged is None:
        return None
    fts = {folder: {k: r[k] for k in ("labels", "init", "seed", "top1", "steps", "epochs", "images", "train_seconds")}
           for folder, r in judged["finetunes"].items()}
    probes = judged["frozen"]
    pasted = work / "pasted"
    if not (pasted / "val.json").is_file():  # written last: a set cut short by an interruption is made again
        make_pasted_set(down / "train", pasted, b.detect_set)
    dense = {}
    for task in DENSE:
        runs_of = _dense_runs(task, work, pasted, b, extra, progress, sources)
        if runs_of is None:
            return None
        dense[task.key] = runs_of
    results = {"moco": {k: moco_res[k] for k in ("knn_top1", "train_time", "epochs")}, "moco_seconds": moco_s,
               "supervised": {"top1": sup["top1"], "seconds": sup_s, "epochs": sup["epochs"],
                              "train_seconds": sup["train_seconds"]},
               "finetunes": fts, "probes": probes, **dense, "labels": list(b.labels), "seeds": b.seeds,
               "pretext_classes": scan_images(pre / "train").classes,
               "downstream_classes": scan_images(down / "train").classes}
    return write_transfer_report(results, out, data, runs, budget, extra)


def _cells(results: dict[str, Any], lab: str, init: str) -> list[float]:
    return [r["top1"] for r in results["finetunes"].values() if r["labels"] == lab and r["init"] == init]


def verdicts(results: dict[str, Any]) -> list[str]:
    """Sentences on the gaps between inits at each share of labels, against the seed-to-seed noise."""
    out = []
    for lab in results["labels"]:
        m, s, r = (_cells(results, lab, i) for i in INITS)
        noise = max([max(c) - min(c) for c in (m, s, r) if len(c) > 1] or [0.0])
        mm, sm, rm = (statistics.mean(c) for c in (m, s, r))

        def gap(a: float, b: float, other: str, noise: float = noise) -> str:
            d = a - b
            return (f"{d:+.2f} points against {other} ({ex.within(d, noise)} the seed-to-seed spread of "
                    f"{noise:.2f})")

        out.append(f"{lab} of the labels: MoCo {mm:.2f}%, {gap(mm, rm, 'random init')}; {gap(mm, sm, 'supervised')}; "
                   f"supervised {gap(sm, rm, 'random init')}.")
    vs_sup = [statistics.mean(_cells(results, lab, "MoCo")) - statistics.mean(_cells(results, lab, "supervised"))
              for lab in results["labels"]]
    vs_rnd = [statistics.mean(_cells(results, lab, "MoCo")) - statistics.mean(_cells(results, lab, "random"))
              for lab in results["labels"]]
    holds = sum(g >= -0.3 for g in vs_sup)
    out.append("The paper's claim, that fine-tuned MoCo features match or beat supervised pre-training: "
               + (f"holds at {holds} of {len(vs_sup)} shares of labels here" if holds else
                  "does not hold at this budget; the supervised network, trained with labels of related classes, "
                  f"is ahead by {-max(vs_sup):.1f} to {-min(vs_sup):.1f} points")
               + f". MoCo beats random init at {sum(g > 0 for g in vs_rnd)} of {len(vs_rnd)} shares.")
    runs = results["finetunes"].values()
    steps = {lab: [r["steps"] for r in runs if r["labels"] == lab] for lab in results["labels"]}
    epochs = {lab: [r["epochs"] for r in runs if r["labels"] == lab] for lab in results["labels"]}
    out.append("Each fine-tune's length: " + "; ".join(f"{lab}: {min(steps[lab])}-{max(steps[lab])} steps, "
                                                      f"{min(epochs[lab])}-{max(epochs[lab])} epochs"
                                                      for lab in results["labels"])
               + " (an epoch is at least 20 steps; at 100% of the labels a short budget may end before one pass "
                 "over them, so 100% can score below 10%).")
    first, last = results["labels"][0], results["labels"][-1]
    g0 = statistics.mean(_cells(results, first, "MoCo")) - statistics.mean(_cells(results, first, "random"))
    g1 = statistics.mean(_cells(results, last, "MoCo")) - statistics.mean(_cells(results, last, "random"))
    out.append(f"MoCo's gain over random init is {g0:+.2f} points at {first} of the labels and {g1:+.2f} at {last}: "
               + ("pretraining is worth most where labels are few, as the semi-supervised results of MoCo v2 and "
                  "SimCLR show." if g0 > g1 else "the gain does not shrink as labels grow here."))
    p = results["probes"]
    out.append(f"Frozen, on the downstream classes: kNN MoCo {p['MoCo']['knn_top1']:.2f}% against supervised "
               f"{p['supervised']['knn_top1']:.2f}%; linear probe on all labels MoCo "
               f"{p['MoCo']['linear']['100%']:.2f}% against {p['supervised']['linear']['100%']:.2f}%.")
    return out


def _scores(results: dict[str, Any], task: Dense, init: str, key: str | None = None) -> list[float]:
    return [r[key or task.metrics[0]] for r in results.get(task.key, {}).values() if r["init"] == init]


def dense_verdicts(results: dict[str, Any], task: Dense) -> list[str]:
    """Sentences on ``task``'s runs: MoCo against random init and against supervised, in its headline score,
    against the seed-to-seed spread."""
    if not results.get(task.key):
        return []
    score = {i: _scores(results, task, i) for i in INITS}
    noise = max([max(c) - min(c) for c in score.values() if len(c) > 1] or [0.0])
    m, s, r = (statistics.mean(score[i]) for i in INITS)
    second = task.metrics[1]
    best = max(INITS, key=lambda i: statistics.mean(_scores(results, task, i, second)))
    name = task.metrics[0] if task.metrics[0] != "AP" else "COCO AP"
    return [f"{task.what.capitalize()} ({name} on the pasted downstream objects): MoCo {m:.2f}, supervised {s:.2f}, "
            f"random {r:.2f}; MoCo {m - r:+.2f} against random init ({ex.within(m - r, noise)} the seed-to-seed "
            f"spread of {noise:.2f}) and {m - s:+.2f} against supervised ({ex.within(m - s, noise)} it). The paper's "
            f"claim for {task.what}, MoCo at or above supervised pre-training: "
            + ("holds here." if m - s >= -0.3 else "does not hold at this budget.")
            + f" The best {second} is {statistics.mean(_scores(results, task, best, second)):.2f} ({best} init)."]


def plot(results: dict[str, Any], path: Path) -> None:
    fig, ax = ex.plt().subplots(figsize=(6.5, 4))
    labels = results["labels"]
    for init in INITS:
        means = [statistics.mean(_cells(results, lab, init)) for lab in labels]
        (line,) = ax.plot(range(len(labels)), means, "o-", label=f"{init} init")
        for i, lab in enumerate(labels):  # each seed, in the line's colour
            ax.scatter([i] * len(_cells(results, lab, init)), _cells(results, lab, init), s=12, alpha=0.5,
                       color=line.get_color())
    ax.set_xticks(range(len(labels)), labels)
    ax.set(xlabel="share of the downstream labels", ylabel="test top-1 (%)", title="fine-tuned on the downstream "
           "classes")
    ax.grid(alpha=0.3)
    ax.legend()
    ex.save(fig, path)


def _dense_table(results: dict[str, Any], b: TransferBudget, task: Dense) -> list[str]:
    if not results.get(task.key):
        return []
    spec, (seconds, epochs) = b.detect_set, task.length(b)
    rows = [f"## {task.what.capitalize()} ({task.scored}; mean and each seed)", "",
            f"On {spec.n_train} training and {spec.n_val} validation canvases of {spec.canvas[0]} x {spec.canvas[1]} "
            f"px, each with {spec.objects[0]}-{spec.objects[1]} downstream training images of "
            f"{spec.sides[0]}-{spec.sides[1]} px pasted on it, " + (f"{seconds:.0f} s" if seconds else
                                                                  f"{epochs} epochs") + " a run.",
            "", "| init | " + " | ".join(task.metrics) + " |", "|---|" + "---|" * len(task.metrics)]
    for init in INITS:
        cells = []
        for key in task.metrics:
            c = _scores(results, task, init, key)
            cells.append(f"**{statistics.mean(c):.2f}**" + (f" ({' / '.join(f'{x:.2f}' for x in c)})"
                                                             if len(c) > 1 else ""))
        rows.append(f"| {init} | " + " | ".join(cells) + " |")
    return [*rows, ""]


def _finetune_table(results: dict[str, Any]) -> list[str]:
    """The fine-tuned top-1 by label share and init: the mean in bold, each seed's after it."""
    table = ["| labels | " + " | ".join(f"{i} init" for i in INITS) + " |", "|---|---|---|---|"]
    for lab in results["labels"]:
        cells = []
        for init in INITS:
            c = _cells(results, lab, init)
            cells.append(f"**{statistics.mean(c):.2f}**" + (f" ({' / '.join(f'{x:.2f}' for x in c)})" if len(c) > 1
                                                             else ""))
        table.append(f"| {lab} | " + " | ".join(cells) + " |")
    return table


def _probe_table(results: dict[str, Any]) -> list[str]:
    """The frozen protocols (kNN, linear at each label share) of the MoCo and the supervised backbones."""
    p = results["probes"]
    probe = ["| pretrained on the pretext images | kNN | " + " | ".join(f"linear, {lab}" for lab in results["labels"])
             + " |", "|---|---|" + "---|" * len(results["labels"])]
    for name in ("MoCo", "supervised"):
        probe.append(f"| {name} | {p[name]['knn_top1']:.2f} | "
                     + " | ".join(f"{p[name]['linear'][lab]:.2f}" for lab in results["labels"]) + " |")
    return probe


def write_transfer_report(results: dict[str, Any], out: Path, data: Path, runs: Path, budget: str,
                          extra: list[str]) -> Path:
    from moco import __version__
    from moco.experiments.report import write_index

    out.mkdir(parents=True, exist_ok=True)
    b = TRANSFER_BUDGETS[budget]
    cmd = ["moco", "reproduce", "transfer", "--data", str(data), "--out", str(out)]
    cmd += ["--runs", str(runs)] if runs != Path("runs/reproduce") else []
    cmd += ["--budget", budget] if budget != "small" else []
    command = shlex.join(cmd + [x for s in extra for x in ("--set", s)])
    plot(results, out / "transfer.png")
    says = verdicts(results) + [v for t in DENSE for v in dense_verdicts(results, t)]
    table, probe = _finetune_table(results), _probe_table(results)
    one = next(iter(results["finetunes"].values()))
    lines = [
        "# Transfer: fine-tuning with few labels, detection and segmentation, from MoCo, supervised and random init",
        "",
        "Produced by this command (do not edit by hand; rerun it):", "", "```", command, "```", "",
        f"Budget `{budget}`: {b.about}. Pretext classes (MoCo without labels, the supervised network with them): "
        f"{', '.join(results['pretext_classes'])}. Downstream classes: {', '.join(results['downstream_classes'])}. "
        f"MoCo trained {results['moco']['epochs']} epochs ({results['moco_seconds']:.0f} s, kNN "
        f"{results['moco']['knn_top1']:.2f}% on the pretext classes); the supervised network "
        f"{results['supervised']['epochs']} epochs in the same {results['supervised']['seconds']:.0f} s (top-1 "
        f"{results['supervised']['top1']:.2f}% on the pretext test images). Fine-tuning: `moco finetune`'s recipe, "
        f"{f'{b.finetune_s:.0f} s' if b.finetune_s else f'{b.finetune_epochs} epochs'} each, the same label "
        f"subsets for every init; test top-1 on all downstream test images (e.g. {one['images']} training images "
        f"at {one['labels']}).", "",
        f"momentum-contrast {__version__}, torch {torch.__version__}, {platform.machine()} "
        f"({torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} threads), "
        f"{datetime.date.today().isoformat()}.", "",
        "## The paper", "", CLAIM, "",
        "## Fine-tuned (test top-1 %, mean and each seed)", "", *table, "", "![transfer.png](transfer.png)", "",
        "## Frozen (test top-1 % on the downstream classes)", "", *probe, "",
        *(row for t in DENSE for row in _dense_table(results, b, t)),
        "## Against the paper", "", *(f"- {v}" for v in says),
    ]
    if budget == "small":
        lines.append("- Scale: the paper fine-tunes ResNet-50s pretrained for 200 epochs on ImageNet; this is a narrow "
                     "ResNet-18 pretrained for minutes on 25,000 small images. Differences within the seed-to-seed "
                     "spread mean nothing.")
    (out / "report.md").write_text("\n".join(lines) + "\n")
    index = [f"| labels | {' | '.join(f'{i} init' for i in INITS)} |", "|---|---|---|---|"]
    index += [f"| {lab} | " + " | ".join(f"{statistics.mean(_cells(results, lab, i)):.2f}" for i in INITS) + " |"
              for lab in results["labels"]]
    title = "Transfer: fine-tuning with few labels, detection and segmentation"
    (out / "results.json").write_text(json.dumps({"experiment": "transfer", "title": title, "budget": budget,
                                                  "command": command, "verdicts": says, "index_table": index,
                                                  **results}, indent=2))
    write_index(out.parent)
    log.info("transfer: report written to %s", out / "report.md")
    return out / "report.md"

