"""Plumbing of dacerv2_continuous.py (TRY NOT TO MODIFY): input checks, env ids, env state and checkpoints for an
exact resume, timers, --compile wiring. The functions that need the script's own definitions (Args and PRESETS, its
losses and actor, the state it saves) take them as arguments, so that an edited copy of the script passes its own."""
import contextlib
import copy
import ctypes
import difflib
import importlib
import io
import itertools
import math
import os
import pickle
import random
import sys
import tempfile
import time
import warnings
from dataclasses import replace

import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn
import tyro


def error_summary(error, limit=None):
    """`Type: first line of the message` of an exception (the message cut at limit characters), for one-line errors."""
    return f"{type(error).__name__}: {(str(error).splitlines() or [''])[0][:limit]}"


def fail(message):
    """Bad user input: one line on stderr, exit status 2, no traceback."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def is_mujoco(env_id):
    """Whether gymnasium registers env_id as one of its MuJoCo envs."""
    return "mujoco" in str(getattr(gym.registry.get(env_id), "entry_point", ""))


def resolve_env_id(env_id, quiet=False):
    """Returns the env id to run; gym's mujoco-py ids (the paper's -v2/-v3) become the matching -v4 env (with a line
    saying so unless quiet)."""
    if env_id.startswith("MultiGoal"):
        import multigoal_env  # noqa: F401  (registers MultiGoal-v0 and MultiGoal{4,5,6}-v0)
    if env_id not in gym.registry:
        close = difflib.get_close_matches(env_id, list(gym.registry), n=3, cutoff=0.75)
        fail(f"unknown env id {env_id!r}" + (f"; did you mean {', '.join(close)}?" if close else ""))
    # gymnasium's "-v4 is out of date" warning is silenced: the line below, or the user's own choice of -v4, says enough
    warnings.filterwarnings("ignore", ".*is out of date. You should consider upgrading", DeprecationWarning)
    if "mujoco_py" in getattr(gym.registry[env_id].entry_point, "__name__", ""):  # gymnasium keeps them, unrunnable
        name = env_id.rpartition("-")[0]
        if not quiet:
            print(f"{env_id} needs mujoco-py (MuJoCo 2.1), which gymnasium dropped: using {name}-v4 (README: Known "
                  "differences)")  # fmt: skip
        return f"{name}-v4"
    return env_id


def check_setup(args):
    """Before any run folder exists: the env id to run (returned), that it can be made (and rendered, with
    --capture-video), that optional packages are there."""
    env_id = resolve_env_id(args.env_id)
    for flag, package in (("capture_video", "moviepy"), ("track", "wandb")):
        try:
            if getattr(args, flag):
                importlib.import_module(package)
        except ImportError:
            fail(f"--{flag.replace('_', '-')} needs {package}: pip install {package}")
    try:
        probe = gym.make(env_id, render_mode="rgb_array" if args.capture_video else None)
    except Exception as e:  # e.g. a missing optional dependency of the env
        fail(f"cannot make {env_id}: {error_summary(e, 150)}")
    spaces = (probe.observation_space, probe.action_space)
    if not all(isinstance(space, gym.spaces.Box) and len(space.shape) == 1 for space in spaces):
        fail(f"{env_id} has {spaces[0]} observations and a {spaces[1]} action space; DACERv2 needs flat Box spaces")
    try:  # one frame now: a machine that cannot render fails here, in one line, not at the first reset
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # GLFW's warnings on a machine without a display
            if args.capture_video:
                probe.reset(seed=args.seed)
                probe.render()
    except Exception as e:
        hint = ("; MuJoCo without a display needs MUJOCO_GL=egl (GPU driver) or MUJOCO_GL=osmesa (apt install "
                "libosmesa6; pip install PyOpenGL)") if is_mujoco(env_id) else ""  # fmt: skip
        fail(f"--capture-video: {env_id} cannot render here ({error_summary(e, 200)}){hint}")
    probe.close()
    return env_id


PLAIN_DATA = (int, float, bool, np.ndarray, np.generic, list, tuple, type(None))


def env_layers(env):
    """The wrappers of a sub-env, outermost first, then the env itself."""
    while isinstance(env, gym.Wrapper):
        yield env
        env = env.env
    yield env


def env_state(env):
    """What makes a sub-env continue exactly: plain-data attributes of every wrapper (step counters, episode
    statistics) and of the env, its RNGs, and for MuJoCo envs the full integration state (mj_getState). A video being
    recorded (--capture-video) is left out: its frames would fill the checkpoint, and the resumed run records from the
    next scheduled episode on (the interrupted run saved the part it had when it closed)."""
    layers = []
    for layer in env_layers(env):
        attributes = {k: v for k, v in vars(layer).items() if isinstance(v, PLAIN_DATA)}
        if isinstance(layer, gym.wrappers.RecordVideo):
            attributes |= {"recording": False, "recorded_frames": [], "render_history": [], "_video_name": None}
        layers.append(copy.deepcopy(attributes))
    u = env.unwrapped
    state = {"layers": layers, "rng": u.np_random.bit_generator.state,
             "action_rng": env.action_space.np_random.bit_generator.state}  # fmt: skip
    if type(getattr(u, "data", None)).__name__ == "MjData":
        import mujoco

        state["mujoco"] = np.empty(mujoco.mj_stateSize(u.model, mujoco.mjtState.mjSTATE_INTEGRATION))
        mujoco.mj_getState(u.model, u.data, state["mujoco"], mujoco.mjtState.mjSTATE_INTEGRATION)
    return state


def set_env_state(env, state):
    for layer, attributes in zip(env_layers(env), state["layers"]):
        vars(layer).update(copy.deepcopy(attributes))
    u = env.unwrapped
    u.np_random.bit_generator.state = state["rng"]
    env.action_space.np_random.bit_generator.state = state["action_rng"]
    if "mujoco" in state:
        import mujoco

        mujoco.mj_setState(u.model, u.data, state["mujoco"], mujoco.mjtState.mjSTATE_INTEGRATION)
        mujoco.mj_forward(u.model, u.data)


def random_state(envs, obs):
    """The RNGs and the envs (pickled in the checkpoint: resume only checkpoints you trust, README)."""
    return pickle.dumps({"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
                         "cuda": torch.cuda.get_rng_state() if torch.cuda.is_initialized() else None,
                         "envs": [env_state(env) for env in envs.envs],
                         "action_space": envs.action_space.np_random.bit_generator.state, "obs": obs})  # fmt: skip


def set_random_state(saved, envs, obs):
    """Restores random_state's RNGs, and its envs when their number is unchanged; returns the observations to go on."""
    try:
        saved = pickle.loads(saved)
        random.setstate(saved["python"])
        np.random.set_state(saved["numpy"])
        torch.set_rng_state(saved["torch"])
        if saved["cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state(saved["cuda"])
        if len(saved["envs"]) != len(envs.envs):
            print(f"--num-envs changed from {len(saved['envs'])}: the envs start new episodes")
            return obs
        for env, state in zip(envs.envs, saved["envs"]):
            set_env_state(env, state)
        envs.action_space.np_random.bit_generator.state = saved["action_space"]
        return saved["obs"]
    except Exception as e:
        fail(f"--resume: the checkpoint's random and env state cannot be restored ({type(e).__name__}: {e})")


CHECKPOINT_KEYS = {"args", "run_name", "iteration", "global_step", "random_state"}  # and the script's state: load_state


def save_checkpoint(path, state):
    """Atomic write: a crash mid-write leaves any previous checkpoint intact."""
    tmp = f"{path}.tmp"
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    except OSError as e:  # disk full, permissions: one line, and the previous checkpoint stays
        print(f"error: cannot write checkpoint {path}: {e}", file=sys.stderr)
        sys.exit(1)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def load_checkpoint(path):
    if os.path.isdir(path):
        fail(f"--resume: {path!r} is a folder; give the checkpoint file in it (runs/RUN_NAME/EXP_NAME.pt)")
    if not os.path.isfile(path):
        fail(f"--resume: no such file {path!r}")
    if os.path.getsize(path) == 0:
        fail(f"--resume: {path!r} is empty, not a checkpoint")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # unreadable, truncated or not a torch file
        fail(f"--resume: {path!r} is not a checkpoint written by this script (torch.load: {error_summary(e, 100)})")
    missing = CHECKPOINT_KEYS - set(checkpoint) if isinstance(checkpoint, dict) else CHECKPOINT_KEYS
    if missing:
        fail(f"--resume: {path!r} is not a checkpoint of this script (missing {', '.join(sorted(missing))})")
    return checkpoint


def load_state(checkpoint, state, learning_rates):
    """The checkpoint's networks, optimizers and tensors into state ({checkpoint key: module, optimizer or tensor},
    tensors copied in place); the learning rates given now ({optimizer's key: lr}) replace the saved ones."""
    try:
        for name, value in state.items():
            if isinstance(value, torch.Tensor):
                with torch.no_grad():
                    value.copy_(checkpoint[name])
            else:
                value.load_state_dict(checkpoint[name])
        for name, lr in learning_rates.items():
            state[name].param_groups[0]["lr"] = lr
    except (RuntimeError, ValueError, KeyError):
        fail("--resume: the checkpoint's networks do not match these arguments (--hidden-dim, --num-layers, "
             "--num-critics) or this version of the script")  # fmt: skip


class UpdateTimer:
    """Mean wall time of the update step in ms; CUDA events on GPU, so that the hot loop never synchronises."""

    def __init__(self, device):
        self.cuda, self.marks = device.type == "cuda", []

    def mark(self):  # at the start and at the end of every update
        self.marks.append(torch.cuda.Event(enable_timing=True) if self.cuda else time.perf_counter())
        if self.cuda:
            self.marks[-1].record()

    def mean_ms(self):
        if self.cuda:
            torch.cuda.synchronize()
        starts, ends, self.marks = self.marks[0::2], self.marks[1::2], []
        times = [start.elapsed_time(end) if self.cuda else 1000 * (end - start) for start, end in zip(starts, ends)]
        return float(np.mean(times)) if times else float("nan")


def keep_freed_memory():
    """glibc hands freed blocks over 128 KiB back to the OS, so each large temporary of an eager update page-faults
    anew (elementwise ops on 1280 x 256 tensors ran 4x slower). Keep blocks up to 32 MiB in the process (glibc only)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    libc.mallopt(-3, 32 << 20)  # M_MMAP_THRESHOLD
    libc.mallopt(-1, 256 << 20)  # M_TRIM_THRESHOLD


def export_sampler(actor):
    """The no-grad sampler as an AOTInductor package (torch.export, then inductor's C++ kernels and wrapper): one
    package for every batch size, with the parameters and buffers as inputs, so that it follows every in-place change
    (each optimizer step), and that runs without torch.compile's guards and Python wrapper (single-state actions in
    under 0.1 ms on one CPU thread)."""
    import torch._inductor

    tensors = dict(actor.named_parameters()) | dict(actor.named_buffers())
    names, weights = list(tensors), list(tensors.values())

    class Sampler(nn.Module):  # actor.sample(obs, noise), with the actor's parameters and buffers as inputs when given
        def __init__(self):
            super().__init__()
            self.actor = actor

        def forward(self, obs, noise, *weights):
            if not weights:
                return self.actor.sample(obs, noise)
            return torch.func.functional_call(self, {f"actor.{n}": w for n, w in zip(names, weights)}, (obs, noise))

    batch = torch.export.Dim("batch", min=1)  # traced at batch 2: an example batch of 1 would specialise to it
    example = (torch.zeros(2, actor.obs_dim), torch.zeros(actor.T, 2, actor.act_dim), *(w.detach() for w in weights))
    with warnings.catch_warnings(), tempfile.TemporaryDirectory() as folder:
        warnings.simplefilter("ignore", FutureWarning)  # torch's own deprecations inside export
        program = torch.export.export(Sampler(), example,
                                      dynamic_shapes=({0: batch}, {1: batch}, (None,) * len(weights)))  # fmt: skip
        package = torch._inductor.aoti_load_package(
            torch._inductor.aoti_compile_and_package(program, package_path=os.path.join(folder, "sampler.pt2")))
    return lambda obs, noise: package(obs, noise, *weights)


def compile_functions(actor, device, critic_loss, actor_loss):
    """--compile: both losses (the chains inside them, forward and backward) through torch.compile, which follows
    whatever the networks are; the sampler's calls without gradient (acting, evaluation, the GMM's samples) through an
    AOTInductor package on the CPU (export_sampler), torch.compile on GPU. Same random numbers as eager. Where
    compiling does not work, one line says so and everything stays eager. Returns the critic and actor losses to use."""
    import torch._dynamo
    import torch._inductor.config

    torch._inductor.config.cpp_wrapper = device.type == "cpu"
    torch._inductor.config.fallback_random = True  # torch's own random streams, as without --compile
    compiled_sample = torch.compile(actor.sample)
    try:  # compile now, so that a platform without a working compiler fails here and not mid-run
        with torch.no_grad(), torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            if device.type == "cpu":
                exported = export_sampler(actor)
            else:  # the batch-1 graph
                compiled_sample(torch.zeros(1, actor.obs_dim, device=device))
    except Exception as e:
        print(f"--compile: torch.compile does not work here ({error_summary(e)}); everything runs eagerly")
        return critic_loss, actor_loss
    torch._dynamo.config.suppress_errors = True  # a later graph that fails to compile runs eagerly
    plain_sample = actor.sample

    def sample(obs, noise=None, keep_chain=False):
        if keep_chain or torch.is_grad_enabled() or torch.compiler.is_compiling():  # inside the compiled losses
            return plain_sample(obs, noise, keep_chain)
        if device.type == "cpu":
            return exported(obs, actor.draw_noise(obs) if noise is None else noise)  # the same random numbers
        return compiled_sample(obs, noise)

    actor.sample = sample
    return torch.compile(critic_loss), torch.compile(actor_loss)


def fixed_run_name(args):
    """The run folder's name under --resume-if-exists: the same for every start of a run (no time in it)."""
    return f"{resolve_env_id(args.env_id, quiet=True)}__{args.exp_name}__{args.seed}"


def parse_args(args_class, presets, argv=None):
    """tyro CLI of the script's Args (args_class); --preset's flags (presets) and, with --resume, the checkpoint's
    arguments are the defaults that the given flags override. Returns args and the checkpoint (or None)."""
    argv, checkpoint, defaults = sys.argv[1:] if argv is None else argv, None, args_class()
    for i, arg in enumerate(argv):
        if arg == "--resume" or arg.startswith("--resume="):
            path = arg.partition("=")[2] or (argv[i + 1] if i + 1 < len(argv) else "")
            checkpoint = load_checkpoint(path)
            saved = {k: v for k, v in checkpoint["args"].items() if k in args_class.__dataclass_fields__}
            defaults = args_class(**{**saved, "resume": path})

    def cli(defaults):
        tyro_errors = io.StringIO()
        try:
            with contextlib.redirect_stderr(tyro_errors):
                return tyro.cli(args_class, default=defaults, args=argv)
        except SystemExit as e:
            if e.code:  # tyro's boxed message -> its text
                lines = [line.strip("│ ") for line in tyro_errors.getvalue().splitlines() if line.startswith("│")]
                message = " ".join(itertools.takewhile(lambda line: not line.startswith("─"), lines))
                fail(f"{message or 'invalid arguments'} (see --help)")
            raise

    args = cli(defaults)
    preset = getattr(args, "preset", None)
    if preset and preset != defaults.preset:  # its flags become the defaults that the flags given override
        args = cli(replace(defaults, **presets[preset]))

    def checked(*names):  # the flags of these that Args has: an edited copy may have dropped some
        return [name for name in names if hasattr(args, name)]

    for name in checked("num_envs", "batch_size", "diffusion_steps", "total_timesteps", "buffer_size", "hidden_dim",
                        "num_layers", "num_critics", "eval_frequency", "eval_episodes", "policy_frequency",
                        "alpha_update_frequency", "log_frequency", "gmm_components", "gmm_samples", "torch_threads",
                        "policy_lr", "q_lr", "alpha_lr", "init_alpha", "reward_scale", "gamma", "tau"):  # fmt: skip
        value = getattr(args, name)
        if not value > 0 or not math.isfinite(value):
            fail(f"--{name.replace('_', '-')} must be positive, got {value}")
    for name in checked("gamma", "tau"):
        if getattr(args, name) > 1:
            fail(f"--{name} must be at most 1, got {getattr(args, name)}")
    non_negative = ("checkpoint_frequency", "learning_starts", "noise_scale", "target_entropy_scale", "q_grad_coef")
    for name in checked(*non_negative):
        value = getattr(args, name)
        if value is not None and (not value >= 0 or not math.isfinite(value)):
            fail(f"--{name.replace('_', '-')} must be non-negative, got {value}")
    for name in checked("env_id", "diffusion_steps") if checkpoint else ():  # no network weight depends on T
        if checkpoint["args"].get(name) != getattr(args, name):
            fail(f"--resume: the checkpoint was trained with --{name.replace('_', '-')} {checkpoint['args'][name]}")
    if getattr(args, "learning_starts", 0) > getattr(args, "buffer_size", math.inf):
        fail(f"--learning-starts ({args.learning_starts}) must not exceed --buffer-size ({args.buffer_size})")
    own_checkpoint = f"runs/{fixed_run_name(args)}/{args.exp_name}.pt" if args.resume_if_exists else None
    if own_checkpoint and not checkpoint and os.path.isfile(own_checkpoint):
        return parse_args(args_class, presets, ["--resume", own_checkpoint, *argv])  # its own flags again
    if checkpoint and checkpoint["global_step"] >= args.total_timesteps and args.resume_if_exists:
        print(f"{checkpoint['run_name']} has reached --total-timesteps {args.total_timesteps}: nothing to do")
        sys.exit(0)
    if os.path.exists("runs") and not (os.path.isdir("runs") and os.access("runs", os.W_OK)):
        fail(f"cannot write run folders: {os.path.abspath('runs')} is not a writable folder")
    if not os.path.exists("runs") and not os.access(".", os.W_OK):
        fail(f"cannot write run folders: {os.path.abspath('.')} is not writable")
    return args, checkpoint
