"""Summarise benchmark runs: TAR table, normalised average score and learning curves (README "Results").

Usage: python benchmark/report.py runs --out results [--record results/runs.json] [--planned logs/planned_runs.txt]
       [--reference ENV LABEL CSV ...]
Reads the TensorBoard event files of every run folder `runs/{env_id}__{exp_name}__{seed}__{unix_time}/` (or
`runs/{env_id}__{exp_name}__{seed}/`, the fixed folders of --resume-if-exists and --slurm grids), groups the runs by
(env, exp_name), writes OUT/results.md plus one learning-curve PNG per env and prints the markdown; it lists the runs
that have not reached their --total-timesteps yet (still running, waiting in a queue, or stopped) and, with --planned
(the file benchmark/*.sh launches write), every run of the grid that has no run folder at all.
Metrics: README "Results" (TAR as in the DACER paper's Table 1 caption; the normalised score of DACERv2's §4.3).
With --random (benchmark/random_baseline.py's JSON) the tables get a uniform-random row per task, and an aggregate
over tasks: the interquartile mean (IQM) of baseline-normalised scores, (TAR - random) / (baseline TAR - random) per
task and seed, with a stratified-bootstrap 95 % interval (as rliable computes it), the baseline being --baseline.
--reference draws a published curve (one CSV per seed, its step taken as the iteration) on an env's figure.
Every report also writes OUT/runs.json, a record of the runs it read (their evaluations, update times and settings,
a few kB each): committed beside results.md, it keeps a grid's finished runs when their folders are gone (a new
machine), and `--record OUT/runs.json` adds them to the next report, whose runs.json then holds both. A run in both
(same env, exp_name and seed) is counted once, the one that got furthest.
"""

import argparse
import csv
import json
import re
import shlex
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 (after selecting the Agg backend)
import numpy as np  # noqa: E402
from scipy import stats  # noqa: E402
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

EVAL_TAG = "eval/episodic_return"
UPDATE_MS_TAG = "charts/update_ms"
BOOTSTRAP_SAMPLES = 2_000
HPARAMS_TAG = "hyperparameters/text_summary"
DEFAULT_NUM_ENVS = 20
PAPER_SEEDS = 5
# Paper Table 2 (Wang et al. 2025, "Enhanced DACER Algorithm with High Diffusion Efficiency"): TAR mean and std over
# 5 seeds on the gym -v3 tasks, 1.5 M iterations.
PAPER_TAR = {
    "DACERv2": {
        "HumanoidStandup": (170956, 8792), "Ant": (9169, 129), "Humanoid": (12426, 292), "Walker2d": (8011, 188),
        "InvertedDoublePendulum": (9359, 1), "Hopper": (4202, 191), "HalfCheetah": (18192, 266), "Swimmer": (172, 6),
    },
    "DACER": {
        "HumanoidStandup": (161928, 3804), "Ant": (8040, 128), "Humanoid": (11791, 238), "Walker2d": (6674, 169),
        "InvertedDoublePendulum": (9354, 2), "Hopper": (4062, 181), "HalfCheetah": (17488, 216), "Swimmer": (150, 4),
    },
}
# Paper Table 2: the best mean TAR of any of its nine algorithms per task (DIME on Humanoid, SAC and DSAC on
# InvertedDoublePendulum, DACERv2 elsewhere).
PAPER_BEST_TAR = {
    "HumanoidStandup": 170956, "Ant": 9169, "Humanoid": 13065, "Walker2d": 8011, "InvertedDoublePendulum": 9360,
    "Hopper": 4202, "HalfCheetah": 18192, "Swimmer": 172,
}
# Settings that differ from run to run by design, only keep the books (checkpoints, logging), only change the speed
# (--compile: same losses and random numbers) or only name flags that are recorded themselves (--preset); never shown
# as what distinguishes two configurations.
NOT_A_DIFFERENCE = {"exp_name", "seed", "resume", "resume_if_exists", "save_model", "checkpoint_frequency",
                    "checkpoint_buffer", "log_frequency", "print_episodes", "track", "wandb_project_name",
                    "wandb_entity", "capture_video", "compile", "preset"}


class ReportError(Exception):
    """A problem with the input that ends the report with a one-line message and exit status 2."""


@dataclass
class Run:
    """One training run: its evaluation curve and the settings needed to find its final 10 %."""

    path: Path
    env_id: str
    exp_name: str
    seed: int
    steps: np.ndarray
    returns: np.ndarray
    num_envs: int
    total_timesteps: int
    hparams: dict = field(default_factory=dict)
    fallbacks: list = field(default_factory=list)
    update_ms: float = float("nan")  # the median of the logged charts/update_ms (the mean of each logging interval)

    @property
    def iterations(self):
        """Evaluation points in iterations (global_step / num_envs)."""
        return self.steps / self.num_envs

    @property
    def partial(self):
        """Whether the last evaluation is short of the planned total. The script logs at the step count before each
        vector step, so a finished run's final evaluation stands at total_timesteps - num_envs or later."""
        return self.steps[-1] < self.total_timesteps - self.num_envs

    @property
    def label(self):
        """The run as `env / exp_name / seed N` for notes."""
        return f"{self.env_id} / {self.exp_name} / seed {self.seed}"


def parse_hparams(text):
    """Parse the `|param|value|` markdown table of the hyperparameters text into a dict of strings."""
    rows = (line.strip().strip("|").split("|", 1) for line in text.splitlines() if line.count("|") >= 2)
    return {key.strip(): value.strip() for key, value in rows if key.strip() not in {"param", "-"}}


def read_event_file(path):
    """Return ([(wall_time, step, value), ...] of the eval tag, hyperparameters dict, [update_ms values]) of one
    event file."""
    acc = EventAccumulator(str(path), size_guidance={"scalars": 0, "tensors": 0}).Reload()
    tags = acc.Tags()
    scalars = [(e.wall_time, e.step, e.value) for e in acc.Scalars(EVAL_TAG)] if EVAL_TAG in tags["scalars"] else []
    update_ms = [e.value for e in acc.Scalars(UPDATE_MS_TAG)] if UPDATE_MS_TAG in tags["scalars"] else []
    hparams = {}
    if HPARAMS_TAG in tags["tensors"]:
        hparams = parse_hparams(acc.Tensors(HPARAMS_TAG)[0].tensor_proto.string_val[0].decode())
    return scalars, hparams, update_ms


def merge_scalars(scalars):
    """Merge (wall_time, step, value) events of several files: sorted by step, a later write overrides a step."""
    by_step = {step: value for _, step, value in sorted(scalars, key=lambda event: event[0])}
    steps = np.array(sorted(by_step), dtype=np.int64)
    return steps, np.array([by_step[s] for s in steps], dtype=np.float64)


def parse_run_name(name, hparams):
    """(env_id, exp_name, seed) from `{env_id}__{exp_name}__{seed}__{unix_time}` or `{env_id}__{exp_name}__{seed}`,
    else from the hyperparameters."""
    parts = name.split("__")
    if len(parts) >= 4 and parts[-2].isdigit():
        return parts[0], "__".join(parts[1:-2]), int(parts[-2])
    if len(parts) >= 3 and parts[-1].isdigit():
        return parts[0], "__".join(parts[1:-1]), int(parts[-1])
    try:
        return hparams["env_id"], hparams["exp_name"], int(hparams["seed"])
    except (KeyError, ValueError):
        raise ReportError(f"cannot tell env, exp_name and seed of run folder {name!r}") from None


def int_hparam(hparams, key, default, fallbacks, description):
    """An integer hyperparameter, or `default` when it is missing or unreadable (then `description` is recorded)."""
    try:
        return int(float(hparams[key]))
    except (KeyError, ValueError):
        fallbacks.append(description)
        return default


def load_run(run_dir, event_files):
    """Build a Run from all event files of one run folder (a resumed run has several; the last hyperparameters win)."""
    scalars, hparams, update_ms = [], {}, []
    for path in event_files:
        file_scalars, file_hparams, file_update_ms = read_event_file(path)
        scalars += file_scalars
        hparams = file_hparams or hparams
        update_ms += file_update_ms
    env_id, exp_name, seed = parse_run_name(run_dir.name, hparams)
    if not scalars:
        raise ReportError(f"{run_dir.name}: no {EVAL_TAG} scalars, skipped")
    steps, returns = merge_scalars(scalars)
    fallbacks = []
    num_envs = int_hparam(hparams, "num_envs", DEFAULT_NUM_ENVS, fallbacks, f"num_envs = {DEFAULT_NUM_ENVS} assumed")
    largest = "total_timesteps = the largest step seen (a partial run cannot be detected)"
    total = int_hparam(hparams, "total_timesteps", int(steps[-1]), fallbacks, largest)
    median_ms = float(np.median(update_ms)) if update_ms else float("nan")  # robust to a first, compiling interval
    return Run(run_dir, env_id, exp_name, seed, steps, returns, num_envs, total, hparams, fallbacks, median_ms)


def load_runs(runs_dir):
    """Load every run folder under runs_dir; returns (runs, notes about skipped folders)."""
    if not runs_dir.is_dir():
        raise ReportError(f"runs directory {str(runs_dir)!r} does not exist")
    folders = {}
    for path in sorted(runs_dir.rglob("events.out.tfevents.*")):
        folders.setdefault(path.parent, []).append(path)
    if not folders:
        raise ReportError(f"no TensorBoard event files under {str(runs_dir)!r}")
    runs, notes = [], []
    for run_dir, files in folders.items():
        try:
            runs.append(load_run(run_dir, files))
        except ReportError as error:
            notes.append(str(error))
    if not runs:
        raise ReportError(f"no run under {str(runs_dir)!r} has {EVAL_TAG} scalars")
    return runs, notes


def record_of(runs):
    """The runs as OUT/runs.json's JSON-ready dict: every Run field, the path as its folder's name, NaN as null."""
    return {"runs": [{**{f.name: getattr(run, f.name) for f in fields(Run) if f.name != "path"},
                      "folder": run.path.name, "steps": run.steps.tolist(), "returns": run.returns.tolist(),
                      "update_ms": run.update_ms if np.isfinite(run.update_ms) else None} for run in runs]}


def read_record(path):
    """The Runs of a runs.json that an earlier report wrote (record_of, read back)."""
    def run_of(entry):
        fixed = {**entry, "path": Path(entry["folder"]), "steps": np.array(entry["steps"], dtype=np.int64),
                 "returns": np.array(entry["returns"], dtype=np.float64),
                 "update_ms": float("nan") if entry["update_ms"] is None else float(entry["update_ms"])}
        del fixed["folder"]
        return Run(**fixed)

    try:
        return [run_of(entry) for entry in json.loads(Path(path).read_text())["runs"]]
    except OSError as error:
        raise ReportError(f"--record {path}: {error.strerror}") from None
    except (ValueError, KeyError, TypeError) as error:
        raise ReportError(f"--record {path}: not a runs.json that report.py wrote ({error!r:.60})") from None


def drop_duplicate_seeds(runs, notes):
    """Keep one run per (env, exp_name, seed): the one that got furthest (then the latest folder name)."""
    best = {}
    for run in sorted(runs, key=lambda r: (r.steps[-1], r.path.name)):
        key = (run.env_id, run.exp_name, run.seed)
        if key in best and best[key].path.name != run.path.name:  # the same folder in RUNS_DIR and a --record
            notes.append(f"{run.label}: several run folders, using {run.path.name}, ignoring {best[key].path.name}")
        best[key] = run
    return list(best.values())


def tar(run):
    """(TAR, global step where the window starts): the best evaluation in the final 10 % of the run's iterations.

    The window is iterations >= 0.9 x planned iterations (total_timesteps / num_envs), i.e. steps >= 0.9 x
    total_timesteps; for a partial run it is the final 10 % of the iterations actually reached.
    """
    end = int(run.steps[-1]) if run.partial else run.total_timesteps
    in_window = 10 * run.steps >= 9 * end
    return float(run.returns[in_window].max()), 0.9 * end


@dataclass
class Row:
    """TAR statistics of one (env, configuration) over its seeds."""

    env_id: str
    config: str
    runs: list
    tars: list

    @property
    def mean(self):
        """Mean TAR over seeds."""
        return float(np.mean(self.tars))

    @property
    def std(self):
        """Population standard deviation (ddof=0) of the TAR over seeds."""
        return float(np.std(self.tars))

    @property
    def interval(self):
        """The 95 % Student-t confidence interval of the mean TAR (sample std, n - 1 degrees of freedom); None for
        one seed."""
        n = len(self.tars)
        if n < 2:
            return None
        half = stats.t.ppf(0.975, n - 1) * np.std(self.tars, ddof=1) / np.sqrt(n)
        return self.mean - half, self.mean + half

    @property
    def final(self):
        """The mean over seeds of each seed's last evaluation."""
        return float(np.mean([run.returns[-1] for run in self.runs]))

    @property
    def update_ms(self):
        """The mean over seeds of each run's median update time in ms (NaN when the runs do not log it)."""
        values = [run.update_ms for run in self.runs if np.isfinite(run.update_ms)]
        return float(np.mean(values)) if values else float("nan")


def summarise(runs):
    """One Row per (env, exp_name), seeds sorted, rows sorted by env then configuration."""
    groups = {}
    for run in sorted(runs, key=lambda r: (r.env_id, r.exp_name, r.seed)):
        groups.setdefault((run.env_id, run.exp_name), []).append(run)
    return [Row(env, config, group, [tar(run)[0] for run in group]) for (env, config), group in groups.items()]


def base_name(env_id):
    """The paper's task name of an env id: `Hopper-v4` -> `Hopper`."""
    return re.sub(r"-v\d+$", "", env_id.split("/")[-1])


def normalised_scores(rows, best_of=None):
    """{config: (mean, std over tasks, number of tasks)} of 100 x TAR / best TAR on each task.

    The best TAR of a task is the best mean TAR of any configuration in `rows`, or `best_of[base_name(env)]` when
    given (tasks missing from it are left out). Tasks whose best TAR is not positive are left out.
    """
    best = {}
    for row in rows:
        best[row.env_id] = max(best.get(row.env_id, -np.inf), row.mean)
    if best_of is not None:
        best = {env: best_of[base_name(env)] for env in best if base_name(env) in best_of}
    scores = {}
    for row in rows:
        if best.get(row.env_id, 0) > 0:
            scores.setdefault(row.config, []).append(100 * row.mean / best[row.env_id])
    return {config: (float(np.mean(s)), float(np.std(s)), len(s)) for config, s in scores.items()}


def iqm(values):
    """The interquartile mean, as rliable computes it: scipy's trim_mean cutting 25 % at each end (int(n / 4) values;
    none below 4 values, where it is the mean)."""
    return float(stats.trim_mean(values, 0.25))


def aggregate_scores(rows, random_scores, baseline, samples=BOOTSTRAP_SAMPLES, seed=0):
    """{config: (tasks, runs, IQM, CI low, CI high)} of the baseline-normalised scores (TAR - random) / (baseline mean
    TAR - random) of every task and seed, over the tasks that have a random score, the baseline and the config. The
    interval is the 2.5th and 97.5th percentile of the IQM over stratified bootstrap samples: each task's seeds are
    resampled with replacement, tasks kept as they are (rliable's stratified bootstrap)."""
    reference = {row.env_id: row.mean for row in rows if row.config == baseline}
    rng = np.random.default_rng(seed)
    result = {}
    for config in dict.fromkeys(row.config for row in rows):
        scores = [(np.array(row.tars) - random_scores[row.env_id]) / (reference[row.env_id] - random_scores[row.env_id])
                  for row in rows if row.config == config and row.env_id in reference and row.env_id in random_scores
                  and reference[row.env_id] != random_scores[row.env_id]]
        if not scores:
            continue
        resampled = [iqm(np.concatenate([task[rng.integers(0, len(task), len(task))] for task in scores]))
                     for _ in range(samples)]
        low, high = np.percentile(resampled, [2.5, 97.5])
        result[config] = (len(scores), sum(map(len, scores)), iqm(np.concatenate(scores)), float(low), float(high))
    return result


def config_differences(rows):
    """{(env, config): "key=value, ..."} of the hyperparameters that tell the configurations of an env apart."""
    common = {}
    for row in rows:
        settings = [set(run.hparams.items()) for run in row.runs]
        common[row.env_id, row.config] = {k: v for k, v in set.intersection(*settings) if k not in NOT_A_DIFFERENCE}
    differences = {}
    for env in {row.env_id for row in rows}:
        configs = {key: settings for key, settings in common.items() if key[0] == env and settings}
        shared = set.intersection(*(set(settings) for settings in configs.values())) if configs else set()
        for key, settings in configs.items():
            # among the runs of the same script (the SAC baseline names its "algorithm"), any setting that differs;
            # across scripts, the settings both have
            same_script = [other for other in configs.values() if other.get("algorithm") == settings.get("algorithm")]
            keys = sorted(k for k in settings if len({other.get(k) for other in same_script}) > 1
                          or (k in shared and len({other[k] for other in configs.values()}) > 1))
            algorithm = [f"algorithm={settings['algorithm']}"] if "algorithm" in settings else []
            differences[key] = ", ".join(algorithm + [f"{k}={settings[k]}" for k in keys])
    return differences


def learning_curve(runs):
    """(iterations, mean, CI low, CI high, seeds per point) over seeds, aligned on the union of evaluation points.

    Each seed is linearly interpolated onto the union of all seeds' evaluation iterations, only inside its own
    range (no extrapolation), so a point averages the seeds that reached it. The band is the 95 % Student-t
    confidence interval of the mean (sample std, n - 1 degrees of freedom); it is NaN where only one seed is present.
    """
    grid = np.unique(np.concatenate([run.iterations for run in runs]))
    curves = np.full((len(runs), len(grid)), np.nan)
    for i, run in enumerate(runs):
        inside = (grid >= run.iterations[0]) & (grid <= run.iterations[-1])
        curves[i, inside] = np.interp(grid[inside], run.iterations, run.returns)
    count = np.sum(~np.isnan(curves), axis=0)
    mean = np.nanmean(curves, axis=0)
    half = np.full(len(grid), np.nan)
    several = count >= 2
    if several.any():
        sem = np.nanstd(curves[:, several], axis=0, ddof=1) / np.sqrt(count[several])
        half[several] = stats.t.ppf(0.975, count[several] - 1) * sem
    return grid, mean, mean - half, mean + half, count


@dataclass
class Reference:
    """One seed of a published curve, with what learning_curve reads of a Run."""

    iterations: np.ndarray
    returns: np.ndarray


def read_reference(path):
    """A published curve as a Run-like (iterations, returns), from a CSV with a header naming `step` (iterations) and
    `return` or `value` columns, e.g. the DACER repository's QVPO curves (wall_time,step,return)."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            table = [{key.strip().lower(): value for key, value in row.items() if key} for row in csv.DictReader(f)]
        column = "return" if table and "return" in table[0] else "value"
        points = np.array(sorted((float(row["step"]), float(row[column])) for row in table)).reshape(-1, 2)
    except (OSError, csv.Error, KeyError, ValueError, TypeError) as error:
        raise ReportError(f"--reference {path}: not a CSV with step and return (or value) columns ({error})")
    if len(points) == 0 or not np.isfinite(points).all():
        raise ReportError(f"--reference {path}: " + ("no rows" if len(points) == 0 else "a value is not finite"))
    return Reference(points[:, 0], points[:, 1])


def reference_curve(seeds, limit):
    """learning_curve of a published curve's seeds up to iteration limit (seeds with no point there are left out) and
    the number of seeds kept; None when no seed has a point there."""
    kept = [Reference(seed.iterations[seed.iterations <= limit], seed.returns[seed.iterations <= limit])
            for seed in seeds if seed.iterations[0] <= limit]
    return (learning_curve(kept), len(kept)) if kept else None


def draw_env(ax, env_id, rows, references=()):
    """Draw the learning curves of all configurations on one env into ax, and the reference curves given for it
    ((label, seeds), dashed, black, up to the runs' last iteration); returns, per reference, the number of its seeds
    drawn (0: none reaches into the runs' range)."""
    for row in rows:
        grid, mean, low, high, _ = learning_curve(row.runs)
        (line,) = ax.plot(grid, mean, label=f"{row.config} ({len(row.runs)} seeds)")
        ax.fill_between(grid, low, high, color=line.get_color(), alpha=0.2, linewidth=0)
    limit, drawn = max(run.iterations[-1] for row in rows for run in row.runs), []
    for label, seeds in references:
        curve = reference_curve(seeds, limit)
        drawn.append(curve[1] if curve else 0)
        if curve:
            (grid, mean, low, high, _), kept = curve
            ax.plot(grid, mean, "k--", marker=".", label=f"{label} ({kept} seeds, published)")
            ax.fill_between(grid, low, high, color="k", alpha=0.1, linewidth=0)
    ax.set(title=env_id, xlabel="iterations", ylabel=EVAL_TAG)
    ax.ticklabel_format(axis="x", style="sci", scilimits=(0, 3))
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return drawn


def plot_env(env_id, rows, out_dir, references=()):
    """Write draw_env's figure of one env to OUT/{env}.png; returns the file name and draw_env's counts."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    drawn = draw_env(ax, env_id, rows, references)
    fig.tight_layout()
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", env_id) + ".png"
    fig.savefig(out_dir / name, dpi=120)
    plt.close(fig)
    return name, drawn


def plot_all(rows, out_dir):
    """Write one figure with a panel per env (draw_env's, no references) to OUT/all_tasks.png; returns its name."""
    envs = sorted({row.env_id for row in rows})
    columns = min(4, len(envs))
    lines_of_panels = -(-len(envs) // columns)
    fig, axes = plt.subplots(lines_of_panels, columns, figsize=(4.5 * columns, 3.5 * lines_of_panels), squeeze=False)
    for ax, env in zip(axes.flat, envs):
        draw_env(ax, env, [row for row in rows if row.env_id == env])
    for ax in axes.flat[len(envs):]:
        ax.set_axis_off()
    fig.tight_layout()
    fig.savefig(out_dir / "all_tasks.png", dpi=100)
    plt.close(fig)
    return "all_tasks.png"


def fmt(mean, std):
    """`mean ± std` with one decimal."""
    return f"{mean:.1f} ± {std:.1f}"


def paper_cell(algo, env_id):
    """The paper's Table 2 `mean ± std` of an algorithm on the env's task, or `-`."""
    value = PAPER_TAR[algo].get(base_name(env_id))
    return f"{value[0]} ± {value[1]}" if value else "-"


def tar_table(rows, random_scores=None):
    """Markdown lines of the TAR table; with random_scores ({env: (mean, std, episodes)}), a row of uniform random
    actions after each env's configurations."""
    differences = config_differences(rows)
    lines = [
        "| env | configuration | differs in | seeds | TAR (mean ± std) | 95 % CI | final eval | ms/update "
        "| TAR per seed | paper DACERv2 | paper DACER |",
        "|-|-|-|-|-|-|-|-|-|-|-|",
    ]
    for i, row in enumerate(rows):
        per_seed = ", ".join(
            f"{run.seed}: {value:.1f}" + (" (partial)" if run.partial else "") for run, value in zip(row.runs, row.tars)
        )
        interval = f"[{row.interval[0]:.1f}, {row.interval[1]:.1f}]" if row.interval else "-"
        ms = f"{row.update_ms:.1f}" if np.isfinite(row.update_ms) else "-"
        lines.append(
            f"| {row.env_id} | {row.config} | {differences.get((row.env_id, row.config)) or '-'} | {len(row.runs)} "
            f"| {fmt(row.mean, row.std)} | {interval} | {row.final:.1f} | {ms} | {per_seed} "
            f"| {paper_cell('DACERv2', row.env_id)} | {paper_cell('DACER', row.env_id)} |"
        )
        last_of_env = i + 1 == len(rows) or rows[i + 1].env_id != row.env_id
        if last_of_env and random_scores and row.env_id in random_scores:
            mean, std, episodes = random_scores[row.env_id]
            lines.append(f"| {row.env_id} | random (uniform actions) | - | - | {fmt(mean, std)} | - | - | - "
                         f"| {episodes} episodes | - | - |")
    return lines


def aggregate_table(rows, random_scores, baseline):
    """Markdown lines of the IQM of baseline-normalised scores and the sentence on its formula (none without random
    scores or baseline runs)."""
    aggregate = aggregate_scores(rows, {env: value[0] for env, value in random_scores.items()}, baseline)
    if not aggregate:
        return [f"No aggregate: it needs --random scores and runs of the baseline ({baseline}) on the same tasks."]
    lines = ["| configuration | tasks | runs | IQM of normalised scores | 95 % CI (stratified bootstrap) |",
             "|-|-|-|-|-|"]
    for config, (tasks, runs, value, low, high) in aggregate.items():
        lines.append(f"| {config} | {tasks} | {runs} | {value:.3f} | [{low:.3f}, {high:.3f}] |")
    return lines + [
        "",
        f"Score of a run = (TAR - random) / ({baseline}'s mean TAR - random) on its task: 0 is uniform random actions, "
        f"1 is {baseline}. IQM = the mean of the middle 50 % of all the configuration's task-and-seed scores "
        f"(scipy's trim_mean(scores, 0.25), as rliable computes it); the interval is the 2.5th-97.5th percentile of "
        f"the IQM over {BOOTSTRAP_SAMPLES:,} stratified bootstrap samples (each task's seeds resampled with "
        "replacement). A configuration is aggregated over the tasks it ran (the column \"tasks\").",
    ]


def score_table(rows):
    """Markdown lines of the normalised-average-score table and the sentence on its formula."""
    ours, paper = normalised_scores(rows), normalised_scores(rows, PAPER_BEST_TAR)
    lines = [
        "| configuration | tasks | score (best in this report = 100) | tasks with a paper number "
        "| score (paper's best = 100) |",
        "|-|-|-|-|-|",
    ]
    for config, (mean, std, n) in ours.items():
        mean_p, std_p, n_p = paper.get(config, (np.nan, np.nan, 0))
        lines.append(f"| {config} | {n} | {fmt(mean, std)} | {n_p} | {fmt(mean_p, std_p) if n_p else '-'} |")
    lines += [
        "",
        "Per task, each configuration's mean TAR is divided by the best mean TAR of any configuration in this report "
        "on that task (right: by the best mean TAR of any algorithm in the paper's Table 2), then averaged over the "
        "tasks the configuration ran and multiplied by 100; ± is the population std over those tasks. This is the "
        "formula stated in the paper (§4.3), but it does not reproduce the paper's own column: applied to Table 2's "
        "means it gives 99.4 for DACERv2 and 92.0 for DACER, not the printed 93.19 and 84.98. A score of 100 on one "
        "task only means best among the configurations reported here.",
    ]
    return lines


def run_notes(rows):
    """Notes on partial runs, missing seeds and fallbacks used."""
    notes = []
    all_seeds = sorted({run.seed for row in rows for run in row.runs})
    for row in rows:
        missing = sorted(set(all_seeds) - {run.seed for run in row.runs})
        if missing:
            notes.append(f"{row.env_id} / {row.config}: missing seeds {missing} (present in other configurations)")
        if len(row.runs) < PAPER_SEEDS:
            notes.append(f"{row.env_id} / {row.config}: {len(row.runs)} seed(s), the paper uses {PAPER_SEEDS}")
        for run in row.runs:
            if run.partial:
                notes.append(
                    f"{run.label}: partial, last evaluation at env step {run.steps[-1]:,} of {run.total_timesteps:,} "
                    f"planned; TAR window = env steps >= {tar(run)[1]:,.0f} (the final 10 % of what it reached)"
                )
            if run.fallbacks:
                notes.append(f"{run.label}: missing from its hyperparameters text: {'; '.join(run.fallbacks)}")
    return notes


def env_notes(rows):
    """Caveats on comparing with the paper's gym -v3 numbers."""
    notes = []
    for env in sorted({row.env_id for row in rows}):
        if base_name(env) not in PAPER_TAR["DACERv2"]:
            notes.append(f"{env}: not in the paper's Table 2, no paper numbers")
        elif base_name(env) in {"Humanoid", "Ant"} and not env.endswith("-v3"):
            notes.append(
                f"{env}: not like-for-like with the paper's -v3 task (Humanoid-v4 has no contact cost, "
                "Ant-v4 drops contact forces from the observation)"
            )
    return notes


def read_random(path, envs):
    """{env: (mean, std, episodes)} of benchmark/random_baseline.py's JSON, for the envs it has (-v3 ids match -v4)."""
    try:
        data = json.loads(Path(path).read_text())
        by_task = {base_name(env): (float(v["mean"]), float(v["std"]), int(v["episodes"])) for env, v in data.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise ReportError(f"--random {path}: not random_baseline.py's JSON ({type(error).__name__})") from None
    return {env: by_task[base_name(env)] for env in envs if base_name(env) in by_task}


def read_planned(path):
    """(env_id, exp_name, seed) of every run in a launcher's plan file (one training command per line)."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as error:
        raise ReportError(f"--planned {path}: {error.strerror}") from None
    planned = []
    for line in filter(str.strip, lines):
        words = shlex.split(line)
        flags = {flag: value for flag, value in zip(words, words[1:]) if flag in ("--env-id", "--exp-name", "--seed")}
        if len(flags) < 3:
            raise ReportError(f"--planned {path}: not a training command: {line[:100]}")
        planned.append((flags["--env-id"], flags["--exp-name"], int(flags["--seed"])))
    return planned


def incomplete_runs(runs_dir, runs, rows, planned=(), planned_file=None):
    """Lines on the runs short of their planned total: the reported runs that are partial (in env steps, as the
    training log counts them), the run folders with no evaluation yet (runs: every run loaded, rows: the reported
    ones) and the runs of the plan that have no run folder at all (never started, or failed at start-up)."""
    lines = [f"- {run.label}: env step {run.steps[-1]:,} of {run.total_timesteps:,} (`{run.path.name}`)"
             for row in rows for run in row.runs if run.partial]
    found = {path.parent for path in runs_dir.rglob("events.out.tfevents.*")} if runs_dir else set()
    folders = sorted(found - {run.path for run in runs})
    started = {(base_name(run.env_id), run.exp_name, str(run.seed)) for run in runs} | {
        (base_name(name[0]), *name[1:3]) for name in (folder.name.split("__") for folder in folders)}
    missing = [f"- {env} / {exp} / seed {seed}: planned in {planned_file}, no run folder (not started yet, or failed "
               "at start-up: see its log)" for env, exp, seed in dict.fromkeys(planned)
               if (base_name(env), exp, str(seed)) not in started]
    return lines + [f"- `{folder.name}`: no evaluation yet" for folder in folders] + missing


def render_markdown(sources, rows, curves, notes, incomplete=(), references=(), random_scores=None,
                    baseline="sac", all_tasks=None):
    """The whole results.md as one string."""
    n_runs = sum(len(row.runs) for row in rows)
    envs = sorted({row.env_id for row in rows})
    lines = [
        "# DACERv2 benchmark results",
        "",
        f"{n_runs} runs from {sources}: {len(envs)} env(s), {len({row.config for row in rows})} configuration(s).",
        "",
        "## Total Average Return (TAR)",
        "",
        "TAR of a seed = the best `eval/episodic_return` among its evaluations in the final 10 % of iterations "
        "(iteration >= 0.9 x the planned total, total_timesteps / num_envs; for a partial run, >= 0.9 x the last "
        "iteration it reached). Mean ± **population** std (ddof=0, the paper does not say which) over seeds. "
        '"differs in" lists the hyperparameters that tell the configurations of an env apart. Paper columns: '
        "Table 2 of the paper (gym -v3 tasks, 5 seeds, 1.5 M iterations), matched by task name, for scale. 95 % CI: "
        "the Student-t interval of the mean TAR over seeds (sample std; none for one seed). Final eval: the mean over "
        "seeds of the last evaluation. ms/update: the median over a run's logging intervals of the mean update time "
        "(the training script's `charts/update_ms`), averaged over seeds."
        + (" Random rows: uniform random actions, mean ± std over episodes (benchmark/random_baseline.py)."
           if random_scores else ""),
        "",
        *tar_table(rows, random_scores),
        "",
        "## Normalised average score",
        "",
        *score_table(rows),
        *(["", f"## Aggregate over tasks: IQM of {baseline}-normalised scores", "",
           *aggregate_table(rows, random_scores, baseline)] if random_scores else []),
        "",
        "## Learning curves",
        "",
        "Mean `eval/episodic_return` over seeds against iterations; the band is the 95 % Student-t confidence "
        "interval of the mean (sample std, n - 1 degrees of freedom; none where a single seed is left). Seeds are "
        "linearly interpolated onto the union of their evaluation iterations, each only inside its own range, so a "
        "partial seed stops contributing where it ends.",
        "",
        *(f"Reference (dashed, black): {label} on {env}, a published curve read from {', '.join(files)}; its steps "
          f"are taken as iterations; drawn up to the runs' last iteration ({drawn} of {len(files)} seeds have points "
          "there)." for env, label, files, drawn in references),
        *([""] if references else []),
        *([f"![every task]({all_tasks})", ""] if all_tasks else []),
        *(line for env in envs for line in (f"![{env}]({curves[env]})", "")),
        "## Incomplete runs",
        "",
        "Runs that have not reached their --total-timesteps (still running, queued, or stopped); the tables above "
        "use what they have.",
        "",
        *(incomplete or ["none: every run reached its planned total"]),
        "",
        "## Notes",
        "",
        *(f"- {note}" for note in notes or ["all runs complete, every configuration has the same seeds"]),
    ]
    return "\n".join(lines) + "\n"


def parse_args(argv):
    """Command line: RUNS_DIR and --out."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs_dir", type=Path, nargs="?", help="the folder holding the run folders (e.g. runs); "
                        "optional with --record")
    parser.add_argument("--record", type=Path, nargs="+", default=[], metavar="RUNS_JSON", help="runs.json files "
                        "of earlier reports: their runs are reported beside RUNS_DIR's (a run in both counts once)")
    parser.add_argument("--out", type=Path, default=Path("results"), help="where results.md and the PNGs go")
    parser.add_argument("--random", type=Path, help="uniform-random returns per env (benchmark/random_baseline.py's "
                        "JSON): a random row per task and the IQM of --baseline-normalised scores")
    parser.add_argument("--baseline", default="sac", help="the configuration (exp_name) that normalises the aggregate "
                        "scores (default: sac)")
    parser.add_argument("--planned", type=Path, help="a launcher's plan (LOG_DIR/planned_runs.txt): list every "
                        "planned run that has no run folder")
    parser.add_argument("--reference", nargs="+", action="append", default=[], metavar=("ENV_ID", "LABEL CSV"),
                        help="ENV_ID LABEL CSV [CSV ...] (after RUNS_DIR): a published curve to draw on ENV_ID's "
                        "figure, one CSV per seed with step (= iteration) and return columns; repeatable")
    return parser.parse_args(argv)


def main(argv=None):
    """Write OUT/results.md and the learning-curve PNGs and print the markdown; exit 2 on unusable input."""
    args = parse_args(argv)
    try:
        if args.runs_dir is None and not args.record:
            raise ReportError("give RUNS_DIR, --record RUNS_JSON, or both")
        runs, notes = load_runs(args.runs_dir) if args.runs_dir is not None else ([], [])
        runs += [run for path in args.record for run in read_record(path)]
        planned = read_planned(args.planned) if args.planned else []
        rows = summarise(drop_duplicate_seeds(runs, notes))
        envs = {row.env_id for row in rows}
        random_scores = read_random(args.random, envs) if args.random else None
        references = {env: [] for env in envs}
        for reference in args.reference:
            if len(reference) < 3:
                raise ReportError("--reference needs ENV_ID LABEL CSV [CSV ...]")
            env, label, *files = reference
            if env not in envs:
                raise ReportError(f"--reference {env}: no runs on that env (envs: {', '.join(sorted(envs))})")
            references[env].append((label, files, [read_reference(path) for path in files]))
    except ReportError as error:
        print(f"report.py: error: {error}", file=sys.stderr)
        sys.exit(2)
    args.out.mkdir(parents=True, exist_ok=True)
    curves, reference_lines = {}, []
    for env in sorted(envs):
        given = references[env]
        curves[env], drawn = plot_env(env, [r for r in rows if r.env_id == env], args.out,
                                      [(label, seeds) for label, _, seeds in given])
        reference_lines += [(env, label, files, n) for (label, files, _), n in zip(given, drawn)]
    notes = run_notes(rows) + notes + env_notes(rows)
    incomplete = incomplete_runs(args.runs_dir, runs, rows, planned, args.planned)
    all_tasks = plot_all(rows, args.out) if len(envs) > 1 else None
    sources = " and ".join(f"`{path}`" for path in ([args.runs_dir] if args.runs_dir else []) + args.record)
    markdown = render_markdown(sources, rows, curves, notes, incomplete, reference_lines, random_scores,
                               args.baseline, all_tasks)
    record = json.dumps(record_of(run for row in rows for run in row.runs), indent=1)
    (args.out / "runs.json").write_text(record + "\n")
    (args.out / "results.md").write_text(markdown)
    print(markdown, end="")


if __name__ == "__main__":
    main()
