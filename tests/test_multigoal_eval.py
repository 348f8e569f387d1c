"""Tests of the multimodality evaluation: evaluate_policy, report_multimodality, the multigoal_env.py command line,
benchmark/multigoal_report.py and benchmark/multigoal.sh (tiny networks, CPU)."""

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.tensorboard import SummaryWriter

import dacerv2_continuous as dacer
import multigoal_env
from multigoal_env import CheckpointError, evaluate_policy, goal_positions, load_actor, report_multimodality

REPO = Path(__file__).resolve().parents[1]
MULTIGOAL = str(REPO / "multigoal_env.py")
SCRIPT = str(REPO / "dacerv2_continuous.py")
METRIC_KEYS = {"goals_reached", "goals_reached_fraction", "success_rate", "hit_counts", "uniformity", "min_max_ratio",
               "mean_steps_to_goal", "path_efficiency", "mean_return"}


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Evaluate on one thread, like the command lines (two threads are many times slower on busy cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def save_tiny_checkpoint(path, env_id="MultiGoal6-v0", exp_name="dacerv2", seed=1, diffusion_steps=5):
    """Write a checkpoint-like dict in the training script's format with a tiny random DiffusionActor."""
    torch.manual_seed(seed)
    actor = dacer.DiffusionActor(2, 2, 16, 1, diffusion_steps)
    args = {"env_id": env_id, "exp_name": exp_name, "seed": seed, "hidden_dim": 16, "num_layers": 1}
    state = {"actor": actor.state_dict(), "args": {**args, "diffusion_steps": diffusion_steps}}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({**state, "run_name": path.parent.name, "global_step": 4000, "iteration": 200}, path)
    return path


class SteeringActor(torch.nn.Module):
    """Stand-in for a DiffusionActor: from the origin it heads for the goal nearest in angle to its first noise draw
    (so each goal is equally likely), elsewhere for the nearest goal; unit speed."""

    def __init__(self, num_goals):
        super().__init__()
        self.T, self.act_dim = 1, 2
        self.goals = torch.tensor(goal_positions(num_goals), dtype=torch.float32)
        self.speed = torch.nn.Parameter(torch.ones(()))  # a parameter gives the actor a device

    draw_noise = dacer.DiffusionActor.draw_noise  # the real actor's (T, B, d) noise

    def sample(self, obs, noise):
        num_goals = len(self.goals)
        drawn = torch.round(torch.atan2(noise[0, :, 1], noise[0, :, 0]) / (2 * torch.pi / num_goals)).long() % num_goals
        nearest = torch.cdist(obs, self.goals).argmin(dim=1)
        direction = self.goals[torch.where((obs == 0).all(dim=1), drawn, nearest)] - obs
        return self.speed * direction / direction.norm(dim=1, keepdim=True)


# ---------------------------------------------------------------- evaluate_policy


def test_evaluate_policy_hand_made_uniform_policy():
    goals = goal_positions(4)

    def cycle_goals(obs):  # trajectory i heads for goal i mod 4 (the batch shrinks only once all have arrived)
        direction = goals[np.arange(len(obs)) % 4] - obs
        return direction / np.linalg.norm(direction, axis=1, keepdims=True)

    trajectories, goal_hits, metrics = evaluate_policy(cycle_goals, 4)
    assert len(trajectories) == 100 and all(np.array_equal(t[0], [0.0, 0.0]) for t in trajectories)
    np.testing.assert_array_equal(goal_hits, np.arange(100) % 4)
    assert metrics["hit_counts"] == [25] * 4 and metrics["goals_reached"] == 4
    assert metrics["uniformity"] == pytest.approx(1.0) and metrics["min_max_ratio"] == 1.0
    assert metrics["success_rate"] == 1.0
    assert metrics["path_efficiency"] == pytest.approx(1.0) and metrics["mean_steps_to_goal"] == 5.0  # unit steps
    # each step costs 30 |a|^2 = 30 and its squared distance to the goal (4, 3, 2, 1, then 0 and +10 at the goal)
    assert metrics["mean_return"] == pytest.approx(-5 * 30 - (16 + 9 + 4 + 1 + 0) + 10)


def test_untrained_network_scores_far_below_a_straight_to_the_nearest_goal_policy():
    """The evidence a learned multimodal policy must give: an untrained network (like uniform random actions)
    wanders, so even when it reaches goals it takes many steps on crooked paths and earns a low return."""
    goals = goal_positions(6)

    def straight_to_nearest(obs):  # from the origin every goal is nearest: trajectory i takes goal i mod 6
        direction = goals[np.arange(len(obs)) % 6] - obs  # (all arrive together, so i keeps its goal)
        return direction / np.linalg.norm(direction, axis=1, keepdims=True)

    _, _, straight = evaluate_policy(straight_to_nearest, 6)
    torch.manual_seed(0)
    _, _, untrained = evaluate_policy(dacer.DiffusionActor(2, 2, 32, 2, 5), 6)
    _, _, uniform = evaluate_policy(multigoal_env.random_policy(0), 6)
    assert straight["goals_reached"] == 6 and straight["path_efficiency"] == pytest.approx(1.0)
    for reference in (untrained, uniform):
        assert reference["mean_return"] < straight["mean_return"] - 100
        assert not reference["path_efficiency"] > 0.6  # nan (no goal reached) counts as far below
        assert not reference["mean_steps_to_goal"] < 2 * straight["mean_steps_to_goal"]


def test_untrained_actor_is_the_network_a_run_starts_from(tmp_path):
    """multigoal_env.untrained_actor(args) rebuilds a run's initial actor: a run without updates saves exactly it."""
    command = [sys.executable, str(REPO / "dacerv2_continuous.py"), "--env-id", "MultiGoal4-v0", "--no-cuda",
               "--total-timesteps", "40", "--learning-starts", "100", "--num-envs", "2", "--hidden-dim", "16",
               "--seed", "7", "--save-model"]  # fmt: skip
    assert subprocess.run(command, cwd=tmp_path, capture_output=True, timeout=300).returncode == 0
    (path,) = tmp_path.glob("runs/*/*.pt")
    checkpoint = torch.load(path, weights_only=True)
    rebuilt = multigoal_env.untrained_actor(checkpoint["args"]).state_dict()
    assert rebuilt.keys() == checkpoint["actor"].keys()
    assert all(torch.equal(rebuilt[k], checkpoint["actor"][k]) for k in rebuilt)


def test_evaluate_policy_of_an_actor_is_seeded():
    actor = dacer.DiffusionActor(2, 2, 16, 1, 5)
    first, hits, metrics = evaluate_policy(actor, 5, num_trajectories=20, seed=3)
    again, hits_again, _ = evaluate_policy(actor, 5, num_trajectories=20, seed=3)
    other, _, _ = evaluate_policy(actor, 5, num_trajectories=20, seed=4)
    assert all(np.array_equal(a, b) for a, b in zip(first, again)) and np.array_equal(hits, hits_again)
    assert not all(len(a) == len(b) and np.array_equal(a, b) for a, b in zip(first, other))
    assert set(metrics) == METRIC_KEYS and 0 <= metrics["goals_reached"] <= 5
    assert all(np.abs(np.diff(t, axis=0)).max() <= 1.0 for t in first if len(t) > 1)  # actions in [-1, 1]


# ---------------------------------------------------------------- report_multimodality


def test_report_multimodality_logs_prints_and_plots(tmp_path, capsys):
    writer = SummaryWriter(str(tmp_path / "tb"))
    png = tmp_path / "figures" / "multimodality.png"
    metrics = report_multimodality(SteeringActor(6), 6, png, writer=writer, step=1234, seed=0, title="steering")
    writer.close()
    assert metrics["goals_reached"] == 6 and metrics["success_rate"] == 1.0
    assert metrics["uniformity"] == pytest.approx(1.0, abs=0.03) and sum(metrics["hit_counts"]) == 100
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 and "goals reached 6/6" in lines[0] and "uniformity" in lines[0]
    acc = EventAccumulator(str(tmp_path / "tb"), size_guidance={"scalars": 0}).Reload()
    assert set(acc.Tags()["scalars"]) == set(multigoal_env.METRIC_TAGS.values())
    for key, tag in multigoal_env.METRIC_TAGS.items():
        [event] = acc.Scalars(tag)
        assert event.step == 1234 and event.value == pytest.approx(metrics[key])


def test_report_multimodality_is_reproducible_without_writer(tmp_path, capsys):
    actor = dacer.DiffusionActor(2, 2, 16, 1, 5)
    first = report_multimodality(actor, 4, tmp_path / "a.png", seed=7)
    assert report_multimodality(actor, 4, tmp_path / "b.png", seed=7) == first
    assert len(capsys.readouterr().out.splitlines()) == 2


# ---------------------------------------------------------------- checkpoints and the command line


def run_multigoal_cli(*args):
    """Run multigoal_env.py in a subprocess; returns the CompletedProcess."""
    command = [sys.executable, MULTIGOAL, *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def test_cli_writes_figure_and_json(tmp_path):
    checkpoint = save_tiny_checkpoint(tmp_path / "runs" / "MultiGoal6-v0__dacerv2__1__100" / "dacerv2.pt")
    png, record_path = tmp_path / "out" / "fig.png", tmp_path / "out" / "metrics.json"
    result = run_multigoal_cli(checkpoint, "--json", record_path, "--out", png, "--num-trajectories", "30")
    assert result.returncode == 0, result.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    record = json.loads(record_path.read_text())
    context = {"checkpoint", "run_name", "env_id", "global_step", "num_goals", "num_trajectories", "seed", "figure"}
    assert set(record) == METRIC_KEYS | context
    expected = {"env_id": "MultiGoal6-v0", "num_goals": 6, "num_trajectories": 30, "global_step": 4000, "seed": 0}
    assert {key: record[key] for key in expected} == expected
    assert 0 <= record["goals_reached"] <= 6 and len(record["hit_counts"]) == 6
    assert sum(record["hit_counts"]) == round(30 * record["success_rate"])
    assert "goals reached" in result.stdout and not (checkpoint.parent / "multimodality.png").exists()


def test_cli_default_figure_and_tensorboard(tmp_path, capsys):
    """The default figure goes beside the checkpoint without replacing the training run's multimodality.png."""
    checkpoint = save_tiny_checkpoint(tmp_path / "run" / "dacer.pt", env_id="MultiGoal-v0", diffusion_steps=20)
    (tmp_path / "run" / "multimodality.png").write_bytes(b"the training run's figure")
    multigoal_env.main([str(checkpoint), "--num-trajectories", "10", "--tensorboard"])
    assert (tmp_path / "run" / "dacer_multimodality.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "run" / "multimodality.png").read_bytes() == b"the training run's figure"
    acc = EventAccumulator(str(tmp_path / "run"), size_guidance={"scalars": 0}).Reload()
    assert acc.Scalars("eval/goals_reached")[0].step == 4000
    assert "/4," in capsys.readouterr().out  # MultiGoal-v0 has 4 goals


def test_cli_missing_checkpoint_is_one_line(tmp_path):
    result = run_multigoal_cli(tmp_path / "missing.pt")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"multigoal_env.py: error: no such checkpoint file '{tmp_path}/missing.pt'"
    ]


@pytest.mark.parametrize(
    "content, message",
    [
        ("junk", "cannot read checkpoint"),
        ({"model": 1}, "is not a checkpoint of dacerv2_continuous.py"),
        ("hopper", "was trained on 'Hopper-v4', not a multi-goal env"),
        ("wrong sizes", "cannot build the actor"),
    ],
)
def test_unusable_checkpoints(tmp_path, capsys, content, message):
    path = tmp_path / "x.pt"
    if content == "junk":
        path.write_text("not a checkpoint")
    elif content == "hopper":
        save_tiny_checkpoint(path, env_id="Hopper-v4")
    elif content == "wrong sizes":
        save_tiny_checkpoint(path)
        checkpoint = torch.load(path, weights_only=True)
        checkpoint["args"]["hidden_dim"] = 32
        torch.save(checkpoint, path)
    else:
        torch.save(content, path)
    with pytest.raises(CheckpointError, match=message):
        load_actor(path)
    with pytest.raises(SystemExit) as exit_info:
        multigoal_env.main([str(path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("multigoal_env.py: error: ") and message in err[0]


# ---------------------------------------------------------------- benchmark/multigoal_report.py


def test_multigoal_report_on_three_checkpoints(tmp_path):
    runs = tmp_path / "runs"
    save_tiny_checkpoint(runs / "MultiGoal6-v0__dacerv2__1__100" / "dacerv2.pt")
    save_tiny_checkpoint(runs / "MultiGoal4-v0__dacer__2__100" / "dacer.pt", "MultiGoal4-v0", "dacer", 2, 20)
    save_tiny_checkpoint(runs / "MultiGoal6-v0__eta30__1__100" / "eta30.pt", exp_name="eta30")  # same network as 1st
    (runs / "Hopper-v4__dacerv2__1__100").mkdir()
    (runs / "Hopper-v4__dacerv2__1__100" / "dacerv2.pt").write_text("never opened: not a MultiGoal run")
    out = tmp_path / "out"
    command = [sys.executable, str(REPO / "benchmark" / "multigoal_report.py"), str(runs), "--out", str(out)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert (out / "multigoal.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    markdown = (out / "multigoal.md").read_text()
    assert result.stdout == markdown
    rows = [line.split(" | ")[:3] for line in markdown.splitlines() if line.startswith("| ") and " | " in line]
    # by number of goals: each algorithm (blank without a checkpoint), its untrained network, uniform random actions
    untrained = "| untrained network (T = {}, 1 x 16)"  # once per architecture and seed, whichever runs share it
    assert rows[1:] == [["| DACERv2", "4", ""], ["| DACER", "4", "2"], ["| eta30", "4", ""],
                        [untrained.format(20), "4", "2"], ["| uniform random actions", "4", "-"],
                        ["| DACERv2", "5", ""], ["| DACER", "5", ""], ["| eta30", "5", ""],
                        ["| uniform random actions", "5", "-"], ["| DACERv2", "6", "1"], ["| DACER", "6", ""],
                        ["| eta30", "6", "1"], [untrained.format(5), "6", "1"],
                        ["| uniform random actions", "6", "-"]]  # fmt: skip
    lines = markdown.splitlines()
    trained, untrained = [line for line in lines if line.startswith(("| DACERv2 | 6", "| untrained network (T = 5"))]
    assert trained.count(" | ") == untrained.count(" | ") == 10  # eleven columns, path efficiency and return included
    assert "- DACER / 6 goals: no checkpoint" in markdown and "Hopper" not in markdown
    missing = subprocess.run([*command[:2], str(tmp_path / "none")], capture_output=True, text=True, timeout=60)
    assert missing.returncode == 2 and len(missing.stderr.strip().splitlines()) == 1


# ---------------------------------------------------------------- benchmark/multigoal.sh


def multigoal_sh(*args, cwd, python="python"):
    """Run benchmark/multigoal.sh with bash from cwd; returns the CompletedProcess."""
    env = {**os.environ, "PYTHON": python}
    command = ["bash", str(REPO / "benchmark" / "multigoal.sh"), *args]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=60)


def test_multigoal_sh_dry_run(tmp_path):
    result = multigoal_sh("--dry-run", "--", "--total-timesteps", "5000", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = [shlex.split(line) for line in result.stdout.splitlines()]
    assert len(lines) == 18 and not (tmp_path / "logs").exists()  # 3 envs x 2 algorithms x seeds 1, 2, 3
    budget = ["--total-timesteps", "200000", "--preset", "short", "--save-model", "--total-timesteps", "5000"]
    expected = []
    for env in ["MultiGoal4-v0", "MultiGoal5-v0", "MultiGoal6-v0"]:
        common = ["python", SCRIPT, "--env-id", env, "--seed", "1", "--exp-name"]
        expected.append([*common, "dacerv2", *budget, ">", f"logs/{env}__dacerv2__1.log", "2>&1"])
        baseline = ["dacer", "--diffusion-steps", "20", "--q-grad-coef", "0", *budget]
        expected.append([*common, *baseline, ">", f"logs/{env}__dacer__1.log", "2>&1"])
    assert lines[:6] == expected
    assert [line[line.index("--seed") + 1] for line in lines] == ["1"] * 6 + ["2"] * 6 + ["3"] * 6
    five = multigoal_sh("--dry-run", "--seeds", "1 2 3 4 5", cwd=tmp_path).stdout.splitlines()
    assert len(five) == 30


def test_multigoal_sh_eta_goes_to_dacerv2_only(tmp_path):
    result = multigoal_sh("--dry-run", "--envs", "MultiGoal6-v0", "--seeds", "1", "--eta", "1", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    dacerv2, baseline = [shlex.split(line) for line in result.stdout.splitlines()]
    assert dacerv2[dacerv2.index("--q-grad-coef") + 1] == "1" and "dacerv2" in dacerv2
    assert baseline[baseline.index("--q-grad-coef") + 1] == "0" and baseline.count("--q-grad-coef") == 1
    bad = multigoal_sh("--dry-run", "--eta", "-3", cwd=tmp_path)
    assert bad.returncode == 2 and "--eta must be a non-negative number" in bad.stderr and bad.stdout == ""


def test_multigoal_sh_help_and_bad_env(tmp_path):
    help_result = multigoal_sh("--help", cwd=tmp_path)
    assert help_result.returncode == 0 and all(f in help_result.stdout for f in ["--dry-run", "--workers", "--out"])
    bad = multigoal_sh("--dry-run", "--envs", "Hopper-v4", cwd=tmp_path)
    assert bad.returncode == 2 and "not MultiGoal-v0" in bad.stderr and bad.stdout == ""


def test_multigoal_sh_reports_after_the_runs_even_if_one_failed(tmp_path):
    stub = tmp_path / "stub_python"  # records its arguments; the DACER runs fail
    stub.write_text('#!/bin/bash\necho "$*" >> calls.txt\n[[ "$*" != *"--exp-name dacer "* ]]\n')
    stub.chmod(0o755)
    result = multigoal_sh("--envs", "MultiGoal6-v0", "--seeds", "1", "--out", "figs", cwd=tmp_path, python=str(stub))
    assert result.returncode == 1 and "FAILED" in result.stderr
    calls = (tmp_path / "calls.txt").read_text().splitlines()
    assert len(calls) == 3 and calls[-1] == f"{REPO}/benchmark/multigoal_report.py runs --out figs"
