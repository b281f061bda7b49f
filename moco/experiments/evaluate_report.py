"""``moco evaluate``'s report, built only from what the evaluation folder holds (``evaluation.json`` and each
run's ``results.json``), so that ``--report-only`` writes the same report as the evaluation did, and a partial
evaluation reports what it has: ``RUN/report.md``, ``RUN/results.json`` and ``RUN/evaluate.png``."""

from __future__ import annotations

import json
import logging
import statistics
from pathlib import Path
from typing import Any

from moco.core.errors import DataError
from moco.experiments import base as ex
from moco.experiments import savings as sv
from moco.experiments.evaluate import EVALUATION, EvaluateResult, Spec, duration, plan_runs, read_state

log = logging.getLogger("moco")


def collect(out: Path) -> dict[str, Any]:
    """What the evaluation in ``out`` has produced: its settings, each finished fine-tune and frozen protocol,
    and the labels saved by each pretrained init."""
    state = read_state(out)
    if state is None:
        raise DataError(f"{out} holds no evaluation ({EVALUATION} is missing): run moco evaluate with --out {out}")
    spec = Spec.from_dict(state["spec"])
    shares = state["shares"]
    fts, machine = {}, {}
    for ft in plan_runs(spec):
        path = out / "runs" / ft.folder / "results.json"
        if path.is_file():
            r = json.loads(path.read_text())
            fts[ft.folder] = {"labels": ft.labels, "share": shares[ft.labels], "init": ft.init.name, "seed": ft.seed,
                              "top1": r["top1"], "steps": r["steps"], "epochs": r["epochs"],
                              "images": r["labels"]["images"], "train_seconds": r["train_seconds"]}
            machine = machine or {k: r.get(k) for k in ("cpu", "torch", "precision", "device")}
    frozen = {}
    for init in spec.inits:
        path = out / "runs" / f"frozen-{init.name}" / "results.json"
        if path.is_file():
            r = json.loads(path.read_text())
            frozen[init.name] = {"knn_top1": r["knn"]["top1"], "linear": {k: v["top1"] for k, v in r["linear"].items()}}
    results = {"command": state["command"], "started": state["started"], "spent_s": state["spent_s"],
               "spec": state["spec"], "shares": shares, "finetunes": fts, "frozen": frozen, "machine": machine}
    results["savings"] = savings(results, spec)
    return results


def curve(results: dict[str, Any], init: str) -> sv.Curve:
    """``init``'s fine-tuned top-1 by share, seeds in order."""
    out: sv.Curve = {}
    for r in sorted(results["finetunes"].values(), key=lambda r: r["seed"]):
        if r["init"] == init:
            out.setdefault(r["share"], []).append(r["top1"])
    return out


def savings(results: dict[str, Any], spec: Spec) -> dict[str, dict[str, Any]]:
    """Labels saved by each pretrained init against random init, with the seeds' range and spread."""
    rnd = curve(results, "random")
    out = {}
    for init in spec.inits:
        pre = curve(results, init.name)
        if not init.pretrained or not pre or not rnd:
            continue
        s, seeds = sv.labels_saved(pre, rnd), sv.per_seed(pre, rnd)
        noise, within = sv.seed_spread(pre, rnd), sv.within_spread(pre, rnd)
        out[init.name] = {"target": s.target, "target_share": s.target_share, "needed": s.needed,
                          "at_least": s.at_least, "saved": s.saved, "seeds_saved": [x.saved for x in seeds],
                          "spread": noise, "within_spread": within,
                          "line": sv.sentence(init.name, s, seeds, noise, within)}
    return out


def _cell(values: list[float]) -> str:
    if not values:
        return "–"
    mean = f"**{statistics.mean(values):.2f}**"
    return mean + (f" ({' / '.join(f'{v:.2f}' for v in values)})" if len(values) > 1 else "")


def finetune_table(results: dict[str, Any], spec: Spec) -> list[str]:
    """Fine-tuned top-1 by share (rows) and init (columns): the mean in bold, each seed's after it."""
    rows = ["| labels | images | " + " | ".join(f"{i.name} init" for i in spec.inits) + " |",
            "|---|---|" + "---|" * len(spec.inits)]
    for lab in spec.labels:
        runs = [r for r in results["finetunes"].values() if r["labels"] == lab]
        images = str(runs[0]["images"]) if runs else "–"
        cells = [_cell([r["top1"] for r in sorted(runs, key=lambda r: r["seed"]) if r["init"] == i.name])
                 for i in spec.inits]
        rows.append(f"| {lab} | {images} | " + " | ".join(cells) + " |")
    return rows


def frozen_table(results: dict[str, Any], spec: Spec) -> list[str]:
    """The frozen protocols of each pretrained backbone: kNN on all labels, the linear probe at each share."""
    shares = list(dict.fromkeys([*spec.labels, "100%"]))
    rows = ["| backbone | kNN, all labels | " + " | ".join(f"linear, {lab}" for lab in shares) + " |",
            "|---|---|" + "---|" * len(shares)]
    for name, r in results["frozen"].items():
        rows.append(f"| {name} | {r['knn_top1']:.2f} | "
                    + " | ".join(f"{r['linear'][lab]:.2f}" if lab in r["linear"] else "–" for lab in shares) + " |")
    return rows


def plot(results: dict[str, Any], spec: Spec, path: Path) -> None:
    """Left: fine-tuned top-1 against the share of labels (log axis), one line per init, seeds as points,
    random init's target dashed. Right: the frozen linear probe against the same axis, kNN as a star."""
    fig, (ax, fz) = ex.plt().subplots(1, 2, figsize=(11, 4), sharey=True)
    for init in spec.inits:
        c = curve(results, init.name)
        if not c:
            continue
        xs = sorted(c)
        (line,) = ax.plot([100 * x for x in xs], [statistics.mean(c[x]) for x in xs], "o-", label=f"{init.name} init")
        for x in xs:
            ax.scatter([100 * x] * len(c[x]), c[x], s=14, alpha=0.5, color=line.get_color())
    for name, s in results["savings"].items():
        ax.axhline(s["target"], ls="--", lw=0.8, color="grey")
        if s["needed"] is not None:
            ax.plot([100 * s["needed"]], [s["target"]], "x", ms=10, color="black")
            ax.annotate(f"{name}: {sv.pct(s['saved'])} saved", (100 * s["needed"], s["target"]),
                        textcoords="offset points", xytext=(6, -14), fontsize=8)
    shares = results["shares"]
    for name, r in results["frozen"].items():
        labs = sorted((lab for lab in r["linear"] if lab in shares or lab == "100%"),
                      key=lambda lab: shares.get(lab, 1.0))
        (line,) = fz.plot([100 * shares.get(lab, 1.0) for lab in labs], [r["linear"][lab] for lab in labs], "o-",
                          label=f"{name}, linear probe")
        fz.plot([100.0], [r["knn_top1"]], "*", ms=12, color=line.get_color(), label=f"{name}, kNN (all labels)")
    ticks = sorted({*shares.values(), 1.0})
    for a, title in ((ax, "fine-tuned"), (fz, "frozen backbone")):
        a.set_xscale("log")
        a.set_xticks([100 * x for x in ticks], [sv.pct(x) for x in ticks])
        a.minorticks_off()
        a.set(xlabel="labels used (% of the training set, log scale)", title=title)
        a.grid(alpha=0.3)
        if a.get_legend_handles_labels()[0]:
            a.legend(fontsize=8)
    ax.set_ylabel("test top-1 (%)")
    ex.save(fig, path)


def how_it_ran(results: dict[str, Any], spec: Spec) -> list[str]:
    """The settings, each share's run lengths, the missing runs, and the machine."""
    length = (f"{duration(spec.budget_s)} for the whole evaluation, shared among the fine-tunes as they ran"
              if spec.budget_s else f"{spec.each_s:.0f} s each" if spec.each_s else
              f"{spec.epochs} epochs each" if spec.epochs else "the recipe's epochs each")
    lines = [f"- Fine-tuning: `moco finetune`'s recipe, {length}; every init and seed of a share learns from the "
             "same images (`labels/`). Test top-1 on every test image."]
    for lab in spec.labels:
        runs = [r for r in results["finetunes"].values() if r["labels"] == lab]
        if runs:
            steps, epochs = [r["steps"] for r in runs], [r["epochs"] for r in runs]
            lines.append(f"- {lab} of the labels ({runs[0]['images']} images): {_span(steps)} steps, "
                         f"{_span(epochs)} epochs a run.")
    missing = [ft.what for ft in plan_runs(spec) if ft.folder not in results["finetunes"]]
    missing += [f"{i.name}, frozen" for i in spec.inits if i.pretrained and spec.frozen
                and i.name not in results["frozen"]]
    if missing:
        lines.append(f"- **Not run yet** ({len(missing)}): {'; '.join(missing)}. `--resume auto` runs them.")
    m = results["machine"]
    if m:
        cpu = m.get("cpu") or {}
        lines.append(f"- Machine: {m.get('device')}, {cpu.get('machine')} ({cpu.get('capability')}, "
                     f"{cpu.get('threads')} threads), {m.get('precision')}; torch {m.get('torch')}. Started "
                     f"{results['started']}.")
    return lines


def _span(values: list[int]) -> str:
    return f"{min(values)}" if min(values) == max(values) else f"{min(values)}-{max(values)}"


def report_lines(results: dict[str, Any], spec: Spec) -> list[str]:
    lines = ["# Does pretraining pay off? Labels saved on this data", ""]
    if results["command"]:
        lines += ["Produced by this command (do not edit by hand; rerun it, or `--report-only`):", "", "```",
                  results["command"], "```", ""]
    lines += [f"Training set: `{spec.train}`; test set: `{spec.test}`. Inits: "
              + ", ".join(f"{i.name} ({i.kind}{'' if i.kind == 'random' else f', `{i.path}`'})" for i in spec.inits)
              + f"; {spec.seeds} seed{'s' * (spec.seeds > 1)} each.", "", "## Labels saved", ""]
    lines += [f"- **{s['line']}**" for s in results["savings"].values()] or ["- Not enough runs yet to tell."]
    lines += ["", "The target is the best mean top-1 random init reaches (normally with all the labels); the share "
              "a pretrained init needs for it is interpolated on the log-label axis between the shares measured.", "",
              "## Fine-tuned (test top-1 %, mean and each seed)", "", *finetune_table(results, spec), "",
              "![evaluate.png](evaluate.png)", ""]
    if results["frozen"]:
        lines += ["## Frozen (test top-1 %)", "", *frozen_table(results, spec), ""]
    return [*lines, "## How it ran", "", *how_it_ran(results, spec)]


def write_report(out: Path, stopped: bool) -> EvaluateResult:
    """``out/report.md``, ``out/results.json`` and ``out/evaluate.png`` from what ``out`` holds."""
    results = collect(out)
    spec = Spec.from_dict(results["spec"])
    if results["finetunes"] or results["frozen"]:
        plot(results, spec, out / "evaluate.png")
    (out / "report.md").write_text("\n".join(report_lines(results, spec)) + "\n")
    tmp = out / ".results.json.tmp"
    tmp.write_text(json.dumps({"experiment": "evaluate", **results}, indent=2) + "\n")
    tmp.replace(out / "results.json")
    lines = [s["line"] for s in results["savings"].values()]
    for line in lines:
        log.info("%s", line)
    log.info("evaluate: report written to %s", out / "report.md")
    return EvaluateResult(out, out / "report.md", lines, stopped)
