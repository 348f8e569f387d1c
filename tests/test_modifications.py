"""A modified script trains what it says: networks built from the script's own definitions with other arguments or a
subclass (a SiLU actor, an actor with LayerNorm, a 3-layer ReLU critic, three critics) get, through the script's
training path (critic_objective, actor_objective), the parameter gradients of an independently written literal computation:
the critics run one by one with torch.min over them (DSAC-T's loss, or the plain TD loss of --critic-loss td), the
reverse chain written out, and L_g's network run again on the detached chain inputs x_j, step by step. Everything in
float64."""

import copy
import math

import pytest
import torch
import torch.nn as nn

import dacerv2_continuous as dacer

OBS, ACT, HIDDEN, T, B = 5, 3, 16, 5, 64


@pytest.fixture(autouse=True)
def float64():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


class LayerNormActor(dacer.DiffusionActor):
    """The script's actor with a LayerNorm after each hidden Linear (before its activation)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        layers = []
        for i, layer in enumerate(self.net):
            layers.append(layer)
            if isinstance(layer, nn.Linear) and i < len(self.net) - 1:
                layers.append(nn.LayerNorm(layer.out_features))
        self.net = nn.Sequential(*layers)


def reference_losses(actor, critics, critic_targets, batch, omega, alpha, weights, eta, args, seed):
    """Both losses written out literally, drawing the training path's random numbers in the same order."""
    obs, actions, rewards, next_obs, terminations = batch
    s = dacer.vp_schedule(T)

    def chain(states, noise):
        x, inputs = noise[0], [None] * T
        for j in reversed(range(T)):
            inputs[j] = x
            eps = actor(states, x, actor.time_embedding(j))
            x0 = x / math.sqrt(s["kappa_bar"][j]) - eps * math.sqrt(1 / s["kappa_bar"][j] - 1)
            x = s["posterior_c1"][j] * x0.clamp(-1, 1) + s["posterior_c2"][j] * x
            if j > 0:
                x = x + s["posterior_std"][j] * noise[j]
        return x, inputs

    torch.manual_seed(seed)
    with torch.no_grad():  # critic targets from a' = clip(a0 + lambda alpha xi, -1, 1)
        a0_next, _ = chain(next_obs, torch.randn(T, B, ACT))
        a_next = (a0_next + args.noise_scale * alpha * torch.randn(B, ACT)).clamp(-1, 1)
        target_outputs = [critic(next_obs, a_next) for critic in critic_targets]
        mu_next = torch.stack([mu for mu, _ in target_outputs])
        z = torch.randn(len(critics), B).clamp(-3, 3)
        sample_next = torch.stack([mu + sigma * z[i] for i, (mu, sigma) in enumerate(target_outputs)])
        k = mu_next.argmin(0)
        r, not_done = args.reward_scale * rewards, args.gamma * (1 - terminations)
        y = r + not_done * mu_next.min(0).values
        y_sample = r + not_done * sample_next[k, torch.arange(B)]
    critic_loss = 0
    for i, critic in enumerate(critics):
        mu, sigma = critic(obs, actions)
        if args.critic_loss == "td":  # plain TD on each critic's mean
            critic_loss = critic_loss + ((mu - y) ** 2).mean()
            continue
        w = sigma.detach().mean() if omega[i] == 0 else (1 - args.tau) * omega[i] + args.tau * sigma.detach().mean()
        y_b = (mu + (y_sample - mu).clamp(-3 * w, 3 * w)).detach()
        sd = sigma.detach()
        surrogate = mu * (y - mu).detach() / (sd**2 + 0.1) + sigma * ((mu.detach() - y_b) ** 2 - sd**2) / (sd**3 + 0.1)
        critic_loss = critic_loss - (w**2 + 0.1) * surrogate.mean()

    a0, inputs = chain(obs, torch.randn(T, B, ACT))
    a = (a0 + args.noise_scale * alpha * torch.randn(B, ACT)).clamp(-1, 1)
    loss_q = -torch.min(torch.stack([critic(obs, a)[0] for critic in critics]), 0).values.mean()
    loss_g = 0
    for j in range(T):
        x = inputs[j].detach().requires_grad_(True)
        q = torch.min(torch.stack([critic(obs, x)[0] for critic in critics]), 0).values
        (grad,) = torch.autograd.grad(q.sum(), x)
        g_hat = grad / (grad.norm(dim=-1, keepdim=True) + 1e-6)
        eps = actor(obs, x.detach(), actor.time_embedding(j))  # the network again, on the detached x_j
        loss_g = loss_g + ((eps + weights[j] * g_hat) ** 2).mean() / T
    return critic_loss, loss_q + eta * loss_g


def training_path_losses(actor, ensemble, ensemble_target, batch, omega, alpha, weights, eta, args, seed):
    torch.manual_seed(seed)
    qf_losses, _, _ = dacer.critic_objective(actor, ensemble, ensemble_target, batch, omega, alpha, args)
    ensemble.requires_grad_(False)
    loss, _ = dacer.actor_objective(actor, ensemble, batch[0], alpha, weights, eta, args)
    ensemble.requires_grad_(True)
    return qf_losses.sum(), loss


ACTORS = {
    "paper actor": lambda: dacer.DiffusionActor(OBS, ACT, HIDDEN, 2, T),
    "SiLU actor": lambda: dacer.DiffusionActor(OBS, ACT, HIDDEN, 2, T, activation=nn.SiLU),
    "LayerNorm actor": lambda: LayerNormActor(OBS, ACT, HIDDEN, 2, T),
}
CRITICS = {
    "twin GELU critics": lambda: [dacer.Critic(OBS, ACT, HIDDEN, 2) for _ in range(2)],
    "3-layer ReLU critics": lambda: [dacer.Critic(OBS, ACT, HIDDEN, 3, activation=nn.ReLU) for _ in range(2)],
    "three critics": lambda: [dacer.Critic(OBS, ACT, HIDDEN, 2) for _ in range(3)],
}
CASES = [("paper actor", "twin GELU critics", "dsac-t"), ("SiLU actor", "twin GELU critics", "dsac-t"),
         ("LayerNorm actor", "twin GELU critics", "dsac-t"), ("paper actor", "3-layer ReLU critics", "dsac-t"),
         ("paper actor", "three critics", "dsac-t"), ("paper actor", "three critics", "td")]


@pytest.mark.parametrize("actor_name, critics_name, loss", CASES)
def test_training_step_gradients_equal_the_literal_computation(actor_name, critics_name, loss):
    torch.manual_seed(0)
    actor, critics = ACTORS[actor_name](), CRITICS[critics_name]()
    with torch.no_grad():  # nonzero LayerNorm affine parameters, so their gradients are not trivially structured
        for module in actor.modules():
            if isinstance(module, nn.LayerNorm):
                module.weight.uniform_(0.5, 1.5), module.bias.uniform_(-0.5, 0.5)
    critic_targets = copy.deepcopy(critics)
    with torch.no_grad():  # targets that differ from the critics
        for p in (p for c in critic_targets for p in c.parameters()):
            p.add_(0.1 * torch.randn_like(p))
    ensemble = dacer.CriticEnsemble(critics)  # the same critic modules: one set of parameters for both computations
    ensemble_target = dacer.CriticEnsemble(critic_targets).requires_grad_(False)
    batch = (torch.randn(B, OBS), torch.rand(B, ACT) * 2 - 1, torch.randn(B), torch.randn(B, OBS),
             (torch.rand(B) < 0.2).double())
    args = dacer.Args(critic_loss=loss)
    alpha, weights, eta = torch.tensor(1.5), torch.linspace(0.2, 0.8, T), 3.0
    for omega in (torch.zeros(len(critics)), torch.rand(len(critics)) + 0.5):  # the first update, a later one
        critic_loss, actor_loss = training_path_losses(actor, ensemble, ensemble_target, batch, omega, alpha, weights,
                                                       eta, args, seed=7)
        critic_grads = torch.autograd.grad(critic_loss, list(ensemble.parameters()))
        actor_grads = torch.autograd.grad(actor_loss, list(actor.parameters()))
        ref_critic_loss, ref_actor_loss = reference_losses(actor, critics, critic_targets, batch, omega, alpha,
                                                           weights, eta, args, seed=7)
        torch.testing.assert_close(critic_loss, ref_critic_loss, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(actor_loss, ref_actor_loss, rtol=1e-10, atol=1e-12)
        ref_actor_grads = torch.autograd.grad(ref_actor_loss, list(actor.parameters()))
        for (name, _), grad, ref in zip(actor.named_parameters(), actor_grads, ref_actor_grads):
            assert grad.abs().max() > 0, name  # every parameter is trained, LayerNorm's included
            torch.testing.assert_close(grad, ref, rtol=1e-9, atol=1e-12, msg=name)
        ref_critic_grads = torch.autograd.grad(ref_critic_loss, list(ensemble.parameters()))
        for (name, _), grad, ref in zip(ensemble.named_parameters(), critic_grads, ref_critic_grads):
            torch.testing.assert_close(grad, ref, rtol=1e-9, atol=1e-12, msg=name)


def test_smallest_critic_varies_by_row_in_the_three_critic_case():
    """The three-critic case above is a real check: each of the three critics is the smallest on some rows."""
    torch.manual_seed(0)
    ensemble = dacer.CriticEnsemble(CRITICS["three critics"]())
    mu, _ = ensemble(torch.randn(500, OBS), torch.rand(500, ACT) * 2 - 1)
    assert set(mu.argmin(0).tolist()) == {0, 1, 2}


def test_critic_ensemble_runs_each_critic():
    torch.manual_seed(0)
    critics = CRITICS["3-layer ReLU critics"]()
    obs, act = torch.randn(10, OBS), torch.randn(10, ACT)
    mu, sigma = dacer.CriticEnsemble(critics)(obs, act)
    for i, critic in enumerate(critics):
        torch.testing.assert_close((mu[i], sigma[i]), critic(obs, act))
