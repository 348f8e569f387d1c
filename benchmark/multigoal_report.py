"""Multi-goal figure and table (paper Fig. 2) from the checkpoints of benchmark/multigoal.sh.

Usage: python benchmark/multigoal_report.py runs --out results/multigoal
Finds the checkpoints `RUNS_DIR/{run_name}/*.pt` of the runs on MultiGoal-v0 and MultiGoal{4,5,6}-v0 and evaluates
each with the script that wrote it (the "script" recorded in the checkpoint, if its sha256 still matches):
`SCRIPT --eval-only --resume CHECKPOINT --seed SEED` in a subprocess, paper Fig. 2's 100 trajectories of the
stochastic policy from the origin. It writes OUT/multigoal.png (rows DACERv2, DACER and any other exp_name, or those
of --rows in their order; columns 4, 5, 6 goals) and OUT/multigoal.md, and prints the markdown. Missing cells stay blank and are listed in the notes, as
are the checkpoints skipped (their script missing or changed since, or their evaluation failed).
"""

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # multigoal_env.py (the environment and its plots; never the training script)
from multigoal_env import (  # noqa: E402 (after making the repository root importable)
    ENV_NUM_GOALS,
    VALID_NUM_GOALS,
    evaluate_policy,
    plot_trajectories,
    random_policy,
)

ALGORITHMS = {"dacerv2": "DACERv2", "dacer": "DACER"}  # exp_name of benchmark/multigoal.sh -> label, in figure order
FIGURE_SEED = 1  # the seed shown in the figure (the lowest seed found when it is missing)
NUM_TRAJECTORIES = 100  # the script's --eval-only evaluates paper Fig. 2's 100 trajectories (and so does the table)


class ReportError(Exception):
    """A problem with the input that ends the report with a one-line message and exit status 2."""


@dataclass
class Checkpoint:
    """A multi-goal checkpoint whose script is still the one that wrote it: what its evaluation needs."""

    path: Path
    exp_name: str
    num_goals: int
    seed: int
    global_step: int
    train_args: dict
    script: str

    @property
    def label(self):
        """The checkpoint as `exp_name / N goals / seed S` for notes."""
        return f"{self.exp_name} / {self.num_goals} goals / seed {self.seed}"


@dataclass
class Evaluation(Checkpoint):
    """A checkpoint and its evaluation (read from the eval.json of the script's --eval-only)."""

    trajectories: list = None
    metrics: dict = None


def label_of(exp_name):
    """The algorithm's name in the figure and table (the exp_name itself when it is not one of ALGORITHMS)."""
    return ALGORITHMS.get(exp_name, exp_name)


def sha256_of(path):
    """The sha256 hex digest of a file's bytes."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def read_checkpoint(path, script_hashes):
    """The Checkpoint of path, or a one-line reason (str) why it cannot be evaluated. script_hashes caches the sha256
    of the scripts already read ({path: digest})."""
    if path.stat().st_size == 0:
        return f"{str(path)!r} is empty (0 bytes), not a checkpoint"
    if not zipfile.is_zipfile(path):  # torch.load's own error would be e.g. `KeyError: 101` for a text file
        return f"{str(path)!r} is not a checkpoint (not a whole torch.save file: truncated, or another kind)"
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # truncated, or objects weights_only refuses
        first_line = (str(error).splitlines() or [""])[0][:100]
        return f"cannot read {str(path)!r} ({type(error).__name__}: {first_line})"
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("args"), dict):
        return f"{str(path)!r} is not a checkpoint of dacerv2_continuous.py (no 'args')"
    args = checkpoint["args"]
    num_goals = ENV_NUM_GOALS.get(args.get("env_id"))
    if num_goals is None:
        return f"{str(path)!r} was trained on {args.get('env_id')!r}, not a multi-goal env ({', '.join(ENV_NUM_GOALS)})"
    script, digest = checkpoint.get("script"), checkpoint.get("script_sha256")
    if not isinstance(script, str) or not isinstance(digest, str):
        return f"{str(path)!r} does not record the script that wrote it (written by an older version of the script)"
    if not Path(script).is_file():
        return f"{str(path)!r}: the script that wrote it, {script}, is missing"
    if script not in script_hashes:
        script_hashes[script] = sha256_of(script)
    if script_hashes[script] != digest:
        return (f"{str(path)!r}: the script that wrote it, {script}, has changed since (sha256 {digest[:12]} then, "
                f"{script_hashes[script][:12]} now)")
    exp_name, seed = args.get("exp_name", path.stem), int(args.get("seed", 0))
    return Checkpoint(path, exp_name, num_goals, seed, int(checkpoint.get("global_step", 0)), args, script)


def find_checkpoints(runs_dir):
    """The evaluable multi-goal checkpoints under runs_dir; returns (checkpoints, notes about the skipped files)."""
    if not runs_dir.is_dir():
        raise ReportError(f"runs directory {str(runs_dir)!r} does not exist")
    paths = sorted(path for path in runs_dir.glob("*/*.pt") if path.parent.name.startswith("MultiGoal"))
    if not paths:
        raise ReportError(f"no checkpoint of a MultiGoal run under {str(runs_dir)!r} (runs need --save-model)")
    checkpoints, notes, script_hashes = [], [], {}
    for path in paths:
        found = read_checkpoint(path, script_hashes)
        if isinstance(found, str):
            notes.append(f"skipped: {found}")
        else:
            checkpoints.append(found)
    return checkpoints, notes


def drop_duplicates(checkpoints, notes):
    """Keep one checkpoint per (exp_name, N, seed): the one trained longest (then the latest run folder)."""
    best = {}
    for checkpoint in sorted(checkpoints, key=lambda c: (c.global_step, c.path.parent.name)):
        key = (checkpoint.exp_name, checkpoint.num_goals, checkpoint.seed)
        if key in best:
            notes.append(f"{checkpoint.label}: several checkpoints, using {checkpoint.path}, ignoring {best[key].path}")
        best[key] = checkpoint
    return list(best.values())


def run_eval_only(script, flags):
    """Run `script --eval-only FLAGS` in a subprocess (on the CPU, one torch thread, in a temporary folder); returns
    its eval.json as a dict, or a one-line reason (str) why there is none."""
    with tempfile.TemporaryDirectory(prefix="multigoal_report_") as tmp:
        command = [sys.executable, script, "--eval-only", *flags, "--eval-dir", tmp, "--eval-episodes", "1",
                   "--no-cuda", "--torch-threads", "1", "--no-capture-video"]
        # multigoal_env.py beside the script comes first; this repository's is the fallback
        pythonpath = os.pathsep.join(filter(None, [os.environ.get("PYTHONPATH"), str(REPO)]))
        env = {**os.environ, "PYTHONPATH": pythonpath, "OMP_NUM_THREADS": "1"}
        result = subprocess.run(command, check=False, cwd=tmp, env=env, capture_output=True, text=True)
        record = Path(tmp, "eval.json")
        if result.returncode != 0 or not record.is_file():
            lines = [line.strip() for line in result.stderr.splitlines() if line.strip()]
            message = lines[-1] if lines else "no message"
            return f"{Path(script).name} --eval-only failed (exit status {result.returncode}: {message})"
        return json.loads(record.read_text())


def evaluation_of(checkpoint, seed):
    """The Evaluation of a checkpoint by its own script's --eval-only with noise seed `seed`, or a reason (str)."""
    record = run_eval_only(checkpoint.script, ["--resume", str(checkpoint.path.resolve()), "--seed", str(seed)])
    if isinstance(record, str):
        return f"{str(checkpoint.path)!r}: {record}"
    trajectories = [np.asarray(path, dtype=np.float64) for path in record["trajectories"]]
    return Evaluation(**vars(checkpoint), trajectories=trajectories, metrics=record["multimodality"])


def untrained_metrics(script, num_goals, seed, steps, layers, width):
    """The multimodality metrics of the network a run of `script` with --seed seed starts from (its --eval-only
    without --resume: the seed is also the evaluation noise's), or a reason (str)."""
    record = run_eval_only(script, ["--env-id", f"MultiGoal{num_goals}-v0", "--seed", str(seed), "--diffusion-steps",
                                    str(steps), "--num-layers", str(layers), "--hidden-dim", str(width)])
    if isinstance(record, str):
        return f"untrained network of {script} (seed {seed}): {record}"
    return record["multimodality"]


def untrained_keys(checkpoints):
    """{(script, N, T, layers, width): sorted seeds} of the untrained networks the checkpoints' runs started from
    (runs that differ only in training settings start from the same network)."""
    keys, sizes = {}, ("diffusion_steps", "num_layers", "hidden_dim")
    for c in checkpoints:
        if all(name in c.train_args for name in sizes):  # (an edited copy could have dropped one of these flags)
            keys.setdefault((c.script, c.num_goals, *(c.train_args[name] for name in sizes)), set()).add(c.seed)
    return {key: sorted(seeds) for key, seeds in sorted(keys.items())}


def evaluate_all(checkpoints, seed, workers):
    """Evaluate the checkpoints and their untrained networks, `workers` subprocesses at a time.

    Returns (evaluations, {untrained key: {seed: metrics}}, notes about what failed)."""
    keys = untrained_keys(checkpoints)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        evaluated = [pool.submit(evaluation_of, c, seed) for c in checkpoints]
        untrained = {(key, s): pool.submit(untrained_metrics, key[0], *key[1:], s) for key, seeds in keys.items()
                     for s in seeds}
        evaluations = [future.result() for future in evaluated]
        untrained = {key: future.result() for key, future in untrained.items()}
    notes = [f"skipped: {e}" for e in evaluations if isinstance(e, str)]
    notes += [f"no reference row: {m}" for m in untrained.values() if isinstance(m, str)]
    references = {}
    for (key, s), metrics in untrained.items():
        if not isinstance(metrics, str):
            references.setdefault(key, {})[s] = metrics
    return [e for e in evaluations if not isinstance(e, str)], references, notes


def group(evaluations, rows=None):
    """{(exp_name, N): evaluations sorted by seed}, exp_names in figure order (rows, else ALGORITHMS and the others)."""
    exp_names = rows or list(ALGORITHMS) + sorted({e.exp_name for e in evaluations} - set(ALGORITHMS))
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


def reference_rows(groups, untrained, seed):
    """{(label, N): (seeds, metrics per seed)} of the references every result is read against: the untrained network
    of each script and architecture among the evaluated runs (once per seed: runs that differ only in training
    settings start from the same network; `untrained` as from `evaluate_all`) and uniform random actions."""
    evaluations = [e for cell in groups.values() for e in cell]
    scripts = {e.script for e in evaluations}
    used = untrained_keys(evaluations)  # only the networks of the runs in the table
    rows = {}
    for key, seeds in used.items():
        script, n, steps, layers, width = key
        seeds = [s for s in seeds if s in untrained.get(key, {})]
        if not seeds:
            continue
        name = f", {Path(script).name}" if len(scripts) > 1 else ""  # several scripts: several untrained networks
        label = f"untrained network (T = {steps}, {layers} x {width}{name})"
        rows[label, n] = (", ".join(map(str, seeds)), [untrained[key][s] for s in seeds])
    for n in VALID_NUM_GOALS:
        rows["uniform random actions", n] = ("-", [evaluate_policy(random_policy(seed), n, NUM_TRAJECTORIES)[2]])
    return dict(sorted(rows.items(), key=lambda item: item[0][0].startswith("uniform")))


def table_row(label, n, seeds, all_metrics):
    """One markdown row; several seeds: mean ± population std, the goals column lists each seed's k."""
    reached = [m["goals_reached"] for m in all_metrics]
    goals = f"{reached[0]}/{n}"
    if len(reached) > 1:
        goals = f"{np.mean(reached):.2f}/{n} ({', '.join(map(str, reached))})"
    cells = [label, str(n), seeds, goals]
    for key, digits in (("success_rate", 2), ("uniformity", 3), ("min_max_ratio", 2), ("mean_steps_to_goal", 1),
                        ("path_efficiency", 2), ("mean_return", 0)):
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


def render_markdown(runs_dir, groups, references, notes, seed):
    """The whole multigoal.md as one string."""
    evaluations = [e for cell in groups.values() for e in cell]
    lines = [
        "# Multi-goal multimodality (paper Fig. 2)",
        "",
        f"{len(evaluations)} checkpoint(s) from `{runs_dir}`. Each is evaluated by the script that wrote it "
        f"(`--eval-only`) with {NUM_TRAJECTORIES} trajectories of its stochastic policy (fresh reverse-chain noise, no "
        f"lambda * alpha exploration noise, torch generator seed {seed}) from exactly the origin, horizon 100 steps. "
        "k = goals with at least one hit; success rate = hits / trajectories; uniformity = H(p) / ln N with p the hit "
        "distribution over goals; min/max ratio = min_k n_k / max_k n_k; mean steps to goal and path efficiency "
        "(straight-line distance from the start to where the goal was reached / length of the path) over the "
        "trajectories that reached a goal; mean return over all. The untrained rows run the same evaluation on the "
        "network at initialisation (the script's `--eval-only` without `--resume`, whose --seed seeds the network and "
        "the noise alike), once per script, architecture and seed among the runs (runs that differ only in training "
        f"settings start from the same network), the last row uniform random actions (numpy seed {seed}): a result "
        "is read against them, since a policy that wanders reaches goals too. Several seeds: mean ± population std "
        "(ddof=0), the goals column lists each seed's k. Paper Fig. 2: at N = 6 DACER reaches 5/6 goals, DACERv2 6/6.",
        "",
        *table(groups, references),
        "",
        f"![trajectories](multigoal.png) (seed {FIGURE_SEED} of each cell, or its lowest seed)",
        "",
        "## Checkpoints",
        "",
        *(f"- {e.label}: `{e.path}`, {e.global_step} env steps, evaluated by `{e.script}`" for e in evaluations),
        "",
        "## Notes",
        "",
        *(f"- {note}" for note in notes or ["every cell has a checkpoint and all cells have the same seeds"]),
    ]
    return "\n".join(lines) + "\n"


def parse_args(argv):
    """Command line: RUNS_DIR, --out, --seed, --workers and --rows."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs_dir", type=Path, help="the folder holding the run folders (e.g. runs)")
    parser.add_argument("--out", type=Path, default=Path("results/multigoal"), help="where the PNG and .md go")
    parser.add_argument("--seed", type=int, default=0, help="the seed of the policies' noise (default: 0)")
    parser.add_argument("--workers", type=int, default=2,
                        help="evaluations run at a time, one single-threaded subprocess each (default: 2)")
    parser.add_argument("--rows", nargs="+", metavar="EXP_NAME",
                        help="the exp_names to show, in this order; other checkpoints are not evaluated (default: "
                             "dacerv2, dacer, then every other exp_name found)")
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error(f"--workers must be positive, got {args.workers}")
    return args


def build_report(runs_dir, out, seed=0, workers=2, rows=None):
    """Evaluate the checkpoints under runs_dir (those of the exp_names in rows, if given), write OUT/multigoal.png and
    OUT/multigoal.md; returns the markdown and the evaluations. Raises ReportError when no checkpoint can be
    evaluated."""
    checkpoints, notes = find_checkpoints(runs_dir)
    if rows:
        rows = list(dict.fromkeys(rows))
        notes += [f"not in --rows: {c.label}" for c in checkpoints if c.exp_name not in rows]
        checkpoints = [c for c in checkpoints if c.exp_name in rows]
    evaluations, untrained, failures = evaluate_all(drop_duplicates(checkpoints, notes), seed, workers)
    notes += failures
    if not evaluations:
        raise ReportError(f"no usable MultiGoal checkpoint under {str(runs_dir)!r}: {'; '.join(notes)}")
    groups = group(evaluations, rows)
    out.mkdir(parents=True, exist_ok=True)
    plot_grid(groups, out / "multigoal.png")
    references = reference_rows(groups, untrained, seed)
    markdown = render_markdown(runs_dir, groups, references, cell_notes(groups) + notes, seed)
    (out / "multigoal.md").write_text(markdown)
    return markdown, evaluations


def main(argv=None):
    """Write OUT/multigoal.png and OUT/multigoal.md and print the markdown; exit 2 on unusable input."""
    args = parse_args(argv)
    try:
        markdown, _ = build_report(args.runs_dir, args.out, args.seed, args.workers, args.rows)
    except ReportError as error:
        print(f"multigoal_report.py: error: {error}", file=sys.stderr)
        sys.exit(2)
    print(markdown, end="")


if __name__ == "__main__":
    main()
