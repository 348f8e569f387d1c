"""Tests of the multimodality evaluation: multigoal_env.evaluate_policy and report, the training script's --eval-only on
multi-goal checkpoints, benchmark/multigoal_report.py (checkpoints evaluated by the script that wrote them, edited
copies included) and benchmark/multigoal.sh (tiny networks, CPU)."""

import importlib
import importlib.util
import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

import dacerv2_continuous as dacer
import multigoal_env
from multigoal_env import evaluate_policy, goal_positions, report, rollout_trajectories

REPO = Path(__file__).resolve().parents[1]
SCRIPT = str(REPO / "dacerv2_continuous.py")
REPORT = str(REPO / "benchmark" / "multigoal_report.py")
METRIC_KEYS = {"goals_reached", "goals_reached_fraction", "success_rate", "hit_counts", "uniformity", "min_max_ratio",
               "mean_steps_to_goal", "path_efficiency", "mean_return"}
TINY = ["--total-timesteps", "600", "--learning-starts", "200", "--batch-size", "32", "--hidden-dim", "32",
        "--eval-frequency", "5", "--eval-episodes", "2", "--log-frequency", "5", "--gmm-samples", "20", "--no-cuda"]
PNG = b"\x89PNG\r\n\x1a\n"


def load_report_module():
    """benchmark/multigoal_report.py as a module (its functions, without running it)."""
    spec = importlib.util.spec_from_file_location("multigoal_report", REPORT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_report(runs, out, *flags, env=None):
    """benchmark/multigoal_report.py RUNS --out OUT in a subprocess; returns the CompletedProcess."""
    command = [sys.executable, REPORT, str(runs), "--out", str(out), *flags]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)


def train(script, cwd, *flags, env=None):
    """A tiny training run of `script` on MultiGoal6-v0 with --save-model; returns the checkpoint's path."""
    command = [sys.executable, str(script), "--env-id", "MultiGoal6-v0", *TINY, "--save-model", *flags]
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr
    (path,) = Path(cwd).glob("runs/MultiGoal6-v0__*/*.pt")
    return path


def actor_policy(actor, seed):
    """The numpy policy of the script's `multigoal_evaluation`: the actor in eval() mode, its evaluation action (the
    reverse chain, no lambda * alpha noise) on noise from a CPU torch generator seeded with seed."""
    device, gen = next(actor.parameters()).device, torch.Generator().manual_seed(seed)
    actor.eval()

    @torch.no_grad()
    def policy(obs):
        obs = torch.as_tensor(obs, dtype=torch.float32, device=device)
        return actor.sample(obs, actor.draw_noise(obs, gen).to(device)).cpu().numpy()

    return policy


def steering_policy(num_goals, seed):
    """From the origin head for a goal drawn uniformly at random, elsewhere for the nearest goal; unit speed."""
    goals, rng = goal_positions(num_goals), np.random.default_rng(seed)

    def policy(obs):
        nearest = np.linalg.norm(obs[:, None] - goals[None], axis=-1).argmin(axis=1)
        drawn = rng.integers(num_goals, size=len(obs))
        direction = goals[np.where(np.all(obs == 0.0, axis=1), drawn, nearest)] - obs
        return direction / np.linalg.norm(direction, axis=1, keepdims=True)

    return policy


def table_rows(markdown):
    """The first three cells (policy, N, seeds) of every row of the markdown table."""
    return [line.split(" | ")[:3] for line in markdown.splitlines() if line.startswith("| ") and " | " in line][1:]


# ---------------------------------------------------------------- evaluate_policy and report (numpy policies)


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
    _, _, untrained = evaluate_policy(actor_policy(dacer.DiffusionActor(2, 2, 32, 2, 5), 0), 6)
    _, _, uniform = evaluate_policy(multigoal_env.random_policy(0), 6)
    assert straight["goals_reached"] == 6 and straight["path_efficiency"] == pytest.approx(1.0)
    for reference in (untrained, uniform):
        assert reference["mean_return"] < straight["mean_return"] - 100
        assert not reference["path_efficiency"] > 0.6  # nan (no goal reached) counts as far below
        assert not reference["mean_steps_to_goal"] < 2 * straight["mean_steps_to_goal"]


def test_evaluate_policy_of_a_seeded_numpy_policy_is_reproducible():
    """evaluate_policy has no seed: the policy brings its randomness (here the actor's noise generator)."""
    torch.manual_seed(0)
    actor = dacer.DiffusionActor(2, 2, 16, 1, 5)
    first, hits, metrics = evaluate_policy(actor_policy(actor, 3), 5, num_trajectories=20)
    again, hits_again, _ = evaluate_policy(actor_policy(actor, 3), 5, num_trajectories=20)
    other, _, _ = evaluate_policy(actor_policy(actor, 4), 5, num_trajectories=20)
    assert all(np.array_equal(a, b) for a, b in zip(first, again)) and np.array_equal(hits, hits_again)
    assert not all(len(a) == len(b) and np.array_equal(a, b) for a, b in zip(first, other))
    assert set(metrics) == METRIC_KEYS and 0 <= metrics["goals_reached"] <= 5
    assert all(np.abs(np.diff(t, axis=0)).max() <= 1.0 for t in first if len(t) > 1)  # actions in [-1, 1]


def test_report_prints_plots_and_returns_metrics_and_trajectories(tmp_path, capsys):
    png = tmp_path / "figures" / "multimodality.png"  # its folder is created
    metrics, trajectories = report(steering_policy(6, 0), 6, png, title="steering")
    assert metrics["goals_reached"] == 6 and metrics["success_rate"] == 1.0 and sum(metrics["hit_counts"]) == 100
    assert metrics["uniformity"] > 0.95 and set(metrics) == METRIC_KEYS
    assert len(trajectories) == 100 and all(np.array_equal(t[0], [0.0, 0.0]) for t in trajectories)
    assert png.read_bytes()[:8] == PNG
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 and "[steering]" in lines[0] and "goals reached 6/6" in lines[0]
    assert "(100 trajectories from the origin)" in lines[0]
    again, _ = report(steering_policy(6, 0), 6, tmp_path / "again.png", num_trajectories=30)
    line = capsys.readouterr().out
    assert sum(again["hit_counts"]) == 30 and line.startswith("multimodality (30 trajectories from the origin): ")


def test_report_is_reproducible(tmp_path, capsys):
    torch.manual_seed(1)
    actor = dacer.DiffusionActor(2, 2, 16, 1, 5)
    first, paths = report(actor_policy(actor, 7), 4, tmp_path / "a.png")
    second, paths_again = report(actor_policy(actor, 7), 4, tmp_path / "b.png")
    assert first == second and all(np.array_equal(a, b) for a, b in zip(paths, paths_again))
    assert len(capsys.readouterr().out.splitlines()) == 2


# ---------------------------------------------------------------- --eval-only on multi-goal checkpoints


@pytest.fixture(scope="module")
def multigoal_checkpoint(tmp_path_factory):
    """A tiny DACERv2 run of the script on MultiGoal6-v0 (seed 1), saved: (its folder, its checkpoint)."""
    cwd = tmp_path_factory.mktemp("multigoal")
    return cwd, train(SCRIPT, cwd, "--exp-name", "dacerv2")


def test_eval_only_writes_metrics_trajectories_and_figure(multigoal_checkpoint, tmp_path):
    _, checkpoint = multigoal_checkpoint
    command = [sys.executable, SCRIPT, "--eval-only", "--resume", str(checkpoint), "--seed", "3", "--eval-dir",
               str(tmp_path / "eval"), "--eval-episodes", "1", "--no-cuda"]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    record = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert (tmp_path / "eval" / "multimodality.png").read_bytes()[:8] == PNG
    saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
    expected = {"script": SCRIPT, "script_sha256": saved["script_sha256"], "env_id": "MultiGoal6-v0",
                "global_step": 600, "seed": 3, "num_goals": 6}
    assert {key: record[key] for key in expected} == expected and len(record["returns"]) == 1
    metrics, trajectories = record["multimodality"], record["trajectories"]
    assert set(metrics) == METRIC_KEYS and len(metrics["hit_counts"]) == 6 and len(trajectories) == 100
    assert all(path[0] == [0.0, 0.0] and len(path) <= 101 for path in trajectories)
    assert sum(metrics["hit_counts"]) == round(100 * metrics["success_rate"])
    assert "trajectories from the origin)" in result.stdout and not list(tmp_path.glob("runs"))


def test_eval_only_without_resume_is_the_network_a_run_starts_from(tmp_path):
    """--eval-only without --resume evaluates the untrained network of --seed (the report's reference rows): a run
    without gradient updates saves exactly that network, and both evaluate to the same trajectories."""
    flags = ["--env-id", "MultiGoal4-v0", "--hidden-dim", "16", "--seed", "7", "--no-cuda", "--eval-episodes", "1"]
    command = [sys.executable, SCRIPT, *flags]
    trained = [*command, "--total-timesteps", "40", "--learning-starts", "100", "--batch-size", "32", "--num-envs", "2",
               "--save-model"]
    assert subprocess.run(trained, cwd=tmp_path, capture_output=True, timeout=300).returncode == 0
    (checkpoint,) = tmp_path.glob("runs/*/*.pt")
    evaluations = {out: subprocess.Popen([*command, "--eval-only", *extra, "--eval-dir", out], cwd=tmp_path,
                                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                   for extra, out in [(["--resume", str(checkpoint)], "resumed"), ([], "untrained")]}  # both at once
    outputs = {out: process.communicate(timeout=300) for out, process in evaluations.items()}
    assert all(process.returncode == 0 for process in evaluations.values()), outputs
    records = [json.loads((tmp_path / out / "eval.json").read_text()) for out in ["resumed", "untrained"]]
    assert "the untrained network of --seed 7" in outputs["untrained"][0]
    assert records[0]["trajectories"] == records[1]["trajectories"] and records[0]["global_step"] == 40


# ---------------------------------------------------------------- benchmark/multigoal_report.py


def derived_checkpoint(source, runs, run_name, exp_name, **changes):
    """A copy of checkpoint `source` under RUNS/RUN_NAME/EXP_NAME.pt with exp_name and other args changed (the same
    networks: the args only say how to read them), or, given script=..., the recorded script changed."""
    checkpoint = torch.load(source, map_location="cpu", weights_only=True)
    checkpoint["args"] = {**checkpoint["args"], "exp_name": exp_name, **changes}
    if "script" in changes:
        checkpoint["script"] = changes["script"]
    path = runs / run_name / f"{exp_name}.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({**checkpoint, "run_name": run_name}, path)
    return path


def test_report_on_three_checkpoints_skips_those_of_a_missing_or_changed_script(multigoal_checkpoint, tmp_path):
    _, source = multigoal_checkpoint
    runs = tmp_path / "runs"
    shutil.copytree(source.parent, runs / source.parent.name)  # dacerv2 / 6 goals / seed 1
    # the same networks under other names: one untrained network for all three (4 evaluations, two at a time)
    derived_checkpoint(source, runs, "MultiGoal6-v0__dacer__1__100", "dacer")
    derived_checkpoint(source, runs, "MultiGoal6-v0__eta30__1__100", "eta30")
    missing = derived_checkpoint(source, runs, "MultiGoal6-v0__gone__1__100", "gone", script=str(tmp_path / "gone.py"))
    edited = tmp_path / "edited.py"
    edited.write_text(Path(SCRIPT).read_text() + "# edited after its checkpoint was written\n")
    changed = derived_checkpoint(source, runs, "MultiGoal6-v0__edited__1__100", "edited", script=str(edited))
    (runs / "Hopper-v4__dacerv2__1__100").mkdir()
    (runs / "Hopper-v4__dacerv2__1__100" / "dacerv2.pt").write_text("never opened: not a MultiGoal run")
    out = tmp_path / "out"
    result = run_report(runs, out)
    assert result.returncode == 0, result.stderr
    assert (out / "multigoal.png").read_bytes()[:8] == PNG
    markdown = (out / "multigoal.md").read_text()
    assert result.stdout == markdown
    # by number of goals: each algorithm (blank without a checkpoint), its untrained network, uniform random actions
    untrained = "| untrained network (T = 5, 2 x 32)"  # once per architecture and seed, whichever runs share it
    assert table_rows(markdown) == [
        ["| DACERv2", "4", ""], ["| DACER", "4", ""], ["| eta30", "4", ""], ["| uniform random actions", "4", "-"],
        ["| DACERv2", "5", ""], ["| DACER", "5", ""], ["| eta30", "5", ""], ["| uniform random actions", "5", "-"],
        ["| DACERv2", "6", "1"], ["| DACER", "6", "1"], ["| eta30", "6", "1"], [untrained, "6", "1"],
        ["| uniform random actions", "6", "-"],
    ]
    lines = markdown.splitlines()
    rows = [line for line in lines if line.startswith(("| DACERv2 | 6", "| DACER | 6", "| eta30 | 6", untrained))]
    assert [row.count(" | ") for row in rows] == [10] * 4  # eleven columns
    assert len({row.split(" | ", 3)[3] for row in rows[:3]}) == 1  # the same network and noise: the same numbers
    assert "- DACER / 4 goals: no checkpoint" in markdown and "Hopper" not in markdown
    assert f"- skipped: {str(missing)!r}: the script that wrote it, {tmp_path / 'gone.py'}, is missing" in lines
    [note] = [line for line in lines if line.startswith(f"- skipped: {str(changed)!r}")]
    assert note.startswith(f"- skipped: {str(changed)!r}: the script that wrote it, {edited}, has changed since")
    assert "(sha256 " in note and " then, " in note and " now)" in note
    assert f"evaluated by `{SCRIPT}`" in markdown


def test_report_rows_choose_and_order_the_rows_and_leave_the_others_unevaluated(multigoal_checkpoint, tmp_path):
    _, source = multigoal_checkpoint
    runs = tmp_path / "runs"
    shutil.copytree(source.parent, runs / source.parent.name)  # dacerv2 / 6 goals / seed 1
    derived_checkpoint(source, runs, "MultiGoal6-v0__eta30__1__100", "eta30")
    derived_checkpoint(source, runs, "MultiGoal6-v0__other__1__100", "other", script=str(tmp_path / "gone.py"))
    result = run_report(runs, tmp_path / "out", "--rows", "eta30", "dacerv2", "eta30")
    assert result.returncode == 0, result.stderr
    untrained = "| untrained network (T = 5, 2 x 32)"
    assert table_rows(result.stdout) == [
        ["| eta30", "4", ""], ["| DACERv2", "4", ""], ["| uniform random actions", "4", "-"],
        ["| eta30", "5", ""], ["| DACERv2", "5", ""], ["| uniform random actions", "5", "-"],
        ["| eta30", "6", "1"], ["| DACERv2", "6", "1"], [untrained, "6", "1"], ["| uniform random actions", "6", "-"],
    ]
    assert "| DACER |" not in result.stdout and "- DACER /" not in result.stdout  # no row, no note for dacer
    assert "- eta30 / 4 goals: no checkpoint (blank in the table and the figure)" in result.stdout.splitlines()
    assert "gone.py" in result.stdout  # "other" is noted as skipped (its script is missing), never evaluated
    result = run_report(runs, tmp_path / "out2", "--rows", "dacer")
    assert result.returncode == 2 and result.stdout == "" and not (tmp_path / "out2").exists()
    (line,) = result.stderr.splitlines()
    assert line.startswith("multigoal_report.py: error: no usable MultiGoal checkpoint under ")
    assert "not in --rows: dacerv2 / 6 goals / seed 1; not in --rows: eta30 / 6 goals / seed 1" in line


def test_report_with_nothing_usable_left_says_why_in_one_line(multigoal_checkpoint, tmp_path, capsys):
    _, source = multigoal_checkpoint
    runs = tmp_path / "runs"
    missing = derived_checkpoint(source, runs, "MultiGoal6-v0__gone__1__100", "gone", script=str(tmp_path / "gone.py"))
    edited = tmp_path / "dacerv2_continuous.py"
    edited.write_text(Path(SCRIPT).read_text() + "# edited after its checkpoint was written\n")
    changed = derived_checkpoint(source, runs, "MultiGoal6-v0__edited__1__100", "edited", script=str(edited))
    result = run_report(runs, tmp_path / "out")
    assert result.returncode == 2 and result.stdout == "" and not (tmp_path / "out").exists()
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"multigoal_report.py: error: no usable MultiGoal checkpoint under {str(runs)!r}: ")
    assert f"skipped: {str(missing)!r}: the script that wrote it, {tmp_path / 'gone.py'}, is missing" in line
    assert f"skipped: {str(changed)!r}: the script that wrote it, {edited}, has changed since (sha256 " in line
    (tmp_path / "empty").mkdir()
    report_module = load_report_module()
    for bad, message in [("none", "does not exist"), ("empty", "no checkpoint of a MultiGoal run")]:
        with pytest.raises(SystemExit) as exit_info:
            report_module.main([str(tmp_path / bad), "--out", str(tmp_path / "out")])
        err = capsys.readouterr().err.splitlines()
        assert exit_info.value.code == 2 and len(err) == 1 and err[0].startswith("multigoal_report.py: error: ")
        assert message in err[0]


@pytest.mark.parametrize(
    "content, message",
    [
        ("junk", "is not a checkpoint (not a whole torch.save file: truncated, or another kind)"),
        ("empty", "is empty (0 bytes), not a checkpoint"),
        ("truncated", "is not a checkpoint (not a whole torch.save file"),
        ({"model": 1}, "is not a checkpoint of dacerv2_continuous.py"),
        ("hopper", "was trained on 'Hopper-v4', not a multi-goal env"),
        ("old", "does not record the script that wrote it"),
    ],
)
def test_unusable_checkpoints_are_skipped_with_a_reason(multigoal_checkpoint, tmp_path, content, message):
    _, source = multigoal_checkpoint
    path = tmp_path / "x.pt"
    if content == "junk":
        path.write_text("not a checkpoint")
    elif content == "empty":
        path.write_bytes(b"")
    elif content == "truncated":
        path.write_bytes(Path(source).read_bytes()[:5000])
    elif content == "hopper":
        path = derived_checkpoint(source, tmp_path, "run", "x", env_id="Hopper-v4")
    elif content == "old":  # written before checkpoints recorded their script
        checkpoint = torch.load(source, map_location="cpu", weights_only=True)
        torch.save({k: v for k, v in checkpoint.items() if k not in ("script", "script_sha256")}, path)
    else:
        torch.save(content, path)
    reason = load_report_module().read_checkpoint(path, {})
    assert isinstance(reason, str) and message in reason and "\n" not in reason


def test_report_needs_no_num_trajectories_option(tmp_path, capsys):
    """The script evaluates 100 trajectories: the report has no option it could not pass on."""
    with pytest.raises(SystemExit) as exit_info:
        load_report_module().parse_args([str(tmp_path), "--num-trajectories", "20"])
    assert exit_info.value.code == 2 and "unrecognized arguments: --num-trajectories" in capsys.readouterr().err


def edited_copy(lab, name, old, new, beside=True):
    """The script copied to LAB/NAME.py with `old` (found once) replaced by `new`; with beside, multigoal_env.py
    copied beside it (README "Modifying the script")."""
    source = Path(SCRIPT).read_text()
    assert source.count(old) == 1
    lab.mkdir(exist_ok=True)
    copy = lab / f"{name}.py"
    copy.write_text(source.replace(old, new))
    if beside:
        shutil.copy(REPO / "multigoal_env.py", lab / "multigoal_env.py")
    return copy


def import_copy(copy):
    """An edited copy of the script as a module (its DiffusionActor and multigoal_evaluation)."""
    sys.path.insert(0, str(copy.parent))
    try:
        return importlib.import_module(copy.stem)
    finally:
        sys.path.remove(str(copy.parent))
        sys.modules.pop(copy.stem, None)


def test_report_evaluates_an_edited_copy_with_its_own_actor(tmp_path):
    """A copy with a SiLU actor trains; the report's evaluation of its checkpoint (the copy's --eval-only) gives
    exactly the trajectories of the copy's own actor in-process on the same noise, not those of the Mish actor."""
    copy = edited_copy(tmp_path / "lab", "silu_actor", "diffusion_steps, activation=Mish):",
                       "diffusion_steps, activation=nn.SiLU):")
    checkpoint = train(copy, tmp_path / "lab")
    saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
    assert saved["script"] == str(copy)
    report_module = load_report_module()
    markdown, (evaluation,) = report_module.build_report(tmp_path / "lab" / "runs", tmp_path / "out", seed=5)
    assert ["| silu_actor", "6", "1"] in table_rows(markdown) and f"evaluated by `{copy}`" in markdown
    assert "skipped" not in markdown and (tmp_path / "out" / "multigoal.png").read_bytes()[:8] == PNG
    assert ["| untrained network (T = 5, 2 x 32)", "6", "1"] in table_rows(markdown)

    module = import_copy(copy)
    actor = module.DiffusionActor(2, 2, 32, 2, 5)
    actor.load_state_dict(saved["actor"])
    assert isinstance(actor.time_mlp[1], torch.nn.SiLU)
    trajectories, hits, returns = rollout_trajectories(actor_policy(actor, 5), 6, 100, max_steps=100)
    metrics = multigoal_env.multimodality_metrics(hits, 6, trajectories, returns)
    [row] = [line for line in markdown.splitlines() if line.startswith("| silu_actor | 6 |")]
    assert row == report_module.table_row("silu_actor", 6, "1", [metrics])  # the table holds its metrics
    assert evaluation.script == str(copy) and json.dumps(evaluation.metrics) == json.dumps(metrics)  # nan as NaN
    assert all(np.array_equal(a, b) for a, b in zip(evaluation.trajectories, trajectories, strict=True))
    own_metrics, own_paths = module.multigoal_evaluation(actor, gym.make("MultiGoal6-v0"), tmp_path / "own.png", 5, "")
    assert all(np.array_equal(a, b) for a, b in zip(own_paths, trajectories, strict=True))
    mish = dacer.DiffusionActor(2, 2, 32, 2, 5)  # the original script's actor on the same weights
    mish.load_state_dict(saved["actor"])
    mish_paths, _, _ = evaluate_policy(actor_policy(mish, 5), 6)
    assert not all(len(a) == len(b) and np.array_equal(a, b) for a, b in zip(mish_paths, trajectories))


def test_report_evaluates_a_copy_whose_actor_has_another_architecture(tmp_path, monkeypatch):
    """A copy whose actor gains a LayerNorm (its state dict cannot load into the original's actor) trains, and the
    report evaluates its checkpoint with it; without multigoal_env.py beside it, the repository's is used."""
    old = "self.net = mlp(obs_dim + act_dim + 16, hidden_dim, num_layers, act_dim, activation)"
    new = ("self.net = nn.Sequential(nn.LayerNorm(obs_dim + act_dim + 16), "
           "mlp(obs_dim + act_dim + 16, hidden_dim, num_layers, act_dim, activation))")
    copy = edited_copy(tmp_path / "lab", "layernorm_actor", old, new, beside=False)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    checkpoint = train(copy, tmp_path / "lab", "--seed", "2", env=env)
    assert "net.0.weight" in torch.load(checkpoint, map_location="cpu", weights_only=True)["actor"]
    monkeypatch.delenv("PYTHONPATH", raising=False)  # the report's evaluations find the repository's multigoal_env.py
    markdown, (evaluation,) = load_report_module().build_report(tmp_path / "lab" / "runs", tmp_path / "out")
    assert evaluation.script == str(copy) and len(evaluation.trajectories) == 100
    rows = table_rows(markdown)
    assert ["| layernorm_actor", "6", "2"] in rows and ["| untrained network (T = 5, 2 x 32)", "6", "2"] in rows
    assert "skipped" not in markdown and "no reference row" not in markdown
    [row] = [line for line in markdown.splitlines() if line.startswith("| layernorm_actor | 6 |")]
    assert row.count(" | ") == 10 and " |  |" not in row


# ---------------------------------------------------------------- benchmark/multigoal.sh


def multigoal_sh(*args, cwd, python=sys.executable):
    """Run benchmark/multigoal.sh with bash from cwd; returns the CompletedProcess."""
    env = {**os.environ, "PYTHON": python}
    command = ["bash", str(REPO / "benchmark" / "multigoal.sh"), *args]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_multigoal_sh_dry_run(tmp_path):
    result = multigoal_sh("--dry-run", "--", "--total-timesteps", "5000", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = [shlex.split(line) for line in result.stdout.splitlines()]
    assert len(lines) == 18 and not (tmp_path / "logs").exists()  # 3 envs x 2 algorithms x seeds 1, 2, 3
    budget = ["--total-timesteps", "200000", "--preset", "short", "--save-model", "--total-timesteps", "5000"]
    expected = []
    for env in ["MultiGoal4-v0", "MultiGoal5-v0", "MultiGoal6-v0"]:
        common = [sys.executable, SCRIPT, "--env-id", env, "--seed", "1", "--exp-name"]
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
    stub.write_text('#!/bin/bash\n[[ "$*" == *--dry-run ]] && exit\necho "$*" >> calls.txt\n[[ "$*" != *"--exp-name dacer "* ]]\n')
    stub.chmod(0o755)
    result = multigoal_sh("--envs", "MultiGoal6-v0", "--seeds", "1", "--out", "figs", cwd=tmp_path, python=str(stub))
    assert result.returncode == 1 and "FAILED" in result.stderr
    calls = (tmp_path / "calls.txt").read_text().splitlines()
    assert len(calls) == 3 and calls[-1] == f"{REPO}/benchmark/multigoal_report.py runs --out figs"
