"""Multi-goal figure and table (paper Fig. 2) from the checkpoints of benchmark/multigoal.sh.

Usage: python benchmark/multigoal_report.py runs --out results/multigoal
Finds the checkpoints `RUNS_DIR/{run_name}/*.pt` of the runs on MultiGoal-v0 and MultiGoal{4,5,6}-v0, evaluates each
with `multigoal_env.evaluate_policy` (trajectories of the stochastic policy from the origin, seeded noise), writes
OUT/multigoal.png (rows DACERv2, DACER and any other exp_name; columns 4, 5, 6 goals) and OUT/multigoal.md, and
prints the markdown. Missing cells stay blank and are listed in the notes.
"""

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # multigoal_env.py and dacerv2_continuous.py
from multigoal_env import (  # noqa: E402 (after making the repository root importable)
    VALID_NUM_GOALS,
    CheckpointError,
    evaluate_policy,
    load_actor,
    plot_trajectories,
    random_policy,
    untrained_actor,
)

ALGORITHMS = {"dacerv2": "DACERv2", "dacer": "DACER"}  # exp_name of benchmark/multigoal.sh -> label, in figure order
FIGURE_SEED = 1  # the seed shown in the figure (the lowest seed found when it is missing)


class ReportError(Exception):
    """A problem with the input that ends the report with a one-line message and exit status 2."""


@dataclass
class Evaluation:
    """One checkpoint and its evaluation."""

    path: Path
    exp_name: str
    num_goals: int
    seed: int
    global_step: int
    trajectories: list
    metrics: dict
    train_args: dict

    @property
    def label(self):
        """The checkpoint as `exp_name / N goals / seed S` for notes."""
        return f"{self.exp_name} / {self.num_goals} goals / seed {self.seed}"


def label_of(exp_name):
    """The algorithm's name in the figure and table (the exp_name itself when it is not one of ALGORITHMS)."""
    return ALGORITHMS.get(exp_name, exp_name)


def evaluate_checkpoints(runs_dir, num_trajectories, seed):
    """Evaluate every multi-goal checkpoint under runs_dir; returns (evaluations, notes about skipped files)."""
    if not runs_dir.is_dir():
        raise ReportError(f"runs directory {str(runs_dir)!r} does not exist")
    paths = sorted(path for path in runs_dir.glob("*/*.pt") if path.parent.name.startswith("MultiGoal"))
    if not paths:
        raise ReportError(f"no checkpoint of a MultiGoal run under {str(runs_dir)!r} (runs need --save-model)")
    evaluations, notes = [], []
    for path in paths:
        try:
            actor, num_goals, checkpoint = load_actor(path)
        except CheckpointError as error:
            notes.append(f"skipped: {error}")
            continue
        args, step = checkpoint["args"], int(checkpoint.get("global_step", 0))
        trajectories, _, metrics = evaluate_policy(actor, num_goals, num_trajectories, seed)
        exp_name, run_seed = args.get("exp_name", path.stem), int(args.get("seed", 0))
        evaluations.append(Evaluation(path, exp_name, num_goals, run_seed, step, trajectories, metrics, args))
    if not evaluations:
        raise ReportError(f"no usable MultiGoal checkpoint under {str(runs_dir)!r}: {'; '.join(notes)}")
    return evaluations, notes


def drop_duplicates(evaluations, notes):
    """Keep one checkpoint per (exp_name, N, seed): the one trained longest (then the latest run folder)."""
    best = {}
    for evaluation in sorted(evaluations, key=lambda e: (e.global_step, e.path.parent.name)):
        key = (evaluation.exp_name, evaluation.num_goals, evaluation.seed)
        if key in best:
            notes.append(f"{evaluation.label}: several checkpoints, using {evaluation.path}, ignoring {best[key].path}")
        best[key] = evaluation
    return list(best.values())


def group(evaluations):
    """{(exp_name, N): evaluations sorted by seed}, exp_names in figure order (ALGORITHMS first, then the others)."""
    exp_names = list(ALGORITHMS) + sorted({e.exp_name for e in evaluations} - set(ALGORITHMS))
    return {
        (exp, n): sorted((e for e in evaluations if (e.exp_name, e.num_goals) == (exp, n)), key=lambda e: e.seed)
        for exp in exp_names
        for n in VALID_NUM_GOALS
    }


def figure_evaluation(cell):
    """The evaluation of a cell shown in the figure: seed FIGURE_SEED, else the lowest seed (None if empty)."""
    return next((e for e in cell if e.seed == FIGURE_SEED), cell[0] if cell else None)


def plot_grid(groups, path):
    """The grid of paper Fig. 2: one row per algorithm, one column per number of goals; blank cells say so."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    exp_names = list(dict.fromkeys(exp for exp, _ in groups))
    fig = Figure(figsize=(4.0 * len(VALID_NUM_GOALS), 4.3 * len(exp_names)), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(exp_names), len(VALID_NUM_GOALS), squeeze=False)
    for row, exp in zip(axes, exp_names):
        for ax, n in zip(row, VALID_NUM_GOALS):
            shown = figure_evaluation(groups[exp, n])
            if shown is None:
                ax.text(0.5, 0.5, "no run", ha="center", va="center", transform=ax.transAxes, color="gray")
                ax.set_title(f"{label_of(exp)}, {n} goals")
                ax.set_axis_off()
                continue
            metrics = shown.metrics
            title = (
                f"{label_of(exp)}, {n} goals (seed {shown.seed})\n"
                f"{metrics['goals_reached']}/{n} reached, uniformity {metrics['uniformity']:.2f}"
            )
            plot_trajectories(shown.trajectories, n, title=title, ax=ax)
    fig.tight_layout()
    fig.savefig(path, format="png")


def mean_std(values, digits):
    """`mean` for one value, `mean ± std` (population std, ddof=0) for several; `-` where undefined (nan)."""
    values = [v for v in values if not np.isnan(v)]
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{np.mean(values):.{digits}f} ± {np.std(values):.{digits}f}"


def reference_rows(groups, num_trajectories, seed):
    """{(label, N): (seeds, metrics per seed)} of the references every result is read against: the untrained network
    of each architecture among the runs (the same evaluation at initialisation, once per seed: runs that differ only
    in training settings start from the same network) and uniform random actions."""
    untrained = {}
    for (_, n), cell in groups.items():
        for e in cell:
            a = e.train_args
            untrained.setdefault((n, a["diffusion_steps"], a["num_layers"], a["hidden_dim"]), {}).setdefault(e.seed, a)
    rows = {}
    for (n, steps, layers, width), args_of in sorted(untrained.items()):
        seeds = sorted(args_of)
        metrics = [evaluate_policy(untrained_actor(args_of[s]), n, num_trajectories, seed)[2] for s in seeds]
        rows[f"untrained network (T = {steps}, {layers} x {width})", n] = (", ".join(map(str, seeds)), metrics)
    for n in VALID_NUM_GOALS:
        rows["uniform random actions", n] = ("-", [evaluate_policy(random_policy(seed), n, num_trajectories)[2]])
    return rows


def table_row(label, n, seeds, all_metrics):
    """One markdown row; several seeds: mean ± population std, the goals column lists each seed's k."""
    reached = [m["goals_reached"] for m in all_metrics]
    goals = f"{reached[0]}/{n}"
    if len(reached) > 1:
        goals = f"{np.mean(reached):.2f}/{n} ({', '.join(map(str, reached))})"
    cells = [label, str(n), seeds, goals]
    for key, digits in (("success_rate", 2), ("uniformity", 3), ("min_max_ratio", 2), ("mean_steps_to_goal", 1),
                        ("path_efficiency", 2), ("mean_return", 0)):  # fmt: skip
        cells.append(mean_std([m[key] for m in all_metrics], digits))
    cells.append(str(np.sum([m["hit_counts"] for m in all_metrics], axis=0).tolist()))
    return "| " + " | ".join(cells) + " |"


def table(groups, references):
    """Markdown table lines, by number of goals: each algorithm, then the references (untrained, random)."""
    lines = [
        "| policy | goals N | seeds | goals reached k/N | success rate | uniformity H(p)/ln N | min/max ratio "
        "| mean steps to goal | path efficiency | mean return | hits per goal (all seeds) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for n in VALID_NUM_GOALS:
        for (exp, cell_n), cell in groups.items():
            if cell_n != n:
                continue
            if not cell:
                lines.append("| " + " | ".join([label_of(exp), str(n)] + [""] * 9) + " |")
                continue
            seeds = ", ".join(str(e.seed) for e in cell)
            lines.append(table_row(label_of(exp), n, seeds, [e.metrics for e in cell]))
        for (label, ref_n), (seeds, all_metrics) in references.items():
            if ref_n == n:
                lines.append(table_row(label, n, seeds, all_metrics))
    return lines


def cell_notes(groups):
    """Notes about missing cells and cells with fewer seeds than the fullest one."""
    most = max(len(cell) for cell in groups.values())
    notes = []
    for (exp, n), cell in groups.items():
        if not cell:
            notes.append(f"{label_of(exp)} / {n} goals: no checkpoint (blank in the table and the figure)")
        elif len(cell) < most:
            notes.append(f"{label_of(exp)} / {n} goals: {len(cell)} seed(s), other cells have up to {most}")
    return notes


def render_markdown(runs_dir, groups, references, notes, num_trajectories, seed):
    """The whole multigoal.md as one string."""
    evaluations = [e for cell in groups.values() for e in cell]
    lines = [
        "# Multi-goal multimodality (paper Fig. 2)",
        "",
        f"{len(evaluations)} checkpoint(s) from `{runs_dir}`. Each is evaluated with {num_trajectories} "
        "trajectories of its stochastic policy (fresh reverse-chain noise, no lambda * alpha exploration noise, "
        f"torch generator seed {seed}) from exactly the origin, horizon 100 steps. k = goals with at least one "
        "hit; success rate = hits / trajectories; uniformity = H(p) / ln N with p the hit distribution over "
        "goals; min/max ratio = min_k n_k / max_k n_k; mean steps to goal and path efficiency (straight-line "
        "distance from the start to where the goal was reached / length of the path) over the trajectories that "
        "reached a goal; mean return over all. The untrained rows run the same evaluation on the network at "
        "initialisation, once per architecture and seed among the runs (runs that differ only in training settings "
        "start from the same network), the last row uniform random actions: a result is read against them, "
        "since a policy that wanders reaches goals too. Several seeds: mean ± population std (ddof=0), the goals "
        "column lists each seed's k. Paper Fig. 2: at N = 6 DACER reaches 5/6 goals, DACERv2 6/6.",
        "",
        *table(groups, references),
        "",
        f"![trajectories](multigoal.png) (seed {FIGURE_SEED} of each cell, or its lowest seed)",
        "",
        "## Checkpoints",
        "",
        *(f"- {e.label}: `{e.path}`, {e.global_step} env steps" for e in evaluations),
        "",
        "## Notes",
        "",
        *(f"- {note}" for note in notes or ["every cell has a checkpoint and all cells have the same seeds"]),
    ]
    return "\n".join(lines) + "\n"


def parse_args(argv):
    """Command line: RUNS_DIR, --out, --num-trajectories and --seed."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs_dir", type=Path, help="the folder holding the run folders (e.g. runs)")
    parser.add_argument("--out", type=Path, default=Path("results/multigoal"), help="where the PNG and .md go")
    parser.add_argument("--num-trajectories", type=int, default=100, help="trajectories per checkpoint (default: 100)")
    parser.add_argument("--seed", type=int, default=0, help="the seed of the policies' noise (default: 0)")
    args = parser.parse_args(argv)
    if args.num_trajectories < 1:
        parser.error(f"--num-trajectories must be positive, got {args.num_trajectories}")
    return args


def main(argv=None):
    """Write OUT/multigoal.png and OUT/multigoal.md and print the markdown; exit 2 on unusable input."""
    args = parse_args(argv)
    torch.set_num_threads(1)  # tiny batches through small networks: one thread is fastest, also on busy cores
    try:
        evaluations, notes = evaluate_checkpoints(args.runs_dir, args.num_trajectories, args.seed)
    except ReportError as error:
        print(f"multigoal_report.py: error: {error}", file=sys.stderr)
        sys.exit(2)
    groups = group(drop_duplicates(evaluations, notes))
    args.out.mkdir(parents=True, exist_ok=True)
    plot_grid(groups, args.out / "multigoal.png")
    references = reference_rows(groups, args.num_trajectories, args.seed)
    markdown = render_markdown(args.runs_dir, groups, references, cell_notes(groups) + notes, args.num_trajectories,
                               args.seed)  # fmt: skip
    (args.out / "multigoal.md").write_text(markdown)
    print(markdown, end="")


if __name__ == "__main__":
    main()
