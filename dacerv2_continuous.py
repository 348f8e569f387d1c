# DACERv2 (Wang et al. 2025): diffusion policy, 5 steps, Q-gradient field guidance. Docs and results: README.md
import contextlib
import copy
import ctypes
import difflib
import hashlib
import importlib.util
import io
import itertools
import json
import math
import os
import random
import shlex
import signal
import sys
import time
import warnings
import zipfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Literal, Optional

import gymnasium as gym
import mujoco
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import tyro
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm


@dataclass
class Args:
    exp_name: str = Path(__file__).stem
    """the name of this experiment (used in the run name)"""
    seed: int = 1
    """the seed of the experiment"""
    cuda: bool = True
    """if toggled, use CUDA when it is available (a notice is printed and the CPU is used otherwise)"""
    torch_threads: int = 1
    """the number of CPU threads of torch (1 is fastest for these small networks, and safe for parallel runs)"""
    compile: bool = False
    """if toggled, torch.compile the losses and the acting function (README "Implementation details")"""
    capture_video: bool = False
    """whether to record videos of env 0 (in `videos/RUN_NAME`; README: Set-up, for rendering without a display)"""
    save_model: bool = False
    """whether to save a checkpoint to `runs/{run_name}/{exp_name}.pt` at the end of training"""
    checkpoint_frequency: int = 0
    """the interval of periodic checkpoints (same file), in iterations; 0: only --save-model's and on SIGINT/SIGTERM"""
    checkpoint_buffer: bool = False
    """whether checkpoints include the replay buffer's filled rows (needed for an exact resume)"""
    resume: Optional[str] = None
    """the path of a checkpoint to continue training from (its arguments are the defaults; flags given override)"""
    resume_if_exists: bool = False
    """if toggled, the run folder is runs/{env_id}__{exp_name}__{seed}; a run continues from its checkpoint (Slurm)"""
    force_resume: bool = False
    """if toggled, --resume continues a checkpoint written by another version of this script, with this one's code"""
    eval_only: bool = False
    """if toggled, evaluate the policy of --resume (without it: the untrained network of --seed) and exit"""
    eval_dir: Optional[str] = None
    """where --eval-only writes eval.json (and multimodality.png on Multi-goal); default: {stem}_eval beside --resume"""
    dry_run: bool = False
    """if toggled, check the arguments, the env and the checkpoint to resume, and exit (benchmark/ launchers do)"""
    log_frequency: int = 1_000
    """the interval of the logged losses and the progress bar's figures, in iterations"""
    print_episodes: bool = False
    """whether to print one line per finished training episode (TensorBoard has every episode either way)"""

    # Algorithm specific arguments
    env_id: str = "Hopper-v4"
    """the id of the environment (the paper's `-v2/-v3` MuJoCo ids run as the matching `-v4` env)"""
    total_timesteps: int = 30_000_000
    """total environment steps over all envs (paper: 1.5M iterations x 20 envs)"""
    num_envs: int = 20
    """the number of parallel envs; one iteration = one step of every env + one gradient update"""
    buffer_size: int = 1_000_000
    """the replay memory buffer size, in transitions"""
    gamma: float = 0.99
    """the discount factor gamma"""
    tau: float = 0.005
    """the target-critic smoothing coefficient (also the rate of the critics' running mean std omega)"""
    batch_size: int = 256
    """the batch size of sample from the replay memory"""
    learning_starts: int = 30_000
    """the number of environment steps with uniform random actions before learning starts"""
    policy_lr: float = 1e-4
    """the learning rate of the diffusion policy optimizer"""
    q_lr: float = 1e-4
    """the learning rate of the critic optimizer"""
    alpha_lr: float = 3e-2
    """the learning rate of log(alpha)"""
    policy_frequency: int = 2
    """the interval of actor and target-critic updates, in iterations"""
    alpha_update_frequency: int = 10_000
    """the interval of the GMM entropy estimate and the alpha update, in iterations"""
    reward_scale: float = 0.2
    """the factor applied to rewards inside the learner (returns are logged unscaled)"""
    diffusion_steps: int = 5
    """the number of denoising steps T (DACER: 20)"""
    q_grad_coef: Optional[float] = None
    """the weight eta of the Q-gradient-field loss L_g; default: the paper's per-task value (0 disables L_g = DACER)"""
    time_weight: bool = True
    """if toggled, weight the Q-gradient target by w_j = exp(c j + d); otherwise w_j = 1"""
    q_grad_norm: bool = True
    """if toggled, normalise the Q-gradient to unit L2 norm per sample"""
    q_grad_one_step: bool = False
    """if toggled, L_g's expectation over t ~ U(1, T) uses one random step per state instead of all T (T x cheaper)"""
    noise_scale: float = 0.1
    """the exploration noise scale lambda: the executed action is clip(a0 + lambda * alpha * xi, -1, 1)"""
    init_alpha: float = 3.0
    """the initial alpha of the entropy regulator (alpha scales the exploration noise)"""
    target_entropy_scale: float = 1.0
    """the target entropy is -scale * dim(A) (paper: 1.0, DACER code: 0.9)"""
    gmm_components: int = 3
    """the number of components of the per-state GMM entropy estimate"""
    gmm_samples: int = 200
    """the number of sampled actions per state for the GMM entropy estimate"""
    critic_loss: Literal["dsac-t", "td"] = "dsac-t"
    """the critics' loss: DSAC-T's (paper Eq. 14), or "td", a plain TD loss (mu - y)^2 on their means (ours, README)"""
    num_critics: int = 2
    """the number of critics; targets and L_q, L_g use the smallest mean (paper: twin critics, 2)"""
    hidden_dim: int = 256
    """the width of the hidden layers of the actor and critics"""
    num_layers: int = 2
    """the number of hidden layers of the actor and critics (paper Table 6: 2; DACER code: 3)"""
    eval_frequency: int = 15_000
    """the evaluation interval, in iterations (and once more when the run reaches --total-timesteps)"""
    eval_episodes: int = 10
    """the number of episodes per evaluation"""
    preset: Literal["none", "short"] = "none"
    """a named set of the flags above (PRESETS; ours, not the paper's): the flags given override it"""


def check_args(args, checkpoint=None):
    """Refuses out-of-range flags with one error line each. A flag you add gets its check here."""
    positive = ("num_envs", "batch_size", "diffusion_steps", "total_timesteps", "buffer_size", "hidden_dim",
                "num_layers", "num_critics", "eval_frequency", "eval_episodes", "policy_frequency",
                "alpha_update_frequency", "log_frequency", "gmm_components", "gmm_samples", "torch_threads",
                "policy_lr", "q_lr", "alpha_lr", "init_alpha", "reward_scale", "gamma", "tau")
    non_negative = ("checkpoint_frequency", "learning_starts", "noise_scale", "target_entropy_scale", "q_grad_coef")
    for name in positive + non_negative:
        value = getattr(args, name)
        if value is not None and (not math.isfinite(value) or value < 0 or value == 0 and name in positive):
            kind = "positive" if name in positive else "non-negative"
            fail(f"--{name.replace('_', '-')} must be a finite {kind} number, got {value}")
        if name in ("gamma", "tau") and value > 1:
            fail(f"--{name} must be at most 1, got {value}")
    if not 0 <= args.seed < 2**32:
        fail(f"--seed must be in [0, 2^32), got {args.seed}")
    if args.learning_starts > args.buffer_size:
        fail(f"--learning-starts ({args.learning_starts}) must not exceed --buffer-size ({args.buffer_size})")
    if args.learning_starts < args.batch_size:  # else the first batches repeat a handful of transitions
        fail(f"--learning-starts ({args.learning_starts}) must be at least --batch-size ({args.batch_size})")
    if checkpoint and checkpoint.get("buffer", {}).get("size", 0) > args.buffer_size:
        fail(f"--resume: the checkpoint's replay buffer holds {checkpoint['buffer']['size']} transitions, more than "
             f"--buffer-size {args.buffer_size}: leave the flag out, or give at least that")
    for name in ("env_id", "diffusion_steps") + (() if args.eval_only else ("num_envs",)) if checkpoint else ():
        if checkpoint["args"].get(name) != getattr(args, name):  # a run keeps these
            fail(f"--resume: the checkpoint was trained with --{name.replace('_', '-')} {checkpoint['args'].get(name)}"
                 "; a run keeps it: leave the flag out, or start a new run without --resume")


# η of paper Table 5 (our reading); other tasks 1.0. MultiGoal: 100, since with 1.0 it collapses onto one goal (README)
Q_GRAD_COEF = {"Hopper": 1.0, "Ant": 1.0, "HalfCheetah": 1.0, "Walker2d": 1.0, "MultiGoal": 100.0,
               "HumanoidStandup": 0.01, "Humanoid": 0.01, "Swimmer": 0.01, "InvertedDoublePendulum": 0.01}
# --preset short: for 10^4-10^5 iterations (a CPU's budget), where the paper's settings learn slowly (README "Results")
PRESETS = {"none": {}, "short": {"policy_lr": 3e-4, "q_lr": 3e-4, "init_alpha": 0.3, "alpha_update_frequency": 200}}


def task_and_q_grad_coef(env_id, q_grad_coef=None):
    """The task's name (MultiGoal for every MultiGoal env) and eta: q_grad_coef when given, else Q_GRAD_COEF's value."""
    task = "MultiGoal" if env_id.startswith("MultiGoal") else env_id.rpartition("-")[0]
    if q_grad_coef is None:
        q_grad_coef = Q_GRAD_COEF.get(task, 1.0)
        source = "README: Results" if task == "MultiGoal" else "paper Table 5"
        print(f"q_grad_coef (eta) = {q_grad_coef} for {task} ({source}; set it with --q-grad-coef)")
    return task, q_grad_coef


def make_env(env_id, seed, idx, capture_video, run_name):
    def thunk():
        render = "rgb_array" if (capture_video and idx == 0) else None
        env = gym.make(env_id, render_mode=render)
        if render:
            env = gym.wrappers.RecordVideo(env, f"videos/{run_name}")
        env = gym.wrappers.RecordEpisodeStatistics(env)
        # TRY NOT TO MODIFY: the policy acts in [-1, 1]^d; this wrapper is the one place that maps to env bounds
        env = gym.wrappers.RescaleAction(env, np.float32(-1.0), np.float32(1.0))  # float32: no precision warning
        env.action_space.seed(seed)
        return env

    return thunk


class ReplayBuffer:
    """Transitions (s, a in [-1,1], r, s', terminated) in preallocated tensors on the training device."""

    def __init__(self, capacity, obs_dim, act_dim, device):
        self.capacity, self.size, self.pos, self.device = capacity, 0, 0, device
        shapes = {"obs": (obs_dim,), "actions": (act_dim,), "rewards": (), "next_obs": (obs_dim,), "terminations": ()}
        self.data = {k: torch.empty(capacity, *shape, device=device) for k, shape in shapes.items()}  # RAM as filled

    def add(self, obs, next_obs, actions, rewards, terminations):
        idx = torch.arange(self.pos, self.pos + len(obs)) % self.capacity
        for name, value in zip(self.data, (obs, actions, rewards, next_obs, terminations)):
            self.data[name][idx] = torch.as_tensor(value, dtype=torch.float32).to(self.device, non_blocking=True)
        self.pos, self.size = (self.pos + len(obs)) % self.capacity, min(self.size + len(obs), self.capacity)

    def sample(self, batch_size):
        """obs, actions, rewards, next_obs, terminations of batch_size random transitions."""
        idx = torch.randint(0, self.size, (batch_size,), device=self.device)
        return tuple(value[idx] for value in self.data.values())

    def state_dict(self):
        # a copy of the filled rows: a view would save the whole preallocated storage
        return {"pos": self.pos, "size": self.size, **{k: v[: self.size].to("cpu", copy=True) for k, v in
                                                         self.data.items()}}

    def load_state_dict(self, state):  # into a larger buffer, new rows go after the saved ones
        self.size = state["size"]
        self.pos = state["pos"] if self.size == self.capacity else self.size
        for k, v in self.data.items():
            v[: self.size] = state[k].to(self.device)


# ALGO LOGIC: VP noise schedule (paper App. D), network time index j = 0..T-1 (j = T-1: the first reverse step)
B_MIN, B_MAX = 0.1, 10.0  # the VP schedule's beta range; Eq. 11's time weights are fitted to it


def vp_schedule(T, b_min=B_MIN, b_max=B_MAX):
    """Per-step coefficients of the reverse sampler, in float64 (kappa: DDPM's alpha_t)."""
    i = np.arange(1, T + 1)
    kappa = np.exp(-b_min / T - (b_max - b_min) * (2 * i - 1) / (2 * T**2))
    beta, kappa_bar = 1 - kappa, np.cumprod(kappa)
    kappa_bar_prev = np.concatenate([[1.0], kappa_bar[:-1]])
    return {"beta": beta, "kappa_bar": kappa_bar, "sqrt_recip_kappa_bar": 1 / np.sqrt(kappa_bar),
            "sqrt_recip_kappa_bar_m1": np.sqrt(1 / kappa_bar - 1),
            "posterior_std": np.sqrt(beta * (1 - kappa_bar_prev) / (1 - kappa_bar)),
            "posterior_c1": beta * np.sqrt(kappa_bar_prev) / (1 - kappa_bar),
            "posterior_c2": (1 - kappa_bar_prev) * np.sqrt(kappa) / (1 - kappa_bar)}


def q_grad_time_weights(T, time_weight=True, b_min=B_MIN, b_max=B_MAX):
    """w_j = exp(c j + d), j = 0..T-1, of L_g's target (paper Eq. 11, App. D), c and d the exact fit of the reversed VP
    alphas kappa_{T-1-j}; all ones without time weighting."""
    c, d = (b_max - b_min) / T**2, -b_min / T - (b_max - b_min) * (2 * T - 1) / (2 * T**2)
    return torch.exp(c * torch.arange(T) + d) if time_weight else torch.ones(T)


# ALGO LOGIC: networks. Each is one plain nn.Module; every use (acting, a', the losses, the GMM, evaluation and the
# compiled paths) calls it, and autograd computes every gradient (README: Modifying the script).
class Mish(nn.Module):
    """Mish(x) = x tanh(softplus(x)), the actor's activation (DACER); compiled, the same function as x n / (n + 2),
    n = e^x (e^x + 2), which inductor fuses into one kernel (docs/implementation.md)."""

    def forward(self, x):
        if torch.compiler.is_compiling():
            e = torch.exp(x.clamp(max=20.0))
            n = e * (e + 2)
            return x * n / (n + 2)
        return x * torch.tanh(F.softplus(x))


def mlp(in_dim, hidden_dim, num_layers, out_dim, activation):
    """num_layers x (Linear -> activation), then a Linear to out_dim."""
    layers = []
    for i in range(num_layers):
        layers += [nn.Linear(in_dim if i == 0 else hidden_dim, hidden_dim), activation()]
    return nn.Sequential(*layers, nn.Linear(hidden_dim, out_dim))


class DiffusionActor(nn.Module):
    """The noise-predicting network eps_theta(s, x, j) (DACER's DACERPolicyNet) and its sampler (paper Eq. 6)."""

    def __init__(self, obs_dim, act_dim, hidden_dim, num_layers, diffusion_steps, activation=Mish):
        super().__init__()
        self.obs_dim, self.act_dim, self.T = obs_dim, act_dim, diffusion_steps
        # sinusoidal embedding of the integer step j: (1/4) [sin(j w_k), cos(j w_k)], w_k = 10000^(-k/8), k = 0..7
        angles = torch.arange(diffusion_steps)[:, None] * 10000.0 ** (-torch.arange(8) / 8)
        self.register_buffer("time_sinusoid", torch.cat([angles.sin(), angles.cos()], -1) / 4, persistent=False)
        self.time_mlp = nn.Sequential(nn.Linear(16, 32), activation(), nn.Linear(32, 16))  # e(j)
        self.net = mlp(obs_dim + act_dim + 16, hidden_dim, num_layers, act_dim, activation)  # on [s, x, e(j)]
        s = {k: v.tolist() for k, v in vp_schedule(diffusion_steps).items()}  # python floats: no per-step indexing
        self.coef_x0_x, self.coef_x0_eps = s["sqrt_recip_kappa_bar"], s["sqrt_recip_kappa_bar_m1"]
        self.coef_mu_x0, self.coef_mu_x, self.posterior_std = s["posterior_c1"], s["posterior_c2"], s["posterior_std"]

    def time_embedding(self, j):
        """e(j) for a step index j (an int) or one per row (a LongTensor)."""
        return self.time_mlp(self.time_sinusoid[j])

    def forward(self, obs, x, e):
        """eps_theta(s, x, j) from e = time_embedding(j)."""
        return self.net(torch.cat([obs, x, e.expand(*x.shape[:-1], -1)], -1))

    def draw_noise(self, obs, generator=None):
        """The sampler's random numbers for a batch of states, (T, B, d): see sample. Drawn from generator, on its
        device, or else from torch's default stream on the states' device."""
        device = obs.device if generator is None else generator.device
        return torch.randn(self.T, obs.shape[0], self.act_dim, generator=generator, device=device, dtype=obs.dtype)

    def sample(self, obs, noise=None, keep_chain=False):
        """Reverse DDPM chain, j = T-1 .. 0 (paper Eq. 6), differentiable end to end. noise (T, B, d): noise[0] is the
        initial x ~ N(0, I), noise[j] the step noise z_j (step 0 adds none). Returns a0 in [-1, 1] and, with
        keep_chain, the chain inputs x_j stacked as (T, B, d) (index j) for L_g."""
        if noise is None:
            noise = self.draw_noise(obs)
        x, chain = noise[0], [None] * self.T
        e = self.time_embedding(torch.arange(self.T, device=obs.device))  # every step's e(j), once per chain
        for j in reversed(range(self.T)):
            chain[j] = x
            eps = self(obs, x, e[j])
            # clipped predicted clean action x0 = clip(x / sqrt(kb_j) - eps sqrt(1/kb_j - 1), -1, 1)
            x0 = (x * self.coef_x0_x[j] - eps * self.coef_x0_eps[j]).clamp(-1.0, 1.0)
            x = self.coef_mu_x0[j] * x0 + self.coef_mu_x[j] * x  # posterior mean c1 x0 + c2 x
            if j > 0:  # c1_0 = 1, c2_0 = 0: the last step returns x0
                x = x + self.posterior_std[j] * noise[j]
        return (x, torch.stack(chain)) if keep_chain else x


def policy_action(actor, obs, alpha, noise_scale, a0=None):
    """An action of the policy pi(a|s): a = clip(a0 + lambda * alpha * xi, -1, 1) (DACER), for a0 given or sampled at
    obs. Acting, a' of the critics' targets, L_q's action and the GMM's samples all use it."""
    a0 = actor.sample(obs) if a0 is None else a0
    return (a0 + noise_scale * alpha * torch.randn_like(a0)).clamp(-1.0, 1.0)


class Critic(nn.Module):
    """One Gaussian distributional critic Z(s, a) ~ N(mu, sigma^2) (DSAC-T): an MLP on [s, a], GELU (paper Table 6)."""

    def __init__(self, obs_dim, act_dim, hidden_dim, num_layers, activation=nn.GELU):
        super().__init__()
        self.net = mlp(obs_dim + act_dim, hidden_dim, num_layers, 2, activation)

    def forward(self, obs, actions):
        """mu, sigma = softplus(raw) of shape (B,)."""
        out = self.net(torch.cat([obs, actions], -1))
        return out[..., 0], F.softplus(out[..., 1])


class CriticEnsemble(nn.Module):
    """Independent critics (nn.Modules with Critic's signature); forward returns mu, sigma of shape (num_critics, B)."""

    def __init__(self, critics):
        super().__init__()
        self.critics = nn.ModuleList(critics)

    def forward(self, obs, actions):
        mu, sigma = zip(*(critic(obs, actions) for critic in self.critics))
        return torch.stack(mu), torch.stack(sigma)


def smallest_mean(critic, obs, actions):
    """min_i mu_i(s, a) over the critics: the Q that the actor maximises (paper Eq. 15)."""
    return critic(obs, actions)[0].min(0).values


# ALGO LOGIC: losses
def critic_targets(critic_target, rewards, next_obs, next_actions, terminations, gamma):
    """Targets of paper Eq. 14, twin value distribution learning (DSAC-T): y from the smallest target mean, y_s from
    that critic's sample."""
    mu, sigma = critic_target(next_obs, next_actions)
    q_sample = mu + sigma * torch.randn_like(mu).clamp(-3.0, 3.0)
    smallest = mu.argmin(0, keepdim=True)
    discount = gamma * (1 - terminations)
    y = rewards + discount * mu.gather(0, smallest).squeeze(0)
    y_sample = rewards + discount * q_sample.gather(0, smallest).squeeze(0)
    return y, y_sample


def dsac_critic_loss(mu, sigma, y, y_sample, omega, eps=0.1):
    """DSAC-T critic loss per critic (paper Eq. 14), mu, sigma (num_critics, B), omega (num_critics,); its gradient
    wrt mu is -(omega^2 + eps)(y - mu)/(sigma^2 + eps), wrt sigma -(omega^2 + eps)((mu - y_b)^2 - sigma^2)/(sigma^3
    + eps)."""
    omega = omega[:, None]
    y_bounded = (mu + (y_sample - mu).clamp(-3 * omega, 3 * omega)).detach()  # clipping bound b = 3 omega
    sigma_d = sigma.detach().clamp(min=0.0)
    mean_term = mu * (y - mu).detach() / (sigma_d**2 + eps)
    std_term = sigma * ((mu.detach() - y_bounded) ** 2 - sigma_d**2) / (sigma_d**3 + eps)
    return -(omega.squeeze(1) ** 2 + eps) * (mean_term + std_term).mean(1)  # one loss per critic


def critic_objective(actor, critic, critic_target, batch, omega, alpha, args):
    """The critics' losses (--critic-loss) on a batch, a' from the current policy; also mu and the updated omega."""
    obs, actions, rewards, next_obs, terminations = batch
    with torch.no_grad():
        next_actions = policy_action(actor, next_obs, alpha, args.noise_scale)  # a' (no target policy: DACER)
        y, y_sample = critic_targets(critic_target, args.reward_scale * rewards, next_obs, next_actions, terminations,
                                     args.gamma)
    mu, sigma = critic(obs, actions)
    with torch.no_grad():  # omega: each critic's running mean of sigma, started at its first batch mean (omega = 0)
        omega = torch.where(omega == 0, sigma.mean(1), omega.lerp(sigma.mean(1), args.tau))
    if args.critic_loss == "td":  # sigma and y_sample unused: the clipped double-Q TD loss of SAC, TD3 and QVPO
        return ((mu - y) ** 2).mean(1), mu, omega
    return dsac_critic_loss(mu, sigma, y, y_sample, omega), mu, omega


def q_grad_loss(actor, critic, obs, chain, weights, normalise=True, one_step=False):
    """Q-gradient field loss L_g (paper Eqs. 11-13) over the chain's intermediate actions x_j, taken as data. With
    S_theta = -eps_theta read as a score and g the normalised Q-gradient, || w_j g - S_theta ||^2 = || eps_theta(s, x_j,
    j) + w_j g ||^2, averaged over all T steps (the exact expectation over t ~ U(1, T)), or with one_step over one
    random step j per state (an unbiased estimate of it, at 1/T of the cost). weights (T,): w_j."""
    T, B, d = chain.shape
    steps = torch.arange(T, device=obs.device).repeat_interleave(B)  # j of each row of the stacked chain
    obs, x = obs.repeat(T, 1), chain.detach().reshape(T * B, d)  # x_j as data
    if one_step:
        pick = torch.randint(T, (B,), device=obs.device) * B + torch.arange(B, device=obs.device)
        obs, x, steps = obs[pick], x[pick], steps[pick]
    grad_q = torch.func.grad(lambda a: smallest_mean(critic, obs, a).sum())(x).detach()  # grad_a Q (frozen critics)
    if normalise:
        grad_q = grad_q / (grad_q.norm(dim=-1, keepdim=True) + 1e-6)  # paper Eq. 12, per sample
    eps = actor(obs, x, actor.time_embedding(steps))  # the network run again on the detached x_j
    return ((eps + weights[steps, None] * grad_q) ** 2).mean()  # paper Eq. 13


def actor_objective(actor, critic, obs, alpha, q_grad_weights, q_grad_coef, args):
    """L_pi = L_q + eta L_g (paper Eq. 15) with the critics frozen; also L_g (zero when eta = 0, i.e. DACER)."""
    a0, chain = actor.sample(obs, keep_chain=True)
    loss_q = -smallest_mean(critic, obs, policy_action(actor, obs, alpha, args.noise_scale, a0)).mean()
    if q_grad_coef == 0:
        return loss_q, torch.zeros_like(loss_q)
    loss_g = q_grad_loss(actor, critic, obs, chain, q_grad_weights, args.q_grad_norm, args.q_grad_one_step)
    return loss_q + q_grad_coef * loss_g, loss_g


# ALGO LOGIC: entropy regulator, one GMM per state fitted by batched EM (DACER)
def kmeans_init(x, K, gen):
    """sklearn's GMM initialisation, per state, simplified: k-means++ seeding with one candidate per centre (sklearn's
    greedy variant tries 2 + ln K), then 10 Lloyd iterations on x (B, N, d); returns hard responsibilities (B, K, N)."""
    B, N, d = x.shape
    first = torch.randint(0, N, (B, 1), generator=gen, device=x.device)
    means = x.gather(1, first[..., None].expand(B, 1, d))
    for _ in range(K - 1):
        dist2 = torch.cdist(x, means).square().min(-1).values  # (B, N)
        pick = torch.multinomial(dist2 + 1e-12, 1, generator=gen)
        means = torch.cat([means, x.gather(1, pick[..., None].expand(B, 1, d))], 1)
    for _ in range(10):
        resp = F.one_hot(torch.cdist(x, means).argmin(-1), K).transpose(1, 2).to(x.dtype)
        means = (resp @ x + means * 1e-10) / (resp.sum(2)[..., None] + 1e-10)
    return resp


@torch.no_grad()
def gmm_entropy(samples, num_components=3, max_iter=100, tol=1e-3, reg_covar=1e-6, seed=42, dtype=torch.float32):
    """Per-state entropy of a full-covariance GMM fitted to samples (B, N, d); returns (B,) in dtype. H = -sum_k w_k
    log w_k + sum_k w_k [d/2 (1 + log 2 pi) + 1/2 log det Sigma_k]. sklearn's GaussianMixture defaults (k-means init,
    <= 100 EM iterations, tol 1e-3, reg 1e-6) for all states at once; convergence is tested every 10 iterations. Each
    EM step is two batched products with the per-sample features f = [x x^T, x, 1] (docs/implementation.md: dtype)."""
    x = samples.to(dtype)
    B, N, d = x.shape
    eye = torch.eye(d, dtype=x.dtype, device=x.device)
    resp = kmeans_init(x, num_components, torch.Generator(device=x.device).manual_seed(seed))  # (B, K, N)
    features = torch.cat([(x[..., :, None] * x[..., None, :]).flatten(2), x, torch.ones_like(x[..., :1])], -1)
    features_t = features.transpose(1, 2).contiguous()  # (B, d*d + d + 1, N)
    prev_ll = torch.full((B,), -torch.inf, dtype=x.dtype, device=x.device)
    for it in range(max_iter + 1):
        # M-step: weights, means, covariances from sum_n r_nk [x x^T, x, 1] = [S_k, m_k, n_k]
        sums = resp @ features  # (B, K, d*d + d + 1)
        nk = sums[..., -1] + 10 * torch.finfo(x.dtype).eps
        weights, means = nk / N, sums[..., d * d : -1] / nk[..., None]
        second_moment = sums[..., : d * d].view(B, num_components, d, d) / nk[..., None, None]
        cov = second_moment - means[..., :, None] * means[..., None, :] + reg_covar * eye
        chol = torch.linalg.cholesky_ex(cov)[0]
        log_det = 2 * chol.diagonal(dim1=-2, dim2=-1).log().sum(-1)  # (B, K)
        if it == max_iter:
            break
        # E-step: log w_k N(x | mu_k, Sigma_k) = -x'Px/2 + (P mu)'x - mu'P mu/2 - (d log 2 pi + log det)/2 + log w_k
        precision = torch.cholesky_inverse(chol)  # P = Sigma_k^-1
        precision_mean = (precision @ means[..., None]).squeeze(-1)  # (B, K, d)
        const = weights.log() - 0.5 * (d * math.log(2 * math.pi) + log_det + (precision_mean * means).sum(-1))
        log_prob = torch.cat([-0.5 * precision.flatten(2), precision_mean, const[..., None]], -1) @ features_t
        top = log_prob.amax(1, keepdim=True)  # (B, 1, N): logsumexp over the components, by hand (one exp)
        prob = (log_prob - top).exp_()
        total = prob.sum(1, keepdim=True)
        resp = prob.div_(total)  # (B, K, N)
        ll = (top + total.log()).mean((1, 2))
        if it % 10 == 9 and bool(((ll - prev_ll).abs() < tol).all()):
            break
        prev_ll = ll
    gaussian = 0.5 * d * (1 + math.log(2 * math.pi)) + 0.5 * log_det
    entropy = -(weights * weights.log()).sum(-1) + (weights * gaussian).sum(-1)
    failed = ~torch.isfinite(entropy)  # float32's E[xx^T] - mu mu^T can cancel below reg_covar (Cholesky fails)
    if dtype != torch.float64 and bool(failed.any()):  # e.g. a component of actions clipped at the bound: refit
        refit = gmm_entropy(samples[failed], num_components, max_iter, tol, reg_covar, seed, torch.float64)
        entropy[failed] = refit.to(dtype)
    return entropy


@torch.no_grad()
def estimate_entropy(actor, obs, alpha, noise_scale, num_samples, num_components, act=policy_action):
    """Mean GMM entropy of num_samples actions of the policy (act: policy_action or its compiled form) per state."""
    B = obs.shape[0]
    states = obs.repeat(num_samples, 1)  # (N*B, obs_dim), sample-major; in chunks that keep the chain in cache
    actions = torch.cat([act(actor, chunk, alpha, noise_scale) for chunk in states.split(1024)])
    if not bool(torch.isfinite(actions).all()):  # a diverged policy (NaN weights or alpha): nothing to fit
        return torch.tensor(float("nan"), device=obs.device)
    return gmm_entropy(actions.view(num_samples, B, -1).transpose(0, 1), num_components).mean().float()


# ALGO LOGIC: evaluation (modules in eval() mode: a dropout or normalisation layer you add behaves as at test time)
@torch.no_grad()
def evaluate(actor, eval_envs, device, seed, critic=None, gamma=0.99, reward_scale=1.0):
    """Returns of one episode per eval env with the evaluation action (no lambda*alpha noise), own generator: seed.
    With critic (--eval-only), also the critics' value estimation bias of these episodes (value_bias)."""
    actor.eval()
    obs, _ = eval_envs.reset(seed=seed)
    gen = torch.Generator(device=device).manual_seed(seed)
    returns, trace = np.full(eval_envs.num_envs, np.nan), []
    while np.isnan(returns).any():
        obs = torch.as_tensor(obs, dtype=torch.float32, device=device)
        actions = actor.sample(obs, actor.draw_noise(obs, gen))
        running = np.isnan(returns)  # the first episode of each env only
        q = None if critic is None else (smallest_mean(critic, obs, actions) / reward_scale).cpu().numpy()
        obs, rewards, _, truncations, infos = eval_envs.step(actions.cpu().numpy())
        if critic is not None:  # --eval-only's record; training's evaluations keep none
            trace.append((q, rewards * running, running, truncations & running))
        if "final_info" in infos:
            finished = infos["final_info"]["_episode"] & running
            returns[finished] = infos["final_info"]["episode"]["r"][finished]
    actor.train()
    return returns if critic is None else (returns, value_bias(*map(np.array, zip(*trace)), gamma))


def value_bias(q, rewards, running, truncated, gamma):
    """Per episode (arrays of (steps, episodes)): the critics' estimate q = min_i mu_i(s_t, a_t) / reward_scale and the
    discounted return-to-go G_t = sum_k gamma^k r_{t+k} at its first step, and both averaged over its steps but the
    last h before a time limit (truncation), where G_t misses more than gamma^h = 1 % of the value beyond the limit."""
    returns_to_go, later = np.zeros(q.shape), 0.0
    for t in reversed(range(len(q))):  # G_t = r_t + gamma G_{t+1}; rewards after an episode's end are 0
        returns_to_go[t] = later = rewards[t] + gamma * later
    h = math.ceil(math.log(0.01) / math.log(gamma)) if gamma < 1 else len(q)
    lengths, cut = running.sum(0), truncated.any(0)  # of each env's one episode
    kept = running & ~(cut & (np.arange(len(q))[:, None] >= lengths - h))
    steps = kept.sum(0)
    with np.errstate(invalid="ignore"):  # an episode shorter than h that a time limit ends keeps no step: NaN
        return {"q_first": q[0], "return_first": returns_to_go[0], "steps": steps,
                "q_mean": (q * kept).sum(0) / steps, "return_mean": (returns_to_go * kept).sum(0) / steps}


def multigoal_evaluation(actor, env, out_png, seed, title):
    """Paper Fig. 2 on a Multi-goal env (multigoal_env.report): trajectories of the evaluation action from exactly the
    origin, chain noise from a CPU generator seeded with seed; leaves the actor in eval() mode (training is over)."""
    import multigoal_env
    device, gen = next(actor.parameters()).device, torch.Generator().manual_seed(seed)
    actor.eval()

    @torch.no_grad()
    def policy(obs):  # positions of the trajectories still running -> actions
        obs = torch.as_tensor(obs, dtype=torch.float32, device=device)
        return actor.sample(obs, actor.draw_noise(obs, gen).to(device)).cpu().numpy()

    return multigoal_env.report(policy, env.unwrapped.num_goals, out_png, title)


# TRY NOT TO MODIFY: plumbing (input checks, env ids, exact resume, checkpoints that know their script, timers)
SCRIPT = os.path.abspath(__file__)
SCRIPT_SHA256 = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()  # recorded in checkpoints


def fail(message):
    """Bad user input: one line on stderr, exit status 2, no traceback."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def error_summary(error, limit=None):
    """`Type: first line of the message` of an exception (the message cut at limit characters), for one-line errors."""
    return f"{type(error).__name__}: {(str(error).splitlines() or [''])[0][:limit]}"


def resolve_env_id(env_id, quiet=False):
    """The env id to run; gym's mujoco-py ids (the paper's -v2/-v3) become the matching -v4 env (and say so)."""
    if env_id.startswith("MultiGoal"):
        import multigoal_env  # noqa: F401 (registers MultiGoal-v0 and MultiGoal{4,5,6}-v0)
    if env_id not in gym.registry:
        close = sorted(difflib.get_close_matches(env_id, list(gym.registry), n=3, cutoff=0.75),
                       key=lambda match: not match.endswith("-v4"))  # the MuJoCo version this project runs first
        fail(f"unknown env id {env_id!r}" + (f"; did you mean {', '.join(close)}?" if close else ""))
    warnings.filterwarnings("ignore", ".*is out of date. You should consider upgrading", DeprecationWarning)
    if "mujoco_py" in getattr(gym.registry[env_id].entry_point, "__name__", ""):  # gymnasium keeps the ids
        name = env_id.rpartition("-")[0]
        if not quiet:
            print(f"{env_id} needs mujoco-py, which gymnasium dropped: using {name}-v4 (README: Known differences)")
        return f"{name}-v4"
    return env_id


def check_setup(args):
    """Before any run folder exists: the env id to run (returned), that it can be made (and rendered) and packages."""
    env_id = resolve_env_id(args.env_id)
    if args.capture_video and importlib.util.find_spec("moviepy") is None:
        fail("--capture-video needs moviepy: pip install moviepy")
    try:
        probe = gym.make(env_id, render_mode="rgb_array" if args.capture_video else None)
    except Exception as e:  # e.g. a missing optional dependency of the env
        fail(f"cannot make {env_id}: {error_summary(e, 150)}")
    spaces = {"observations": probe.observation_space, "actions": probe.action_space}
    bad = [f"{'discrete' if isinstance(space, gym.spaces.Discrete) else space} {what}" for what, space in spaces.items()
           if not (isinstance(space, gym.spaces.Box) and len(space.shape) == 1)]
    if bad:
        fail(f"{env_id} has {' and '.join(bad)}; DACERv2 needs continuous actions and flat observations (1-D Boxes)")
    try:  # one frame now: a machine that cannot render fails here, in one line, not at the first reset
        with warnings.catch_warnings(action="ignore"):  # GLFW's warnings on a machine without a display
            _ = args.capture_video and (probe.reset(seed=args.seed), probe.render())
    except Exception as e:
        hint = ("; MuJoCo without a display needs MUJOCO_GL=egl (GPU driver) or MUJOCO_GL=osmesa (apt install "
                "libosmesa6; pip install PyOpenGL)") if "mujoco" in str(gym.registry[env_id].entry_point) else ""
        fail(f"--capture-video: {env_id} cannot render here ({error_summary(e, 200)}){hint}")
    probe.close()
    return env_id


def numpy_as_tensors(value, back=False):
    """numpy arrays and scalars inside plain containers -> tagged tensors (back=True: the other way), so that
    torch.load(weights_only=True) reads a checkpoint whole and nothing in it is unpickled."""
    if not back and isinstance(value, (np.ndarray, np.generic)):
        return {"numpy": torch.from_numpy(np.array(value)), "scalar": isinstance(value, np.generic)}
    if back and isinstance(value, dict) and value.keys() == {"numpy", "scalar"}:
        return value["numpy"].numpy()[()] if value["scalar"] else value["numpy"].numpy()
    if isinstance(value, dict):
        return {k: numpy_as_tensors(v, back) for k, v in value.items()}
    return type(value)(numpy_as_tensors(v, back) for v in value) if isinstance(value, (list, tuple)) else value


def env_layers(env):
    while isinstance(env, gym.Wrapper):
        yield env
        env = env.env
    yield env


def random_state(envs, obs):
    """The RNGs, and what makes each sub-env continue exactly: plain-data attributes of its wrappers and itself (step
    counters, episode statistics), its RNGs and MuJoCo's integration state. A video in progress is left out (the
    resumed run records from the next scheduled episode on)."""
    plain = (int, float, bool, str, np.ndarray, np.generic, list, tuple, type(None))
    no_video = {"recording": False, "recorded_frames": [], "render_history": [], "_video_name": None}
    env_states = []
    for env in envs.envs:  # numbers (no object or str arrays); a RecordVideo layer as if not recording
        layers = [{k: v for k, v in vars(layer).items() if isinstance(v, plain) and getattr(v, "dtype", np.dtype(int))
                   .kind in "biufc"} | (no_video if isinstance(layer, gym.wrappers.RecordVideo) else {})
                  for layer in env_layers(env)]
        u = env.unwrapped
        state = {"layers": copy.deepcopy(layers), "rng": u.np_random.bit_generator.state,
                 "action_rng": env.action_space.np_random.bit_generator.state}
        if type(getattr(u, "data", None)).__name__ == "MjData":
            state["mujoco"] = np.empty(mujoco.mj_stateSize(u.model, mujoco.mjtState.mjSTATE_INTEGRATION))
            mujoco.mj_getState(u.model, u.data, state["mujoco"], mujoco.mjtState.mjSTATE_INTEGRATION)
        env_states.append(state)
    return numpy_as_tensors({
        "python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state() if torch.cuda.is_initialized() else None,
        "envs": env_states, "action_space": envs.action_space.np_random.bit_generator.state, "obs": obs})


def set_random_state(saved, envs, obs):
    """Restores random_state's RNGs and envs; returns the observations to go on with."""
    try:
        saved = numpy_as_tensors(saved, back=True)
        random.setstate(saved["python"])
        np.random.set_state(saved["numpy"])
        torch.set_rng_state(saved["torch"])
        if saved["cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state(saved["cuda"])
        for env, state in zip(envs.envs, saved["envs"]):
            for layer, attributes in zip(env_layers(env), state["layers"]):
                vars(layer).update(copy.deepcopy(attributes))
            u = env.unwrapped
            u.np_random.bit_generator.state = state["rng"]
            env.action_space.np_random.bit_generator.state = state["action_rng"]
            if "mujoco" in state:
                mujoco.mj_setState(u.model, u.data, state["mujoco"], mujoco.mjtState.mjSTATE_INTEGRATION)
                mujoco.mj_forward(u.model, u.data)
        envs.action_space.np_random.bit_generator.state = saved["action_space"]
        return saved["obs"]
    except Exception as e:
        fail(f"--resume: the checkpoint's random and env state cannot be restored ({error_summary(e, 150)})")


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
    """A checkpoint of this script, read with weights_only=True (tensors and plain data: no code runs)."""
    if not os.path.isfile(path) or os.path.getsize(path) == 0:
        fail(f"--resume: {path!r} " + ("is a folder; give the checkpoint file in it (runs/RUN_NAME/EXP_NAME.pt)" if
             os.path.isdir(path) else "is empty, not a checkpoint" if os.path.isfile(path) else "does not exist"))
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # unreadable, truncated, not a torch file, or carrying pickled objects
        reason = f"torch.load: {error_summary(e, 100)}" if zipfile.is_zipfile(path) else "not a whole torch.save file"
        fail(f"--resume: {path!r} is not a checkpoint written by this script ({reason})")
    keys = {"args", "run_name", "iteration", "global_step", "random_state", "script", "script_sha256"}
    missing = keys - set(checkpoint) if isinstance(checkpoint, dict) else keys
    if missing == {"script", "script_sha256"}:
        fail(f"--resume: {path!r} was written by an older version of this script; resume it with that version")
    if missing:
        fail(f"--resume: {path!r} is not a checkpoint of this script (missing {', '.join(sorted(missing))})")
    return checkpoint


def parse_args(argv=None):
    """tyro's CLI of Args, --preset's and --resume's arguments as defaults; returns args and the checkpoint."""
    argv, checkpoint, defaults = sys.argv[1:] if argv is None else argv, None, Args()
    for i, arg in enumerate(argv):
        if arg == "--resume" or arg.startswith("--resume="):
            path = arg.partition("=")[2] or (argv[i + 1] if i + 1 < len(argv) else "")
            checkpoint = load_checkpoint(path)
            saved = {k: v for k, v in checkpoint["args"].items() if k in Args.__dataclass_fields__}
            defaults = replace(Args(**saved), resume=path, force_resume=False, eval_only=False, eval_dir=None,
                               resume_if_exists=False, capture_video=False)  # this invocation's own choices

    def cli(defaults):
        tyro_errors = io.StringIO()
        try:
            with contextlib.redirect_stderr(tyro_errors):
                return tyro.cli(Args, default=defaults, args=argv)
        except SystemExit as e:
            if e.code:  # tyro's boxed message -> its text
                lines = [line.strip("│ ") for line in tyro_errors.getvalue().splitlines() if line.startswith("│")]
                message = " ".join(itertools.takewhile(lambda line: not line.startswith("─"), lines))
                fail(f"{message or 'invalid arguments'} (see --help)")
            raise

    args = cli(defaults)
    if args.preset != defaults.preset:  # its flags become the defaults that the flags given override
        args = cli(replace(defaults, **PRESETS[args.preset]))
    check_args(args, checkpoint)
    if checkpoint and checkpoint["script_sha256"] != SCRIPT_SHA256 and not args.force_resume:
        fail(f"--resume: {args.resume!r} was written by {checkpoint['script']} (sha256 "
             f"{checkpoint['script_sha256'][:12]}), not by this script ({SCRIPT}, {SCRIPT_SHA256[:12]}): run that "
             "one, or add --force-resume")
    own_checkpoint = f"runs/{resolve_env_id(args.env_id, quiet=True)}__{args.exp_name}__{args.seed}/{args.exp_name}.pt"
    if args.resume_if_exists and not checkpoint and os.path.isfile(own_checkpoint):  # the run's fixed folder
        return parse_args(["--resume", own_checkpoint, *argv])  # its own flags again
    if checkpoint and checkpoint["global_step"] >= args.total_timesteps and not args.eval_only:
        if args.resume_if_exists:
            print(f"{checkpoint['run_name']} has reached --total-timesteps {args.total_timesteps}: nothing to do")
            sys.exit(0)
        fail(f"--resume: the checkpoint is at step {checkpoint['global_step']}, which reaches --total-timesteps "
             f"{args.total_timesteps}: give a larger --total-timesteps (or --eval-only)")
    runs = Path("runs") if os.path.exists("runs") else Path(".")
    if not (runs.is_dir() and os.access(runs, os.W_OK)):
        fail(f"cannot write run folders: {runs.resolve()} is not a writable folder")
    return args, checkpoint


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
    """Keeps freed blocks up to 32 MiB in the process (glibc): else each large temporary of an update page-faults."""
    with contextlib.suppress(OSError):  # not glibc: nothing to do
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 32 << 20), libc.mallopt(-1, 256 << 20)  # M_MMAP_THRESHOLD, M_TRIM_THRESHOLD


if __name__ == "__main__":
    args, checkpoint = parse_args()  # tyro; --preset's and --resume's arguments as defaults
    keep_freed_memory()
    stop_signals = []  # SIGINT, SIGTERM: finish the iteration, save a checkpoint, exit 128 + signal
    for stop in (signal.SIGINT, signal.SIGTERM):
        signal.signal(stop, lambda signum, frame: stop_signals.append(signum))
    env_id = check_setup(args)
    task, q_grad_coef = task_and_q_grad_coef(env_id, args.q_grad_coef)
    run_name = f"{env_id}__{args.exp_name}__{args.seed}" + ("" if args.resume_if_exists else f"__{int(time.time())}")
    run_name = checkpoint["run_name"] if checkpoint else run_name
    if args.dry_run:
        print(f"dry run: the arguments and {env_id} check out; {run_name} would {'resume' if checkpoint else 'start'}")
        sys.exit(0)
    if args.resume_if_exists and not checkpoint and not args.eval_only:
        for stale in Path("runs", run_name).glob("events.out.tfevents.*"):  # a start that wrote no checkpoint
            print(f"runs/{run_name} has no checkpoint: starting it over, without its old {stale.name}")
            stale.unlink()

    # TRY NOT TO MODIFY: device, seeding
    device = torch.device("cuda" if args.cuda and torch.cuda.is_available() else "cpu")
    if args.cuda and device.type == "cpu":
        print("--cuda: no CUDA device is available, running on the CPU")
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.torch_threads)

    # TRY NOT TO MODIFY: env setup (SAME_STEP autoreset keeps the true last observation in infos["final_obs"])
    train_video, eval_video = args.capture_video and not args.eval_only, args.capture_video and args.eval_only
    envs = gym.vector.SyncVectorEnv([make_env(env_id, args.seed + i, i, train_video, run_name)
                                     for i in range(args.num_envs)], autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)
    eval_envs = gym.vector.SyncVectorEnv([make_env(env_id, args.seed + 10_000 + i, i, eval_video, f"{run_name}__eval")
                                          for i in range(args.eval_episodes)], autoreset_mode=envs.autoreset_mode)
    envs.action_space.seed(args.seed)
    obs, _ = envs.reset(seed=args.seed)
    obs_dim, act_dim = envs.single_observation_space.shape[0], envs.single_action_space.shape[0]

    # ALGO LOGIC: networks, optimizers, alpha, L_g time weights
    actor = DiffusionActor(obs_dim, act_dim, args.hidden_dim, args.num_layers, args.diffusion_steps).to(device)
    critic = CriticEnsemble([Critic(obs_dim, act_dim, args.hidden_dim, args.num_layers)
                             for _ in range(args.num_critics)]).to(device)
    critic_target = copy.deepcopy(critic).requires_grad_(False)
    q_optimizer = torch.optim.Adam(critic.parameters(), lr=args.q_lr, fused=True)
    actor_optimizer = torch.optim.Adam(actor.parameters(), lr=args.policy_lr, fused=True)
    log_alpha = torch.tensor(math.log(args.init_alpha), device=device, requires_grad=True)
    alpha_optimizer = torch.optim.Adam([log_alpha], lr=args.alpha_lr)
    target_entropy = -args.target_entropy_scale * act_dim
    q_grad_weights = q_grad_time_weights(args.diffusion_steps, args.time_weight).to(device)  # w_j (paper Eq. 11)
    omega = torch.zeros(args.num_critics, device=device)  # running mean of each critic's sigma (DSAC-T); 0: unset
    entropy = torch.zeros((), device=device)  # cached GMM entropy estimate
    rb = ReplayBuffer(args.buffer_size, obs_dim, act_dim, device)
    iteration, start_step = 0, 0

    # TRY NOT TO MODIFY: resume, evaluation only, compile, logging, checkpoints
    modules = {"actor": actor, "critic": critic, "critic_target": critic_target, "actor_optimizer": actor_optimizer,
               "q_optimizer": q_optimizer, "alpha_optimizer": alpha_optimizer}
    if checkpoint:  # networks, optimizers, tensors (in place); the learning rates given now replace the saved ones
        try:
            for name, module in modules.items():
                module.load_state_dict(checkpoint[name])
            with torch.no_grad():
                log_alpha.copy_(checkpoint["log_alpha"]), omega.copy_(checkpoint["omega"])
                entropy.copy_(checkpoint["entropy"])
        except (RuntimeError, ValueError, KeyError):
            fail("--resume: the checkpoint's networks do not match these arguments (--hidden-dim, --num-layers, "
                 "--num-critics) or this version of the script")
        for optimizer, lr in (q_optimizer, args.q_lr), (actor_optimizer, args.policy_lr), (alpha_optimizer,
                                                                                             args.alpha_lr):
            optimizer.param_groups[0]["lr"] = lr
        iteration, start_step = checkpoint["iteration"], checkpoint["global_step"]
    if args.eval_only:  # --eval-episodes returns, the critics' bias (and paper Fig. 2 on Multi-goal) into eval.json
        step = checkpoint["global_step"] if checkpoint else 0
        returns, bias = evaluate(actor, eval_envs, device, args.seed, critic.eval(), args.gamma, args.reward_scale)
        policy = f"{args.resume} (step {step})" if checkpoint else f"the untrained network of --seed {args.seed}"
        print(f"{policy} on {env_id}: eval/episodic_return {returns.mean():.2f} ± {returns.std():.2f} over "
              f"{len(returns)} episodes: {', '.join(f'{r:.2f}' for r in returns)}")
        kept = bias["steps"] > 0  # episodes with steps far enough from a time limit
        print(f"value estimation bias, critics' estimate vs discounted return (means over episodes): first step "
              f"{bias['q_first'].mean():.2f} vs {bias['return_first'].mean():.2f}, all steps " + (
                  f"{bias['q_mean'][kept].mean():.2f} vs {bias['return_mean'][kept].mean():.2f} ({bias['steps'].sum()}"
                  " steps)" if kept.any() else "none (a time limit ends every episode too soon: docs/checkpoints.md)"))
        out = Path(args.eval_dir or (Path(args.resume).with_name(Path(args.resume).stem + "_eval") if checkpoint
                                     else f"runs/{run_name}"))
        result = {"checkpoint": args.resume, "script": SCRIPT, "script_sha256": SCRIPT_SHA256, "env_id": env_id,
                  "global_step": step, "seed": args.seed, "returns": returns.tolist(), "mean": returns.mean(),
                  "std": returns.std(), "value_bias": {k: v.tolist() for k, v in bias.items()}}
        if task == "MultiGoal":
            title = f"{args.exp_name} seed {args.seed}, step {step}" + ("" if checkpoint else ", untrained")
            metrics, paths = multigoal_evaluation(actor, eval_envs.envs[0], out / "multimodality.png", args.seed, title)
            result |= {"num_goals": len(metrics["hit_counts"]), "multimodality": metrics,
                       "trajectories": [path.tolist() for path in paths]}
        out.mkdir(parents=True, exist_ok=True)
        (out / "eval.json").write_text(json.dumps(result) + "\n")
        print(f"results: {out / 'eval.json'}")
        sys.exit(0)
    if checkpoint:
        obs = set_random_state(checkpoint["random_state"], envs, obs)
        if "buffer" in checkpoint:
            rb.load_state_dict(checkpoint["buffer"])
        print(f"resuming {run_name} at step {start_step} (iteration {iteration}); " + (
            "with its replay buffer" if "buffer" in checkpoint else "the replay buffer is refilled first: "
            f"{args.learning_starts} env steps of the policy, counted in --total-timesteps (no --checkpoint-buffer)"))
    alpha = log_alpha.detach().exp()
    update_critics, update_actor, act = critic_objective, actor_objective, policy_action
    if args.compile:  # torch.compile of the functions by name (as LeanRL does): whatever they call is compiled too
        import torch._inductor.config
        torch._inductor.config.fallback_random = True  # torch's own random streams: the same numbers as eagerly
        torch._inductor.config.cpp_wrapper = device.type == "cpu"  # less Python per call of the small CPU graphs
        update_critics, update_actor = torch.compile(critic_objective), torch.compile(actor_objective)
        act = torch.compile(policy_action, dynamic=False)  # one graph per batch size: acting's and the GMM's
        try:  # compile acting now, so that a machine without a working compiler says so here, in one line
            with torch.no_grad(), torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                act(actor, torch.as_tensor(obs, dtype=torch.float32, device=device), alpha, args.noise_scale)
        except Exception as e:
            print(f"--compile: torch.compile does not work here ({error_summary(e)}); everything runs eagerly")
            update_critics, update_actor, act = critic_objective, actor_objective, policy_action
        torch._dynamo.config.suppress_errors = True  # a graph that fails later runs eagerly, with torch's warning
    writer = SummaryWriter(f"runs/{run_name}", purge_step=start_step if checkpoint else None)  # drop points after it
    hparams = {**vars(args), "env_id": env_id, "env_id_requested": args.env_id, "q_grad_coef": q_grad_coef}
    writer.add_text("hyperparameters", "|param|value|\n|-|-|\n" + "\n".join(f"|{k}|{v}|" for k, v in hparams.items()))
    timer, start_time, last_eval, logged = UpdateTimer(device), time.time(), float("nan"), {}
    checkpoint_path = f"runs/{run_name}/{args.exp_name}.pt"
    warm_up_end = start_step + math.ceil(max(args.learning_starts - rb.size, 0) / args.num_envs) * args.num_envs
    if warm_up_end - args.num_envs >= args.total_timesteps:  # updates start once the buffer holds the warm-up
        print(f"--total-timesteps {args.total_timesteps} ends within its warm-up (--learning-starts "
              f"{args.learning_starts}): this run does no gradient update and no evaluation")
    print(f"run folder: runs/{run_name} (follow it with: tensorboard --logdir runs)")
    if device.type == "cpu" and args.total_timesteps - start_step > 1_000_000:
        print(f"on a CPU, {args.total_timesteps - start_step:,} env steps take days (the training bar's ETA is right "
              "after a few minutes); README 'Usage' has a 10-minute first run")

    def bar(phase, start):  # one bar per phase, each with its own mean rate: an ETA of that phase alone
        end = min(warm_up_end, args.total_timesteps) if phase == "warm-up" else args.total_timesteps
        return tqdm(total=end, initial=start, desc=phase, unit=" steps", unit_scale=True, dynamic_ncols=True,
                    smoothing=0, mininterval=0.5 if sys.stderr.isatty() else 30)

    progress = bar("warm-up" if rb.size < args.learning_starts else "training", start_step)
    episode_return = float("nan")
    write = tqdm.write if sys.stderr.isatty() else lambda line: print(line, flush=True)  # a log file: no redraws

    def show_returns():  # on the bar; "-" until the first evaluation and the first finished episode
        last = [f"{value:.1f}" if math.isfinite(value) else "-" for value in (last_eval, episode_return)]
        progress.set_postfix_str(f"last eval {last[0]}, last episode {last[1]}", refresh=False)

    def diverged(what):
        progress.close()
        kept = f"the last good checkpoint is {checkpoint_path}" if os.path.exists(checkpoint_path) else "no checkpoint"
        print(f"error: {what} at iteration {iteration}: training diverged; {kept}", file=sys.stderr)
        writer.close()
        sys.exit(3)

    def write_checkpoint(env_steps):
        """Everything to continue exactly from env_steps (tensors and plain data); never a diverged network's."""
        for name, p in [*actor.named_parameters(), *critic.named_parameters(), ("log_alpha", log_alpha)]:
            if not torch.isfinite(p).all():
                diverged(f"non-finite parameter {name}")
        save_checkpoint(checkpoint_path, {
            **{name: module.state_dict() for name, module in modules.items()}, "log_alpha": log_alpha.detach().cpu(),
            "omega": omega.cpu(), "entropy": entropy.cpu(), "iteration": iteration,
            "global_step": env_steps, "run_name": run_name, "args": asdict(args),
            "script": SCRIPT, "script_sha256": SCRIPT_SHA256, "random_state": random_state(envs, obs),
            **({"buffer": rb.state_dict()} if args.checkpoint_buffer else {}),
        })

    # TRY NOT TO MODIFY: start the game; global_step: the env steps (all envs) before this vector step
    for global_step in range(start_step, args.total_timesteps, args.num_envs):
        # ALGO LOGIC: put action logic here (uniform random actions for the first --learning-starts steps)
        if global_step < args.learning_starts:
            actions = envs.action_space.sample()
        else:
            with torch.no_grad():
                obs_t = torch.as_tensor(obs, dtype=torch.float32, device=device)
                actions = act(actor, obs_t, alpha, args.noise_scale).cpu().numpy()

        # TRY NOT TO MODIFY: execute the game and log data.
        next_obs, rewards, terminations, truncations, infos = envs.step(actions)
        progress.update(args.num_envs)
        if "final_info" in infos:
            for i in np.flatnonzero(infos["final_info"]["_episode"]):
                episode_return, length = infos["final_info"]["episode"]["r"][i], infos["final_info"]["episode"]["l"][i]
                if args.print_episodes:
                    write(f"global_step={global_step}, episodic_return={episode_return:.2f}")
                writer.add_scalar("charts/episodic_return", episode_return, global_step)
                writer.add_scalar("charts/episodic_length", length, global_step)

        # TRY NOT TO MODIFY: store the true last observation of finished episodes; bootstrap on terminations only
        real_next_obs = next_obs.copy()
        for i in np.flatnonzero(infos.get("_final_obs", [])):
            real_next_obs[i] = infos["final_obs"][i]
        rb.add(obs, real_next_obs, actions, rewards, terminations)
        obs = next_obs

        # ALGO LOGIC: training, one update per vector step: critics every iteration, actor every policy_frequency
        if rb.size >= args.learning_starts:
            if progress.desc == "warm-up":
                progress.close()
                write(f"warm-up done at step {global_step + args.num_envs}: training")
                progress = bar("training", global_step + args.num_envs)
            timer.mark()
            batch = rb.sample(args.batch_size)
            qf_losses, mu, omega = update_critics(actor, critic, critic_target, batch, omega, alpha, args)
            q_optimizer.zero_grad(set_to_none=True)
            qf_losses.sum().backward()
            q_optimizer.step()

            if iteration % args.alpha_update_frequency == 0:  # entropy regulator: L_alpha = log alpha (H - H_target)
                entropy = estimate_entropy(actor, batch[0], alpha, args.noise_scale, args.gmm_samples,
                                           args.gmm_components, act)
                if not torch.isfinite(entropy):  # the fit has synchronised already
                    diverged("non-finite GMM entropy estimate")
                alpha_loss = log_alpha * (entropy - target_entropy)
                alpha_optimizer.zero_grad(set_to_none=True)
                alpha_loss.backward()
                alpha_optimizer.step()
                alpha = log_alpha.detach().exp()
                logged["losses/alpha_loss"] = alpha_loss.detach()

            if iteration % args.policy_frequency == 0:
                critic.requires_grad_(False)  # the actor step optimises theta only
                loss, g_loss = update_actor(actor, critic, batch[0], alpha, q_grad_weights, q_grad_coef, args)
                actor_optimizer.zero_grad(set_to_none=True)
                loss.backward()
                actor_optimizer.step()
                critic.requires_grad_(True)
                logged["losses/actor_loss"] = loss.detach()
                if q_grad_coef > 0:
                    logged["losses/q_grad_loss"] = g_loss.detach()
                with torch.no_grad():  # target critics follow only on policy iterations (DACER)
                    for p, p_target in zip(critic.parameters(), critic_target.parameters()):
                        p_target.lerp_(p, args.tau)
            timer.mark()
            iteration += 1

            if iteration % args.log_frequency == 0 or iteration in (10, 100):  # and early in a run's life
                for i in range(args.num_critics):
                    logged |= {f"losses/qf{i + 1}_loss": qf_losses[i], f"losses/qf{i + 1}_values": mu[i].mean()}
                logged |= {"losses/qf_loss": qf_losses.mean(), "losses/alpha": alpha, "charts/entropy": entropy}
                values = torch.stack([v.detach().float().reshape(()) for v in logged.values()]).tolist()  # one sync
                for tag, value in zip(logged, values):
                    if not math.isfinite(value):
                        diverged(f"non-finite {tag}")
                    writer.add_scalar(tag, value, global_step)
                writer.add_scalar("charts/update_ms", timer.mean_ms(), global_step)
                sps = int((global_step + args.num_envs - start_step) / (time.time() - start_time))
                writer.add_scalar("charts/SPS", sps, global_step)
                show_returns()
            if iteration % args.eval_frequency == 0 or global_step + args.num_envs >= args.total_timesteps:
                last_eval = evaluate(actor, eval_envs, device, seed=args.seed + 10_000 + iteration).mean()
                writer.add_scalar("eval/episodic_return", last_eval, global_step)
                show_returns()
                write(f"global_step={global_step}, iteration={iteration}, eval/episodic_return={last_eval:.2f}")
            if args.checkpoint_frequency and iteration % args.checkpoint_frequency == 0:
                write_checkpoint(global_step + args.num_envs)
        if stop_signals:
            break

    progress.close()
    global_step += args.num_envs  # the env steps taken
    if task == "MultiGoal" and not stop_signals:  # paper Fig. 2: 100 stochastic trajectories from the origin
        import multigoal_env
        title = f"{args.exp_name} seed {args.seed}, step {global_step}" + (", untrained" if iteration == 0 else "")
        if iteration == 0:
            print("the policy is untrained (no gradient update ran): its multimodality below is not a result")
        metrics, _ = multigoal_evaluation(actor, envs.envs[0], f"runs/{run_name}/multimodality.png", args.seed, title)
        for key, tag in multigoal_env.METRIC_TAGS.items():
            writer.add_scalar(tag, metrics[key], global_step)
    if args.save_model or stop_signals:
        write_checkpoint(global_step)
        command = shlex.join([sys.executable, SCRIPT, "--resume", checkpoint_path])
        command = f"cd {shlex.quote(os.getcwd())} && {command}"  # the run folder is relative: works from anywhere
        print(f"checkpoint saved to {checkpoint_path}; continue with: {command}"
              + ("" if stop_signals else " --total-timesteps N"))
    envs.close()
    eval_envs.close()
    writer.close()
    if stop_signals:
        print(f"stopped by {signal.Signals(stop_signals[0]).name} at step {global_step}")
        sys.exit(128 + stop_signals[0])
