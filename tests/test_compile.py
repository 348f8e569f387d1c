"""--compile: the compiled sampler (an exported package without gradient) gives the eager sampler's actions, draws the
same random numbers and follows in-place weight updates; the compiled losses give the eager losses and gradients;
where compiling does not work, one line says so and everything runs eagerly."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch._dynamo.utils import counters

import dacerv2_continuous as dacer
import dacerv2_utils as utils

REPO = Path(__file__).resolve().parents[1]
# torch's own code calls its deprecated torch.jit.script_method while compiling; outside pytest Python hides it
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")


def twin_actors():
    torch.manual_seed(0)
    actor, eager = dacer.DiffusionActor(4, 3, 32, 2, 5), dacer.DiffusionActor(4, 3, 32, 2, 5)
    eager.load_state_dict(actor.state_dict())
    return actor, eager


def test_compiled_sampler_and_losses_match_eager(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    actor, eager = twin_actors()
    critic_loss, actor_loss = utils.compile_functions(actor, torch.device("cpu"), dacer.critic_loss, dacer.actor_loss)
    graphs = counters["stats"]["unique_graphs"]
    with torch.no_grad():  # same seed, no noise given: the same random numbers are drawn, at any batch size
        for batch in (1, 16, 300):
            obs = torch.randn(batch, 4)
            torch.manual_seed(1)
            compiled_actions, next_draw = actor.sample(obs), torch.rand(1)
            torch.manual_seed(1)
            torch.testing.assert_close(compiled_actions, eager.sample(obs), atol=1e-5, rtol=1e-5)
            assert torch.rand(1) == next_draw
    assert counters["stats"]["unique_graphs"] == graphs  # no-grad calls: the exported package, not torch.compile

    # one training step's losses and gradients through the compiled losses equal the eager ones
    critic = dacer.CriticEnsemble([dacer.Critic(4, 3, 32, 2) for _ in range(2)])
    critic_target = dacer.CriticEnsemble([dacer.Critic(4, 3, 32, 2) for _ in range(2)]).requires_grad_(False)
    batch = (torch.randn(64, 4), torch.rand(64, 3) * 2 - 1, torch.randn(64), torch.randn(64, 4), torch.zeros(64))
    args, alpha, omega, weights = dacer.Args(), torch.tensor(2.0), torch.tensor([0.5, 0.7]), torch.linspace(0.2, 0.8, 5)
    results = []
    for policy, critic_fn, actor_fn in ((actor, critic_loss, actor_loss), (eager, dacer.critic_loss, dacer.actor_loss)):
        torch.manual_seed(3)
        qf_losses, _, new_omega = critic_fn(policy, critic, critic_target, batch, omega, alpha, args)
        critic_grads = torch.autograd.grad(qf_losses.sum(), list(critic.parameters()))
        critic.requires_grad_(False)
        loss, g_loss = actor_fn(policy, critic, batch[0], alpha, weights, 1.0, args)
        critic.requires_grad_(True)
        actor_grads = torch.autograd.grad(loss, list(policy.parameters()))
        results.append((qf_losses, new_omega, loss, g_loss, critic_grads, actor_grads))
    torch.testing.assert_close(results[0], results[1], atol=1e-4, rtol=1e-4)
    assert counters["stats"]["unique_graphs"] >= graphs + 2  # both losses went through torch.compile

    noise = torch.randn(5, 16, 3)
    with torch.no_grad():  # optimizer steps and buffer edits are in place: the compiled sampler sees them
        for p, p_ref in zip([*actor.parameters(), *actor.buffers()], [*eager.parameters(), *eager.buffers()]):
            p.mul_(0.5), p_ref.mul_(0.5)
        torch.testing.assert_close(actor.sample(obs[:16], noise), eager.sample(obs[:16], noise), atol=1e-5, rtol=1e-5)


def test_compile_falls_back_to_eager_with_one_line(tmp_path):
    """No working C++ compiler: one line on stdout, then the run goes on eagerly and exits 0."""
    code = (
        "import sys, torch, torch._inductor.config as c; sys.argv[1:] = []; c.cpp.cxx = ('/nonexistent/c++',)\n"
        f"sys.path.insert(0, {str(REPO)!r}); import dacerv2_continuous as dacer, dacerv2_utils as utils\n"
        "actor = dacer.DiffusionActor(4, 3, 32, 2, 5)\n"
        "utils.compile_functions(actor, torch.device('cpu'), dacer.critic_loss, dacer.actor_loss)\n"
        "print(tuple(actor.sample(torch.randn(2, 4)).shape))\n"
    )
    env = {"TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor"), "PATH": "/usr/bin:/bin"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("--compile: torch.compile does not work here (") and "runs eagerly" in lines[0]
    assert lines[1:] == ["(2, 3)"] and "Traceback" not in result.stderr
