"""End-to-end runs of dacerv2_continuous.py in a subprocess: the user's command, logging, checkpoints, bad input."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

SCRIPT = str(Path(__file__).resolve().parents[1] / "dacerv2_continuous.py")
TINY = ["--total-timesteps", "600", "--learning-starts", "200", "--batch-size", "32", "--hidden-dim", "32",
        "--eval-frequency", "5", "--eval-episodes", "2", "--log-frequency", "5", "--gmm-samples", "20"]
TAGS = ["charts/episodic_return", "charts/episodic_length", "charts/SPS", "eval/episodic_return", "losses/qf1_loss",
        "losses/qf2_loss", "losses/qf1_values", "losses/actor_loss", "losses/q_grad_loss", "losses/alpha",
        "losses/alpha_loss", "charts/entropy", "charts/update_ms"]


def run(args, cwd, env=None, timeout=300):
    return subprocess.run([sys.executable, SCRIPT, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env=env)


def read_events(run_dir):
    acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


@pytest.fixture(scope="module")
def hopper_run(tmp_path_factory):
    """The README's command (`--env-id Hopper-v3`, CUDA asked for) on a tiny budget, saving a checkpoint."""
    cwd = tmp_path_factory.mktemp("hopper")
    result = run(["--env-id", "Hopper-v3", "--cuda", "--save-model", *TINY], cwd)
    assert result.returncode == 0, result.stderr
    (run_dir,) = (cwd / "runs").iterdir()
    return cwd, run_dir, result


def test_hopper_v3_runs_as_v4_and_says_so(hopper_run):
    _, run_dir, result = hopper_run
    assert run_dir.name.startswith("Hopper-v4__dacerv2_continuous__1__")
    assert "Hopper-v3 needs mujoco-py" in result.stdout and "using Hopper-v4" in result.stdout
    if not torch.cuda.is_available():
        assert result.stdout.count("no CUDA device is available") == 1
    assert "Traceback" not in result.stderr
    text = read_events(run_dir).Tensors("hyperparameters/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "|env_id|Hopper-v4|" in text and "|env_id_requested|Hopper-v3|" in text


def test_event_file_holds_every_tag(hopper_run):
    _, run_dir, result = hopper_run
    scalars = read_events(run_dir).Tags()["scalars"]
    assert sorted(set(TAGS) - set(scalars)) == []


def test_console_shows_a_progress_bar_and_no_episode_lines_or_gymnasium_warnings(hopper_run):
    _, _, result = hopper_run
    assert "warm-up:" in result.stderr and "training:" in result.stderr and "steps/s" in result.stderr  # tqdm's bar
    assert "last eval" in result.stderr and "warm-up done at step 200: training" in result.stdout
    assert "nan" not in result.stderr  # "-" until the first evaluation and the first finished episode
    assert ", episodic_return=" not in result.stdout  # per-episode lines only with --print-episodes
    assert "out of date" not in result.stderr and "Warning" not in result.stderr


def test_console_names_the_run_folder_first_and_draws_each_phase_once_into_a_log_file(hopper_run):
    """Not a terminal (a log file, Slurm): no redraws around the printed lines, each phase's bar once at its end."""
    cwd, run_dir, result = hopper_run
    assert f"run folder: runs/{run_dir.name} (follow it with: tensorboard --logdir runs)" in result.stdout
    assert result.stdout.index("run folder:") < result.stdout.index("warm-up done")
    bars = result.stderr.replace("\r", "\n").splitlines()
    assert not [line for line in bars if line and not line.strip()]  # no blanked-out bar before a printed line
    assert sum(line.startswith("warm-up: 100%") for line in bars) == 1 and "200/200" in result.stderr
    assert sum(line.startswith("training: 100%") for line in bars) == 1
    assert "on a CPU" not in result.stdout  # only for budgets of days


def test_losses_are_logged_early_in_a_run_and_then_every_log_frequency(tmp_path):
    result = run(["--env-id", "Pendulum-v1", "--no-cuda", "--num-envs", "2", "--total-timesteps", "600",
                  "--learning-starts", "200", "--batch-size", "32", "--hidden-dim", "32", "--gmm-samples", "20",
                  "--eval-episodes", "2", "--log-frequency", "150"], tmp_path)
    assert result.returncode == 0, result.stderr
    (run_dir,) = (tmp_path / "runs").iterdir()
    iterations = [(e.step - 198) // 2 + 1 for e in read_events(run_dir).Scalars("losses/qf1_loss")]
    assert iterations == [10, 100, 150], iterations  # at global_step 198 + 2 (iteration - 1)


def test_dry_run_checks_and_exits_without_a_run_folder(tmp_path):
    result = run(["--env-id", "Hopper-v3", "--dry-run", "--resume-if-exists", "--seed", "4"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert "dry run: the arguments and Hopper-v4 check out; Hopper-v4__dacerv2_continuous__4 would start" in result.stdout
    assert list(tmp_path.iterdir()) == []
    bad = run(["--env-id", "Hopper-v9", "--dry-run"], tmp_path)
    assert bad.returncode == 2 and bad.stderr.startswith("error: unknown env id 'Hopper-v9'")


def test_print_episodes_brings_the_episode_lines_back(tmp_path):
    result = run(["--env-id", "Pendulum-v1", "--no-cuda", "--num-envs", "2", *TINY, "--print-episodes"], tmp_path)
    assert result.returncode == 0, result.stderr
    (run_dir,) = (tmp_path / "runs").iterdir()
    episodes = read_events(run_dir).Scalars("charts/episodic_return")
    assert result.stdout.count(", episodic_return=") == len(episodes) == 2  # 2 envs x 300 steps, 200-step episodes


@pytest.mark.filterwarnings("ignore:.*is out of date:DeprecationWarning")  # Hopper-v4 made in-process below
def test_a_copy_alone_in_an_empty_folder_trains_resumes_and_evaluates_its_own_networks(tmp_path):
    """README "Modifying the script": the file copied alone (here with a SiLU actor) trains a MuJoCo task, saves under
    its own name, resumes, and --eval-only evaluates the SiLU network: the returns of the copy's own evaluate on the
    checkpoint's weights, not those of the original script's Mish actor."""
    lab = tmp_path / "lab"
    lab.mkdir()
    source, mish = Path(SCRIPT).read_text(), "diffusion_steps, activation=Mish):"
    assert source.count(mish) == 1
    (lab / "my_idea.py").write_text(source.replace(mish, "diffusion_steps, activation=nn.SiLU):"))
    assert [p.name for p in lab.iterdir()] == ["my_idea.py"]
    tiny = [*TINY, "--total-timesteps", "400", "--eval-episodes", "1", "--no-cuda"]
    copy = [sys.executable, str(lab / "my_idea.py")]
    result = subprocess.run([*copy, "--env-id", "Hopper-v4", *tiny, "--save-model"], cwd=lab, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    (checkpoint,) = lab.glob("runs/Hopper-v4__my_idea__1__*/my_idea.pt")
    resume = ["--resume", str(checkpoint.relative_to(lab)), "--total-timesteps", "600"]
    resumed = subprocess.run([*copy, *resume], cwd=lab, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0 and "resuming Hopper-v4__my_idea__1__" in resumed.stdout, resumed.stderr
    evaluated = subprocess.run([*copy, "--resume", str(checkpoint), "--eval-only", "--eval-episodes", "2"], cwd=lab,
                               capture_output=True, text=True, timeout=300)
    assert evaluated.returncode == 0, evaluated.stderr
    record = json.loads((checkpoint.with_name("my_idea_eval") / "eval.json").read_text())
    assert record["global_step"] == 600 and record["script"] == str(lab / "my_idea.py") and len(record["returns"]) == 2
    bias_keys = ["q_first", "return_first", "steps", "q_mean", "return_mean"]  # the critics' bias, per episode
    assert {k: len(v) for k, v in record["value_bias"].items()} == dict.fromkeys(bias_keys, 2)
    assert "value estimation bias" in evaluated.stdout

    sys.path.insert(0, str(lab))
    try:
        import my_idea
    finally:
        sys.path.remove(str(lab))
    import dacerv2_continuous as original

    saved = torch.load(checkpoint, weights_only=True)
    returns = {}
    for script in (my_idea, original):
        actor = script.DiffusionActor(11, 3, 32, 2, 5)
        actor.load_state_dict(saved["actor"])  # the same weights: SiLU and Mish have none
        envs = script.gym.vector.SyncVectorEnv([script.make_env("Hopper-v4", 1 + 10_000 + i, i, False, "x")
                                                for i in range(2)], autoreset_mode="SameStep")
        returns[script.__name__] = script.evaluate(actor, envs, torch.device("cpu"), record["seed"]).tolist()
    assert returns["my_idea"] == record["returns"] != returns["dacerv2_continuous"]


def test_a_run_within_the_warm_up_says_so_and_multigoal_says_untrained(tmp_path):
    result = run(["--env-id", "MultiGoal6-v0", "--no-cuda", *TINY, "--learning-starts", "601"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert "ends within its warm-up (--learning-starts 601)" in result.stdout and "no gradient update" in result.stdout
    assert "the policy is untrained (no gradient update ran)" in result.stdout
    assert "multimodality [dacerv2_continuous seed 1, step 600, untrained]" in result.stdout
    (tmp_path / "limit").mkdir()
    at_the_limit = run(["--env-id", "Pendulum-v1", "--no-cuda", *TINY, "--learning-starts", "600"], tmp_path / "limit")
    assert "warm-up" not in at_the_limit.stdout.replace("warm-up done", "")  # its last step still trains once


def test_save_model_then_resume_continues_the_run(hopper_run):
    cwd, run_dir, _ = hopper_run
    checkpoint = run_dir / "dacerv2_continuous.pt"
    saved = torch.load(checkpoint, weights_only=True)
    assert saved["global_step"] == 600 and saved["iteration"] == 21 and saved["args"]["env_id"] == "Hopper-v3"
    assert not list(run_dir.glob("*.tmp"))
    result = run(["--resume", str(checkpoint), "--total-timesteps", "1000", "--no-cuda"], cwd)
    assert result.returncode == 0, result.stderr
    assert "resuming" in result.stdout and "refilled" in result.stdout
    assert [p.name for p in (cwd / "runs").iterdir()] == [run_dir.name]  # same run folder, no new one
    resumed = torch.load(checkpoint, weights_only=True)
    assert resumed["global_step"] == 1000 and resumed["iteration"] == 32  # 9 refill vector steps, then 11 iterations
    assert resumed["args"]["hidden_dim"] == 32  # the checkpoint's arguments carried over
    again = run(["--resume", str(checkpoint), "--no-cuda"], cwd)  # its own --total-timesteps 1000: reached
    assert again.returncode == 2 and "give a larger --total-timesteps (or --eval-only)" in again.stderr
    eval_steps = [e.step for e in read_events(run_dir).Scalars("eval/episodic_return")]
    assert max(eval_steps) > 600


def test_dacer_baseline_flags_skip_the_q_gradient_loss(tmp_path):
    result = run(["--env-id", "Hopper-v4", "--diffusion-steps", "20", "--q-grad-coef", "0", "--no-cuda", *TINY], tmp_path)
    assert result.returncode == 0, result.stderr
    (run_dir,) = (tmp_path / "runs").iterdir()
    scalars = read_events(run_dir).Tags()["scalars"]
    assert "losses/actor_loss" in scalars and "losses/q_grad_loss" not in scalars


def test_help_lists_flags_and_units():
    result = subprocess.run([sys.executable, SCRIPT, "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0
    for flag in ["--env-id", "--cuda", "--no-cuda", "--diffusion-steps", "--q-grad-coef", "--no-time-weight",
                 "--no-q-grad-norm", "--resume", "--noise-scale", "--num-layers", "--torch-threads"]:
        assert flag in result.stdout
    assert "in iterations" in result.stdout and "environment steps" in result.stdout


def test_multigoal_run_reports_multimodality(tmp_path):
    """A short run on the 6-goal task ends with the Fig. 2 evaluation: its figure and its eval/ metrics."""
    result = run(["--env-id", "MultiGoal6-v0", "--no-cuda", *TINY, "--save-model"], tmp_path)
    assert result.returncode == 0, result.stderr
    assert "trajectories from the origin)" in result.stdout and "untrained" not in result.stdout
    assert "path efficiency" in result.stdout and "mean return" in result.stdout
    report = subprocess.run([sys.executable, str(Path(SCRIPT).parent / "benchmark" / "multigoal_report.py"), "runs",
                             "--out", "report"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert report.returncode == 0, report.stderr
    table = (tmp_path / "report" / "multigoal.md").read_text()  # the run beside its references
    assert "| dacerv2_continuous | 6 | 1 |" in table and "| untrained network (T = 5, 2 x 32) | 6 | 1 |" in table
    assert "| uniform random actions | 6 | - |" in table and (tmp_path / "report" / "multigoal.png").is_file()
    assert "q_grad_coef (eta) = 100.0 for MultiGoal" in result.stdout  # our choice for Fig. 2 (README)
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert (run_dir / "multimodality.png").stat().st_size > 0
    scalars = read_events(run_dir).Tags()["scalars"]
    for tag in ["eval/goals_reached", "eval/success_rate", "eval/coverage_uniformity"]:
        assert tag in scalars


def test_compile_runs_end_to_end(tmp_path):
    """--compile through the whole loop: acting, targets, the L_q chain with gradient, L_g, GMM chunks, evaluation."""
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor")}
    args = [*TINY, "--env-id", "Pendulum-v1", "--num-envs", "2", "--compile", "--no-cuda",
            "--alpha-update-frequency", "50"]
    result = run(args, tmp_path, env=env, timeout=600)
    assert result.returncode == 0, result.stderr
    assert "--compile: torch.compile does not work here" not in result.stdout
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert "losses/q_grad_loss" in read_events(run_dir).Tags()["scalars"]


def test_capture_video_records_the_episodes_of_env_0(tmp_path):
    """--capture-video: gymnasium's RecordVideo (moviepy) on env 0, in videos/RUN_NAME; MultiGoal draws with matplotlib,
    so this needs no display. Episodes 0 and 1 are recorded (gymnasium's cubic schedule), each frame by frame."""
    import imageio

    args = ["--env-id", "MultiGoal-v0", "--capture-video", "--num-envs", "1", "--total-timesteps", "250",
            "--learning-starts", "100", "--batch-size", "32", "--hidden-dim", "32", "--eval-frequency", "1000000"]
    result = run(args, tmp_path)
    assert result.returncode == 0, result.stderr
    (run_dir,) = (tmp_path / "runs").iterdir()
    videos = tmp_path / "videos" / run_dir.name
    assert {"rl-video-episode-0.mp4", "rl-video-episode-1.mp4"} <= {p.name for p in videos.iterdir()}
    frames = [frame for frame in imageio.get_reader(videos / "rl-video-episode-0.mp4")]  # list() would ask its len: inf
    assert len(frames) > 1 and frames[0].shape == (400, 400, 3) and frames[0].std() > 0


def test_capture_video_without_a_display_fails_at_start_in_one_line(tmp_path):
    """MuJoCo's default renderer (GLFW) with no display: one line that names the headless settings, before any run."""
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")} | {"MUJOCO_GL": "glfw"}
    result = run(["--env-id", "Hopper-v4", "--capture-video", *TINY], tmp_path, env=env)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error")]
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert len(errors) == 1 and errors[0].startswith("error: --capture-video: Hopper-v4 cannot render here (")
    assert "MUJOCO_GL=egl" in errors[0] and "MUJOCO_GL=osmesa" in errors[0]
    assert not (tmp_path / "runs").exists() and not (tmp_path / "videos").exists()


def test_capture_video_without_moviepy_fails_in_one_line(tmp_path):
    code = (f"import runpy, sys; sys.modules['moviepy'] = None; sys.argv = [{SCRIPT!r}, '--capture-video']; "
            f"sys.path.insert(0, {str(Path(SCRIPT).parent)!r}); "
            f"runpy.run_path({SCRIPT!r}, run_name='__main__')")
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error")]
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert errors == ["error: --capture-video needs moviepy: pip install moviepy"]


def test_a_flag_added_to_an_edited_copy_gets_its_check_beside_args(tmp_path):
    """README "Modifying the script": a new flag is one field in Args and one line in check_args, right below it."""
    source = Path(SCRIPT).read_text()
    field = '    preset: Literal["none", "short"] = "none"\n'
    check = '    if args.learning_starts > args.buffer_size:\n'
    assert source.count(field) == 1 and source.count(check) == 1
    source = source.replace(field, '    my_coef: float = 0.5\n    """the weight of my idea"""\n' + field)
    source = source.replace(check, '    if not 0 <= args.my_coef <= 1:\n        fail(f"--my-coef must be in [0, 1], '
                            'got {args.my_coef}")\n' + check)
    (tmp_path / "my_idea.py").write_text(source)
    result = subprocess.run([sys.executable, "my_idea.py", "--my-coef", "2", "--num-envs", "1"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and result.stderr == "error: --my-coef must be in [0, 1], got 2.0\n"
    result = subprocess.run([sys.executable, "my_idea.py", "--my-coef", "0.3", "--num-envs", "0"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "--num-envs must be a finite positive number" in result.stderr


def test_preset_short_is_only_a_set_of_existing_flags(monkeypatch, tmp_path):
    import dataclasses

    import dacerv2_continuous as dacer

    monkeypatch.chdir(tmp_path)
    flags = dacer.PRESETS["short"]
    assert flags and set(flags) < set(dacer.Args.__dataclass_fields__)
    by_hand = [f"--{name.replace('_', '-')}={value}" for name, value in flags.items()]
    parse = lambda argv: dacer.parse_args(argv)[0]  # noqa: E731
    preset = parse(["--preset", "short"])
    assert dataclasses.replace(preset, preset="none") == parse(by_hand) != dacer.Args()
    name, value = next(iter(flags.items()))  # a flag given on the command line overrides the preset's
    given = parse(["--preset", "short", f"--{name.replace('_', '-')}={value * 2}"])
    assert getattr(given, name) == value * 2
