"""Paper Table 1 (efficiency): training time per iteration, single-state inference latency and the wall time of the
GMM entropy estimate, for DACERv2 (T = 5, the script's default eta), DACERv2 with --q-grad-one-step and DACER
(T = 20, --q-grad-coef 0).

Usage: python benchmark/efficiency.py [--env-id Hopper-v4] [--device cpu|cuda] [--compile [--eager-baseline]] [--rounds 3]
                                      [--baseline OLD_SCRIPT.py] [--json PATH] [--markdown PATH]
       python benchmark/efficiency.py --cost [--baseline OLD_SCRIPT.py] [...]

The algorithms take turns over --rounds rounds (each round measures every algorithm once, in the same order) and
each figure is the median over all rounds: on a shared machine whose speed drifts, every algorithm sees the same
slow and fast spells, so the ratios stay meaningful. --baseline adds the same rows for another version of the
training script (e.g. `git show REV:dacerv2_continuous.py > DIR/old.py`; a revision that had its plumbing in
dacerv2_utils.py, fe5a4ab and earlier, needs that file beside the copy too: `git show REV:dacerv2_utils.py >
DIR/dacerv2_utils.py`), measured in the same turns: a speed-up or a regression as a ratio from one run.

- Training: the real training loop. dacerv2_continuous.py runs in a subprocess (in a temporary folder) with
  --log-frequency 2, and its `charts/update_ms` points are read back from the event file. Each point is the mean wall
  time of one policy iteration and one critic-only iteration (the update step only: batch sampling, critic, alpha,
  actor and target updates; env stepping excluded). The first points (warm-up; iteration 0 also runs the GMM entropy
  estimate) are dropped; the median over the rest is reported.
- Inference: `DiffusionActor.sample` on one state under torch.no_grad(), the function that acting and evaluation
  call; INFER_CALLS calls per round after INFER_WARMUP warm-up calls. With --compile, every row's sampler (ours and
  --baseline's alike) runs as an AOTInductor package (export_sampler: for deployment, without torch.compile's guards
  and Python wrapper), its random numbers drawn eagerly by `draw_noise` in the timed call.
- GMM entropy estimate: `estimate_entropy` on a batch of states with the script's defaults (256 states x 200
  actions x 3 components); ENTROPY_REPEATS calls per round after one warm-up call. It runs every
  --alpha-update-frequency iterations in training and is not part of the training time above. With --compile, as
  in the script's --compile: its action function is `torch.compile(policy_action, dynamic=False)` (a --baseline of
  an older revision: what its own --compile wiring did, compile_functions or compile_sampler).

--cost (what an iteration costs): DACERv2 with the paper's settings (20 envs) and with --preset short --critic-loss td
(1 env), each eager and with --compile (and the same rows of --baseline), in the same turns: update ms per iteration
as above, the GMM estimate amortised over the configuration's --alpha-update-frequency (10,000 or 200 iterations),
their total, the whole loop's env steps per second, and SB3 SAC's update (its train step, batch 256) for scale.
"""

import argparse
import contextlib
import importlib.util
import io
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import gymnasium as gym  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

import dacerv2_continuous as dacer  # noqa: E402

SCRIPT = REPO / "dacerv2_continuous.py"
DEFAULTS = dacer.Args()  # batch size, GMM sizes, noise scale, initial alpha and alpha interval of the script
# name, diffusion steps T, extra flags of the training script (DACER: no Q-gradient field loss L_g; DACERv2-1step: the
# option that estimates L_g's expectation over the T steps with one step per state)
ALGORITHMS = (("DACERv2", 5, ()), ("DACERv2-1step", 5, ("--q-grad-one-step",)), ("DACER", 20, ("--q-grad-coef", "0")))
PAPER_TABLE_1 = {"DACERv2": (0.63, 7.0), "DACER": (1.60, 12.0)}  # inference ms, training ms; RTX 4090
PAPER_HARDWARE = "AMD Ryzen Threadripper 3960X + NVIDIA RTX 4090"
NUM_ENVS = 20  # the script's default; one iteration = one step of every env + one update
LEARNING_STARTS = 1_000  # env steps of uniform random actions before the first update
WARMUP_ITERATIONS = 20  # dropped from the training time (10 log points)
LOG_FREQUENCY = 2  # one policy iteration + one critic-only iteration per `charts/update_ms` point
NEVER = 1_000_000  # an interval past the run's end: no periodic evaluation, the GMM estimate at iteration 0 only
INFER_WARMUP, INFER_CALLS = 100, 1_000
ENTROPY_REPEATS = 3
# --cost: (name, flags of the training script, envs); each measured eager and with --compile
CONFIGURATIONS = (("paper", (), NUM_ENVS), ("short-td", ("--preset", "short", "--critic-loss", "td"), 1))
SAC_FILL, SAC_WARMUP, SAC_CALLS = 10_000, 20, 200


class ArgumentParser(argparse.ArgumentParser):
    """argparse with one-line errors (exit status 2) like the training script's."""

    def error(self, message):
        dacer.fail(f"{message} (see --help)")


def parse_args():
    """The command line, checked: bad input ends with one line on stderr and exit status 2."""
    parser = ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--env-id", default="Hopper-v4", help="the environment (default: Hopper-v4)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where to run (default: cpu)")
    parser.add_argument(
        "--iterations", type=int, default=400, help="training iterations measured after the warm-up (default: 400)"
    )
    parser.add_argument(
        "--compile", action="store_true", help="the training runs with the script's --compile (torch.compile), "
        "inference through an AOTInductor package of the sampler, the GMM estimate with torch.compile",
    )
    parser.add_argument(
        "--eager-baseline", action="store_true", help="with --compile: the --baseline rows stay eager",
    )
    parser.add_argument(
        "--rounds", type=int, default=3, help="rounds in which the algorithms take turns (default: 3)"
    )
    parser.add_argument(
        "--baseline", metavar="SCRIPT", help="another version of dacerv2_continuous.py to measure in the same turns"
    )
    parser.add_argument(
        "--cost", action="store_true", help="instead of Table 1: what an iteration costs, the paper's settings and "
        "--preset short --critic-loss td, each eager and with --compile, with the GMM estimate amortised over its "
        "interval and the loop's env steps per second, beside SB3 SAC's update (needs benchmark/requirements.txt)",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: 1, like the script)")
    parser.add_argument("--hidden-dim", type=int, default=256, help="hidden layer width (default: 256, paper)")
    parser.add_argument("--num-layers", type=int, default=2, help="number of hidden layers (default: 2, paper)")
    parser.add_argument("--json", metavar="PATH", help="write the results as JSON to PATH")
    parser.add_argument("--markdown", metavar="PATH", help="write the table as markdown to PATH (for the README)")
    parser.add_argument(
        "--python", default=sys.executable, help="the interpreter that runs the training script (default: this one)"
    )
    args = parser.parse_args()
    if args.iterations < 2 or args.iterations % LOG_FREQUENCY:
        dacer.fail(f"--iterations must be an even number >= 2 (one log point per 2 iterations), got {args.iterations}")
    for name in ("rounds", "threads", "hidden_dim", "num_layers"):
        if getattr(args, name) < 1:
            dacer.fail(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if args.cost and (args.compile or args.eager_baseline):
        dacer.fail("--cost measures every configuration both eager and with --compile: leave out --compile and "
                   "--eager-baseline")
    if args.cost and args.iterations < 4:
        dacer.fail(f"--cost needs --iterations >= 4 (the loop's rate is timed between log points), got "
                   f"{args.iterations}")
    if args.cost and importlib.util.find_spec("stable_baselines3") is None:
        dacer.fail("--cost measures SB3 SAC's update beside DACERv2's: pip install -r benchmark/requirements.txt")
    if args.baseline is not None and not Path(args.baseline).is_file():
        dacer.fail(f"--baseline: no such file {args.baseline!r}")
    if shutil.which(args.python) is None:
        dacer.fail(f"--python: no such interpreter {args.python!r}")
    for option in ("json", "markdown"):
        path = getattr(args, option)
        if path is not None and not Path(path).resolve().parent.is_dir():
            dacer.fail(f"--{option}: the folder of {path!r} does not exist")
    if args.device == "cuda" and not torch.cuda.is_available():
        dacer.fail("--device cuda: no CUDA device is available to this torch (use --device cpu)")
    return args


def env_dims(env_id):
    """The env id the script runs (paper -v3 ids become -v4), its observation and action sizes and a first state."""
    env_id = dacer.resolve_env_id(env_id)
    try:
        env = gym.make(env_id)
    except Exception as e:  # e.g. a missing optional dependency of the env
        dacer.fail(f"cannot make {env_id}: {dacer.error_summary(e, 150)}")
    if not (isinstance(env.observation_space, gym.spaces.Box) and isinstance(env.action_space, gym.spaces.Box)):
        dacer.fail(f"{env_id}: DACERv2 needs Box observation and action spaces")
    obs, _ = env.reset(seed=0)
    env.close()
    return env_id, env.observation_space.shape[0], env.action_space.shape[0], obs


def cpu_model():
    """The CPU's model name (Linux /proc/cpuinfo, else what platform knows)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def describe_device(device, threads):
    """One line: the GPU, or the CPU model with the number of torch threads."""
    cpu = f"{cpu_model()}, {threads} torch thread{'s' * (threads > 1)} of {os.cpu_count()} logical CPUs"
    return f"{torch.cuda.get_device_name(device)} (host: {cpu})" if device.type == "cuda" else cpu


def compiled(args, script):
    """Whether the rows of script run with --compile."""
    return args.compile and not (args.eager_baseline and script != SCRIPT)


def training_ms(args, env_id, name, script, diffusion_steps, flags, compile_, num_envs=NUM_ENVS):
    """Per-point `charts/update_ms` of a real training run of script after the warm-up points (ms per iteration), and
    the whole loop's seconds per iteration over those points (env steps, update, logging) from the points' times."""
    total_iterations = WARMUP_ITERATIONS + args.iterations
    command = [
        args.python, str(script), "--env-id", env_id, "--num-envs", str(num_envs),
        "--total-timesteps", str(LEARNING_STARTS + total_iterations * num_envs), "--learning-starts",
        str(LEARNING_STARTS), "--log-frequency", str(LOG_FREQUENCY), "--eval-frequency", str(NEVER),
        "--eval-episodes", "1", "--alpha-update-frequency", str(NEVER), "--torch-threads", str(args.threads),
        "--hidden-dim", str(args.hidden_dim), "--num-layers", str(args.num_layers),
        "--diffusion-steps", str(diffusion_steps), *flags, "--cuda" if args.device == "cuda" else "--no-cuda",
        *(["--compile"] if compile_ else []),
    ]
    with tempfile.TemporaryDirectory(prefix="efficiency-") as folder:
        # this repository (multigoal_env) for a copy elsewhere; an old revision's dacerv2_utils.py comes from beside it
        path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
        env = {**os.environ, "PYTHONPATH": path}
        result = subprocess.run(command, cwd=folder, capture_output=True, text=True, env=env)
        if result.returncode != 0:
            print(f"error: the {name} training run failed (exit status {result.returncode}):", file=sys.stderr)
            print(" ".join(command), *result.stderr.strip().splitlines()[-15:], sep="\n", file=sys.stderr)
            sys.exit(1)
        if args.device == "cuda" and "no CUDA device is available" in result.stdout:
            print(f"error: the {name} training run found no CUDA device ({args.python})", file=sys.stderr)
            sys.exit(1)
        (run_dir,) = Path(folder, "runs").iterdir()
        events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
        events.Reload()
        events = events.Scalars("charts/update_ms")
    expected = total_iterations // LOG_FREQUENCY
    if len(events) != expected:
        print(f"error: the {name} run logged {len(events)} update_ms points, expected {expected}", file=sys.stderr)
        sys.exit(1)
    kept = events[WARMUP_ITERATIONS // LOG_FREQUENCY :]
    loop_s = (kept[-1].wall_time - kept[0].wall_time) / max(len(kept) - 1, 1) / LOG_FREQUENCY
    return [event.value for event in kept], loop_s


def synchronize(device):
    """Waits for the GPU's queued work, so that the clock read next includes it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def export_sampler(actor):
    """The no-grad sampler as an AOTInductor package (torch.export, then inductor's kernels and C++ wrapper), for
    deployment: one package for every batch size, with the parameters and buffers as inputs, so that it follows every
    in-place change of them (each optimizer step), and that runs without torch.compile's guards and Python wrapper.
    Returns sample(obs, noise), the actor's sample(obs, noise) (noise from actor.draw_noise). Uses the actor's T,
    obs_dim, act_dim and its class's sample (not an instance's replacement, e.g. an old revision's --compile wiring)."""
    import torch._inductor

    tensors = dict(actor.named_parameters()) | dict(actor.named_buffers())
    names, weights = list(tensors), list(tensors.values())
    device = weights[0].device

    class Sampler(nn.Module):  # actor.sample(obs, noise), with the actor's parameters and buffers as inputs when given
        def __init__(self):
            super().__init__()
            self.actor = actor

        def forward(self, obs, noise, *weights):
            if not weights:
                return type(self.actor).sample(self.actor, obs, noise)
            return torch.func.functional_call(self, {f"actor.{n}": w for n, w in zip(names, weights)}, (obs, noise))

    batch = torch.export.Dim("batch", min=1)  # traced at batch 2: an example batch of 1 would specialise to it
    example = (torch.zeros(2, actor.obs_dim, device=device), torch.zeros(actor.T, 2, actor.act_dim, device=device),
               *(w.detach() for w in weights))
    with torch.no_grad(), warnings.catch_warnings(), tempfile.TemporaryDirectory() as folder:
        warnings.simplefilter("ignore", FutureWarning)  # torch's own deprecations inside export
        program = torch.export.export(Sampler(), example,
                                      dynamic_shapes=({0: batch}, {1: batch}, (None,) * len(weights)))
        package = torch._inductor.aoti_load_package(
            torch._inductor.aoti_compile_and_package(program, package_path=os.path.join(folder, "sampler.pt2")))
    return lambda obs, noise: package(obs, noise, *weights)


def samplers(args, rows, actors, device):
    """The single-state sampler of every row for the inference row: actor.sample, or with --compile (for the rows
    that compile) export_sampler's package, fed the random numbers that actor.sample would draw."""
    result = {}
    for name, _, path, _, _ in rows:
        actor = actors[name]
        if not compiled(args, path):
            result[name] = actor.sample
            continue
        try:
            exported = export_sampler(actor)
        except Exception as e:
            print(f"error: --compile: the {name} sampler cannot be exported here ({dacer.error_summary(e, 200)})",
                  file=sys.stderr)
            sys.exit(1)
        result[name] = lambda obs, exported=exported, actor=actor: exported(obs, actor.draw_noise(obs))
    return result


@torch.no_grad()
def inference_ms(sample, obs, device):
    """Wall times of sample (a row's actor.sample or its package) on one state after the warm-up calls, in ms."""
    times = []
    for call in range(INFER_WARMUP + INFER_CALLS):
        start = time.perf_counter()
        sample(obs)
        synchronize(device)
        if call >= INFER_WARMUP:
            times.append(1000 * (time.perf_counter() - start))
    return times


def entropy_s(script, actor, obs_batch, device, act=None):
    """Wall times of script's GMM entropy estimate with the script's defaults after one warm-up call, in s; act: the
    action function to pass (a compiled policy_action), None for the script's own."""
    alpha = torch.tensor(DEFAULTS.init_alpha, device=device)
    times = []
    for call in range(1 + ENTROPY_REPEATS):
        start = time.perf_counter()
        script.estimate_entropy(actor, obs_batch, alpha, DEFAULTS.noise_scale, DEFAULTS.gmm_samples,
                                DEFAULTS.gmm_components, **({} if act is None else {"act": act}))
        synchronize(device)
        if call > 0:
            times.append(time.perf_counter() - start)
    return times


def import_baseline(path):
    """The --baseline script as a module. A revision that had its plumbing in dacerv2_utils.py (fe5a4ab and earlier)
    imports the dacerv2_utils.py beside it (this repository no longer has one), in-process as in its training runs."""
    own_utils = Path(path).resolve().parent / "dacerv2_utils.py"
    spec = importlib.util.spec_from_file_location("baseline_script", path)
    baseline = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = baseline  # as an import would: torch.compile and dataclasses may look it up there
    before, stderr = sys.modules.get("dacerv2_utils"), io.StringIO()
    try:
        if own_utils.is_file():  # its plumbing, for its own import of dacerv2_utils
            utils_spec = importlib.util.spec_from_file_location("dacerv2_utils", own_utils)
            sys.modules["dacerv2_utils"] = importlib.util.module_from_spec(utils_spec)
            utils_spec.loader.exec_module(sys.modules["dacerv2_utils"])
        with contextlib.redirect_stderr(stderr):
            spec.loader.exec_module(baseline)
    except (Exception, SystemExit) as e:  # SystemExit: a script that ends its import with its own error line
        lines = stderr.getvalue().strip().splitlines() or [f"exit status {getattr(e, 'code', None)}"]
        what = lines[-1].removeprefix("error: ") if isinstance(e, SystemExit) else dacer.error_summary(e, 100)
        hint = ("; a revision with dacerv2_utils.py needs that file beside the copy (git show REV:dacerv2_utils.py > "
                "DIR/dacerv2_utils.py)") if "dacerv2_utils" in what else ""
        dacer.fail(f"--baseline: cannot import {path!r} ({what}){hint}")
    finally:
        if before is None:  # the baseline's dacerv2_utils stays its own: the module keeps it as an attribute
            sys.modules.pop("dacerv2_utils", None)
        else:
            sys.modules["dacerv2_utils"] = before
    sys.stderr.write(stderr.getvalue())  # what the import printed there, e.g. warnings
    return baseline


def variants(args):
    """(row name, script module, script path, T, flags) of every row: the algorithms, then those of --baseline."""
    rows = [(name, dacer, SCRIPT, steps, flags) for name, steps, flags in ALGORITHMS]
    if args.baseline:
        baseline = import_baseline(args.baseline)
        rows += [(f"{name} (baseline)", baseline, args.baseline, steps, flags) for name, steps, flags in ALGORITHMS]
    return rows


def entropy_action(compile_, script, actor, device):
    """The action function of script's GMM estimate with --compile (None: the script's own): the script's own
    --compile does torch.compile(policy_action, dynamic=False); an older revision (--baseline) had explore and its
    --compile wiring in compile_functions (in its dacerv2_utils.py, or in the script) or compile_sampler, which
    replaced actor.sample."""
    if not compile_:
        return None
    if hasattr(script, "policy_action"):
        return torch.compile(script.policy_action, dynamic=False)
    if hasattr(script, "utils") and hasattr(script.utils, "compile_functions"):
        script.utils.compile_functions(actor, device, script.critic_loss, script.actor_loss)
    else:
        (getattr(script, "compile_functions", None) or script.compile_sampler)(actor, device)
    return None


def measure(args, env_id, obs_dim, act_dim, first_obs):
    """Training, inference and entropy-estimate times of every row, taking turns over args.rounds rounds."""
    device = torch.device(args.device)
    obs = torch.as_tensor(first_obs, dtype=torch.float32, device=device)[None]
    obs_batch = torch.randn(DEFAULTS.batch_size, obs_dim, device=device)
    rows, actors, acts = variants(args), {}, {}
    times = {name: {"train": [], "infer": [], "entropy": [], "round_train": []} for name, *_ in rows}
    if args.compile:  # the script's --compile settings
        import torch._inductor.config as inductor_config

        inductor_config.fallback_random = True  # torch's own random streams, as eagerly
        inductor_config.cpp_wrapper = device.type == "cpu"
    for name, script, path, diffusion_steps, _ in rows:
        torch.manual_seed(DEFAULTS.seed)
        actors[name] = script.DiffusionActor(obs_dim, act_dim, args.hidden_dim, args.num_layers, diffusion_steps)
        actors[name].to(device)
    sample = samplers(args, rows, actors, device)  # before an old revision's wiring replaces actor.sample
    for name, script, path, _, _ in rows:
        acts[name] = entropy_action(compiled(args, path), script, actors[name], device)
    for round_ in range(1, args.rounds + 1):
        for name, script, path, diffusion_steps, flags in rows:
            print(f"round {round_}/{args.rounds}, {name}: {WARMUP_ITERATIONS} + {args.iterations} training iterations "
                  f"on {env_id}, {INFER_CALLS} inference calls, {ENTROPY_REPEATS} GMM entropy estimates ...",
                  file=sys.stderr)
            points, _ = training_ms(args, env_id, name, path, diffusion_steps, flags, compiled(args, path))
            times[name]["train"] += points
            times[name]["round_train"].append(statistics.median(points))
            times[name]["infer"] += inference_ms(sample[name], obs, device)
            times[name]["entropy"] += entropy_s(script, actors[name], obs_batch, device, acts[name])
    return {
        name.lower(): {
            "name": name,
            "train_ms": statistics.median(times[name]["train"]),
            "infer_ms": statistics.median(times[name]["infer"]),
            "entropy_s": statistics.median(times[name]["entropy"]),
            "train_ms_mean": statistics.fmean(times[name]["train"]),
            "train_ms_per_round": times[name]["round_train"],
            "train_points": len(times[name]["train"]),
            "diffusion_steps": diffusion_steps,
        }
        for name, _, _, diffusion_steps, _ in rows
    }


def entropy_interval(flags):
    """A configuration's --alpha-update-frequency (the script's default, or its --preset's): one GMM estimate per it."""
    preset = flags[flags.index("--preset") + 1] if "--preset" in flags else "none"
    return dacer.PRESETS[preset].get("alpha_update_frequency", DEFAULTS.alpha_update_frequency)


def sac_trainer(env_id, device):
    """SB3 SAC with its defaults and the script's batch size, its replay buffer filled with SAC_FILL random
    transitions: model.train(1, batch) is the update that benchmark/sac_baseline.py runs once per env step."""
    from stable_baselines3 import SAC
    from stable_baselines3.common.logger import Logger

    env = gym.make(env_id)
    env.observation_space.seed(DEFAULTS.seed), env.action_space.seed(DEFAULTS.seed)
    model = SAC("MlpPolicy", env, batch_size=DEFAULTS.batch_size, buffer_size=SAC_FILL, seed=DEFAULTS.seed,
                device=device, verbose=0)
    model.set_logger(Logger(folder=None, output_formats=[]))
    for _ in range(SAC_FILL):
        obs, next_obs = env.observation_space.sample(), env.observation_space.sample()
        model.replay_buffer.add(obs[None], next_obs[None], env.action_space.sample()[None], np.zeros(1), np.zeros(1),
                                [{}])
    env.close()
    return model


def sac_update_ms(model, device):
    """Wall times of SB3 SAC's update (one gradient step on one batch) after SAC_WARMUP calls, in ms."""
    times = []
    for call in range(SAC_WARMUP + SAC_CALLS):
        start = time.perf_counter()
        model.train(gradient_steps=1, batch_size=DEFAULTS.batch_size)
        synchronize(device)
        if call >= SAC_WARMUP:
            times.append(1000 * (time.perf_counter() - start))
    return times


def measure_cost(args, env_id, obs_dim, act_dim):
    """--cost: update ms per iteration, the GMM estimate and the whole loop's env steps per second of every
    configuration, eager and compiled (and --baseline's), and SB3 SAC's update, taking turns over args.rounds rounds."""
    device = torch.device(args.device)
    obs_batch = torch.randn(DEFAULTS.batch_size, obs_dim, device=device)
    scripts = [("", dacer, SCRIPT)] + ([(" (baseline)", import_baseline(args.baseline), args.baseline)]
                                       if args.baseline else [])
    rows = [(f"{config}, {'compile' if compile_ else 'eager'}{suffix}", script, path, flags, num_envs, compile_)
            for config, flags, num_envs in CONFIGURATIONS for compile_ in (False, True)
            for suffix, script, path in scripts]
    # one GMM estimate per (script, compile): both configurations have the same networks and estimate sizes
    estimators = {}  # (script path, compile) -> (script, actor, GMM action function)
    for _, script, path, _, _, compile_ in rows:
        if (path, compile_) not in estimators:
            torch.manual_seed(DEFAULTS.seed)
            actor = script.DiffusionActor(obs_dim, act_dim, args.hidden_dim, args.num_layers, DEFAULTS.diffusion_steps)
            actor.to(device)
            estimators[path, compile_] = (script, actor, entropy_action(compile_, script, actor, device))
    sac = sac_trainer(env_id, args.device)
    times = {name: {"train": [], "loop_s": []} for name, *_ in rows}
    times |= {"sac": [], "entropy": {key: [] for key in estimators}}
    for round_ in range(1, args.rounds + 1):
        for name, script, path, flags, num_envs, compile_ in rows:
            print(f"round {round_}/{args.rounds}, {name}: {WARMUP_ITERATIONS} + {args.iterations} training iterations "
                  f"on {env_id} with {num_envs} env{'s' * (num_envs > 1)} ...", file=sys.stderr)
            points, loop_s = training_ms(args, env_id, name, path, DEFAULTS.diffusion_steps, flags, compile_, num_envs)
            times[name]["train"] += points
            times[name]["loop_s"].append(loop_s)
        print(f"round {round_}/{args.rounds}: {ENTROPY_REPEATS} GMM entropy estimates per row, {SAC_CALLS} SB3 SAC "
              "updates ...", file=sys.stderr)
        for key, (script, actor, act) in estimators.items():
            times["entropy"][key] += entropy_s(script, actor, obs_batch, device, act)
        times["sac"] += sac_update_ms(sac, device)
    sac_ms = statistics.median(times["sac"])
    results = {"sb3 sac": {"name": "SB3 SAC update", "train_ms": sac_ms, "total_ms": sac_ms,
                           "calls": len(times["sac"])}}
    for name, _, path, flags, num_envs, compile_ in rows:
        train_ms, entropy = statistics.median(times[name]["train"]), statistics.median(times["entropy"][path, compile_])
        interval = entropy_interval(flags)
        loop_s = statistics.median(times[name]["loop_s"]) + entropy / interval  # the estimate amortised, as in a run
        results[name.lower()] = {
            "name": name, "flags": list(flags), "compile": compile_, "num_envs": num_envs, "train_ms": train_ms,
            "entropy_s": entropy, "entropy_interval": interval, "entropy_ms": 1000 * entropy / interval,
            "total_ms": train_ms + 1000 * entropy / interval, "env_steps_per_s": num_envs / loop_s,
            "train_points": len(times[name]["train"]),
        }
    return results


def cost_rows(results):
    """Header and one row per configuration and mode (ours, then --baseline's), then SB3 SAC's update."""
    header = ["configuration", "update ms/iter", "GMM estimate s", "GMM every", "GMM ms/iter", "total ms/iter",
              "x SB3 SAC", "x baseline", "env steps/s"]
    sac_ms, rows = results["sb3 sac"]["total_ms"], [header]
    for key, r in results.items():
        if key == "sb3 sac":
            continue
        baseline = results.get(f"{key} (baseline)")
        versus = f"{r['total_ms'] / baseline['total_ms']:.2f}x" if baseline else "-"
        rows.append([r["name"], f"{r['train_ms']:.2f}", f"{r['entropy_s']:.3f}",
                     f"{r['entropy_interval']}", f"{r['entropy_ms']:.2f}", f"{r['total_ms']:.2f}",
                     f"{r['total_ms'] / sac_ms:.2f}x", versus,
                     f"{r['env_steps_per_s']:.0f}"])
    rows.append(["SB3 SAC update", f"{sac_ms:.2f}", "-", "-", "-", f"{sac_ms:.2f}", "1.00x", "-", "-"])
    return rows


def cost_notes(args, env_id, device_text, results):
    """The --cost measurement's conditions, as lines under the table."""
    return [
        f"Environment {env_id}, networks of {args.num_layers} hidden layers of {args.hidden_dim}, batch "
        f"{DEFAULTS.batch_size}; device: {device_text}; torch {torch.__version__}."
        + (f" Baseline: {args.baseline}." if args.baseline else ""),
        f"The rows took turns over {args.rounds} round(s); each figure is the median over all of them. paper: the "
        f"script's defaults, {NUM_ENVS} envs; short-td: --preset short --critic-loss td, 1 env (the short-budget "
        "protocol); compile: the script's --compile.",
        f"update ms/iter: median of the real training loop's `charts/update_ms` points ({args.iterations} iterations "
        f"after {WARMUP_ITERATIONS} per round; a policy iteration and a critic-only iteration each), env steps "
        "excluded.",
        f"GMM: the entropy estimate ({DEFAULTS.batch_size} states x {DEFAULTS.gmm_samples} actions x "
        f"{DEFAULTS.gmm_components} components, untrained actor, median of {args.rounds} x {ENTROPY_REPEATS}), run "
        "once every 'GMM every' iterations: 'GMM ms/iter' is its share of each iteration; total = update + GMM.",
        "env steps/s: the whole loop's rate (env steps, update, logging every 2 iterations, from the logged points' "
        "times) with the GMM's amortised cost added.",
        f"SB3 SAC update: stable-baselines3 SAC's train step (one gradient step, batch {DEFAULTS.batch_size}, its "
        f"defaults) on a buffer of random transitions, median of {args.rounds} x {SAC_CALLS} calls.",
    ]


def table_rows(results):
    """Header and one row per algorithm: ours, normalised to DACERv2, then the paper's."""
    header = ["algorithm", "inference ms", "normalised", "training ms/iter", "normalised", "GMM entropy s",
              "paper inference ms", "normalised", "paper training ms", "normalised"]
    ours_ref, paper_ref = results["dacerv2"], PAPER_TABLE_1["DACERv2"]
    rows = [header]
    for ours in results.values():
        name, paper = ours["name"], ["-"] * 4  # not in the paper: the one-step L_g, --baseline rows
        if name in PAPER_TABLE_1:
            paper_infer, paper_train = PAPER_TABLE_1[name]
            paper = [f"{paper_infer:.2f}", f"{paper_infer / paper_ref[0]:.2f}x", f"{paper_train:.1f}",
                     f"{paper_train / paper_ref[1]:.2f}x"]
        rows.append([
            name, f"{ours['infer_ms']:.2f}", f"{ours['infer_ms'] / ours_ref['infer_ms']:.2f}x",
            f"{ours['train_ms']:.2f}", f"{ours['train_ms'] / ours_ref['train_ms']:.2f}x", f"{ours['entropy_s']:.3f}",
            *paper,
        ])
    return rows


def notes(args, env_id, device_text, results):
    """The measurement conditions, as lines under the table."""
    amortised = {name: 1000 * r["entropy_s"] / DEFAULTS.alpha_update_frequency for name, r in results.items()}
    means = ", ".join(f"{result['train_ms_mean']:.2f} ({result['name']})" for result in results.values())
    per_round = "; ".join(
        "/".join(f"{ms:.1f}" for ms in result["train_ms_per_round"]) + f" ({result['name']})"
        for result in results.values()
    )
    rounds = f"{args.rounds} x "
    mode = ("--compile (training: the script's --compile; inference: an AOTInductor package of the sampler; GMM "
            "estimate: torch.compile of its action function)" if args.compile else "eager")
    return [
        f"Environment {env_id}, networks of {args.num_layers} hidden layers of {args.hidden_dim}, batch "
        f"{DEFAULTS.batch_size}; device: {device_text}; torch {torch.__version__}; "
        f"{mode}"
        f"{'; the baseline rows eager' if args.compile and args.eager_baseline and args.baseline else ''}. "
        f"Paper: {PAPER_HARDWARE}.",
        f"The algorithms took turns over {args.rounds} round(s); each figure is the median over all of them.",
        f"Training ms per iteration: median of {rounds}{args.iterations // LOG_FREQUENCY} `charts/update_ms` points of "
        f"the real training loop, each the mean of one policy iteration and one critic-only iteration "
        f"({args.iterations} iterations after {WARMUP_ITERATIONS} warm-up iterations per round); the update step only "
        f"(batch sampling, critic, alpha, actor, target updates), env stepping excluded. Means: {means}; medians per "
        f"round: {per_round}. DACERv2-1step is DACERv2 with --q-grad-one-step (L_g on one random step per state "
        "instead of all T).",
        f"Inference ms: median of {rounds}{INFER_CALLS} calls of `DiffusionActor.sample` on a single state"
        f"{' (its AOTInductor package, the noise drawn eagerly in the call)' if args.compile else ''}.",
        f"The periodic GMM entropy estimate is excluded from the training time and reported separately "
        f"({DEFAULTS.batch_size} states x {DEFAULTS.gmm_samples} actions x {DEFAULTS.gmm_components} components, "
        f"untrained actor, median of {rounds}{ENTROPY_REPEATS}); run every {DEFAULTS.alpha_update_frequency} "
        f"iterations, it adds {amortised['dacerv2']:.2f} ms (DACERv2) and {amortised['dacer']:.2f} ms (DACER) per "
        "iteration on average.",
    ]


def render_text(rows):
    """The table as aligned plain-text columns."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows)


def render_markdown(rows):
    """The table as a markdown table."""
    lines = ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join([lines[0], "|" + "---|" * len(rows[0]), *lines[1:]])


def main():
    args = parse_args()
    env_id, obs_dim, act_dim, first_obs = env_dims(args.env_id)
    dacer.keep_freed_memory()
    torch.set_num_threads(args.threads)
    device_text = describe_device(torch.device(args.device), args.threads)
    if args.cost:
        import torch._inductor.config as inductor_config

        inductor_config.fallback_random, inductor_config.cpp_wrapper = True, args.device == "cpu"  # as --compile's
        results = measure_cost(args, env_id, obs_dim, act_dim)
        rows, lines = cost_rows(results), cost_notes(args, env_id, device_text, results)
        title = "What an iteration costs (lower is better; env steps/s: higher)"
    else:
        results = measure(args, env_id, obs_dim, act_dim, first_obs)
        rows, lines = table_rows(results), notes(args, env_id, device_text, results)
        title = "Efficiency (paper Table 1; lower is better)"
    print(f"\n{title} on {env_id}\n\n{render_text(rows)}\n")
    print("\n".join(lines))
    if args.markdown:
        Path(args.markdown).write_text(render_markdown(rows) + "\n\n" + "\n".join(f"- {line}" for line in lines) + "\n")
    if args.json:
        summary = {"device": device_text, "torch": torch.__version__, "env_id": env_id, "threads": args.threads,
                   "baseline": args.baseline}
        summary |= {key: getattr(args, key) for key in ("iterations", "rounds", "hidden_dim", "num_layers", "compile",
                                                      "eager_baseline", "cost")}
        Path(args.json).write_text(json.dumps({**summary, **results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
