# DACERv2 (Wang et al. 2025): diffusion policy, 5 steps, Q-gradient field guidance. Docs and results: README.md
import copy
import math
import os
import random
import shlex
import signal
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal, Optional

import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

try:  # TRY NOT TO MODIFY: the plumbing (input checks, checkpoints and exact resume, --compile), beside this file
    import dacerv2_utils as utils
except ModuleNotFoundError as e:
    if e.name != "dacerv2_utils":
        raise
    print("error: dacerv2_utils.py must sit beside this script (or on PYTHONPATH); copy it along", file=sys.stderr)
    sys.exit(2)


@dataclass
class Args:
    exp_name: str = Path(__file__).stem
    """the name of this experiment (used in the run name)"""
    seed: int = 1
    """the seed of the experiment"""
    torch_deterministic: bool = True
    """if toggled, `torch.backends.cudnn.deterministic=True`"""
    cuda: bool = True
    """if toggled, use CUDA when it is available (a notice is printed and the CPU is used otherwise)"""
    torch_threads: int = 1
    """the number of CPU threads of torch (1 is fastest for these small networks, and safe for parallel runs)"""
    compile: bool = False
    """if toggled, compile the losses and the sampler (torch.compile, AOTInductor; README "Implementation details")"""
    track: bool = False
    """if toggled, track the run with Weights and Biases (needs `pip install wandb`)"""
    wandb_project_name: str = "dacerv2"
    """the wandb project name"""
    wandb_entity: Optional[str] = None
    """the entity (team) of the wandb project"""
    capture_video: bool = False
    """whether to record videos of env 0 (in `videos/RUN_NAME`; README: Set-up, for rendering without a display)"""
    save_model: bool = False
    """whether to save a checkpoint to `runs/{run_name}/{exp_name}.pt` at the end of training"""
    checkpoint_frequency: int = 0
    """the interval of periodic checkpoints (same file), in iterations; 0: only --save-model's and on SIGINT/SIGTERM"""
    checkpoint_buffer: bool = False
    """whether checkpoints include the replay buffer (needed for an exact resume; large)"""
    resume: Optional[str] = None
    """the path of a checkpoint to continue training from (its arguments are the defaults; flags given override)"""
    resume_if_exists: bool = False
    """if toggled, the run folder is runs/{env_id}__{exp_name}__{seed} and a run continues from its checkpoint (Slurm)"""
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
    preset: Optional[Literal["short"]] = None
    """a named set of the flags above, ours, not the paper's (PRESETS; README "Implementation details"): flags given
    override it"""


# η of paper Table 5 (two groups of tasks, as we read it); other tasks: DEFAULT_Q_GRAD_COEF. MultiGoal deviates: with
# Table 5's 1.0 the policy collapses onto one goal, with 100 it reaches all (README).
Q_GRAD_COEF = {
    "Hopper": 1.0, "Ant": 1.0, "HalfCheetah": 1.0, "Walker2d": 1.0, "MultiGoal": 100.0,
    "HumanoidStandup": 0.01, "Humanoid": 0.01, "Swimmer": 0.01, "InvertedDoublePendulum": 0.01,
}  # fmt: skip
DEFAULT_Q_GRAD_COEF = 1.0
# --preset short: for runs of 10^4 to 10^5 iterations (a CPU's budget), where the paper's settings, built for 1.5 M
# iterations, learn slowly; with --critic-loss td faster still (README "Results"). Only existing flags.
PRESETS = {"short": {"policy_lr": 3e-4, "q_lr": 3e-4, "init_alpha": 0.3, "alpha_update_frequency": 200}}


def task_and_q_grad_coef(env_id, q_grad_coef=None):
    """The task's name (MultiGoal for every MultiGoal env) and eta: q_grad_coef when given, else Q_GRAD_COEF's value."""
    task = "MultiGoal" if env_id.startswith("MultiGoal") else env_id.rpartition("-")[0]
    if q_grad_coef is None:
        q_grad_coef = Q_GRAD_COEF.get(task, DEFAULT_Q_GRAD_COEF)
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
        return {"pos": self.pos, "size": self.size, **{k: v[: self.size].cpu() for k, v in self.data.items()}}

    def load_state_dict(self, state):
        self.pos, self.size = state["pos"], state["size"]
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
            "posterior_c2": (1 - kappa_bar_prev) * np.sqrt(kappa) / (1 - kappa_bar)}  # fmt: skip


def time_weight_coefficients(T, b_min=B_MIN, b_max=B_MAX):
    """c, d of w_j = exp(c j + d) (paper Eq. 11, App. D): the exact fit of the reversed VP alphas, kappa_{T-1-j}."""
    return (b_max - b_min) / T**2, -b_min / T - (b_max - b_min) * (2 * T - 1) / (2 * T**2)


def q_grad_time_weights(T, time_weight=True):
    """w_j = exp(c j + d) of L_g's target for j = 0..T-1 (paper Eq. 11); all ones without time weighting."""
    c, d = time_weight_coefficients(T)
    return torch.exp(c * torch.arange(T) + d) if time_weight else torch.ones(T)


# ALGO LOGIC: networks. Each is one plain nn.Module; every use (acting, a', the losses, the GMM, evaluation and the
# compiled paths) calls it, and autograd computes every gradient (README: Modifying the script).
class Mish(nn.Module):
    """Mish(x) = x tanh(softplus(x)), the actor's activation (DACER). Two ways of writing the same function, for speed
    alone (autograd differentiates either): x n / (n + 2) with n = e^x (e^x + 2) when compiled, which inductor fuses
    into one fast kernel, and x tanh(softplus(x)) eagerly, which with its backward takes half the time of torch's Mish
    kernel on the CPU. (In float32, n / (n + 2) = 1 beyond x = 20.)"""

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
    """The noise-predicting network eps_theta(s, x, j) (DACER's DACERPolicyNet) and its sampler (paper Eq. 6).
    --compile's CPU sampler (dacerv2_utils.export_sampler) uses T, obs_dim, act_dim, draw_noise and sample; it takes
    the parameters and buffers as inputs and keeps other attributes (the schedule's floats) as constants."""

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
        """Reverse DDPM chain, j = T-1 .. 0 (paper Eq. 6), differentiable end to end.

        noise (T, B, d): noise[0] is the initial x ~ N(0, I), noise[j] the step noise z_j (step 0 adds none).
        Returns a0 in [-1, 1] and, with keep_chain, the chain inputs x_j stacked as (T, B, d) (index j) for L_g.
        """
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


def explore(actor, obs, alpha, noise_scale, a0=None):
    """Executed action a = clip(a0 + lambda * alpha * xi, -1, 1) (DACER), for a0 given or sampled at obs."""
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
    """Independent critics (any nn.Module with Critic's signature), run one after the other; forward returns mu, sigma
    of shape (num_critics, B). (Stacking them for torch.func.vmap measured 14 % slower per iteration on the CPU.)"""

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
    """DSAC-T critic loss per critic (paper Eq. 14 / DSAC-T), mu, sigma (num_critics, B), omega (num_critics,).

    grad wrt mu = -(omega^2 + eps)(y - mu)/(sigma^2 + eps); wrt sigma = -(omega^2 + eps)((mu - y_b)^2 - sigma^2)/(sigma^3 + eps)
    """
    omega = omega[:, None]
    y_bounded = (mu + (y_sample - mu).clamp(-3 * omega, 3 * omega)).detach()  # clipping bound b = 3 omega
    sigma_d = sigma.detach().clamp(min=0.0)
    mean_term = mu * (y - mu).detach() / (sigma_d**2 + eps)
    std_term = sigma * ((mu.detach() - y_bounded) ** 2 - sigma_d**2) / (sigma_d**3 + eps)
    return -(omega.squeeze(1) ** 2 + eps) * (mean_term + std_term).mean(1)  # one loss per critic


def critic_loss(actor, critic, critic_target, batch, omega, alpha, args):
    """The critics' losses (--critic-loss) on a batch, a' from the current policy; also mu and the updated omega."""
    obs, actions, rewards, next_obs, terminations = batch
    with torch.no_grad():
        next_actions = explore(actor, next_obs, alpha, args.noise_scale)  # a' (no target policy: DACER)
        y, y_sample = critic_targets(critic_target, args.reward_scale * rewards, next_obs, next_actions, terminations,
                                     args.gamma)  # fmt: skip
    mu, sigma = critic(obs, actions)
    with torch.no_grad():  # omega: each critic's running mean of sigma, started at its first batch mean (omega = 0)
        omega = torch.where(omega == 0, sigma.mean(1), omega.lerp(sigma.mean(1), args.tau))
    if args.critic_loss == "td":  # sigma and y_sample unused: the clipped double-Q TD loss of SAC, TD3 and QVPO
        return ((mu - y) ** 2).mean(1), mu, omega
    return dsac_critic_loss(mu, sigma, y, y_sample, omega), mu, omega


def q_grad_loss(actor, critic, obs, chain, weights, normalise=True, one_step=False):
    """Q-gradient field loss L_g (paper Eqs. 11-13) over the chain's intermediate actions x_j, taken as data.

    With S_theta = -eps_theta read as a score and g the normalised Q-gradient, || w_j g - S_theta ||^2 =
    || eps_theta(s, x_j, j) + w_j g ||^2, averaged over all T steps (the exact expectation over t ~ U(1, T)), or with
    one_step over one random step j per state (an unbiased estimate of it, at 1/T of the cost). weights (T,): w_j.
    """
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


def actor_loss(actor, critic, obs, alpha, q_grad_weights, q_grad_coef, args):
    """L_pi = L_q + eta L_g (paper Eq. 15) with the critics frozen; also L_g (zero when eta = 0, i.e. DACER)."""
    a0, chain = actor.sample(obs, keep_chain=True)
    loss_q = -smallest_mean(critic, obs, explore(actor, obs, alpha, args.noise_scale, a0)).mean()
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
def gmm_entropy(samples, num_components=3, max_iter=100, tol=1e-3, reg_covar=1e-6, seed=42):
    """Per-state entropy of a full-covariance GMM fitted to samples (B, N, d); returns (B,) in float64.

    H = -sum_k w_k log w_k + sum_k w_k [d/2 (1 + log 2 pi) + 1/2 log det Sigma_k]. sklearn's GaussianMixture defaults
    (k-means init, <= 100 EM iterations, tol 1e-3, reg 1e-6) for all states at once; convergence is tested every 10
    iterations. Each EM step is two batched products with the per-sample features f = [x x^T, x, 1].
    """
    x = samples.double()
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
    return -(weights * weights.log()).sum(-1) + (weights * gaussian).sum(-1)


@torch.no_grad()
def estimate_entropy(actor, obs, alpha, noise_scale, num_samples, num_components):
    """Mean over states of the GMM entropy of num_samples executed actions per state (paper's entropy regulator)."""
    B = obs.shape[0]
    states = obs.repeat(num_samples, 1)  # (N*B, obs_dim), sample-major; in chunks that keep the chain in cache
    actions = torch.cat([explore(actor, chunk, alpha, noise_scale) for chunk in states.split(1024)])  # 4x faster
    return gmm_entropy(actions.view(num_samples, B, -1).transpose(0, 1), num_components).mean().float()


# ALGO LOGIC: evaluation
@torch.no_grad()
def evaluate(actor, eval_envs, device, seed):
    """Mean undiscounted return of one episode per eval env, with the evaluation action (chain, no lambda*alpha noise).

    Seeded by `seed` alone, with its own generator: evaluating never shifts the training's random stream.
    """
    obs, _ = eval_envs.reset(seed=seed)
    gen = torch.Generator(device=device).manual_seed(seed)
    returns = np.full(eval_envs.num_envs, np.nan)
    while np.isnan(returns).any():
        obs = torch.as_tensor(obs, dtype=torch.float32, device=device)
        actions = actor.sample(obs, actor.draw_noise(obs, gen))
        obs, _, _, _, infos = eval_envs.step(actions.cpu().numpy())
        if "final_info" in infos:
            finished = infos["final_info"]["_episode"] & np.isnan(returns)
            returns[finished] = infos["final_info"]["episode"]["r"][finished]
    return float(returns.mean())


if __name__ == "__main__":
    args, checkpoint = utils.parse_args(Args, PRESETS)  # tyro; --preset's and --resume's arguments as defaults
    utils.keep_freed_memory()
    stop_signal = 0  # set by SIGINT / SIGTERM: finish the iteration, save a checkpoint, exit 128 + signal

    def request_stop(signum, frame):
        global stop_signal
        stop_signal = signum

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    env_id = utils.check_setup(args)
    task, q_grad_coef = task_and_q_grad_coef(env_id, args.q_grad_coef)
    run_name = utils.fixed_run_name(args) + ("" if args.resume_if_exists else f"__{int(time.time())}")
    run_name = checkpoint["run_name"] if checkpoint else run_name
    if args.resume_if_exists and not checkpoint:
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
    torch.backends.cudnn.deterministic = args.torch_deterministic
    torch.set_num_threads(args.torch_threads)

    # TRY NOT TO MODIFY: env setup (SAME_STEP autoreset keeps the true last observation in infos["final_obs"])
    envs = gym.vector.SyncVectorEnv(
        [make_env(env_id, args.seed + i, i, args.capture_video, run_name) for i in range(args.num_envs)],
        autoreset_mode=gym.vector.AutoresetMode.SAME_STEP,
    )
    eval_envs = gym.vector.SyncVectorEnv(
        [make_env(env_id, args.seed + 10_000 + i, i, False, run_name) for i in range(args.eval_episodes)],
        autoreset_mode=gym.vector.AutoresetMode.SAME_STEP,
    )
    envs.action_space.seed(args.seed)
    obs, _ = envs.reset(seed=args.seed)
    obs_dim, act_dim = envs.single_observation_space.shape[0], envs.single_action_space.shape[0]

    # ALGO LOGIC: networks, optimizers, alpha, L_g time weights
    actor = DiffusionActor(obs_dim, act_dim, args.hidden_dim, args.num_layers, args.diffusion_steps).to(device)
    critic = CriticEnsemble([Critic(obs_dim, act_dim, args.hidden_dim, args.num_layers)
                             for _ in range(args.num_critics)]).to(device)  # fmt: skip
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

    # TRY NOT TO MODIFY: resume, logging, checkpoints
    modules = {"actor": actor, "critic": critic, "critic_target": critic_target, "actor_optimizer": actor_optimizer,
               "q_optimizer": q_optimizer, "alpha_optimizer": alpha_optimizer}  # fmt: skip
    if checkpoint:
        learning_rates = {"q_optimizer": args.q_lr, "actor_optimizer": args.policy_lr, "alpha_optimizer": args.alpha_lr}
        tensors = {"log_alpha": log_alpha, "omega": omega, "entropy": entropy}  # copied in place
        utils.load_state(checkpoint, {**modules, **tensors}, learning_rates)  # the learning rates given now apply
        iteration, start_step = checkpoint["iteration"], checkpoint["global_step"]
        obs = utils.set_random_state(checkpoint["random_state"], envs, obs)
        if "buffer" in checkpoint:
            rb.load_state_dict(checkpoint["buffer"])
        message = "with its replay buffer" if "buffer" in checkpoint else "the replay buffer is refilled first"
        print(f"resuming {run_name} at step {start_step} (iteration {iteration}); {message}")
    alpha = log_alpha.detach().exp()
    critic_loss_fn, actor_loss_fn = critic_loss, actor_loss
    if args.compile:
        critic_loss_fn, actor_loss_fn = utils.compile_functions(actor, device, critic_loss, actor_loss)
    if args.track:
        import wandb

        wandb.init(project=args.wandb_project_name, entity=args.wandb_entity, sync_tensorboard=True,
                   config=vars(args), name=run_name, save_code=True)  # fmt: skip
    writer = SummaryWriter(f"runs/{run_name}", purge_step=start_step if checkpoint else None)  # drop points after it
    hparams = {**vars(args), "env_id": env_id, "env_id_requested": args.env_id, "q_grad_coef": q_grad_coef}
    writer.add_text("hyperparameters", "|param|value|\n|-|-|\n" + "\n".join(f"|{k}|{v}|" for k, v in hparams.items()))
    timer, start_time, last_eval, logged = utils.UpdateTimer(device), time.time(), float("nan"), {}
    steps_done, checkpoint_path = start_step, f"runs/{run_name}/{args.exp_name}.pt"

    last_step = start_step + max(0, math.ceil((args.total_timesteps - start_step) / args.num_envs)) * args.num_envs
    if rb.size + last_step - start_step < args.learning_starts:  # updates start once the buffer holds the warm-up
        print(f"--total-timesteps {args.total_timesteps} ends within its warm-up (--learning-starts "
              f"{args.learning_starts}): this run does no gradient update and no evaluation")
    phase = "warm-up" if rb.size < args.learning_starts else "training"
    progress = tqdm(total=args.total_timesteps, initial=start_step, desc=phase, unit=" steps", unit_scale=True,
                    dynamic_ncols=True, mininterval=0.5 if sys.stderr.isatty() else 30)  # fmt: skip
    episode_return = float("nan")

    def diverged(what):
        progress.close()
        kept = f"the last good checkpoint is {checkpoint_path}" if os.path.exists(checkpoint_path) else "no checkpoint"
        print(f"error: {what} at iteration {iteration} (step {steps_done}): training diverged; {kept}", file=sys.stderr)
        writer.close()
        sys.exit(3)

    def write_checkpoint():
        """Everything needed to continue exactly; diverged weights never replace the last good checkpoint."""
        for name, p in [*actor.named_parameters(), *critic.named_parameters(), ("log_alpha", log_alpha)]:
            if not torch.isfinite(p).all():
                diverged(f"non-finite parameter {name}")
        utils.save_checkpoint(checkpoint_path, {
            **{name: module.state_dict() for name, module in modules.items()}, "log_alpha": log_alpha.detach().cpu(),
            "omega": omega.cpu(), "entropy": entropy.cpu(), "iteration": iteration, "global_step": steps_done,
            "run_name": run_name, "args": asdict(args), "random_state": utils.random_state(envs, obs),
            **({"buffer": rb.state_dict()} if args.checkpoint_buffer else {}),
        })  # fmt: skip

    # TRY NOT TO MODIFY: start the game
    for global_step in range(start_step, args.total_timesteps, args.num_envs):
        if stop_signal:
            break
        # ALGO LOGIC: put action logic here (uniform random actions for the first --learning-starts steps)
        if global_step < args.learning_starts:
            actions = envs.action_space.sample()
        else:
            with torch.no_grad():
                obs_t = torch.as_tensor(obs, dtype=torch.float32, device=device)
                actions = explore(actor, obs_t, alpha, args.noise_scale).cpu().numpy()

        # TRY NOT TO MODIFY: execute the game and log data.
        next_obs, rewards, terminations, truncations, infos = envs.step(actions)
        steps_done = global_step + args.num_envs
        progress.update(args.num_envs)
        if "final_info" in infos:
            for i in np.flatnonzero(infos["final_info"]["_episode"]):
                episode_return, length = infos["final_info"]["episode"]["r"][i], infos["final_info"]["episode"]["l"][i]
                if args.print_episodes:
                    tqdm.write(f"global_step={global_step}, episodic_return={episode_return:.2f}")
                writer.add_scalar("charts/episodic_return", episode_return, global_step)
                writer.add_scalar("charts/episodic_length", length, global_step)

        # TRY NOT TO MODIFY: store the true last observation of finished episodes; bootstrap on terminations only
        real_next_obs = next_obs.copy()
        for i in np.flatnonzero(infos.get("_final_obs", [])):
            real_next_obs[i] = infos["final_obs"][i]
        rb.add(obs, real_next_obs, actions, rewards, terminations)
        obs = next_obs

        # ALGO LOGIC: training, one update per vector step: critics every iteration, actor every policy_frequency
        if rb.size < args.learning_starts:
            continue
        if phase == "warm-up":
            phase = "training"
            progress.set_description(phase)
            tqdm.write(f"warm-up done at step {steps_done}: training")
        timer.mark()
        batch = rb.sample(args.batch_size)
        qf_losses, mu, omega = critic_loss_fn(actor, critic, critic_target, batch, omega, alpha, args)
        q_optimizer.zero_grad(set_to_none=True)
        qf_losses.sum().backward()
        q_optimizer.step()

        if iteration % args.alpha_update_frequency == 0:  # entropy regulator: L_alpha = log alpha (H - H_target)
            entropy = estimate_entropy(actor, batch[0], alpha, args.noise_scale, args.gmm_samples, args.gmm_components)
            alpha_loss = log_alpha * (entropy - target_entropy)
            alpha_optimizer.zero_grad(set_to_none=True)
            alpha_loss.backward()
            alpha_optimizer.step()
            alpha = log_alpha.detach().exp()
            logged["losses/alpha_loss"] = alpha_loss.detach()

        if iteration % args.policy_frequency == 0:
            critic.requires_grad_(False)  # the actor step optimises theta only
            loss, g_loss = actor_loss_fn(actor, critic, batch[0], alpha, q_grad_weights, q_grad_coef, args)
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

        if iteration % args.log_frequency == 0:
            for i in range(args.num_critics):
                logged |= {f"losses/qf{i + 1}_loss": qf_losses[i], f"losses/qf{i + 1}_values": mu[i].mean()}
            logged |= {"losses/qf_loss": qf_losses.mean(), "losses/alpha": alpha, "charts/entropy": entropy}
            values = torch.stack([v.detach().float().reshape(()) for v in logged.values()]).tolist()  # one host sync
            for tag, value in zip(logged, values):
                if not math.isfinite(value):
                    diverged(f"non-finite {tag}")
                writer.add_scalar(tag, value, global_step)
            writer.add_scalar("charts/update_ms", timer.mean_ms(), global_step)
            writer.add_scalar("charts/SPS", int((steps_done - start_step) / (time.time() - start_time)), global_step)
            progress.set_postfix_str(f"last eval {last_eval:.1f}, last episode {episode_return:.1f}", refresh=False)
        if iteration % args.eval_frequency == 0 or steps_done >= args.total_timesteps:  # periodic and final
            last_eval = evaluate(actor, eval_envs, device, seed=args.seed + 10_000 + iteration)
            writer.add_scalar("eval/episodic_return", last_eval, global_step)
            progress.set_postfix_str(f"last eval {last_eval:.1f}, last episode {episode_return:.1f}", refresh=False)
            tqdm.write(f"global_step={global_step}, iteration={iteration}, eval/episodic_return={last_eval:.2f}")
        if args.checkpoint_frequency and iteration % args.checkpoint_frequency == 0:
            write_checkpoint()

    progress.close()
    if task == "MultiGoal" and not stop_signal:  # paper Fig. 2: 100 stochastic trajectories from the origin
        import multigoal_env

        title = f"{args.exp_name} seed {args.seed}, step {steps_done}" + (", untrained" if iteration == 0 else "")
        if iteration == 0:
            print("the policy is untrained (no gradient update ran): its multimodality below is not a result")
        num_goals = envs.envs[0].unwrapped.num_goals
        multigoal_env.report_multimodality(actor, num_goals, f"runs/{run_name}/multimodality.png", writer, steps_done,
                                           seed=args.seed, title=title)  # fmt: skip
    if args.save_model or stop_signal:
        write_checkpoint()
        command = shlex.join([sys.executable, sys.argv[0], "--resume", checkpoint_path])
        print(f"checkpoint saved to {checkpoint_path}; continue with: {command}"
              + ("" if stop_signal else " --total-timesteps N"))  # fmt: skip
    envs.close()
    eval_envs.close()
    writer.close()
    if stop_signal:
        print(f"stopped by {signal.Signals(stop_signal).name} at step {steps_done}")
        sys.exit(128 + stop_signal)
