"""benchmark/efficiency.py (paper Table 1) end to end on tiny settings: JSON schema, printed table, bad input, a
--baseline of an older revision; its AOTInductor sampler (--compile's inference row); benchmark/stage_timing.py."""

import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
EFFICIENCY = str(REPO / "benchmark" / "efficiency.py")
ALGORITHMS = ("DACERv2", "DACERv2-1step", "DACER")
OLD_REVISION = "fe5a4ab"  # the last revision with its plumbing in dacerv2_utils.py beside the script
# torch's own code calls its deprecated torch.jit.script_method while compiling; outside pytest Python hides it
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")


def run(args, cwd):
    return subprocess.run([sys.executable, EFFICIENCY, *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def git_show(revision, path):
    """A file of an earlier revision of this repository (skips the test in a checkout without that history)."""
    result = subprocess.run(["git", "show", f"{revision}:{path}"], cwd=REPO, capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"no git history with {revision} here ({result.stderr.strip()})")
    return result.stdout


def table_rows(stdout):
    """The printed table's rows by algorithm name, split into cells."""
    cells = [line.split() for line in stdout.splitlines()]
    return {row[0]: row for row in cells if row and row[0] in ALGORITHMS}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """One tiny benchmark on Pendulum-v1 with 32-wide networks: its result, JSON and markdown."""
    cwd = tmp_path_factory.mktemp("efficiency")
    args = ["--env-id", "Pendulum-v1", "--iterations", "20", "--hidden-dim", "32", "--rounds", "2"]
    result = run([*args, "--json", "efficiency.json", "--markdown", "efficiency.md"], cwd)
    assert result.returncode == 0, result.stderr
    return result, json.loads((cwd / "efficiency.json").read_text()), (cwd / "efficiency.md").read_text()


def test_json_has_the_schema_and_positive_finite_times(tiny):
    _, summary, _ = tiny
    assert isinstance(summary["device"], str) and summary["device"]
    assert summary["env_id"] == "Pendulum-v1" and summary["iterations"] == 20 and summary["compile"] is False
    assert summary["rounds"] == 2
    for name in ("dacerv2", "dacerv2-1step", "dacer"):
        for key in ("train_ms", "infer_ms", "entropy_s"):
            value = summary[name][key]
            assert isinstance(value, float) and math.isfinite(value) and value > 0, (name, key, value)
        assert summary[name]["train_points"] == 20  # 2 rounds of 20 iterations, one point per 2 after the warm-up
        assert len(summary[name]["train_ms_per_round"]) == 2
    assert summary["dacerv2"]["diffusion_steps"] == 5 and summary["dacer"]["diffusion_steps"] == 20


def test_printed_table_and_markdown_have_every_row(tiny):
    result, summary, markdown = tiny
    rows = table_rows(result.stdout)
    assert set(rows) == set(ALGORITHMS)
    assert rows["DACERv2"][2] == "1.00x" and rows["DACERv2"][4] == "1.00x"  # normalised to DACERv2
    assert float(rows["DACER"][1]) == pytest.approx(summary["dacer"]["infer_ms"], abs=0.01)
    assert "0.63" in rows["DACERv2"] and "12.0" in rows["DACER"]  # the paper's numbers beside ours
    assert rows["DACERv2-1step"][-4:] == ["-"] * 4  # the paper has no one-step L_g
    assert "GMM entropy estimate is excluded from the training time" in result.stdout
    for name in ALGORITHMS:
        assert f"| {name} |" in markdown
    assert torch.__version__ in markdown


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_cuda_without_cuda_exits_2_with_one_line(tmp_path):
    result = run(["--device", "cuda"], tmp_path)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "CUDA" in result.stderr, result.stderr


@pytest.mark.parametrize(
    "args, message",
    [(["--iterations", "3"], "--iterations"), (["--env-id", "NoSuchEnv-v0"], "unknown env id"),
     (["--threads", "0"], "--threads"), (["--rounds", "0"], "--rounds"), (["--baseline", "nope.py"], "--baseline"),
     (["--bogus"], "unrecognized")],
)
def test_bad_input_exits_2_with_one_line(tmp_path, args, message):
    result = run(args, tmp_path)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and message in result.stderr, result.stderr
    assert not any(tmp_path.iterdir())  # nothing ran


def test_failed_training_run_exits_1_with_its_last_stderr_lines(tmp_path):
    fake_python = tmp_path / "fake_python"
    fake_python.write_text("#!/bin/sh\necho 'some output' >&2\necho 'boom: the last line' >&2\nexit 3\n")
    fake_python.chmod(0o755)
    result = run(["--env-id", "Pendulum-v1", "--python", str(fake_python)], tmp_path)
    assert result.returncode == 1
    assert "DACERv2 training run failed (exit status 3)" in result.stderr
    assert result.stderr.strip().endswith("boom: the last line") and "Traceback" not in result.stderr


def test_baseline_rows_are_measured_in_the_same_turns(tmp_path):
    """--baseline adds every algorithm's row for another version of the script (here: that of an older revision, whose
    plumbing was dacerv2_utils.py), which runs with the dacerv2_utils.py beside it (here, one that counts its imports),
    in-process and in its training runs."""
    baseline = tmp_path / "old_script.py"
    baseline.write_text(git_show(OLD_REVISION, "dacerv2_continuous.py"))
    counter = "\nopen(__file__ + '.imports', 'a').write('imported\\n')\n"
    (tmp_path / "dacerv2_utils.py").write_text(git_show(OLD_REVISION, "dacerv2_utils.py") + counter)
    args = ["--env-id", "Pendulum-v1", "--iterations", "2", "--hidden-dim", "16", "--rounds", "1"]
    result = run([*args, "--baseline", str(baseline), "--json", "out.json"], tmp_path)
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "out.json").read_text())
    assert summary["baseline"] == str(baseline)
    for name in ALGORITHMS:
        assert summary[f"{name.lower()} (baseline)"]["name"] == f"{name} (baseline)"
        assert f"{name} (baseline)" in result.stdout and summary[name.lower()]["train_points"] == 1
        assert summary[f"{name.lower()} (baseline)"]["entropy_s"] > 0
    assert "round 1/1, DACER (baseline)" in result.stderr
    imports = (tmp_path / "dacerv2_utils.py.imports").read_text().splitlines()
    assert len(imports) == 1 + len(ALGORITHMS)  # the baseline module, and its training runs; never this version's rows


def test_old_baseline_without_its_utils_exits_2_with_one_line(tmp_path):
    """An older revision's script without its dacerv2_utils.py beside it: one line that says what to copy, before any
    measurement."""
    baseline = tmp_path / "old_script.py"
    baseline.write_text(git_show(OLD_REVISION, "dacerv2_continuous.py"))
    result = run(["--env-id", "Pendulum-v1", "--baseline", str(baseline)], tmp_path)
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "--baseline: cannot import" in result.stderr
    assert "git show REV:dacerv2_utils.py" in result.stderr, result.stderr
    assert [path.name for path in tmp_path.iterdir()] == ["old_script.py"]  # nothing ran


def test_exported_sampler_matches_the_eager_sampler_and_follows_weight_updates(tmp_path, monkeypatch):
    """--compile's inference row: export_sampler's AOTInductor package gives the eager sampler's actions at any batch
    size for the same noise, follows in-place changes of the parameters and buffers (optimizer steps), and exports the
    class's sampler even where an old revision's --compile wiring replaced the instance's."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    spec = importlib.util.spec_from_file_location("efficiency", EFFICIENCY)
    efficiency = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(efficiency)
    torch.manual_seed(0)
    actor = efficiency.dacer.DiffusionActor(4, 3, 16, 2, 5)
    actor.sample = None  # what the package runs is DiffusionActor.sample
    sample = efficiency.export_sampler(actor)
    del actor.sample
    with torch.no_grad():
        for batch in (1, 3, 300):
            obs = torch.randn(batch, 4)
            noise = actor.draw_noise(obs)
            torch.testing.assert_close(sample(obs, noise), actor.sample(obs, noise), atol=1e-5, rtol=1e-5)
        before = sample(obs, noise)
        for tensor in [*actor.parameters(), *actor.buffers()]:
            tensor.mul_(0.5)
        torch.testing.assert_close(sample(obs, noise), actor.sample(obs, noise), atol=1e-5, rtol=1e-5)
        assert not torch.allclose(sample(obs, noise), before)


def test_stage_timing_prints_every_stage_and_rejects_bad_input(tmp_path):
    stage_timing = str(Path(EFFICIENCY).parent / "stage_timing.py")
    result = subprocess.run([sys.executable, stage_timing, "--iterations", "4"], cwd=tmp_path, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    shares = [float(line.split()[-2]) for line in result.stdout.splitlines() if line.endswith("%")]
    assert len(shares) == 7 and sum(shares) == pytest.approx(100, abs=0.5)  # rounded to 0.1 each
    assert "L_g forward (1280 rows)" in result.stdout and "sum of the stages" in result.stdout
    bad = subprocess.run([sys.executable, stage_timing, "--diffusion-steps", "0"], cwd=tmp_path, capture_output=True,
                         text=True, timeout=300)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1


def test_gmm_precision_compares_float32_with_float64_on_a_checkpoints_policies(tmp_path):
    """benchmark/gmm_precision.py on a tiny run's checkpoint (with its buffer): a line per actor and batch, the two
    precisions' estimates close; a checkpoint without its buffer is refused in one line."""
    script = str(REPO / "dacerv2_continuous.py")
    train = [sys.executable, script, "--env-id", "Pendulum-v1", "--num-envs", "2", "--learning-starts", "200",
             "--batch-size", "32", "--hidden-dim", "32", "--total-timesteps", "400", "--eval-episodes", "1",
             "--save-model", "--no-cuda"]
    trained = subprocess.run([*train, "--checkpoint-buffer"], cwd=tmp_path, capture_output=True, timeout=300)
    assert trained.returncode == 0
    (checkpoint,) = tmp_path.glob("runs/*/*.pt")
    precision = str(Path(EFFICIENCY).parent / "gmm_precision.py")
    result = subprocess.run([sys.executable, precision, str(checkpoint), "--batches", "1"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    lines = [line.split() for line in result.stdout.splitlines()[1:-1]]
    assert [line[1:3] for line in lines] == [["trained", "1"], ["untrained", "1"]]
    for _, _, _, h64, h32, difference, *_ in lines:
        assert abs(float(h64) - float(h32)) < 0.02
        assert float(difference) == pytest.approx(abs(float(h64) - float(h32)), abs=2e-4)
    checkpoint.rename(tmp_path / "kept.pt")
    assert subprocess.run(train, cwd=tmp_path, capture_output=True, timeout=300).returncode == 0  # no buffer saved
    (no_buffer,) = tmp_path.glob("runs/*/*.pt")
    bad = subprocess.run([sys.executable, precision, str(no_buffer)], cwd=tmp_path, capture_output=True, text=True)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "--checkpoint-buffer" in bad.stderr


def test_cost_table_has_every_configuration_and_sac(tmp_path):
    """--cost: the paper's settings and --preset short --critic-loss td, eager and compiled, with the GMM amortised
    over each one's interval (10,000 and 200 iterations), the loop's env steps per second and SB3 SAC's update."""
    pytest.importorskip("stable_baselines3")
    args = ["--cost", "--env-id", "Pendulum-v1", "--iterations", "4", "--hidden-dim", "16", "--rounds", "1"]
    result = run([*args, "--json", "cost.json", "--markdown", "cost.md"], tmp_path)
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "cost.json").read_text())
    names = ["paper, eager", "paper, compile", "short-td, eager", "short-td, compile"]
    for name in names:
        row = summary[name]
        assert row["entropy_interval"] == (10_000 if name.startswith("paper") else 200)
        assert row["total_ms"] == pytest.approx(row["train_ms"] + 1000 * row["entropy_s"] / row["entropy_interval"])
        assert row["num_envs"] == (20 if name.startswith("paper") else 1) and row["env_steps_per_s"] > 0
        assert row["train_points"] == 2 and row["compile"] == name.endswith("compile")
        assert f"| {name} |" in (tmp_path / "cost.md").read_text()
    assert summary["sb3 sac"]["train_ms"] > 0 and summary["sb3 sac"]["calls"] == 200
    assert "SB3 SAC update" in result.stdout and summary["cost"] is True


@pytest.mark.parametrize("args, message", [(["--cost", "--compile"], "leave out --compile"),
                                           (["--cost", "--iterations", "2"], "--iterations >= 4")])
def test_cost_bad_input_exits_2_with_one_line(tmp_path, args, message):
    result = run(args, tmp_path)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and message in result.stderr, result.stderr


def test_stage_timing_profile_prints_the_update_table_and_its_matrix_share(tmp_path):
    stage_timing = str(Path(EFFICIENCY).parent / "stage_timing.py")
    result = subprocess.run([sys.executable, stage_timing, "--profile", "--iterations", "4"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "aten::addmm" in result.stdout and "Self CPU time total" in result.stdout
    share = float(result.stdout.strip().splitlines()[-1].split("(")[-1].split()[0])
    assert 10 < share < 100  # the matrix products' share of the eager update, in %
    bad = subprocess.run([sys.executable, stage_timing, "--compile"], cwd=tmp_path, capture_output=True, text=True)
    assert bad.returncode == 2 and "--compile goes with --profile" in bad.stderr
