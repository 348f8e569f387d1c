"""Unit tests pinning each equation of the algorithm to the code of dacerv2_continuous.py."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.optimize import curve_fit

import dacerv2_continuous as dacer

# VP schedule (paper App. D), T = 5: beta, kappa_bar, 1/sqrt(kappa_bar), sqrt(1/kappa_bar - 1), sqrt(v), c1, c2
SCHEDULE_T5 = np.array([
    [0.19587, 0.80413, 1.11516, 0.49355, 0.0, 1.0, 0.0],
    [0.45882, 0.43518, 1.51589, 1.13926, 0.39889, 0.72844, 0.25512],
    [0.63578, 0.15850, 2.51180, 2.30416, 0.65325, 0.49841, 0.40508],
    [0.75488, 0.03885, 5.07334, 4.97381, 0.81296, 0.31268, 0.43347],
    [0.83503, 0.00641, 12.4909, 12.4508, 0.89876, 0.16565, 0.39290],
])


def test_noise_schedule_matches_reference_table():
    s = dacer.vp_schedule(5)
    keys = ["beta", "kappa_bar", "sqrt_recip_kappa_bar", "sqrt_recip_kappa_bar_m1", "posterior_std", "posterior_c1",
            "posterior_c2"]
    got = np.stack([s[k] for k in keys], axis=1)
    np.testing.assert_allclose(got, SCHEDULE_T5, rtol=2e-4, atol=1e-5)


@pytest.mark.filterwarnings("ignore:Covariance of the parameters could not be estimated")
@pytest.mark.parametrize("T, c, d", [(2, 2.4750, -3.7625), (5, 0.3960, -1.8020), (10, 0.0990, -0.9505),
                                     (20, 0.02475, -0.4876)])
def test_time_weight_coefficients_match_table_and_curve_fit(T, c, d):
    log_w = dacer.q_grad_time_weights(T).double().log()  # w_j = exp(c j + d)
    got_c, got_d = (log_w[1] - log_w[0]).item(), log_w[0].item()
    assert got_c == pytest.approx(c, abs=5e-5) and got_d == pytest.approx(d, abs=5e-5)
    # App. D: curve_fit of exp(c t + d) to the reversed VP alphas gives the same numbers
    i = np.arange(1, T + 1)
    kappa = np.exp(-0.1 / T - 9.9 * (2 * i - 1) / (2 * T**2))
    (fit_c, fit_d), _ = curve_fit(lambda t, c, d: np.exp(c * t + d), np.arange(T), kappa[::-1], p0=(0.1, -1.0))
    assert fit_c == pytest.approx(got_c, rel=1e-4) and fit_d == pytest.approx(got_d, rel=1e-4)
    # the weight is largest at the first (noisiest) reverse step j = T-1
    w = dacer.q_grad_time_weights(T).numpy()
    np.testing.assert_allclose(w, kappa[::-1], rtol=1e-6)  # w_j = kappa_{T-1-j}, in float32
    assert w.argmax() == T - 1 and dacer.q_grad_time_weights(T, time_weight=False).tolist() == [1.0] * T


@pytest.fixture
def actor():
    torch.manual_seed(0)
    return dacer.DiffusionActor(obs_dim=4, act_dim=3, hidden_dim=32, num_layers=2, diffusion_steps=5)


def test_sampler_bounds_and_shapes(actor):
    # scale the output layer up so that unclipped predictions would leave the box by far
    with torch.no_grad():
        actor.net[-1].weight.mul_(50)
    for batch in (1, 7, 512):
        a0 = actor.sample(torch.randn(batch, 4) * 10)
        assert a0.shape == (batch, 3)
        assert a0.abs().max() <= 1.0
    a0, chain = actor.sample(torch.randn(5, 4), keep_chain=True)
    assert chain.shape == (5, 5, 3)
    executed = dacer.policy_action(actor, torch.randn(300, 4), alpha=torch.tensor(100.0), noise_scale=0.1)
    assert executed.abs().max() <= 1.0 and (executed.abs() == 1.0).any()


def test_network_is_eps_of_state_action_and_time_embedding(actor):
    """eps_theta(s, x, j) is the MLP on [s, x, e(j)] with e(j) = time_mlp(sinusoid(j)); j per row equals j per call."""
    obs, x = torch.randn(6, 4), torch.randn(6, 3)
    for j in range(5):
        emb = actor.time_mlp(actor.time_sinusoid[j]).expand(6, -1)
        torch.testing.assert_close(actor(obs, x, actor.time_embedding(j)), actor.net(torch.cat([obs, x, emb], -1)))
    steps = torch.tensor([0, 4, 2, 2, 1, 3])
    per_row = actor(obs, x, actor.time_embedding(steps))
    for row, j in enumerate(steps.tolist()):
        one_row = actor(obs[row : row + 1], x[row : row + 1], actor.time_embedding(j))
        torch.testing.assert_close(per_row[row], one_row[0])


def reference_sample(actor, obs, noise, keep_chain=False):
    """The reverse chain (paper Eq. 6) written out literally with the schedule in float64 numpy; the network is the
    actor's module; with keep_chain also the chain inputs x_j, stacked (T, B, d)."""
    s = dacer.vp_schedule(actor.T)
    x, chain = noise[0], [None] * actor.T
    for j in reversed(range(actor.T)):
        chain[j] = x
        h = actor(obs, x, actor.time_embedding(j))
        x0 = (x / math.sqrt(s["kappa_bar"][j]) - h * math.sqrt(1 / s["kappa_bar"][j] - 1)).clamp(-1, 1)
        x = s["posterior_c1"][j] * x0 + s["posterior_c2"][j] * x
        if j > 0:
            x = x + s["posterior_std"][j] * noise[j]
    return (x, torch.stack(chain)) if keep_chain else x


def test_sampler_equals_literal_reference_for_same_noise(actor):
    for batch in (1, 64):
        obs, noise = torch.randn(batch, 4), torch.randn(5, batch, 3)
        expected = reference_sample(actor, obs, noise)
        torch.testing.assert_close(actor.sample(obs, noise), expected, atol=1e-5, rtol=1e-5)
        with torch.no_grad():
            torch.testing.assert_close(actor.sample(obs, noise), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("compiling", [False, True])
def test_mish_is_torchs_mish_in_value_and_slope(compiling, monkeypatch):
    """Both ways Mish is written (eager; inside torch.compile) equal F.mish in value and derivative."""
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: compiling)
    for dtype, tol in ((torch.float64, 1e-12), (torch.float32, 1e-5)):
        x = torch.cat([torch.linspace(-30, 30, 2001), torch.tensor([-1e4, 1e4])]).to(dtype).requires_grad_(True)
        y = dacer.Mish()(x)
        torch.testing.assert_close(y, F.mish(x), atol=tol, rtol=tol)
        grad, grad_ref = torch.autograd.grad(y.sum(), x)[0], torch.autograd.grad(F.mish(x).sum(), x)[0]
        torch.testing.assert_close(grad, grad_ref, atol=tol, rtol=tol)


def test_time_embedding_is_the_scaled_sinusoid(actor):
    j = 3
    k = torch.arange(8)
    expected = torch.cat([torch.sin(j * 10000.0 ** (-k / 8)), torch.cos(j * 10000.0 ** (-k / 8))]) / math.sqrt(16)
    torch.testing.assert_close(actor.time_sinusoid[j], expected)


class QuadraticCritic(torch.nn.Module):
    """A fixed 'critic' with mu(s, a) = -|a - optimum|^2 (one critic, sigma = 0), for the L_g tests."""

    def __init__(self, optimum, sign=1.0):
        super().__init__()
        self.optimum, self.sign = optimum, sign

    def forward(self, obs, actions):
        mu = -self.sign * ((actions - self.optimum) ** 2).sum(-1)
        return mu[None], torch.zeros_like(mu)[None]


def q_grad_weights(T=5):  # w_j written out, not q_grad_time_weights
    c, d = 9.9 / T**2, -0.1 / T - 9.9 * (2 * T - 1) / (2 * T**2)  # paper App. D, beta in [0.1, 10]
    return torch.exp(c * torch.arange(T, dtype=torch.float32) + d)


def train_on_q_grad_loss_only(actor, critic, steps=300):
    obs = torch.randn(128, 4)
    opt = torch.optim.Adam(actor.parameters(), lr=1e-3)
    for _ in range(steps):
        _, chain = actor.sample(obs, keep_chain=True)
        loss = dacer.q_grad_loss(actor, critic, obs, chain, q_grad_weights())
        opt.zero_grad()
        loss.backward()
        opt.step()


@pytest.mark.parametrize("env_id, task, eta", [
    ("Hopper-v4", "Hopper", 1.0), ("Humanoid-v4", "Humanoid", 0.01), ("Pendulum-v1", "Pendulum", 1.0),
    ("InvertedDoublePendulum-v4", "InvertedDoublePendulum", 0.01), ("MultiGoal6-v0", "MultiGoal", 100.0),
])
def test_q_grad_coef_is_the_paper_table_5_value_of_the_task_unless_given(env_id, task, eta, capsys):
    assert dacer.task_and_q_grad_coef(env_id) == (task, eta)
    assert f"q_grad_coef (eta) = {eta} for {task}" in capsys.readouterr().out
    assert dacer.task_and_q_grad_coef(env_id, 0.0) == (task, 0.0) and capsys.readouterr().out == ""


def test_q_grad_loss_sign_moves_samples_up_the_q_gradient(actor):
    """Training on L_g alone (target eps = -w grad Q_norm) raises the mean Q of sampled actions; -Q lowers it."""
    optimum = torch.tensor([2.0, -2.0, 1.5])  # outside the box, so samples can move both ways
    critic = QuadraticCritic(optimum)
    obs = torch.randn(512, 4)
    with torch.no_grad():
        before = critic(obs, actor.sample(obs))[0].mean()
    flipped = dacer.DiffusionActor(4, 3, 32, 2, 5)
    flipped.load_state_dict(actor.state_dict())
    train_on_q_grad_loss_only(actor, critic)
    train_on_q_grad_loss_only(flipped, QuadraticCritic(optimum, sign=-1.0))
    with torch.no_grad():
        after, after_flipped = critic(obs, actor.sample(obs))[0].mean(), critic(obs, flipped.sample(obs))[0].mean()
    assert after > before + 0.1, (before, after)
    assert after_flipped < before - 0.1, (before, after_flipped)


def test_q_grad_loss_target_is_minus_weighted_normalised_gradient():
    """With the noise prediction equal to -w_j * g_hat, L_g is zero; the gradient is normalised per sample."""
    obs, chain = torch.randn(8, 4), torch.randn(5, 8, 3) * 3
    optimum = torch.tensor([0.5, -0.3, 0.2])
    weights = torch.linspace(0.2, 0.8, 5)

    class PerfectActor:  # eps = -w_j grad Q / |grad Q| for the quadratic Q
        def time_embedding(self, steps):
            return steps

        def __call__(self, obs, x, steps):
            grad = -2 * (x - optimum)
            return -weights[steps, None] * grad / (grad.norm(dim=-1, keepdim=True) + 1e-6)

    perfect_actor = PerfectActor()

    critic = QuadraticCritic(optimum)
    assert dacer.q_grad_loss(perfect_actor, critic, obs, chain, weights).item() < 1e-10
    assert dacer.q_grad_loss(perfect_actor, critic, obs, chain, weights, normalise=False).item() > 1e-2


def test_q_grad_loss_one_step_is_an_unbiased_estimate_of_all_steps(actor):
    """--q-grad-one-step: one random step per state estimates the mean over all T steps without bias."""
    torch.manual_seed(0)
    obs, chain = torch.randn(512, 4), torch.randn(5, 512, 3)
    weights = torch.linspace(0.2, 0.8, 5)
    critic = QuadraticCritic(torch.tensor([0.5, -0.3, 0.2]))
    full = dacer.q_grad_loss(actor, critic, obs, chain, weights).item()
    draws = [dacer.q_grad_loss(actor, critic, obs, chain, weights, one_step=True).item() for _ in range(100)]
    assert abs(sum(draws) / len(draws) - full) < 0.01 * full, (full, sum(draws) / len(draws))
    assert max(draws) - min(draws) > 0.001 * full  # it does sample different steps


def test_dsac_critic_loss_gradients_match_closed_form():
    torch.manual_seed(0)
    B = 64
    mu = torch.randn(2, B, requires_grad=True)
    sigma = (torch.rand(2, B) + 0.2).requires_grad_(True)
    y, y_sample = torch.randn(B), torch.randn(B) * 3
    omega = torch.tensor([0.7, 1.3])
    dacer.dsac_critic_loss(mu, sigma, y, y_sample, omega).sum().backward()
    m, s, w = mu.detach(), sigma.detach(), (omega**2 + 0.1)[:, None]
    y_b = m + (y_sample - m).clamp(-3 * omega[:, None], 3 * omega[:, None])
    torch.testing.assert_close(mu.grad, -w * (y - m) / (s**2 + 0.1) / B)
    torch.testing.assert_close(sigma.grad, -w * ((m - y_b) ** 2 - s**2) / (s**3 + 0.1) / B)


def test_critic_targets_use_the_smaller_target_mean_and_its_sample():
    class FixedTarget(torch.nn.Module):
        def forward(self, obs, actions):
            return torch.tensor([[1.0, 5.0], [2.0, 3.0]]), torch.zeros(2, 2)

    y, y_sample = dacer.critic_targets(FixedTarget(), torch.tensor([1.0, 1.0]), None, None, torch.tensor([0.0, 1.0]), 0.9)
    torch.testing.assert_close(y, torch.tensor([1.0 + 0.9 * 1.0, 1.0]))  # terminal: no bootstrap
    torch.testing.assert_close(y_sample, y)  # sigma = 0: the sample equals the mean


class RampEnv(dacer.gym.Env):
    """Rewards 0.5, 1.0, 1.5, ... for a random number of steps, 3 to 8 (drawn at reset from its seed); an episode of
    up to 5 steps terminates, a longer one is cut by a time limit (truncated)."""
    observation_space = dacer.gym.spaces.Box(-1.0, 1.0, (3,), np.float32)
    action_space = dacer.gym.spaces.Box(-1.0, 1.0, (2,), np.float32)

    def reset(self, seed=None, options=None):
        super().reset(seed=seed)
        self.t, self.length = 0, int(self.np_random.integers(3, 9))
        return self.np_random.uniform(-1, 1, 3).astype(np.float32), {}

    def step(self, action):
        self.t, end = self.t + 1, self.t + 1 == self.length
        obs = self.np_random.uniform(-1, 1, 3).astype(np.float32)
        return obs, 0.5 * self.t, end and self.length <= 5, end and self.length > 5, {}


class LinearCritics(torch.nn.Module):
    """Twin 'critics' mu = sum(s) + action_weight sum(a) (+ 1 for the first: the second is the smaller)."""

    def __init__(self, action_weight):
        super().__init__()
        self.action_weight = action_weight

    def forward(self, obs, actions):
        mu = obs.sum(-1) + self.action_weight * actions.sum(-1)
        return torch.stack([mu + 1.0, mu]), torch.ones(2, len(mu))


def test_evaluate_measures_the_critics_value_estimation_bias_of_its_episodes():
    """--eval-only's bias: min_i mu_i(s, a) / reward_scale at the evaluation actions and the discounted return-to-go
    of each env's first episode, at its first step and averaged over its steps but the h = 3 (gamma^h <= 1 %) before a
    time limit; here recomputed from each episode replayed alone."""
    envs = dacer.gym.vector.SyncVectorEnv([lambda: dacer.gym.wrappers.RecordEpisodeStatistics(RampEnv())] * 6,
                                          autoreset_mode=dacer.gym.vector.AutoresetMode.SAME_STEP)
    actor, seed, gamma, scale, cpu = dacer.DiffusionActor(3, 2, 16, 2, 5), 7, 0.2, 0.5, torch.device("cpu")
    returns, bias = dacer.evaluate(actor, envs, cpu, seed, LinearCritics(2.0), gamma, scale)
    assert np.array_equal(returns, dacer.evaluate(actor, envs, cpu, seed))  # the same episodes as without a critic
    obs0 = torch.as_tensor(envs.reset(seed=seed)[0])
    a0 = actor.sample(obs0, actor.draw_noise(obs0, torch.Generator().manual_seed(seed)))
    np.testing.assert_allclose(bias["q_first"], ((obs0.sum(-1) + 2 * a0.sum(-1)) / scale).detach(), rtol=1e-5)
    _, state_only = dacer.evaluate(actor, envs, cpu, seed, LinearCritics(0.0), gamma, scale)
    lengths = []
    for i in range(6):  # the vector env seeds env i with seed + i
        env = RampEnv()
        states = [env.reset(seed=seed + i)[0]] + [env.step(None)[0] for _ in range(env.length - 1)]
        n = env.length
        lengths.append(n)
        to_go = [sum(gamma ** (k - t) * 0.5 * (k + 1) for k in range(t, n)) for t in range(n)]
        kept = range(n if n <= 5 else n - 3)
        assert returns[i] == 0.25 * n * (n + 1) and state_only["steps"][i] == len(kept)
        assert bias["return_first"][i] == pytest.approx(to_go[0])
        assert bias["return_mean"][i] == pytest.approx(np.mean([to_go[t] for t in kept]))
        assert state_only["q_mean"][i] == pytest.approx(np.mean([states[t].sum() / scale for t in kept]), rel=1e-5)
    assert min(lengths) <= 5 < max(lengths)  # episodes that terminate and episodes that a time limit ends


def gaussian_entropy(cov):
    d = cov.shape[-1]
    return 0.5 * d * (1 + math.log(2 * math.pi)) + 0.5 * torch.logdet(cov.double())


def test_gmm_entropy_on_one_gaussian_is_within_5_percent():
    """A 3-component GMM fitted to one Gaussian over-estimates its entropy (H(w) + sum w H_k bounds the mixture's
    entropy from above), most at low d: on 64 x 200 samples, d = 3 gives 4.49 (sklearn GaussianMixture: 4.58) for a
    closed form of 4.15; d = 6 gives 4.88 (sklearn: 4.95) for 4.90. So the 5 % check is at d = 6, and the fit itself
    (one component = the ML Gaussian) is checked at d = 3."""
    torch.manual_seed(0)
    cov6 = 0.3 * torch.eye(6)
    samples = torch.randn(64, 200, 6) @ torch.linalg.cholesky(cov6).T
    assert dacer.gmm_entropy(samples).mean() == pytest.approx(gaussian_entropy(cov6).item(), rel=0.05)
    cov3 = torch.tensor([[1.0, 0.3, 0.0], [0.3, 0.5, 0.1], [0.0, 0.1, 2.0]])
    samples = torch.randn(64, 200, 3) @ torch.linalg.cholesky(cov3).T
    single = dacer.gmm_entropy(samples, num_components=1).mean()
    assert single == pytest.approx(gaussian_entropy(cov3).item(), rel=0.02)


def test_gmm_entropy_on_three_separated_gaussians_adds_log_3():
    torch.manual_seed(0)
    d = 2
    centres = torch.tensor([[-20.0, 0.0], [20.0, 0.0], [0.0, 20.0]])
    samples = (torch.randn(32, 201, d) * 0.5 + centres.repeat_interleave(67, 0)).float()
    estimate = dacer.gmm_entropy(samples).mean()
    expected = math.log(3) + gaussian_entropy(0.25 * torch.eye(d)).item()
    assert estimate == pytest.approx(expected, abs=0.05 * abs(expected) + 0.05)


def test_gmm_float32_fit_that_cancels_below_reg_covar_is_refit_in_float64():
    """float32's E[x x^T] - mu mu^T loses the variance of a tight cluster far from 0 (e.g. actions clipped at the
    bound, in a Hopper run at 22,000 iterations): its covariance is not positive definite even with reg_covar, the
    Cholesky factor fails and the state's entropy was NaN, and so were alpha and every action after it. Such a state
    is refit in float64."""
    torch.manual_seed(0)
    tight = 30 + 1e-4 * torch.randn(150, 2)  # a tight cluster far from the origin
    spread = torch.cat([torch.randn(25, 2) * 0.5 + 20, torch.randn(25, 2) * 0.5 + 40])
    samples = torch.stack([torch.cat([tight, spread]), torch.randn(200, 2), torch.randn(200, 2) * 0.3 + 1])
    second_moment = tight.T @ tight / len(tight)  # what the EM's M-step computes, in float32
    mean = tight.mean(0)
    cov = second_moment - mean[:, None] * mean[None, :] + 1e-6 * torch.eye(2)
    assert torch.linalg.eigvalsh(cov).min() <= 0  # float32 cannot hold this covariance
    got, reference = dacer.gmm_entropy(samples), dacer.gmm_entropy(samples, dtype=torch.float64)
    assert got.dtype == torch.float32 and torch.isfinite(got).all()
    assert got[0].item() == pytest.approx(reference[0].item(), abs=1e-3)  # the refit state (three clear clusters)


def test_gmm_em_matches_the_textbook_em_from_the_same_init():
    """gmm_entropy's EM (sums and log-densities as products with [x x^T, x, 1]) equals the textbook EM on x - mu_k
    (sklearn's; scipy's Gaussian log-density), state by state, from the same k-means init and for the same 20
    iterations (tol = 0: no early stop), on clustered and on clamped data with many samples at the bound."""
    from scipy.special import logsumexp
    from scipy.stats import multivariate_normal

    torch.manual_seed(0)
    centres = torch.randn(8, 3, 3) * 0.5
    clustered = centres.repeat_interleave(50, 1) + 0.1 * torch.randn(8, 150, 3)
    for samples in (clustered, (0.8 * torch.randn(8, 150, 3)).clamp(-1, 1)):
        x = samples.double()
        init = dacer.kmeans_init(x, 3, torch.Generator().manual_seed(42)).numpy()  # (B, K, N)
        expected = []
        for b, xb in enumerate(x.numpy()):
            resp = init[b].T  # (N, K)
            for it in range(21):
                nk = resp.sum(0) + 10 * np.finfo(np.float64).eps
                w, mu = nk / len(xb), resp.T @ xb / nk[:, None]
                cov = [(resp[:, k] * (xb - mu[k]).T) @ (xb - mu[k]) / nk[k] + 1e-6 * np.eye(3) for k in range(3)]
                if it == 20:
                    break
                log_p = np.stack([np.log(w[k]) + multivariate_normal(mu[k], cov[k]).logpdf(xb) for k in range(3)], 1)
                resp = np.exp(log_p - logsumexp(log_p, 1, keepdims=True))
            gaussian = [multivariate_normal(mu[k], cov[k]).entropy() for k in range(3)]
            expected.append(-(w * np.log(w)).sum() + (w * gaussian).sum())
        got = dacer.gmm_entropy(samples, max_iter=20, tol=0.0, dtype=torch.float64)
        np.testing.assert_allclose(got.numpy(), expected, rtol=1e-8, atol=1e-8)
        single = dacer.gmm_entropy(samples, max_iter=20, tol=0.0)  # the default, float32: the same fit
        np.testing.assert_allclose(single.double().numpy(), expected, rtol=1e-4, atol=1e-4)
