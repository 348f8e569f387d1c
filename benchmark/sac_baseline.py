"""SAC baseline: Stable-Baselines3's SAC, run and logged like dacerv2_continuous.py so that report.py and the learning
curves put it beside DACERv2 and DACER (README "Results").

Usage: python benchmark/sac_baseline.py --env-id Hopper-v4 --seed 1 --total-timesteps 60000 --num-envs 1 \
           --learning-starts 5000 --eval-frequency 2000
Needs `pip install -r benchmark/requirements.txt` (stable-baselines3). The same as the training script:
- env ids (the paper's -v2/-v3 MuJoCo ids run as -v4), seeding (train env i: seed + i; evaluation env i:
  seed + 10,000 + i), uniform random actions for --learning-starts env steps, then one gradient update per vector
  step (an iteration), batch 256, buffer 1 M, gamma 0.99, tau 0.005;
- evaluation: every --eval-frequency iterations and at the end, the mean return of one episode on each of
  --eval-episodes envs, with the deterministic action (the mean of the squashed Gaussian: SAC's usual evaluation);
- run folder runs/{env_id}__{exp_name}__{seed}__{unix_time} and the TensorBoard tags eval/episodic_return,
  charts/episodic_return, charts/episodic_length, charts/SPS and the hyperparameters text;
- checkpoints (--checkpoint-frequency, and on SIGINT / SIGTERM, which exit 128 + the signal) and --resume-if-exists
  (run folder runs/{env_id}__{exp_name}__{seed}, continued from its checkpoint: what a requeued Slurm task runs).
  The checkpoint is SB3's own, model and replay buffer (runs/{run_name}/sac.zip, sac_buffer.pkl); a continued run
  starts new episodes, so it is not bit-identical to an uninterrupted one.
SAC itself keeps SB3's defaults (learning rate 3e-4 for actor, critics and temperature; automatic temperature with
target entropy -dim(A); two 256-unit hidden layers, ReLU).
"""

import os
import signal
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
import tyro
from torch.utils.tensorboard import SummaryWriter

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from dacerv2_continuous import fail, resolve_env_id  # noqa: E402  (one env-id mapping and one error format)


@dataclass
class Args:
    exp_name: str = "sac"
    """the name of this experiment (used in the run name)"""
    seed: int = 1
    """the seed of the experiment"""
    cuda: bool = True
    """if toggled, use CUDA when it is available"""
    torch_threads: int = 1
    """the number of CPU threads of torch"""
    env_id: str = "Hopper-v4"
    """the id of the environment"""
    total_timesteps: int = 1_000_000
    """total environment steps over all envs"""
    num_envs: int = 1
    """the number of parallel envs; one iteration = one step of every env + one gradient update"""
    buffer_size: int = 1_000_000
    """the replay memory buffer size, in transitions"""
    gamma: float = 0.99
    """the discount factor gamma"""
    tau: float = 0.005
    """the target-critic smoothing coefficient"""
    batch_size: int = 256
    """the batch size of sample from the replay memory"""
    learning_starts: int = 5_000
    """the number of environment steps with uniform random actions before learning starts"""
    learning_rate: float = 3e-4
    """the learning rate of the actor, the critics and the temperature (SB3's default)"""
    eval_frequency: int = 15_000
    """the evaluation interval, in iterations (and once more at the end)"""
    eval_episodes: int = 10
    """the number of episodes per evaluation"""
    dry_run: bool = False
    """if toggled, check the arguments and the env, and exit (benchmark/ launchers do)"""
    resume_if_exists: bool = False
    """if toggled, the run folder is runs/{env_id}__{exp_name}__{seed}; a run continues from its checkpoint (Slurm)"""
    checkpoint_frequency: int = 0
    """the interval of checkpoints (model and replay buffer), in iterations; 0: only on SIGINT/SIGTERM"""


def save_checkpoint(model, folder):
    """SB3's model and replay buffer into folder, each written under a temporary name and then renamed."""
    for save, name in ((model.save_replay_buffer, "sac_buffer.pkl"), (model.save, "sac.zip")):
        temporary = folder / f"tmp_{name}"
        save(temporary)
        os.replace(temporary, folder / name)


def make_env(env_id, seed, record_episodes=False):
    def thunk():
        env = gym.make(env_id)
        env.action_space.seed(seed)
        return gym.wrappers.RecordEpisodeStatistics(env) if record_episodes else env

    return thunk


@torch.no_grad()
def evaluate(model, eval_envs, seed):
    """Mean return of one episode per eval env with SAC's deterministic action (as the training script evaluates)."""
    obs, _ = eval_envs.reset(seed=seed)
    returns = np.full(eval_envs.num_envs, np.nan)
    while np.isnan(returns).any():
        actions, _ = model.predict(obs, deterministic=True)
        obs, _, _, _, infos = eval_envs.step(actions)
        if "final_info" in infos:
            finished = infos["final_info"]["_episode"] & np.isnan(returns)
            returns[finished] = infos["final_info"]["episode"]["r"][finished]
    return float(returns.mean())


def main():
    args = tyro.cli(Args)
    for name in ("num_envs", "total_timesteps", "batch_size", "buffer_size", "eval_frequency", "eval_episodes"):
        if getattr(args, name) <= 0:
            fail(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if args.checkpoint_frequency < 0:
        fail(f"--checkpoint-frequency must be >= 0, got {args.checkpoint_frequency}")
    try:
        from stable_baselines3 import SAC
        from stable_baselines3.common.callbacks import BaseCallback
        from stable_baselines3.common.logger import Logger as SB3Logger
        from stable_baselines3.common.vec_env import DummyVecEnv, VecMonitor
    except ImportError:
        fail("the SAC baseline needs stable-baselines3: pip install -r benchmark/requirements.txt")
    env_id = resolve_env_id(args.env_id)
    if args.dry_run:
        gym.make(env_id).close()
        print(f"dry run: the arguments and {env_id} check out")
        return
    warnings.filterwarnings("ignore", category=UserWarning, module="stable_baselines3")
    torch.set_num_threads(args.torch_threads)
    device = "cuda" if args.cuda and torch.cuda.is_available() else "cpu"
    run_name = f"{env_id}__{args.exp_name}__{args.seed}" + ("" if args.resume_if_exists else f"__{int(time.time())}")
    folder, envs_autoreset = Path("runs", run_name), gym.vector.AutoresetMode.SAME_STEP
    resume = args.resume_if_exists and (folder / "sac.zip").is_file() and (folder / "sac_buffer.pkl").is_file()
    envs = VecMonitor(DummyVecEnv([make_env(env_id, args.seed + i) for i in range(args.num_envs)]))
    envs.seed(args.seed)
    eval_envs = gym.vector.SyncVectorEnv([make_env(env_id, args.seed + 10_000 + i, True)
                                          for i in range(args.eval_episodes)], autoreset_mode=envs_autoreset)
    # SB3 starts training once num_timesteps > learning_starts; one gradient step per vector step after that
    if resume:
        model = SAC.load(folder / "sac.zip", env=envs, device=device)
        model.load_replay_buffer(folder / "sac_buffer.pkl")
        if model.num_timesteps >= args.total_timesteps:
            print(f"runs/{run_name} is complete ({model.num_timesteps} env steps): nothing to do")
            return
        print(f"resuming {run_name} at step {model.num_timesteps} with its replay buffer")
    else:
        model = SAC("MlpPolicy", envs, learning_rate=args.learning_rate, buffer_size=args.buffer_size, gamma=args.gamma,
                    tau=args.tau, batch_size=args.batch_size, learning_starts=args.learning_starts, train_freq=1,
                    gradient_steps=1, seed=args.seed, device=device, verbose=0)
        for stale in folder.glob("events.out.tfevents.*"):  # a start that wrote no checkpoint
            stale.unlink()
    start_step, start_time = model.num_timesteps, time.time()
    writer = SummaryWriter(str(folder), purge_step=start_step if resume else None)  # drop points after the checkpoint
    hparams = {**vars(args), "env_id": env_id, "env_id_requested": args.env_id, "algorithm": "stable-baselines3 SAC"}
    writer.add_text("hyperparameters", "|param|value|\n|-|-|\n" + "\n".join(f"|{k}|{v}|" for k, v in hparams.items()))
    stop_signals = []  # SIGINT, SIGTERM: end the vector step, save a checkpoint, exit 128 + signal
    for stop in (signal.SIGINT, signal.SIGTERM):
        signal.signal(stop, lambda signum, frame: stop_signals.append(signum))

    class Logger(BaseCallback):
        """Per vector step: training episodes, the evaluation every eval_frequency iterations and at the end, and
        checkpoints; returns False (SB3 stops) on a stop signal."""

        def _on_step(self):
            global_step = self.num_timesteps - args.num_envs  # the training script logs the step before the vector step
            for info in self.locals["infos"]:
                if "episode" in info:
                    writer.add_scalar("charts/episodic_return", info["episode"]["r"], global_step)
                    writer.add_scalar("charts/episodic_length", info["episode"]["l"], global_step)
            iteration = max(0, (self.num_timesteps - args.learning_starts) // args.num_envs)
            if (iteration > 0 and iteration % args.eval_frequency == 0) or self.num_timesteps >= args.total_timesteps:
                last_eval = evaluate(self.model, eval_envs, seed=args.seed + 10_000 + iteration)
                writer.add_scalar("eval/episodic_return", last_eval, global_step)
                sps = int((self.num_timesteps - start_step) / (time.time() - start_time))
                writer.add_scalar("charts/SPS", sps, global_step)
                print(f"global_step={global_step}, iteration={iteration}, eval/episodic_return={last_eval:.2f}")
            if args.checkpoint_frequency and iteration > 0 and iteration % args.checkpoint_frequency == 0:
                save_checkpoint(self.model, folder)
            return not stop_signals

    model.set_logger(SB3Logger(folder=None, output_formats=[]))  # SB3's own has no output here but makes a /tmp folder
    model.learn(total_timesteps=args.total_timesteps - start_step, callback=Logger(), reset_num_timesteps=not resume)
    envs.close()
    eval_envs.close()
    writer.close()
    if stop_signals or args.resume_if_exists or args.checkpoint_frequency:  # a relaunch finds the run complete
        save_checkpoint(model, folder)
    if stop_signals:
        print(f"stopped by {signal.Signals(stop_signals[0]).name} at step {model.num_timesteps}; checkpoint saved to "
              f"{folder}/sac.zip (continue with --resume-if-exists)")
        sys.exit(128 + stop_signals[0])
    print(f"run folder: {folder}")

if __name__ == "__main__":
    main()
