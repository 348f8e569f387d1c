"""Reliability: exact resume, interrupts that keep the run, the divergence guard, and bad input that fails cleanly."""

import contextlib
import hashlib
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import dacerv2_continuous as dacer

SCRIPT = str(Path(__file__).resolve().parents[1] / "dacerv2_continuous.py")
PENDULUM = ["--env-id", "Pendulum-v1", "--num-envs", "2", "--learning-starts", "200", "--batch-size", "32",
            "--hidden-dim", "32", "--eval-frequency", "100", "--eval-episodes", "2", "--log-frequency", "50",
            "--gmm-samples", "20", "--alpha-update-frequency", "150", "--no-cuda"]


def run(args, cwd):
    return subprocess.run([sys.executable, SCRIPT, *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def only_checkpoint(cwd):
    (path,) = Path(cwd).glob("runs/*/*.pt")
    return path


def scalars(cwd, tag):
    (run_dir,) = (Path(cwd) / "runs").iterdir()
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def test_resume_with_buffer_is_bit_identical(tmp_path):
    """1,600 steps in one go == 800 steps, stop, --resume to 1,600 (CPU, buffer saved)."""
    straight, split = tmp_path / "straight", tmp_path / "split"
    straight.mkdir(), split.mkdir()
    common = [*PENDULUM, "--checkpoint-buffer", "--save-model"]
    assert run([*common, "--total-timesteps", "1600"], straight).returncode == 0
    assert run([*common, "--total-timesteps", "800"], split).returncode == 0
    result = run(["--resume", str(only_checkpoint(split)), "--total-timesteps", "1600"], split)
    assert result.returncode == 0, result.stderr
    assert "with its replay buffer" in result.stdout
    a, b = torch.load(only_checkpoint(straight), weights_only=True), torch.load(only_checkpoint(split), weights_only=True)
    assert (a["iteration"], a["global_step"]) == (b["iteration"], b["global_step"]) == (701, 1600)
    for name in ("actor", "critic", "critic_target"):
        for key, value in a[name].items():
            assert torch.equal(value, b[name][key]), (name, key)
    for name in ("q_optimizer", "actor_optimizer"):
        for param, state in a[name]["state"].items():
            assert all(torch.equal(value, b[name]["state"][param][k]) for k, value in state.items()), (name, param)
    assert torch.equal(a["log_alpha"], b["log_alpha"]) and torch.equal(a["omega"], b["omega"])
    assert scalars(straight, "charts/episodic_return") == scalars(split, "charts/episodic_return")
    # the split run has one extra evaluation (the end of its first half); every other one is identical
    assert set(scalars(straight, "eval/episodic_return")) <= set(scalars(split, "eval/episodic_return"))


def test_a_video_in_progress_stays_out_of_the_checkpoint(tmp_path, monkeypatch):
    """--capture-video: random_state keeps RecordVideo's counters but not the frames of the episode it is recording,
    and the resumed env records again only from the next scheduled episode (it does not write over an earlier video)."""
    import io

    import multigoal_env  # noqa: F401  (registers MultiGoal-v0)

    monkeypatch.chdir(tmp_path)
    envs = dacer.gym.vector.SyncVectorEnv([dacer.make_env("MultiGoal-v0", 0, 0, True, "run")])
    obs, _ = envs.reset(seed=0)
    for _ in range(5):
        obs, *_ = envs.step(envs.action_space.sample())
    (env,) = envs.envs
    video = next(layer for layer in dacer.env_layers(env) if isinstance(layer, dacer.gym.wrappers.RecordVideo))
    assert video.recording and len(video.recorded_frames) == 6  # episode 0: the reset's frame and 5 steps
    state, saved = dacer.random_state(envs, obs), io.BytesIO()
    torch.save(state, saved)
    assert len(saved.getvalue()) < 50_000  # 6 frames of 400 x 400 x 3 bytes would be 2.9 MB
    with pytest.warns(UserWarning, match="Overwriting existing videos"):  # gymnasium's, for the run's own folder
        resumed_envs = dacer.gym.vector.SyncVectorEnv([dacer.make_env("MultiGoal-v0", 0, 0, True, "run")])
    resumed_envs.reset(seed=1)  # as the resumed script does before it restores the state: starts "episode 0" anew
    saved.seek(0)
    np.testing.assert_array_equal(dacer.set_random_state(torch.load(saved, weights_only=True), resumed_envs, None), obs)
    (resumed,) = resumed_envs.envs
    resumed_video = next(layer for layer in dacer.env_layers(resumed) if isinstance(layer, type(video)))
    assert not resumed_video.recording and resumed_video.recorded_frames == []
    assert (resumed_video.episode_id, resumed_video.step_id) == (video.episode_id, video.step_id) == (0, 4)
    np.testing.assert_array_equal(resumed.unwrapped._state, env.unwrapped._state)
    envs.close(), resumed_envs.close()
    assert [p.name for p in (tmp_path / "videos" / "run").iterdir()] == ["rl-video-episode-0.mp4"]  # the first run's


def test_a_failed_checkpoint_write_leaves_the_previous_one(tmp_path):
    path = tmp_path / "run.pt"
    dacer.save_checkpoint(path, {"iteration": 1, "weights": torch.ones(3)})
    with pytest.raises(Exception):  # fails mid-write: a lambda cannot be pickled
        dacer.save_checkpoint(path, {"iteration": 2, "weights": torch.zeros(100_000), "bad": lambda: 0})
    assert torch.load(path, weights_only=True)["iteration"] == 1
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind


def test_periodic_checkpoints_hold_everything(tmp_path):
    result = run([*PENDULUM, "--total-timesteps", "600", "--checkpoint-frequency", "100"], tmp_path)
    assert result.returncode == 0, result.stderr
    saved = torch.load(only_checkpoint(tmp_path), weights_only=True)
    assert saved["iteration"] == 200 and "buffer" not in saved  # the last multiple of 100 of 201 iterations
    assert {"random_state", "alpha_optimizer", "omega", "entropy", "critic_target"} <= set(saved)
    result = run(["--resume", str(only_checkpoint(tmp_path)), "--total-timesteps", "800"], tmp_path)
    assert result.returncode == 0 and "the replay buffer is refilled first: 200 env steps of the policy, counted in "\
        "--total-timesteps" in result.stdout
    # no weight depends on T, so a changed --diffusion-steps must be refused explicitly
    result = run(["--resume", str(only_checkpoint(tmp_path)), "--diffusion-steps", "10"], tmp_path)
    assert result.returncode == 2 and "trained with --diffusion-steps 5" in result.stderr


@pytest.mark.parametrize("signum, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_saves_a_checkpoint_and_exits(tmp_path, signum, status):
    cmd = [sys.executable, SCRIPT, *PENDULUM, "--total-timesteps", "10000000", "--log-frequency", "20"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    before = []
    for line in proc.stdout:  # wait until training runs and has logged (evaluation every 100 iterations)
        before.append(line)
        if "eval/episodic_return=" in line:
            break
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=120)
    out = "".join(before) + out
    assert proc.returncode == status, err
    assert "Traceback" not in err
    assert f"--resume {only_checkpoint(tmp_path).relative_to(tmp_path)}" in out
    assert f"stopped by {signal.Signals(signum).name}" in out
    assert "run folder: runs/" in out and "on a CPU, 10,000,000 env steps take days" in out
    saved = torch.load(only_checkpoint(tmp_path), weights_only=True)
    assert saved["global_step"] > 200 and saved["iteration"] >= 100
    assert scalars(tmp_path, "losses/qf1_loss")  # the writer was flushed and closed


def test_ctrl_c_in_a_terminal_stops_with_an_honest_last_bar(tmp_path):
    """Ctrl-C typed into a terminal (a pty, the run in its foreground): the bar's redraw after ^C shows the rate of the
    whole training phase (no burst rate of the last few steps), then the checkpoint and the resume command."""
    import fcntl
    import pty
    import re
    import select
    import struct
    import termios
    import time

    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 150, 0, 0))
    proc = subprocess.Popen([sys.executable, SCRIPT, *PENDULUM, "--total-timesteps", "100000"], cwd=tmp_path,
                            stdin=follower, stdout=follower, stderr=follower, start_new_session=True,
                            preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0))
    os.close(follower)
    screen, typed, deadline = b"", False, time.time() + 240
    while proc.poll() is None and time.time() < deadline:
        if select.select([leader], [], [], 0.2)[0]:
            with contextlib.suppress(OSError):
                screen += os.read(leader, 65536)
        if not typed and screen.count(b"training:") > 20:  # the training bar has been redrawn for a while
            os.write(leader, b"\x03")
            typed = True
    with contextlib.suppress(OSError):
        while select.select([leader], [], [], 0.5)[0] and (chunk := os.read(leader, 65536)):
            screen += chunk
    os.close(leader)
    text = screen.decode(errors="replace")
    assert proc.wait(timeout=60) == 130 and "^C" in text, text[-2000:]
    rates = [float(rate) for rate in re.findall(r"training: .*?, ([0-9.]+) steps/s", text.split("^C")[0])]
    last = re.findall(r"training: .*?, ([0-9.]+) steps/s", text.split("^C")[1])
    assert rates and last and abs(float(last[-1]) - rates[-1]) <= 0.25 * rates[-1], (rates[-5:], last)
    assert "checkpoint saved to runs/" in text and "stopped by SIGINT" in text


def test_resume_if_exists_uses_one_folder_and_continues_from_its_checkpoint(tmp_path):
    """What a requeued Slurm task does: the same command again continues the run; once complete, it does nothing."""
    folder = tmp_path / "runs" / "Pendulum-v1__x__1"
    folder.mkdir(parents=True)
    (folder / "events.out.tfevents.1.old").write_bytes(b"")  # a start that was killed before any checkpoint
    command = [*PENDULUM, "--exp-name", "x", "--resume-if-exists", "--save-model", "--checkpoint-buffer"]
    first = run([*command, "--total-timesteps", "400"], tmp_path)
    assert first.returncode == 0 and "starting it over, without its old events.out.tfevents.1.old" in first.stdout
    assert [p.name for p in (tmp_path / "runs").iterdir()] == ["Pendulum-v1__x__1"]
    second = run([*command, "--total-timesteps", "600"], tmp_path)
    assert second.returncode == 0 and "resuming Pendulum-v1__x__1 at step 400" in second.stdout, second.stdout
    assert torch.load(folder / "x.pt", weights_only=True)["iteration"] == 201
    third = run([*command, "--total-timesteps", "600"], tmp_path)
    assert third.returncode == 0 and "has reached --total-timesteps 600: nothing to do" in third.stdout
    assert len(list(folder.glob("events.out.tfevents.*"))) == 2


def test_the_printed_resume_command_runs_as_printed(tmp_path):
    """The command printed after --save-model runs as printed (N filled in), with this interpreter, not `python`, and
    from any folder: it goes to the run's folder first."""
    result = run([*PENDULUM, "--total-timesteps", "400", "--save-model"], tmp_path)
    assert result.returncode == 0, result.stderr
    (printed,) = [line for line in result.stdout.splitlines() if "continue with: " in line]
    command = printed.partition("continue with: ")[2].replace("--total-timesteps N", "--total-timesteps 600")
    assert command.startswith(f"cd {shlex.quote(str(tmp_path))} && {shlex.quote(sys.executable)} /")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    resumed = subprocess.run(command, shell=True, cwd=elsewhere, capture_output=True, text=True, timeout=300,
                             env={"PATH": "/nonexistent"})
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stdout and torch.load(only_checkpoint(tmp_path))["global_step"] == 600


def test_divergence_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    assert run([*PENDULUM, "--total-timesteps", "400", "--save-model"], tmp_path).returncode == 0
    good = only_checkpoint(tmp_path)
    good_bytes = good.read_bytes()
    # a learning rate of 1e30 makes the critic non-finite within a few updates
    result = run(["--resume", str(good), "--total-timesteps", "4000", "--q-lr", "1e30", "--checkpoint-frequency", "5"],
                 tmp_path)
    assert result.returncode == 3
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert "non-finite" in line and "at iteration" in line and f"last good checkpoint is {good.relative_to(tmp_path)}" in line
    assert good.read_bytes() == good_bytes
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    result = run([*PENDULUM, "--total-timesteps", "4000", "--q-lr", "1e30", "--log-frequency", "5"], fresh)
    assert result.returncode == 3 and "non-finite losses/" in result.stderr and "no checkpoint" in result.stderr


def test_a_diverged_policy_stops_at_the_entropy_estimate_in_one_line(tmp_path):
    """NaN actions reach the GMM fit before the next logged loss: the run stops there as diverged (exit 3), without
    a traceback from the fit's k-means seeding."""
    args = [*PENDULUM, "--total-timesteps", "2000", "--policy-lr", "1e30", "--alpha-update-frequency", "5"]
    result = run(args, tmp_path)
    assert result.returncode == 3 and "Traceback" not in result.stderr
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert line.startswith("error: non-finite GMM entropy estimate at iteration") and "training diverged" in line


def test_resume_refuses_a_checkpoint_with_other_networks_in_one_line(tmp_path):
    """E.g. a checkpoint of an older version, whose twin critics were one module with stacked weights."""
    assert run([*PENDULUM, "--total-timesteps", "400", "--save-model"], tmp_path).returncode == 0
    checkpoint = torch.load(only_checkpoint(tmp_path), weights_only=False)
    for critic in ("critic", "critic_target"):
        checkpoint[critic] = {"weights.0": torch.zeros(2, 32, 4), "biases.0": torch.zeros(2, 1, 32)}
    torch.save(checkpoint, tmp_path / "old.pt")
    result = run(["--resume", "old.pt", "--total-timesteps", "800"], tmp_path)
    errors = [line for line in result.stderr.splitlines() if "Warn" not in line and "warn(" not in line]  # gymnasium's
    assert result.returncode == 2 and "Traceback" not in result.stderr and errors == [
        "error: --resume: the checkpoint's networks do not match these arguments (--hidden-dim, --num-layers, "
        "--num-critics) or this version of the script"
    ]


def test_resume_into_another_buffer_size(tmp_path):
    """A checkpoint's buffer into a smaller --buffer-size is refused in one line; into a larger one, after a buffer
    that had wrapped around, the new transitions go after the saved rows (none of the new rows is sampled unwritten)."""
    assert run([*PENDULUM, "--total-timesteps", "600", "--buffer-size", "500", "--save-model", "--checkpoint-buffer"],
               tmp_path).returncode == 0
    result = run(["--resume", str(only_checkpoint(tmp_path)), "--total-timesteps", "800", "--buffer-size", "300"],
                 tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.splitlines() == ["error: --resume: the checkpoint's replay buffer holds 500 transitions, more "
                                          "than --buffer-size 300: leave the flag out, or give at least that"]
    saved = torch.load(only_checkpoint(tmp_path), weights_only=True)["buffer"]
    assert saved["size"] == 500 and saved["pos"] == 100  # 600 transitions in 500 rows
    larger = dacer.ReplayBuffer(800, 3, 1, torch.device("cpu"))
    larger.load_state_dict(saved)
    larger.add(*(torch.full((50, 3), 7.0), torch.full((50, 3), 7.0), torch.zeros(50, 1), torch.zeros(50),
                 torch.zeros(50)))
    assert larger.size == 550 and torch.equal(larger.data["obs"][:500], saved["obs"])
    assert torch.equal(larger.data["obs"][500:550], torch.full((50, 3), 7.0))


class Payload:
    """A pickled object that would run a command when unpickled."""

    def __reduce__(self):
        return os.system, ("touch payload_ran",)


def test_a_checkpoint_carrying_pickled_code_is_refused_and_nothing_in_it_runs(tmp_path):
    """Checkpoints hold tensors and plain data only (the RNG and env states too): torch.load(weights_only=True) reads
    them whole, and one that carries a pickled object is refused in one line before anything in it runs."""
    assert run([*PENDULUM, "--total-timesteps", "400", "--save-model", "--checkpoint-buffer"], tmp_path).returncode == 0
    checkpoint = torch.load(only_checkpoint(tmp_path), weights_only=True)  # the whole file, no unpickled code
    assert isinstance(checkpoint["random_state"]["envs"][0]["layers"], list)
    for key in ("random_state", "args"):
        torch.save({**checkpoint, key: Payload()}, tmp_path / f"payload_in_{key}.pt")
        result = run(["--resume", f"payload_in_{key}.pt", "--total-timesteps", "800"], tmp_path)
        assert result.returncode == 2 and "Traceback" not in result.stderr
        (line,) = result.stderr.splitlines()
        assert line.startswith(f"error: --resume: 'payload_in_{key}.pt' is not a checkpoint written by this script")
        assert not (tmp_path / "payload_ran").exists()


def test_a_checkpoint_knows_its_script(tmp_path):
    """A checkpoint records the path and sha256 of the script that wrote it; --resume with an edited script (a critic
    switched from GELU to Tanh, the same shapes) says so in one line, and --force-resume goes on with its networks."""
    assert run([*PENDULUM, "--total-timesteps", "400", "--save-model"], tmp_path).returncode == 0
    saved = torch.load(only_checkpoint(tmp_path), weights_only=True)
    assert saved["script"] == SCRIPT and saved["script_sha256"] == hashlib.sha256(Path(SCRIPT).read_bytes()).hexdigest()
    source, gelu = Path(SCRIPT).read_text(), "num_layers, activation=nn.GELU):"
    assert source.count(gelu) == 1
    edited = tmp_path / "dacerv2_continuous.py"
    edited.write_text(source.replace(gelu, "num_layers, activation=nn.Tanh):"))
    resume = [sys.executable, str(edited), "--resume", str(only_checkpoint(tmp_path)), "--total-timesteps", "600"]
    result = subprocess.run(resume, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    (line,) = result.stderr.splitlines()
    assert f"was written by {SCRIPT} (sha256 {saved['script_sha256'][:12]}), not by this script ({edited}" in line
    assert line.startswith("error: --resume:") and line.endswith("run that one, or add --force-resume")
    forced = subprocess.run([*resume, "--force-resume"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert forced.returncode == 0 and "resuming" in forced.stdout, forced.stderr
    assert torch.load(only_checkpoint(tmp_path), weights_only=True)["script"] == str(edited)  # now the edited one's


def test_a_checkpoint_holds_only_the_filled_rows_of_the_buffer(tmp_path):
    """8,000 transitions of Hopper with the default 10^6-row buffer: a checkpoint of a few MB (networks and optimizer
    states ~3 MB, the buffer's rows 0.9 MB), not of the whole preallocated storage (110 MB)."""
    result = run(["--env-id", "Hopper-v4", "--num-envs", "1", "--total-timesteps", "8000", "--learning-starts", "8000",
                  "--save-model", "--checkpoint-buffer", "--eval-episodes", "1"], tmp_path)
    assert result.returncode == 0, result.stderr
    saved = torch.load(only_checkpoint(tmp_path), weights_only=True)
    assert saved["buffer"]["obs"].shape == (8000, 11) and saved["buffer"]["obs"].untyped_storage().nbytes() == 8000 * 44
    assert only_checkpoint(tmp_path).stat().st_size < 5e6


BAD_INPUTS = {
    "zero envs": (["--num-envs", "0"], "--num-envs must be a finite positive number"),
    "zero batch": (["--batch-size", "0"], "--batch-size must be a finite positive number"),
    "zero diffusion steps": (["--diffusion-steps", "0"], "--diffusion-steps must be a finite positive number"),
    "negative budget": (["--total-timesteps", "-5"], "--total-timesteps must be a finite positive number"),
    "zero eval episodes": (["--eval-episodes", "0"], "--eval-episodes must be a finite positive number"),
    "gamma above 1": (["--gamma", "1.5"], "--gamma must be at most 1"),
    "zero tau": (["--tau", "0"], "--tau must be a finite positive number"),
    "negative lr": (["--policy-lr", "-1"], "--policy-lr must be a finite positive number"),
    "nan lr": (["--q-lr", "nan"], "--q-lr must be a finite positive number"),
    "zero alpha": (["--init-alpha", "0"], "--init-alpha must be a finite positive number"),
    "negative noise": (["--noise-scale", "-0.1"], "--noise-scale must be a finite non-negative number"),
    "negative eta": (["--q-grad-coef", "-1"], "--q-grad-coef must be a finite non-negative number"),
    "negative checkpoint interval": (["--checkpoint-frequency", "-1"], "--checkpoint-frequency must be a finite non-negative number"),
    "warm-up above buffer": (["--learning-starts", "2000", "--buffer-size", "1000"], "must not exceed --buffer-size"),
    "not an int": (["--seed", "abc"], "Error parsing --seed"),
    "negative seed": (["--seed", "-1"], "--seed must be in [0, 2^32), got -1"),
    "checkpoint of an older version": (["--resume", "older.pt"], "'older.pt' was written by an older version of this"),
    "unknown flag": (["--bogus-flag", "1"], "Unrecognized options: --bogus-flag"),
    "missing value": (["--total-timesteps"], "Missing value for argument '--total-timesteps'"),
    "unknown env": (["--env-id", "Hoper-v4"], "did you mean Hopper-v4"),
    "the project's version first": (["--env-id", "Hopper"], "did you mean Hopper-v4, "),
    "discrete actions": (["--env-id", "CartPole-v1"], "CartPole-v1 has discrete actions; DACERv2 needs continuous "
                         "actions and flat observations (1-D Boxes)"),
    "warm-up below batch": (["--learning-starts", "10"], "--learning-starts (10) must be at least --batch-size (256)"),
    "buffer below batch": (["--buffer-size", "100", "--learning-starts", "50"], "must be at least --batch-size (256)"),
    "infinite lr": (["--q-lr", "inf"], "--q-lr must be a finite positive number, got inf"),
    "preset none is a choice": (["--preset", "None"], "Expected one of ('none', 'short')"),
    "missing checkpoint": (["--resume", "missing.pt"], "'missing.pt' does not exist"),
    "corrupt checkpoint": (["--resume", "garbage.pt"], "'garbage.pt' is not a checkpoint written by this script"),
    "text checkpoint": (["--resume", "notes.txt"], "'notes.txt' is not a checkpoint written by this script (not a "
                        "whole torch.save file)"),
    "empty checkpoint": (["--resume", "empty.pt"], "'empty.pt' is empty, not a checkpoint"),
    "folder as checkpoint": (["--resume", "runs_folder"], "'runs_folder' is a folder; give the checkpoint file in it"),
    "foreign checkpoint": (["--resume", "foreign.pt"], "is not a checkpoint of this script"),
    "checkpoint of another env": (["--resume", "pendulum.pt", "--env-id", "Hopper-v4"], "the checkpoint was trained "
                                  "with --env-id Pendulum-v1; a run keeps it: leave the flag out, or start a new run"),
    "legacy id that never existed": (["--env-id", "InvertedDoublePendulum-v3"],
                                     "unknown env id 'InvertedDoublePendulum-v3'; did you mean"),
    "runs is a file": (["--env-id", "Pendulum-v1"], "is not a writable folder"),
}


@pytest.fixture(scope="module")
def bad_input_results(tmp_path_factory):
    """All bad invocations at once (each in its own folder), so the table costs about one start-up per core."""
    procs = {}
    for name, (args, _) in BAD_INPUTS.items():
        cwd = tmp_path_factory.mktemp("bad")
        (cwd / "garbage.pt").write_bytes(b"\x00not a torch file")
        torch.save({"weights": torch.zeros(3)}, cwd / "foreign.pt")
        (cwd / "notes.txt").write_text("hello\n")
        (cwd / "empty.pt").write_bytes(b"")
        (cwd / "runs_folder").mkdir()
        pendulum = dict.fromkeys(["args", "run_name", "iteration", "global_step", "random_state", "script",
                                  "script_sha256"])
        pendulum["args"] = {"env_id": "Pendulum-v1", "diffusion_steps": 5}
        torch.save(pendulum, cwd / "pendulum.pt")
        older = {key: pendulum[key] for key in ("args", "run_name", "iteration", "global_step")}
        torch.save({**older, "random_state": b"pickled state"}, cwd / "older.pt")  # as fe5a4ab and earlier wrote
        if name == "runs is a file":
            (cwd / "runs").write_text("")
        procs[name] = (cwd, subprocess.Popen([sys.executable, SCRIPT, *args], cwd=cwd, stdout=subprocess.PIPE,
                                             stderr=subprocess.PIPE, text=True))
    results = {}
    for name, (cwd, proc) in procs.items():
        out, err = proc.communicate(timeout=300)
        results[name] = (cwd, proc.returncode, out, err)
    return results


@pytest.mark.parametrize("name", list(BAD_INPUTS))
def test_bad_input_exits_2_with_one_line_and_no_run_folder(bad_input_results, name):
    cwd, status, out, err = bad_input_results[name]
    assert status == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and BAD_INPUTS[name][1] in lines[0], err
    assert "Traceback" not in err
    assert not (cwd / "runs").is_dir()
