"""--slurm against a real single-node Slurm (benchmark/local_slurm.sh): a tiny grid submitted as a job array and read
back by report.py; tasks requeued or warned with SIGTERM mid-run resume from their checkpoints and end exactly as
uninterrupted ones; bad input. Skipped, with the reason, where Slurm is not installed or the tests do not run as root."""

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
MUJOCO_SH = str(REPO / "benchmark" / "mujoco.sh")
GRID = ["--envs", "Pendulum-v1", "--seeds", "1 2", "--mem", "2G", "--time", "10:00", "--",
        "--num-envs", "2", "--learning-starts", "200", "--total-timesteps", "1600", "--batch-size", "64",
        "--eval-frequency", "200", "--eval-episodes", "2", "--gmm-samples", "20", "--alpha-update-frequency", "300",
        "--no-cuda"]
ITERATIONS = 701  # (1600 - 200) / 2 vector steps with an update, and the one at step 200
MISSING = [p for p in ("sbatch", "squeue", "scontrol", "slurmctld", "slurmd", "munged", "mungekey") if not shutil.which(p)]
pytestmark = [
    pytest.mark.skipif(bool(MISSING), reason=f"Slurm not installed ({', '.join(MISSING)} missing): apt-get install "
                       "slurm-wlm munge"),
    pytest.mark.skipif(os.geteuid() != 0, reason="bringing up a local Slurm needs root"),
]


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    """A single-node Slurm for this module; yields the environment that points the Slurm commands at it."""
    folder = tmp_path_factory.mktemp("slurm")
    start = subprocess.run(["bash", str(REPO / "benchmark" / "local_slurm.sh"), "start", str(folder)],
                           capture_output=True, text=True, timeout=120)
    assert start.returncode == 0, start.stderr
    yield {**os.environ, "SLURM_CONF": str(folder / "slurm.conf"), "PYTHON": sys.executable}
    subprocess.run(["bash", str(REPO / "benchmark" / "local_slurm.sh"), "stop", str(folder)], timeout=60)


def submit(env, cwd, *args):
    """Run mujoco.sh --slurm; returns the job id it prints."""
    result = subprocess.run(["bash", MUJOCO_SH, "--slurm", *args], cwd=cwd, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return re.search(r"submitted job array (\d+)", result.stdout).group(1)


def slurm_command(env, *args):
    return subprocess.run(args, env=env, capture_output=True, text=True, check=True).stdout


def wait_for(condition, what, timeout=240):
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


def log_of(cwd, seed):
    path = cwd / "logs" / f"Pendulum-v1__dacerv2__{seed}.log"
    return path.read_text(errors="replace") if path.exists() else ""


def wait_until_done(env, job_id):
    wait_for(lambda: not slurm_command(env, "squeue", "-h", "-j", job_id).strip(), f"job {job_id} to end")


def final_checkpoint(cwd, seed):
    return torch.load(cwd / "runs" / f"Pendulum-v1__dacerv2__{seed}" / "dacerv2.pt", weights_only=True)


@pytest.fixture(scope="module")
def uninterrupted(slurm, tmp_path_factory):
    """The tiny grid, submitted and run to the end without interruption; yields its folder."""
    cwd = tmp_path_factory.mktemp("uninterrupted")
    wait_until_done(slurm, submit(slurm, cwd, *GRID))
    return cwd


def test_a_grid_runs_as_a_job_array_and_report_reads_it(slurm, uninterrupted):
    for seed in (1, 2):
        assert final_checkpoint(uninterrupted, seed)["iteration"] == ITERATIONS, log_of(uninterrupted, seed)
    (sbatch,) = (uninterrupted / "logs").glob("*.sbatch")
    assert f"'{sys.executable} {REPO / 'dacerv2_continuous.py'} --env-id Pendulum-v1 --seed 1 " in sbatch.read_text()
    plan = uninterrupted / "logs" / "planned_runs.txt"
    report = subprocess.run([sys.executable, str(REPO / "benchmark" / "report.py"), "runs", "--out", "results",
                             "--planned", str(plan)], cwd=uninterrupted, capture_output=True, text=True)
    assert report.returncode == 0, report.stderr
    assert "| Pendulum-v1 | dacerv2 | - | 2 |" in report.stdout
    assert "none: every run reached its planned total" in report.stdout
    lost = uninterrupted / "lost_task.txt"  # the plan of a grid whose third task never started
    lost.write_text(plan.read_text() + plan.read_text().splitlines()[0].replace("--seed 1 ", "--seed 3 ") + "\n")
    report = subprocess.run([sys.executable, str(REPO / "benchmark" / "report.py"), "runs", "--out", "results",
                             "--planned", str(lost)], cwd=uninterrupted, capture_output=True, text=True)
    assert f"- Pendulum-v1 / dacerv2 / seed 3: planned in {lost}, no run folder" in report.stdout, report.stdout


def test_requeued_and_warned_tasks_resume_and_end_as_uninterrupted_ones(slurm, uninterrupted, tmp_path):
    job_id = submit(slurm, tmp_path, *GRID)
    interrupt = {1: ["scontrol", "requeue"], 2: ["scancel", "--batch", "--signal=TERM"]}  # the second: a time limit
    for seed, command in interrupt.items():
        wait_for(lambda: "iteration=200," in log_of(tmp_path, seed), f"seed {seed} to pass iteration 200")
        slurm_command(slurm, *command, f"{job_id}_{seed - 1}")
    for seed in interrupt:
        wait_for(lambda: "stopped by SIGTERM" in log_of(tmp_path, seed), f"seed {seed}'s checkpoint")
        # a requeued job waits ~2 minutes before it may start again; skip that wait
        wait_for(lambda: "PENDING" in slurm_command(slurm, "squeue", "-h", "-j", f"{job_id}_{seed - 1}", "-o", "%T"),
                 f"seed {seed} to be requeued")
        slurm_command(slurm, "scontrol", "update", f"JobId={job_id}_{seed - 1}", "StartTime=now")
    wait_until_done(slurm, job_id)
    report = subprocess.run([sys.executable, str(REPO / "benchmark" / "report.py"), "runs", "--out", "results"],
                            cwd=tmp_path, capture_output=True, text=True)
    assert "none: every run reached its planned total" in report.stdout, report.stdout
    for seed in interrupt:
        log = log_of(tmp_path, seed)
        assert "resuming Pendulum-v1__dacerv2__" in log and "with its replay buffer" in log, log
        interrupted, straight = final_checkpoint(tmp_path, seed), final_checkpoint(uninterrupted, seed)
        assert interrupted["iteration"] == straight["iteration"] == ITERATIONS
        for name in ("actor", "critic"):  # and the same training: the resume is exact
            for key, value in straight[name].items():
                assert torch.equal(value, interrupted[name][key]), (seed, name, key)


def test_bad_slurm_input_is_one_line_and_exit_2(slurm, tmp_path):
    no_sbatch = tmp_path / "bin"
    no_sbatch.mkdir()
    for folder in os.environ["PATH"].split(os.pathsep):
        for program in Path(folder).glob("*") if Path(folder).is_dir() else ():
            if program.name != "sbatch" and not (no_sbatch / program.name).exists():
                (no_sbatch / program.name).symlink_to(program)
    cases = {
        "no sbatch": ({**slurm, "PATH": str(no_sbatch)}, [], "--slurm needs sbatch on the PATH"),
        "unknown partition": (slurm, ["--partition", "nope"], "sbatch refused the job"),
        "malformed time": (slurm, ["--time", "1:2:3:4"], "--time needs a Slurm time limit"),
    }
    for case, (env, extra, message) in cases.items():
        result = subprocess.run(["bash", MUJOCO_SH, "--slurm", "--envs", "Pendulum-v1", *extra], cwd=tmp_path,
                                env=env, capture_output=True, text=True)
        assert result.returncode == 2, (case, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1 and message in result.stderr, (case, result.stderr)
        assert not (tmp_path / "logs").exists(), case  # a refused job leaves no sbatch file or empty log folder
    assert "Partition" in slurm_command(slurm, "scontrol", "show", "partition")  # the daemons are still fine
