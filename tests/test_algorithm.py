"""Unit tests pinning each equation of ALGORITHM.md to the code of dacerv2_continuous.py."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.optimize import curve_fit

import dacerv2_continuous as dacer

# ALGORITHM.md §1.1, T = 5: beta, kappa_bar, 1/sqrt(kappa_bar), sqrt(1/kappa_bar - 1), sqrt(v), c1, c2
SCHEDULE_T5 = np.array([
    [0.19587, 0.80413, 1.11516, 0.49355, 0.0, 1.0, 0.0],
    [0.45882, 0.43518, 1.51589, 1.13926, 0.39889, 0.72844, 0.25512],
    [0.63578, 0.15850, 2.51180, 2.30416, 0.65325, 0.49841, 0.40508],
    [0.75488, 0.03885, 5.07334, 4.97381, 0.81296, 0.31268, 0.43347],
    [0.83503, 0.00641, 12.4909, 12.4508, 0.89876, 0.16565, 0.39290],
])  # fmt: skip


def test_noise_schedule_matches_reference_table():
    s = dacer.vp_schedule(5)
    keys = ["beta", "kappa_bar", "sqrt_recip_kappa_bar", "sqrt_recip_kappa_bar_m1", "posterior_std", "posterior_c1",
            "posterior_c2"]  # fmt: skip
    got = np.stack([s[k] for k in keys], axis=1)
    np.testing.assert_allclose(got, SCHEDULE_T5, rtol=2e-4, atol=1e-5)


@pytest.mark.filterwarnings("ignore:Covariance of the parameters could not be estimated")
@pytest.mark.parametrize("T, c, d", [(2, 2.4750, -3.7625), (5, 0.3960, -1.8020), (10, 0.0990, -0.9505),
                                     (20, 0.02475, -0.4876)])  # fmt: skip
def test_time_weight_coefficients_match_table_and_curve_fit(T, c, d):
    got_c, got_d = dacer.time_weight_coefficients(T)
    assert got_c == pytest.approx(c, abs=5e-5) and got_d == pytest.approx(d, abs=5e-5)
    # App. D: curve_fit of exp(c t + d) to the reversed VP alphas gives the same numbers
    i = np.arange(1, T + 1)
    kappa = np.exp(-0.1 / T - 9.9 * (2 * i - 1) / (2 * T**2))
    (fit_c, fit_d), _ = curve_fit(lambda t, c, d: np.exp(c * t + d), np.arange(T), kappa[::-1], p0=(0.1, -1.0))
    assert fit_c == pytest.approx(got_c, rel=1e-4) and fit_d == pytest.approx(got_d, rel=1e-4)
    # the weight is largest at the first (noisiest) reverse step j = T-1
    w = np.exp(got_c * np.arange(T) + got_d)
    assert w.argmax() == T - 1 and w[-1] == pytest.approx(kappa[0])


@pytest.fixture
def actor():
    torch.manual_seed(0)
    return dacer.DiffusionActor(obs_dim=4, act_dim=3, hidden_dim=32, num_layers=2, diffusion_steps=5)


def test_sampler_bounds_and_shapes(actor):
    # scale the output layer up so that unclipped predictions would leave the box by far
    with torch.no_grad():
        actor.trunk[-1].weight.mul_(50)
    for batch in (1, 7, 512):
        a0 = actor.sample(torch.randn(batch, 4) * 10)
        assert a0.shape == (batch, 3)
        assert a0.abs().max() <= 1.0
    a0, chain, eps = actor.sample(torch.randn(5, 4), keep_chain=True)
    assert chain.shape == eps.shape == (5, 5, 3)
    executed = dacer.explore(actor, torch.randn(300, 4), alpha=torch.tensor(100.0), noise_scale=0.1)
    assert executed.abs().max() <= 1.0 and (executed.abs() == 1.0).any()


def reference_noise_prediction(actor, obs, x, j):
    """eps_theta(s, x, j) written out literally: the network on the concatenated input [s, x, e(j)]."""
    emb = actor.time_out(F.mish(actor.time_in(actor.time_sinusoid[j]))).expand(len(obs), -1)
    h = actor.input_layer(torch.cat([obs, x, emb], -1))
    for layer in actor.trunk:
        h = layer(F.mish(h))
    return h


def reference_sample(actor, obs, noise, keep_chain=False):
    """ALGORITHM.md §1.2 written out literally; with keep_chain also the chain inputs x_j, stacked (T, B, d)."""
    s = dacer.vp_schedule(actor.T)
    x, chain = noise[0], [None] * actor.T
    for j in reversed(range(actor.T)):
        chain[j] = x
        h = reference_noise_prediction(actor, obs, x, j)
        x0 = (x / math.sqrt(s["kappa_bar"][j]) - h * math.sqrt(1 / s["kappa_bar"][j] - 1)).clamp(-1, 1)
        x = s["posterior_c1"][j] * x0 + s["posterior_c2"][j] * x
        if j > 0:
            x = x + s["posterior_std"][j] * noise[j]
    return (x, torch.stack(chain)) if keep_chain else x


def test_sampler_equals_literal_reference_for_same_noise(actor):
    """The fast sampler (split first layer, F.linear, fused scalar ops) gives the reference's actions, with and
    without autograd (which switch between the two Mish implementations)."""
    for batch in (1, 64):
        obs, noise = torch.randn(batch, 4), torch.randn(5, batch, 3)
        expected = reference_sample(actor, obs, noise)
        torch.testing.assert_close(actor.sample(obs, noise), expected, atol=1e-5, rtol=1e-5)
        with torch.no_grad():
            torch.testing.assert_close(actor.sample(obs, noise), expected, atol=1e-5, rtol=1e-5)


def test_one_exp_mish_matches_torch_in_value_and_slope():
    """The exp2 Mish (the no-grad sampler's) equals F.mish, and mish_slope (the training chain's analytic backward)
    equals autograd's derivative of F.mish; values beyond the clamp at 20 and large negatives stay finite."""
    x = torch.cat([torch.linspace(-30, 30, 2001), torch.tensor([-1e4, 1e4])]).requires_grad_(True)
    with torch.no_grad():
        torch.testing.assert_close(dacer.mish(x), F.mish(x), atol=1e-6, rtol=1e-5)
        e, t = dacer.exp_and_tanh_softplus(x)
        slope = dacer.mish_slope(x, t, e)
    (grad,) = torch.autograd.grad(F.mish(x).sum(), x)
    torch.testing.assert_close(slope, grad, atol=1e-5, rtol=1e-5)


def test_time_embedding_is_the_scaled_sinusoid(actor):
    j = 3
    k = torch.arange(8)
    expected = torch.cat([torch.sin(j * 10000.0 ** (-k / 8)), torch.cos(j * 10000.0 ** (-k / 8))]) / math.sqrt(16)
    torch.testing.assert_close(actor.time_sinusoid[j], expected)


def quadratic_q(optimum):
    return lambda obs, actions: -((actions - optimum) ** 2).sum(-1)


def train_on_q_grad_loss_only(actor, q_fn, steps=300):
    obs = torch.randn(128, 4)
    weights = torch.exp(torch.tensor(dacer.time_weight_coefficients(5)[0]) * torch.arange(5) + dacer.time_weight_coefficients(5)[1])
    opt = torch.optim.Adam(actor.parameters(), lr=1e-3)
    for _ in range(steps):
        _, chain, eps = actor.sample(obs, keep_chain=True)
        loss = dacer.q_grad_loss(eps, q_fn, obs, chain, weights)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return obs


def test_q_grad_loss_sign_moves_samples_up_the_q_gradient(actor):
    """Training on L_g alone (target eps = -w grad Q_norm) raises the mean Q of sampled actions; -Q lowers it."""
    optimum = torch.tensor([2.0, -2.0, 1.5])  # outside the box, so samples can move both ways
    q = quadratic_q(optimum)
    obs = torch.randn(512, 4)
    with torch.no_grad():
        before = q(obs, actor.sample(obs)).mean()
    flipped = dacer.DiffusionActor(4, 3, 32, 2, 5)
    flipped.load_state_dict(actor.state_dict())
    train_on_q_grad_loss_only(actor, q)
    train_on_q_grad_loss_only(flipped, lambda s, a: -q(s, a))
    with torch.no_grad():
        after, after_flipped = q(obs, actor.sample(obs)).mean(), q(obs, flipped.sample(obs)).mean()
    assert after > before + 0.1, (before, after)
    assert after_flipped < before - 0.1, (before, after_flipped)


def test_q_grad_loss_target_is_minus_weighted_normalised_gradient():
    """With the noise prediction equal to -w_j * g_hat, L_g is zero; the gradient is normalised per sample."""
    obs, chain = torch.randn(8, 4), torch.randn(5, 8, 3) * 3
    optimum = torch.tensor([0.5, -0.3, 0.2])
    weights = torch.linspace(0.2, 0.8, 5)
    grad = -2 * (chain - optimum)
    target = -weights[:, None, None] * grad / (grad.norm(dim=-1, keepdim=True) + 1e-6)
    assert dacer.q_grad_loss(target, quadratic_q(optimum), obs, chain, weights).item() < 1e-10
    assert dacer.q_grad_loss(target, quadratic_q(optimum), obs, chain, weights, normalise=False).item() > 1e-2


def test_shared_chain_forward_gives_the_reference_actor_gradient(actor):
    """The training chain's noise predictions serve both losses (NoisePredictionForBothLosses): the gradient of
    L_pi = L_q + eta L_g equals the literal computation, where L_g runs the network again on the detached x_j."""
    torch.manual_seed(1)
    obs, noise = torch.randn(64, 4), torch.randn(5, 64, 3)
    weights = torch.linspace(0.2, 0.8, 5)
    q = quadratic_q(torch.tensor([0.5, -0.3, 0.2]))
    params = list(actor.parameters())
    for one_step in (False, True):
        a0, chain, eps = actor.sample(obs, noise, keep_chain=True)
        torch.manual_seed(2)  # one_step: the same random steps in both computations
        loss = -q(obs, a0).mean() + 10.0 * dacer.q_grad_loss(eps, q, obs, chain, weights, one_step=one_step)
        grads = torch.autograd.grad(loss, params)
        a0_ref, chain_ref = reference_sample(actor, obs, noise, keep_chain=True)
        eps_ref = torch.stack([reference_noise_prediction(actor, obs, chain_ref[j].detach(), j) for j in range(5)])
        torch.manual_seed(2)
        loss_ref = -q(obs, a0_ref).mean() + 10.0 * dacer.q_grad_loss(eps_ref, q, obs, chain_ref, weights,
                                                                      one_step=one_step)  # fmt: skip
        torch.testing.assert_close(loss, loss_ref, atol=1e-5, rtol=1e-5)
        for grad, grad_ref in zip(grads, torch.autograd.grad(loss_ref, params)):
            torch.testing.assert_close(grad, grad_ref, atol=1e-5, rtol=1e-4)
    # L_q alone (no gradient reaches the L_g output) and L_g alone (no gradient reaches a0) take the same path
    for only_q in (True, False):
        a0, chain, eps = actor.sample(obs, noise, keep_chain=True)
        a0_ref, chain_ref = reference_sample(actor, obs, noise, keep_chain=True)
        eps_ref = torch.stack([reference_noise_prediction(actor, obs, chain_ref[j].detach(), j) for j in range(5)])
        loss, loss_ref = (a0.sum(), a0_ref.sum()) if only_q else (eps.sum(), eps_ref.sum())
        for grad, grad_ref in zip(torch.autograd.grad(loss, params), torch.autograd.grad(loss_ref, params)):
            torch.testing.assert_close(grad, grad_ref, atol=1e-5, rtol=1e-4)


def test_q_grad_loss_one_step_is_an_unbiased_estimate_of_all_steps(actor):
    """--q-grad-one-step: one random step per state estimates the mean over all T steps without bias."""
    torch.manual_seed(0)
    obs, chain = torch.randn(512, 4), torch.randn(5, 512, 3)
    weights = torch.linspace(0.2, 0.8, 5)
    q = quadratic_q(torch.tensor([0.5, -0.3, 0.2]))
    with torch.no_grad():
        eps = actor.predict_noise(*actor.first_layer(obs), chain)  # eps_theta(s, x_j, j) for all j: (5, 512, 3)
    full = dacer.q_grad_loss(eps, q, obs, chain, weights).item()
    draws = [dacer.q_grad_loss(eps, q, obs, chain, weights, one_step=True).item() for _ in range(100)]
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


def test_twin_critic_is_two_independent_mlps():
    torch.manual_seed(0)
    critic = dacer.TwinCritic(obs_dim=4, act_dim=2, hidden_dim=16, num_layers=2)
    obs, act = torch.randn(10, 4), torch.randn(10, 2)
    mu, sigma = critic(obs, act)
    for i in range(2):
        h = torch.cat([obs, act], -1)
        for layer, (w, b) in enumerate(zip(critic.weights, critic.biases)):
            h = h @ w[i].t() + b[i]  # nn.Linear's (out, in) layout
            h = F.gelu(h) if layer < 2 else h
        torch.testing.assert_close(mu[i], h[:, 0])
        torch.testing.assert_close(sigma[i], F.softplus(h[:, 1]))


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
        got = dacer.gmm_entropy(samples, max_iter=20, tol=0.0)
        np.testing.assert_allclose(got.numpy(), expected, rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("all_rows", [False, True])
def test_smaller_critic_mean_gradient_matches_autograd_through_both_critics(all_rows, monkeypatch):
    """TwinCritic.smaller_mean (backward through each row's smaller critic only) gives autograd's value and action
    gradient of min(mu_1, mu_2), as L_q and L_g use it; also with every row through both critics, masked (the GPU
    path); it refuses a critic that is not frozen."""
    if all_rows:
        monkeypatch.setattr(dacer.SmallerCriticMean, "rows", staticmethod(lambda mask: torch.arange(len(mask))))
    torch.manual_seed(0)
    critic = dacer.TwinCritic(obs_dim=4, act_dim=3, hidden_dim=32, num_layers=2)
    with torch.no_grad():
        critic.biases[-1][:, :, 0] = 0.0  # equal output biases: which critic is smaller varies from row to row
    obs, actions = torch.randn(300, 4), torch.randn(300, 3)
    x_ref = actions.clone().requires_grad_(True)
    q_ref = critic(obs, x_ref)[0].min(0).values
    upstream = torch.randn(300)
    (grad_ref,) = torch.autograd.grad(q_ref, x_ref, upstream)
    with pytest.raises(AssertionError, match="freeze the critic"):
        critic.smaller_mean(obs, actions)
    critic.requires_grad_(False)
    x = actions.clone().requires_grad_(True)
    q = critic.smaller_mean(obs, x)
    (grad,) = torch.autograd.grad(q, x, upstream)
    smaller = critic(obs, actions)[0].argmin(0)
    assert 0 < smaller.sum() < 300  # both critics are the smaller one on some rows
    torch.testing.assert_close(q, q_ref.detach())
    torch.testing.assert_close(grad, grad_ref, atol=1e-6, rtol=1e-5)
