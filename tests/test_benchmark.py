"""Tests of benchmark/: report.py on synthetic TensorBoard runs, and the launch scripts' --dry-run and --help."""

import importlib.util
import json
import os
import re
import shlex
import signal
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.tensorboard import SummaryWriter

REPO = Path(__file__).resolve().parents[1]
BENCHMARK = REPO / "benchmark"
SCRIPT = str(REPO / "dacerv2_continuous.py")
spec = importlib.util.spec_from_file_location("report", BENCHMARK / "report.py")
report = importlib.util.module_from_spec(spec)
spec.loader.exec_module(report)

TOTAL, NUM_ENVS = 2000, 10  # 200 planned iterations; the final 10 % is steps >= 1800
EVAL_STEPS = list(range(0, TOTAL + 1, 100))


def write_events(run_dir, points, hparams=None, walltime=0.0):
    """Write one event file in run_dir: the hyperparameters text (if given) and eval returns at (step, value)."""
    writer = SummaryWriter(str(run_dir))
    if hparams is not None:
        writer.add_text(
            "hyperparameters", "|param|value|\n|-|-|\n" + "\n".join(f"|{k}|{v}|" for k, v in hparams.items())
        )
    for i, (step, value) in enumerate(points):
        writer.add_scalar("eval/episodic_return", value, step, walltime=walltime + i)
    writer.close()


def hparams_of(env, exp, seed, total=TOTAL, **extra):
    """A hyperparameters dict like the training script writes."""
    return {"exp_name": exp, "seed": seed, "env_id": env, "total_timesteps": total, "num_envs": NUM_ENVS, **extra}


def fake_run(steps, returns, env="A-v4", config="c", seed=1, total=TOTAL, name="x"):
    """A Run built in memory (num_envs = NUM_ENVS)."""
    return report.Run(Path(name), env, config, seed, np.array(steps), np.array(returns, dtype=float), NUM_ENVS, total)


def curve(window_values, before=999.0):
    """Eval points at EVAL_STEPS: `before` at step 1700 (just outside the window), then window_values at 1800-2000."""
    values = [10.0] * 17 + [before] + list(window_values)
    return list(zip(EVAL_STEPS, values))


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory):
    """Synthetic runs: Hopper-v4 dacerv2 seeds 1-3 (TAR 70, 90, 110), dacer seed 1 merged from two files and a
    partial seed 2, and Walker2d-v4 dacerv2 seed 1 without hyperparameters text."""
    root = tmp_path_factory.mktemp("runs")
    for seed, window in [(1, [50, 70, 60]), (2, [90, 80, 85]), (3, [100, 105, 110])]:
        write_events(root / f"Hopper-v4__dacerv2__{seed}__100", curve(window), hparams_of("Hopper-v4", "dacerv2", seed))
    merged = root / "Hopper-v4__dacer__1__100"
    first, second = curve([40, 45, 30])[:11], curve([40, 45, 30])[10:]  # both files have step 1000
    first[-1] = (1000, 5000.0)  # overridden by the later file, so it must not count anywhere
    write_events(merged, first, hparams_of("Hopper-v4", "dacer", 1, diffusion_steps=20), walltime=0)
    write_events(merged, second, hparams_of("Hopper-v4", "dacer", 1, diffusion_steps=20), walltime=100)
    partial = [(step, 10.0) for step in range(0, 800, 100)] + [(800, 500.0), (900, 30.0), (1000, 20.0)]
    write_events(root / "Hopper-v4__dacer__2__100", partial, hparams_of("Hopper-v4", "dacer", 2, diffusion_steps=20))
    write_events(root / "Walker2d-v4__dacerv2__1__100", [(0, 1.0), (1000, 7.0), (2000, 3.0)])
    return root


@pytest.fixture(scope="module")
def rows(runs_dir):
    """The report's rows of the synthetic runs."""
    runs, notes = report.load_runs(runs_dir)
    assert notes == []
    return {(row.env_id, row.config): row for row in report.summarise(report.drop_duplicate_seeds(runs, notes))}


def test_tar_per_seed_mean_and_population_std(rows):
    row = rows["Hopper-v4", "dacerv2"]
    assert [run.seed for run in row.runs] == [1, 2, 3]
    assert row.tars == [70, 90, 110]  # the 999 at step 1700 is just outside the final 10 %
    assert row.mean == pytest.approx(90)
    assert row.std == pytest.approx(np.sqrt(800 / 3))
    assert not any(run.partial for run in row.runs)


def test_final_window_boundary():
    run = fake_run([1700, 1799, 1800, 2000], [500, 400, 300, 1])
    assert report.tar(run) == (300.0, 1800.0)  # iteration 180 = 0.9 x 200 is inside, 179.9 is not


def test_two_event_files_are_merged(rows):
    run = rows["Hopper-v4", "dacer"].runs[0]
    assert list(run.steps) == EVAL_STEPS  # step 1000 appears once
    assert run.returns[10] == 10.0  # the later file's value won
    assert rows["Hopper-v4", "dacer"].tars[0] == 45


def test_partial_run(rows):
    run = rows["Hopper-v4", "dacer"].runs[1]
    assert run.partial
    assert report.tar(run) == (30.0, 900.0)  # final 10 % of the 100 iterations reached: 500 at step 800 excluded
    notes = report.run_notes(list(rows.values()))
    assert any("Hopper-v4 / dacer / seed 2: partial" in note for note in notes)
    assert any("Hopper-v4 / dacer: 2 seed(s)" in note for note in notes)
    assert any("Walker2d-v4 / dacerv2: missing seeds [2, 3]" in note for note in notes)


def test_duplicate_seed_folders_keep_the_longest_run():
    short = fake_run([0, 1000], [1, 2], name="A-v4__c__1__200")
    long = fake_run([0, 2000], [1, 3], name="A-v4__c__1__100")
    notes = []
    assert report.drop_duplicate_seeds([long, short], notes) == [long]
    assert notes == ["A-v4 / c / seed 1: several run folders, using A-v4__c__1__100, ignoring A-v4__c__1__200"]


def test_missing_hyperparameters_fall_back(rows):
    run = rows["Walker2d-v4", "dacerv2"].runs[0]
    assert (run.num_envs, run.total_timesteps, run.partial) == (20, 2000, False)
    assert rows["Walker2d-v4", "dacerv2"].tars == [3.0]  # the window is steps >= 1800 of the largest step seen
    assert any(
        "missing from its hyperparameters text: num_envs = 20 assumed; total_timesteps" in note
        for note in report.run_notes(list(rows.values()))
    )


def test_config_differences(rows):
    differences = report.config_differences(list(rows.values()))
    assert differences["Hopper-v4", "dacer"] == "diffusion_steps=20"
    assert differences["Hopper-v4", "dacerv2"] == ""


def test_normalised_scores():
    def row(env, config, value):
        return report.Row(env, config, [fake_run([TOTAL], [value], env, config)], [value])

    rows = [row("A-v4", "c1", 90), row("A-v4", "c2", 45), row("B-v4", "c1", 30), row("B-v4", "c2", 40)]
    assert report.normalised_scores(rows) == {"c1": (87.5, 12.5, 2), "c2": (75.0, 25.0, 2)}
    paper = report.normalised_scores([row("Hopper-v4", "c1", 2101), row("A-v4", "c1", 1)], report.PAPER_BEST_TAR)
    assert paper == {"c1": (50.0, 0.0, 1)}


def test_learning_curve_aligns_seeds():
    runs = [fake_run([0, 100, 200], [0, 10, 20], seed=1), fake_run([0, 50, 150], [2, 4, 8], seed=2)]
    grid, mean, low, high, count = report.learning_curve(runs)
    assert list(grid) == [0, 5, 10, 15, 20]
    assert list(count) == [2, 2, 2, 2, 1]
    assert mean[1] == pytest.approx((5 + 4) / 2) and mean[4] == 20
    half = 12.706 * np.std([5, 4], ddof=1) / np.sqrt(2)  # t_{0.975, 1} = 12.706
    assert high[1] - mean[1] == pytest.approx(half, rel=1e-3) and np.isnan(low[4])


def report_cli(*args):
    """Run benchmark/report.py in a subprocess; returns the CompletedProcess."""
    command = [sys.executable, str(BENCHMARK / "report.py"), *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


def test_report_cli_writes_markdown_and_pngs(runs_dir, tmp_path):
    out = tmp_path / "out"
    result = report_cli(runs_dir, "--out", out)
    assert result.returncode == 0, result.stderr
    markdown = (out / "results.md").read_text()
    assert result.stdout == markdown
    assert (  # TAR, its 95 % t-interval (4.303 x 20 / sqrt 3 = 49.7), the mean final evaluation, no update times
        "| Hopper-v4 | dacerv2 | - | 3 | 90.0 ± 16.3 | [40.3, 139.7] | 85.0 | - | 1: 70.0, 2: 90.0, 3: 110.0 "
        "| 4202 ± 191 | 4062 ± 181 |" in markdown
    )
    assert "2: 30.0 (partial)" in markdown and "population" in markdown and "does not reproduce" in markdown
    assert sorted(p.name for p in out.glob("*.png")) == ["Hopper-v4.png", "Walker2d-v4.png", "all_tasks.png"]
    assert (out / "Hopper-v4.png").read_bytes().startswith(b"\x89PNG")


def test_report_draws_a_published_reference_curve(runs_dir, rows, tmp_path):
    seeds = []
    for i, points in enumerate([[(100, 50), (200, 80), (300, 1e6)], [(100, 70), (200, 100)], [(250, 1e6)]]):
        seeds.append(tmp_path / f"qvpo_s{i}.csv")  # the DACER repository's format; the runs end at iteration 200
        seeds[-1].write_text("wall_time,step,return\n" + "".join(f"1.0,{step},{value}\n" for step, value in points))
    read = [report.read_reference(path) for path in seeds]
    np.testing.assert_array_equal(read[0].iterations, [100, 200, 300])
    (grid, mean, low, high, count), kept = report.reference_curve(read, limit=200)
    assert kept == 2  # the seed that starts at 250 has nothing to add up to 200
    np.testing.assert_array_equal(np.stack([grid, mean, count]), [[100, 200], [60, 90], [2, 2]])
    half = stats.t.ppf(0.975, 1) * 10  # two seeds 20 apart: sample std 20/sqrt 2, standard error 10
    np.testing.assert_allclose(high - mean, [half, half])
    assert report.reference_curve(read, limit=50) is None
    hopper = [row for (env, _), row in rows.items() if env == "Hopper-v4"]
    name, drawn = report.plot_env("Hopper-v4", hopper, tmp_path, [("QVPO", read), ("late", read[2:])])
    assert drawn == [2, 0]  # clipped at the runs' last iteration, 200
    out = tmp_path / "out"
    result = report_cli(runs_dir, "--out", out, "--reference", "Hopper-v4", "QVPO", *seeds)
    assert result.returncode == 0, result.stderr
    markdown = (out / "results.md").read_text()
    assert "Reference (dashed, black): QVPO on Hopper-v4" in markdown and "(2 of 3 seeds have points there)" in markdown
    assert (out / "Hopper-v4.png").read_bytes().startswith(b"\x89PNG")


@pytest.mark.parametrize(
    "content, error",
    [
        ("\ufeffstep,return\n1,2\n", None),  # a byte-order mark, as spreadsheets write
        ("step,return\n1,nan\n", "a value is not finite"),
        ("step,return\n", "no rows"),
        ("iteration,return\n1,2\n", "not a CSV with step and return"),
    ],
)
def test_read_reference(tmp_path, content, error):
    path = tmp_path / "curve.csv"
    path.write_text(content, encoding="utf-8")
    if error is None:
        assert report.read_reference(path).returns.tolist() == [2.0]
    else:
        with pytest.raises(report.ReportError, match=error):
            report.read_reference(path)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--reference", "Hopper-v4", "QVPO"], "--reference needs ENV_ID LABEL CSV"),
        (["--reference", "Ant-v4", "QVPO", "x.csv"], "--reference Ant-v4: no runs on that env"),
        (["--reference", "Hopper-v4", "QVPO", "missing.csv"], "--reference missing.csv: not a CSV"),
    ],
)
def test_report_reference_errors(runs_dir, tmp_path, args, message):
    result = report_cli(runs_dir, "--out", tmp_path / "out", *args)
    assert result.returncode == 2 and result.stderr.startswith(f"report.py: error: {message}"), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("make_dir", [False, True])
def test_report_cli_errors(tmp_path, make_dir):
    runs = tmp_path / "runs"
    if make_dir:
        runs.mkdir()
    result = report_cli(runs)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert ("no TensorBoard event files" if make_dir else "does not exist") in result.stderr


def test_runs_json_keeps_finished_runs_for_the_next_report(runs_dir, tmp_path):
    """A grid spans sessions and machines: the record of one report (OUT/runs.json) stands in for run folders that
    are gone, and a new run folder beside it is reported with the recorded ones."""
    first = tmp_path / "first"
    assert report_cli(runs_dir, "--out", first).returncode == 0
    tables = lambda text: text.split("## Learning curves")[0].split("\n", 3)[3]  # all but the sources line
    alone = report_cli("--record", first / "runs.json", "--out", tmp_path / "alone")
    assert alone.returncode == 0, alone.stderr
    assert tables(alone.stdout) == tables((first / "results.md").read_text())
    assert f"6 runs from `{first / 'runs.json'}`" in alone.stdout
    assert "2: 30.0 (partial)" in alone.stdout
    assert "env step 1,000 of 2,000 (`Hopper-v4__dacer__2__100`)" in alone.stdout
    again = report_cli(runs_dir, "--record", first / "runs.json", "--out", tmp_path / "again")  # the same runs twice
    assert again.returncode == 0 and tables(again.stdout) == tables(alone.stdout) and "several run" not in again.stdout
    new = tmp_path / "new"  # a fourth dacerv2 seed, and the partial dacer seed 2 gone further on another machine
    write_events(new / "Hopper-v4__dacerv2__4__200", curve([130, 120, 110]), hparams_of("Hopper-v4", "dacerv2", 4))
    write_events(new / "Hopper-v4__dacer__2__200", curve([10, 20, 25]), hparams_of("Hopper-v4", "dacer", 2))
    both = report_cli(new, "--record", first / "runs.json", "--out", tmp_path / "both")
    assert both.returncode == 0, both.stderr
    assert "| 4 | 100.0 ± 22.4 |" in both.stdout and "4: 130.0" in both.stdout
    assert "2: 25.0 |" in both.stdout
    assert "using Hopper-v4__dacer__2__200, ignoring Hopper-v4__dacer__2__100" in both.stdout
    record = json.loads((tmp_path / "both" / "runs.json").read_text())["runs"]
    folders = {r["folder"] for r in record}
    assert len(record) == 7 and {"Hopper-v4__dacerv2__4__200", "Walker2d-v4__dacerv2__1__100"} <= folders
    (tmp_path / "bad.json").write_text('{"runs": [{"folder": "x"}]}')
    for args, message in [((), "give RUNS_DIR, --record RUNS_JSON, or both"),
                          (("--record", tmp_path / "bad.json"), "not a runs.json that report.py wrote"),
                          (("--record", tmp_path / "none.json"), "No such file")]:
        result = report_cli(*args, "--out", tmp_path / "x")
        assert result.returncode == 2 and result.stderr.startswith("report.py: error:") and message in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1


def bash(script, *args, cwd, python=sys.executable):
    """Run a benchmark script with bash from cwd (each configuration it queues is checked with python); returns the
    CompletedProcess."""
    env = {**os.environ, "PYTHON": python}
    return subprocess.run(
        ["bash", str(BENCHMARK / script), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def test_mujoco_dry_run(tmp_path):
    args = ["--dry-run", "--envs", "Hopper-v4 Walker2d-v4", "--seeds", "1 2", "--algos", "dacerv2 dacer"]
    result = bash("mujoco.sh", *args, "--", "--total-timesteps", "1000", "--no-cuda", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 8
    first = "--env-id Hopper-v4 --seed 1 --exp-name dacerv2 --total-timesteps 1000 --no-cuda"
    assert shlex.split(lines[0]) == [sys.executable, SCRIPT, *first.split(), ">", "logs/Hopper-v4__dacerv2__1.log",
                                     "2>&1"]
    last = "--env-id Walker2d-v4 --seed 2 --exp-name dacer --diffusion-steps 20 --q-grad-coef 0"
    redirect = [">", "logs/Walker2d-v4__dacer__2.log", "2>&1"]
    assert shlex.split(lines[-1])[1:] == [SCRIPT, *last.split(), "--total-timesteps", "1000", "--no-cuda", *redirect]
    assert not (tmp_path / "logs").exists()
    default = bash("mujoco.sh", "--dry-run", cwd=tmp_path).stdout.splitlines()
    assert len(default) == 40 and all("--exp-name dacerv2 " in line for line in default)


def test_mujoco_algorithms_are_flags_of_the_training_script(tmp_path, monkeypatch):
    """Each algorithm name stands for its flags, and the training script reads them as the options they name."""
    import dacerv2_continuous as dacer

    monkeypatch.chdir(tmp_path)
    algos = {"dacerv2": {}, "dacerv2_short": {"preset": "short", "policy_lr": 3e-4},
             "dacerv2_short_td": {"preset": "short", "policy_lr": 3e-4, "critic_loss": "td"},
             "dacer": {"diffusion_steps": 20, "q_grad_coef": 0.0}}
    result = bash("mujoco.sh", "--dry-run", "--envs", "Hopper-v4", "--seeds", "1", "--algos", " ".join(algos),
                  cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for line, (algo, expected) in zip(result.stdout.splitlines(), algos.items(), strict=True):
        args, _ = dacer.parse_args(shlex.split(line)[2:-3])
        assert args.exp_name == algo
        changed = {k: v for k, v in vars(args).items() if v != getattr(dacer.Args(), k)}
        assert changed.items() >= expected.items(), (algo, changed)
        assert "critic_loss" in changed if algo.endswith("_td") else "critic_loss" not in changed


def test_ablation_dry_run(tmp_path):
    result = bash("ablation.sh", "--dry-run", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == len(set(lines)) == 55  # the paper's 11 configurations x 5 seeds, shared runs once
    exp_names = {shlex.split(line)[7] for line in lines}
    assert len(exp_names) == 11
    tails = {" ".join(shlex.split(line)[2:-3]) for line in lines}
    assert "--env-id Walker2d-v4 --seed 3 --exp-name ablation_no_qgrad --q-grad-coef 0" in tails
    assert "--env-id Walker2d-v4 --seed 1 --exp-name ablation_no_time_weight --no-time-weight" in tails
    assert "--env-id Walker2d-v4 --seed 5 --exp-name ablation_T2 --diffusion-steps 2" in tails
    assert "--env-id Humanoid-v4 --seed 2 --exp-name ablation_eta_0.008 --q-grad-coef 0.008" in tails
    no_norm = "--env-id Humanoid-v4 --seed 4 --exp-name ablation_no_q_grad_norm --q-grad-coef 0.01 --no-q-grad-norm"
    assert no_norm in tails
    args = ["--dry-run", "--groups", "steps", "--env", "Hopper-v4", "--seeds", "7", "--", "--cuda"]
    subset = bash("ablation.sh", *args, cwd=tmp_path).stdout.splitlines()
    assert [" ".join(shlex.split(line)[2:-3]) for line in subset] == [
        "--env-id Hopper-v4 --seed 7 --exp-name ablation_T2 --diffusion-steps 2 --cuda",
        "--env-id Hopper-v4 --seed 7 --exp-name ablation_full --cuda",
        "--env-id Hopper-v4 --seed 7 --exp-name ablation_T10 --diffusion-steps 10 --cuda",
    ]
    args = ["--dry-run", "--groups", "onestep", "--env", "Hopper-v4", "--seeds", "7"]  # ours, not a paper ablation
    onestep = bash("ablation.sh", *args, cwd=tmp_path).stdout.splitlines()
    assert [" ".join(shlex.split(line)[2:-3]) for line in onestep] == [
        "--env-id Hopper-v4 --seed 7 --exp-name ablation_full",
        "--env-id Hopper-v4 --seed 7 --exp-name ablation_q_grad_one_step --q-grad-one-step",
    ]


@pytest.mark.parametrize("script", ["mujoco.sh", "ablation.sh"])
def test_help_and_bad_options(tmp_path, script):
    help_result = bash(script, "--help", cwd=tmp_path)
    assert help_result.returncode == 0 and "--dry-run" in help_result.stdout and "--workers" in help_result.stdout
    for bad in (["--bogus", "1"], ["--workers", "0"], ["--seeds", "a b"], ["stray"]):
        result = bash(script, "--dry-run", *bad, cwd=tmp_path)
        assert result.returncode == 2 and "error" in result.stderr, bad


def test_launch_runs_jobs_in_parallel_with_logs(tmp_path):
    result = bash(
        "mujoco.sh", "--envs", "Hopper-v4", "--seeds", "1 2", "--workers", "2", "--", "--x", cwd=tmp_path, python="echo"
    )
    assert result.returncode == 0, result.stderr
    log = (tmp_path / "logs" / "Hopper-v4__dacerv2__2.log").read_text()
    assert log.split() == [SCRIPT, "--env-id", "Hopper-v4", "--seed", "2", "--exp-name", "dacerv2", "--x"]
    planned = (tmp_path / "logs" / "planned_runs.txt").read_text().splitlines()
    assert [shlex.split(line)[:2] for line in planned] == [[shutil.which("echo"), SCRIPT]] * 2  # absolute interpreter
    stub = tmp_path / "passes_checks_then_fails"
    stub.write_text('#!/bin/bash\n[[ "$*" == *--dry-run ]]\n')
    stub.chmod(0o755)
    failed = bash("mujoco.sh", "--envs", "Hopper-v4", "--seeds", "1", cwd=tmp_path, python=str(stub))
    assert failed.returncode == 1 and "FAILED" in failed.stderr
    refused = bash("mujoco.sh", "--envs", "Hopper-v4", "--seeds", "3", cwd=tmp_path, python="false")
    assert refused.returncode == 2 and refused.stderr == ("mujoco.sh: error: Hopper-v4 / dacerv2 / seed 3: exit status "
                                                          "1, no output; nothing was launched\n")
    assert not (tmp_path / "logs" / "Hopper-v4__dacerv2__3.log").exists()


def test_launch_checks_every_configuration_before_anything_runs(tmp_path):
    """An env id or flag the training script (or the SAC baseline) refuses, or an interpreter without the project's
    packages, stops the launch in one line, --dry-run included; the check runs once per configuration, not per seed."""
    bad_env = bash("mujoco.sh", "--dry-run", "--envs", "Hopper-v4 NoSuchEnv-v9", "--seeds", "1 2", cwd=tmp_path)
    assert bad_env.returncode == 2 and bad_env.stdout == ""
    assert bad_env.stderr == ("mujoco.sh: error: NoSuchEnv-v9 / dacerv2 / seed 1: unknown env id 'NoSuchEnv-v9'; "
                              "nothing was launched\n")
    sac_flag = bash("mujoco.sh", "--dry-run", "--envs", "Hopper-v4", "--algos", "dacerv2 sac", "--", "--preset",
                    "short", cwd=tmp_path)
    assert sac_flag.returncode == 2 and "Hopper-v4 / sac / seed 1: Unrecognized options: --preset" in sac_flag.stderr
    bad_flag = bash("mujoco.sh", "--slurm", "--dry-run", "--envs", "Hopper-v4", "--", "--learning-starts", "10",
                    cwd=tmp_path)
    assert bad_flag.returncode == 2 and "--learning-starts (10) must be at least --batch-size" in bad_flag.stderr
    bare = tmp_path / "python_without_packages"
    bare.write_text("#!/bin/bash\necho \"ModuleNotFoundError: No module named 'gymnasium'\" >&2\nexit 1\n")
    bare.chmod(0o755)
    no_venv = bash("mujoco.sh", "--dry-run", "--envs", "Hopper-v4", cwd=tmp_path, python=str(bare))
    assert no_venv.returncode == 2 and "No module named" in no_venv.stderr and "activate its venv" in no_venv.stderr
    missing = bash("mujoco.sh", "--dry-run", cwd=tmp_path, python="no-such-python")
    assert missing.returncode == 2 and "no Python interpreter 'no-such-python' here" in missing.stderr
    big_seed = bash("mujoco.sh", "--dry-run", "--seeds", "1 4294967296", cwd=tmp_path)
    assert big_seed.returncode == 2 and "each seed must be below 2^32, got 4294967296" in big_seed.stderr
    calls = tmp_path / "calls.txt"
    stub = tmp_path / "counting_python"
    stub.write_text(f'#!/bin/bash\necho "$*" >> {calls}\n')
    stub.chmod(0o755)
    assert bash("mujoco.sh", "--dry-run", "--envs", "Hopper-v4 Ant-v4", cwd=tmp_path, python=str(stub)).returncode == 0
    checked = calls.read_text().splitlines()  # 2 envs x 5 seeds: 2 configurations
    assert len(checked) == 2 and all(line.endswith("--dry-run") and "--seed 1 " in line for line in checked)


def test_a_finished_run_logs_its_last_evaluation_one_vector_step_before_the_total():
    """dacerv2_continuous.py logs at global_step, the env-step count before the vector step: a 400,000-step run with
    20 envs evaluates last at 399,980. That run is complete; one that stopped a vector step earlier is not."""
    common = dict(path=Path("runs/x"), env_id="Hopper-v4", exp_name="dacerv2", seed=1, returns=np.array([1.0, 2.0]),
                  num_envs=20, total_timesteps=400_000)
    assert not report.Run(steps=np.array([200_000, 399_980]), **common).partial
    assert report.Run(steps=np.array([200_000, 399_960]), **common).partial


def test_slurm_dry_run_prints_one_job_array(tmp_path):
    args = ["--slurm", "--dry-run", "--envs", "Hopper-v4", "--seeds", "1 2", "--algos", "dacerv2 sac", "--partition",
            "gpu", "--time", "2-00:00:00", "--gpus", "1", "--max-parallel", "3", "--sbatch", "--account=lab --qos=low"]
    result = bash("mujoco.sh", *args, "--", "--cuda", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    script = result.stdout
    for line in ("#SBATCH --array=0-3%3", "#SBATCH --time=2-00:00:00", "#SBATCH --partition=gpu", "#SBATCH --gpus=1",
                 "#SBATCH --signal=B:TERM@120", "#SBATCH --requeue", "#SBATCH --open-mode=append",
                 "#SBATCH --account=lab", "#SBATCH --qos=low", f"cd {tmp_path}"):
        assert line in script.splitlines(), line
    commands = re.search(r"^commands=\(\n(.*?)\n\)", script, re.S | re.M).group(1).splitlines()
    assert len(commands) == 4
    first, sac = shlex.split(shlex.split(commands[0])[0]), shlex.split(shlex.split(commands[1])[0])
    assert first == [sys.executable, SCRIPT, *"--env-id Hopper-v4 --seed 1 --exp-name dacerv2 --resume-if-exists "
                     "--save-model --checkpoint-buffer --checkpoint-frequency 50000 --cuda".split()]
    assert sac == [sys.executable, str(BENCHMARK / "sac_baseline.py"), *"--env-id Hopper-v4 --seed 1 --exp-name sac "
                   "--resume-if-exists --checkpoint-frequency 50000 --cuda".split()]
    assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0
    assert not (tmp_path / "logs").exists()


@pytest.mark.parametrize("bad", [["--time", "1:2:3:4"], ["--time", "soon"], ["--mem", "lots"], ["--gpus", "-1"],
                                 ["--max-parallel", "0"], ["--cpus-per-task", "x"], ["--partition", "a b"]])
def test_bad_slurm_options_exit_2_before_submitting(tmp_path, bad):
    result = bash("mujoco.sh", "--slurm", "--dry-run", *bad, cwd=tmp_path)
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1 and "error: --" in result.stderr


def test_fixed_run_folders_are_read_and_incomplete_runs_listed(tmp_path):
    runs = tmp_path / "runs"
    write_events(runs / "Hopper-v4__dacerv2__1", curve([50, 60, 70]), hparams_of("Hopper-v4", "dacerv2", 1))
    write_events(runs / "Hopper-v4__dacerv2__2", curve([50, 60, 70])[:12], hparams_of("Hopper-v4", "dacerv2", 2))
    write_events(runs / "Hopper-v4__dacerv2__3", [], hparams_of("Hopper-v4", "dacerv2", 3))  # queued, just started
    plan = tmp_path / "logs" / "planned_runs.txt"  # as a launch writes it: seeds 1-4, seed 4 never started
    plan.parent.mkdir()
    plan.write_text("".join(f"/venv/bin/python /repo/dacerv2_continuous.py --env-id Hopper-v3 --seed {seed} --exp-name "
                            "dacerv2 --resume-if-exists\n" for seed in (1, 2, 3, 4)))
    result = report_cli(runs, "--out", tmp_path / "out", "--planned", plan)
    assert result.returncode == 0, result.stderr
    assert "| Hopper-v4 | dacerv2 | - | 2 |" in result.stdout
    incomplete = result.stdout.split("## Incomplete runs")[1].split("## Notes")[0]
    assert "- Hopper-v4 / dacerv2 / seed 2: env step 1,100 of 2,000 (`Hopper-v4__dacerv2__2`)" in incomplete
    assert "- `Hopper-v4__dacerv2__3`: no evaluation yet" in incomplete
    assert f"- Hopper-v3 / dacerv2 / seed 4: planned in {plan}, no run folder (not started yet, or failed" in incomplete
    assert "seed 1" not in incomplete and "seed 3:" not in incomplete
    assert "last evaluation at env step 1,100 of 2,000 planned" in result.stdout
    without_plan = report_cli(runs, "--out", tmp_path / "out").stdout
    assert "seed 4" not in without_plan
    plan.write_text("just some notes\n")
    refused = report_cli(runs, "--out", tmp_path / "out", "--planned", plan)
    assert refused.returncode == 2 and "not a training command: just some notes" in refused.stderr


def test_sac_baseline_logs_the_shared_tags_and_is_reported_beside_dacerv2_and_dacer(tmp_path):
    command = [sys.executable, str(BENCHMARK / "sac_baseline.py"), "--env-id", "Pendulum-v1", "--total-timesteps",
               "600", "--learning-starts", "200", "--eval-frequency", "200", "--eval-episodes", "2", "--no-cuda"]
    (tmp_path / "tmp").mkdir()
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "TMPDIR": str(tmp_path / "tmp")})
    assert result.returncode == 0, result.stderr
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert run_dir.name.startswith("Pendulum-v1__sac__1__")
    assert not list((tmp_path / "tmp").glob("SB3-*"))  # no empty SB3-{time} log folder left in the temporary directory
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0}).Reload()
    assert [e.step for e in acc.Scalars("eval/episodic_return")] == [399, 599]  # iteration 200 and the end
    assert [e.step for e in acc.Scalars("charts/episodic_return")] == [199, 399, 599]  # Pendulum: 200-step episodes
    assert all(-2000 < e.value < 0 for e in acc.Scalars("eval/episodic_return"))
    for algo, seed_returns in (("dacerv2", [-300.0, -200.0]), ("dacer", [-900.0, -800.0])):
        write_events(tmp_path / "runs" / f"Pendulum-v1__{algo}__1__100", list(zip([399, 599], seed_returns)),
                     {"exp_name": algo, "seed": 1, "env_id": "Pendulum-v1", "total_timesteps": 600, "num_envs": 1})
    report_result = report_cli(tmp_path / "runs", "--out", tmp_path / "out")
    assert report_result.returncode == 0, report_result.stderr
    for algo in ("dacerv2", "dacer", "sac"):
        assert f"| Pendulum-v1 | {algo} |" in report_result.stdout
    assert (tmp_path / "out" / "Pendulum-v1.png").stat().st_size > 0
    unknown = subprocess.run([*command[:2], "--env-id", "Hoper-v4"], capture_output=True, text=True, timeout=120)
    assert unknown.returncode == 2 and unknown.stderr.startswith("error: unknown env id 'Hoper-v4'; did you mean")


def test_sac_baseline_stopped_by_sigterm_continues_from_its_checkpoint(tmp_path):
    """SIGTERM during a --resume-if-exists run: exit 143 with a checkpoint (model and buffer); the same command
    continues it in the same folder to the full budget, its evaluations after the stop once each; a relaunch of the
    complete run does nothing."""
    command = [sys.executable, "-u", str(BENCHMARK / "sac_baseline.py"), "--env-id", "Pendulum-v1", "--total-timesteps",
               "1000", "--learning-starts", "200", "--eval-frequency", "200", "--eval-episodes", "1", "--no-cuda",
               "--resume-if-exists", "--checkpoint-frequency", "100"]
    proc = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in proc.stdout:  # the first evaluation, at iteration 200 (env step 400)
        if "eval/episodic_return=" in line:
            break
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "stopped by SIGTERM" in out and "Traceback" not in err
    run_dir = tmp_path / "runs" / "Pendulum-v1__sac__1"
    assert {path.name for path in run_dir.iterdir()} >= {"sac.zip", "sac_buffer.pkl"}
    resumed = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming Pendulum-v1__sac__1 at step" in resumed.stdout
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0}).Reload()
    assert [e.step for e in acc.Scalars("eval/episodic_return")] == [399, 599, 799, 999]
    again = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "is complete (1000 env steps): nothing to do" in again.stdout


def test_config_differences_beside_another_script():
    """A SAC baseline row names its algorithm; settings only the training script has, equal in all its runs, are not
    differences; those that differ among its runs are, but not those that only keep the books (checkpoints), only
    change the speed (--compile) or only name flags that are recorded themselves (--preset)."""
    ours = {"policy_lr": "0.0001", "q_lr": "0.0001", "num_envs": "1", "compile": "False", "preset": "None"}
    fast = {**ours, "policy_lr": "0.0003", "resume_if_exists": "True", "save_model": "True", "compile": "True",
            "preset": "short"}
    runs = {"dacerv2": ours, "fast": fast,
            "sac": {"algorithm": "stable-baselines3 SAC", "learning_rate": "0.0003", "num_envs": "1"}}
    rows = []
    for config, hparams in runs.items():
        run = fake_run([0], [0.0], config=config)
        run.hparams = hparams
        rows.append(report.Row("A-v4", config, [run], [0.0]))
    differences = report.config_differences(rows)
    assert differences["A-v4", "sac"] == "algorithm=stable-baselines3 SAC"
    assert differences["A-v4", "dacerv2"] == "policy_lr=0.0001" and differences["A-v4", "fast"] == "policy_lr=0.0003"


def test_report_gives_intervals_final_evaluations_update_times_random_rows_and_an_iqm_aggregate(tmp_path):
    """#31's table: per task a 95 % t-interval, the final evaluation and ms per update beside mean ± std; with
    --random a random row per task and the IQM of SAC-normalised scores, checked against a computation by hand."""
    runs = tmp_path / "runs"
    tars = {("Hopper-v4", "dacerv2"): [70, 90, 110], ("Hopper-v4", "sac"): [40, 60, 50],
            ("Walker2d-v4", "dacerv2"): [30, 10, 20], ("Walker2d-v4", "sac"): [50, 50, 50]}
    for (env, exp), values in tars.items():
        for seed, value in enumerate(values, 1):
            folder = runs / f"{env}__{exp}__{seed}__100"
            write_events(folder, curve([value - 5, value, value - 1]), hparams_of(env, exp, seed))
            if exp == "dacerv2":  # the update times a run logs; the first interval compiles
                writer = SummaryWriter(str(folder))
                for step, ms in zip([10, 100, 1000, 2000], [900.0, 20.0 + seed, 22.0 + seed, 24.0 + seed]):
                    writer.add_scalar("charts/update_ms", ms, step)
                writer.close()
    random_json = tmp_path / "random.json"
    random_json.write_text('{"Hopper-v3": {"mean": 10, "std": 2, "episodes": 100, "seed": 0, "returns": []}, '
                           '"Walker2d-v4": {"mean": 0, "std": 1, "episodes": 100, "seed": 0, "returns": []}}')
    result = report_cli(runs, "--out", tmp_path / "out", "--random", random_json)
    assert result.returncode == 0, result.stderr
    low, high = stats.t.interval(0.95, 2, loc=90, scale=np.std([70, 90, 110], ddof=1) / np.sqrt(3))
    median_ms = np.mean([np.median([900.0, 20 + s, 22 + s, 24 + s]) for s in (1, 2, 3)])  # 23.0
    row = next(line for line in result.stdout.splitlines() if line.startswith("| Hopper-v4 | dacerv2 |"))
    assert f"| 90.0 ± 16.3 | [{low:.1f}, {high:.1f}] | {np.mean([v - 1 for v in (70, 90, 110)]):.1f} " \
           f"| {median_ms:.1f} |" in row, row
    assert "| Hopper-v4 | random (uniform actions) | - | - | 10.0 ± 2.0 | - | - | - | 100 episodes |" in result.stdout
    sac_row = next(line for line in result.stdout.splitlines() if line.startswith("| Hopper-v4 | sac |"))
    assert "| - | 1: 40.0" in sac_row  # no update times logged: a dash
    scores = [(np.array(tars[env, "dacerv2"]) - r) / (np.mean(tars[env, "sac"]) - r)
              for env, r in (("Hopper-v4", 10), ("Walker2d-v4", 0))]
    middle = np.sort(np.concatenate(scores))[1:-1]  # 6 scores: trim_mean(0.25) cuts int(1.5) = 1 at each end
    aggregate = result.stdout.split("## Aggregate over tasks")[1]
    line = next(line for line in aggregate.splitlines() if line.startswith("| dacerv2 |"))
    value, interval = line.split(" | ")[3:5]
    assert line.startswith("| dacerv2 | 2 | 6 |") and float(value) == pytest.approx(middle.mean(), abs=5e-4)
    low, high = (float(x) for x in interval.strip("[] |").split(", "))
    assert low < float(value) < high and "| sac | 2 | 6 | 1.000 |" in aggregate
    assert (tmp_path / "out" / "all_tasks.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "![every task](all_tasks.png)" in result.stdout
    random_json.write_text("[1, 2]")
    refused = report_cli(runs, "--out", tmp_path / "out", "--random", random_json)
    assert refused.returncode == 2 and "not random_baseline.py's JSON" in refused.stderr


def test_random_baseline_writes_what_report_reads(tmp_path):
    out = tmp_path / "random.json"
    command = [sys.executable, str(BENCHMARK / "random_baseline.py"), "--env-ids", "Pendulum-v1", "--episodes", "3",
               "--out", str(out)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    data = json.loads(out.read_text())["Pendulum-v1"]
    assert len(data["returns"]) == 3 and data["mean"] == pytest.approx(np.mean(data["returns"]))
    assert all(-2000 < r < -100 for r in data["returns"])  # 200 steps of Pendulum's cost, as random actions score
    again = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and json.loads(out.read_text())["Pendulum-v1"]["returns"] == data["returns"]
    bad = subprocess.run([*command[:3], "NoSuch-v0", "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "unknown env id(s): NoSuch-v0" in bad.stderr
