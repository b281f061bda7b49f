"""Writing an experiment's ``report.md`` and ``results.json``, and the index of all reports."""

from __future__ import annotations

import datetime
import json
import logging
import platform
import shlex
from pathlib import Path

import torch

from moco.experiments.base import BUDGETS, Experiment, Results, Setting
from moco.experiments.registry import EXPERIMENTS, RUNNERS
from moco.schema import Config

log = logging.getLogger("moco")


def _table(settings: list[Setting], results: Results) -> list[str]:
    rows = ["| setting | kNN top-1 (%) | final loss | pretext acc@1 (%) | training time (s) | paper |",
            "|---|---|---|---|---|---|"]
    for s in settings:
        r = results[s.name]
        rows.append(f"| {s.name} | {r['knn_top1']:.2f} | {r['loss']:.3f} | {r['pretext_acc1']:.1f} | "
                    f"{r['train_time']:.0f} | {s.paper or '-'} |")
    return rows


def write_report(name: str, exp: Experiment, settings: list[Setting], results: Results, out: Path,
                 command: str, budget: str, base: Config, n_images: int) -> Path:
    from moco import __version__

    verdicts = exp.verdicts(settings, results)
    exp.plot(settings, results, out)
    pngs = sorted(p.name for p in out.glob("*.png"))
    b = BUDGETS[budget]
    lines = [
        f"# {exp.title}", "",
        "Produced by this command (do not edit by hand; rerun it):", "", "```", command, "```", "",
        f"Budget `{budget}`: {b.about}; {n_images} training images. Every row is the same recipe with only the "
        "setting changed; kNN top-1 (k=200, cosine, tau=0.1) of the backbone on the test split after the last "
        "epoch. Training time is the sum of the epochs' wall time (kNN excluded).", "",
        f"momentum-contrast {__version__}, torch {torch.__version__}, {platform.machine()} "
        f"({torch.get_num_threads()} threads), {datetime.date.today().isoformat()}.", "",
        "## The paper", "", exp.claim, "",
        "## Results", "", *_table(settings, results), "",
        *(f"![{p}]({p})" for p in pngs), "",
        "## Against the paper", "", *(f"- {v}" for v in verdicts),
    ]
    if budget == "small":
        lines.append("- Scale: the paper measures ImageNet linear accuracy after 200 epochs of a ResNet-50; this is "
                     f"a {base.model.arch} at width {base.model.width} after {base.optim.epochs} epochs of CIFAR-10, "
                     "judged by kNN. Effects that need long training (stale keys, BN cheating, queue consistency) "
                     "have had little time to show, and differences within the seed-to-seed noise mean nothing.")
    if exp.notes:
        lines += ["", "## Notes", "", *(f"- {n}" for n in exp.notes)]
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    (out / "results.json").write_text(json.dumps(
        {"experiment": name, "title": exp.title, "budget": budget, "command": command, "verdicts": verdicts,
         "rows": [{k: v for k, v in results[s.name].items() if k != "metrics"} | {"paper": s.paper}
                  for s in settings]}, indent=2))
    write_index(out.parent)
    return path


def write_index(root: Path) -> Path:
    """``root/README.md``: every report under ``root`` with its command and verdicts, in one page."""
    lines = ["# Reproducing the paper: reports", "",
             "Written by `moco reproduce` after each experiment (do not edit by hand). One folder per experiment, "
             "each with `report.md`, plots and `results.json`.", ""]
    for name in [*EXPERIMENTS, *RUNNERS]:
        f = root / name / "results.json"
        if not f.is_file():
            continue
        try:
            r = json.loads(f.read_text())
            r.setdefault("title", EXPERIMENTS[name].title if name in EXPERIMENTS else name)
            r.setdefault("verdicts", [])
            table = r.get("index_table") or [  # an experiment of its own kind writes its own table
                "| setting | kNN top-1 (%) | pretext acc@1 (%) | paper |", "|---|---|---|---|",
                *(f"| {row['setting']} | {row['knn_top1']:.2f} | {row['pretext_acc1']:.1f} | "
                  f"{row.get('paper') or '-'} |" for row in r["rows"])]
        except (OSError, ValueError, KeyError) as e:  # a torn or foreign file must not stop an experiment
            log.warning("index: skipping %s (%s)", f, e)
            continue
        lines += [f"## [{r['title']}]({name}/report.md)", "", f"`{r['command']}`", "", *table,
                  "", *(f"- {v}" for v in r["verdicts"]), ""]
    path = root / "README.md"
    path.write_text("\n".join(lines))
    return path


def command_line(name: str, data: Path, out: Path, runs: Path, budget: str, extra: list[str]) -> str:
    """The command that (re)makes experiment ``name``'s report, as written at its top."""
    cmd = ["moco", "reproduce", name, "--data", str(data), "--out", str(out)]
    cmd += ["--runs", str(runs)] if runs != Path("runs/reproduce") else []
    cmd += ["--budget", budget] if budget != "small" else []
    return shlex.join(cmd + [x for s in extra for x in ("--set", s)])
