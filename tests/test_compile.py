"""--compile: torch.compile of the script's own functions (policy_action for acting and the GMM's samples, the two
objectives) gives the eager actions, losses and gradients and draws the same random numbers; an edited sampler with
another signature compiles too; where compiling does not work, one line says so and everything runs eagerly."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import dacerv2_continuous as dacer

REPO = Path(__file__).resolve().parents[1]
# torch's own code calls its deprecated torch.jit.script_method while compiling; outside pytest Python hides it
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")


@pytest.fixture(autouse=True)
def inductor_like_the_script(tmp_path, monkeypatch):
    """The inductor settings that the script's --compile sets, undone after each test."""
    import torch._inductor.config as config

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    torch._dynamo.reset()
    with config.patch(fallback_random=True, cpp_wrapper=True):
        yield


def test_compiled_functions_match_eager():
    torch.manual_seed(0)
    actor = dacer.DiffusionActor(4, 3, 32, 2, 5)
    act = torch.compile(dacer.policy_action, dynamic=False)
    alpha = torch.tensor(0.5)
    with torch.no_grad():  # the same seed: the same actions and the same random numbers drawn, at any batch size
        for batch in (1, 16, 300):
            obs = torch.randn(batch, 4)
            torch.manual_seed(1)
            compiled_actions, next_draw = act(actor, obs, alpha, 0.1), torch.rand(1)
            torch.manual_seed(1)
            torch.testing.assert_close(compiled_actions, dacer.policy_action(actor, obs, alpha, 0.1), atol=1e-5,
                                       rtol=1e-5)
            assert torch.rand(1) == next_draw
        with torch.no_grad():  # optimizer steps are in place: the compiled function sees them
            for p in actor.parameters():
                p.mul_(0.5)
        torch.manual_seed(2)
        compiled_actions = act(actor, obs, alpha, 0.1)
        torch.manual_seed(2)
        torch.testing.assert_close(compiled_actions, dacer.policy_action(actor, obs, alpha, 0.1), atol=1e-5, rtol=1e-5)

    # one training step's losses and gradients through the compiled objectives equal the eager ones
    critic = dacer.CriticEnsemble([dacer.Critic(4, 3, 32, 2) for _ in range(2)])
    critic_target = dacer.CriticEnsemble([dacer.Critic(4, 3, 32, 2) for _ in range(2)]).requires_grad_(False)
    batch = (torch.randn(64, 4), torch.rand(64, 3) * 2 - 1, torch.randn(64), torch.randn(64, 4), torch.zeros(64))
    args, omega, weights = dacer.Args(), torch.tensor([0.5, 0.7]), torch.linspace(0.2, 0.8, 5)
    compiled = (torch.compile(dacer.critic_objective), torch.compile(dacer.actor_objective))
    results = []
    for critic_fn, actor_fn in (compiled, (dacer.critic_objective, dacer.actor_objective)):
        torch.manual_seed(3)
        qf_losses, _, new_omega = critic_fn(actor, critic, critic_target, batch, omega, alpha, args)
        critic_grads = torch.autograd.grad(qf_losses.sum(), list(critic.parameters()))
        critic.requires_grad_(False)
        loss, g_loss = actor_fn(actor, critic, batch[0], alpha, weights, 1.0, args)
        critic.requires_grad_(True)
        actor_grads = torch.autograd.grad(loss, list(actor.parameters()))
        results.append((qf_losses, new_omega, loss, g_loss, critic_grads, actor_grads))
    torch.testing.assert_close(results[0], results[1], atol=1e-4, rtol=1e-4)


EXTRA_ARGUMENT = '''
    def sample(self, obs, noise=None, keep_chain=False, temperature=1.0):
        """An edited sampler: another signature (temperature scales the initial noise)."""
        if noise is None:
            noise = self.draw_noise(obs)
        noise = torch.cat([noise[:1] * temperature, noise[1:]])
        return self.plain_sample(obs, noise, keep_chain)
'''


def test_an_edited_sampler_with_an_extra_argument_trains_with_compile_and_acts_as_eagerly(tmp_path):
    """README "Modifying the script": --compile compiles what the researcher wrote, whatever the sampler's signature."""
    text = (REPO / "dacerv2_continuous.py").read_text()
    text = text.replace("    def sample(self, obs, noise=None, keep_chain=False):", EXTRA_ARGUMENT.rstrip("\n") +
                        "\n\n    def plain_sample(self, obs, noise=None, keep_chain=False):", 1)
    text = text.replace("a0 = actor.sample(obs) if a0 is None else a0", "a0 = actor.sample(obs, temperature=0.8) if a0 "
                        "is None else a0", 1)
    assert text.count("temperature") >= 4
    copy = tmp_path / "temperature.py"
    copy.write_text(text)
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor")}
    result = subprocess.run([sys.executable, str(copy), "--env-id", "Pendulum-v1", "--num-envs", "2", "--no-cuda",
                             "--total-timesteps", "400", "--learning-starts", "200", "--batch-size", "32",
                             "--hidden-dim", "32", "--gmm-samples", "20", "--eval-episodes", "2", "--compile"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr
    assert "--compile: torch.compile does not work" not in result.stdout and "Traceback" not in result.stderr

    sys.path.insert(0, str(tmp_path))
    try:
        import temperature
    finally:
        sys.path.remove(str(tmp_path))
    torch.manual_seed(0)
    actor = temperature.DiffusionActor(3, 1, 32, 2, 5)
    obs, alpha = torch.randn(7, 3), torch.tensor(0.3)
    with torch.no_grad():
        torch.manual_seed(4)
        compiled = torch.compile(temperature.policy_action, dynamic=False)(actor, obs, alpha, 0.1)
        torch.manual_seed(4)
        eager = temperature.policy_action(actor, obs, alpha, 0.1)
        torch.manual_seed(4)
        untempered = dacer.policy_action(actor, obs, alpha, 0.1)
    torch.testing.assert_close(compiled, eager, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(eager, untempered)  # the edit changes the actions: the compiled path follows it


def test_compile_falls_back_to_eager_with_one_line(tmp_path):
    """No working C++ compiler: one line on stdout, then the run goes on eagerly and exits 0."""
    env = {"TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor"), "PATH": "/usr/bin:/bin", "CXX": "/nonexistent/c++"}
    result = subprocess.run([sys.executable, str(REPO / "dacerv2_continuous.py"), "--env-id", "Pendulum-v1",
                             "--num-envs", "2", "--no-cuda", "--total-timesteps", "300", "--learning-starts", "200",
                             "--batch-size", "32", "--hidden-dim", "32", "--gmm-samples", "20", "--eval-episodes", "2",
                             "--compile"], cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr
    (line,) = [line for line in result.stdout.splitlines() if line.startswith("--compile")]
    assert line.startswith("--compile: torch.compile does not work here (") and "runs eagerly" in line
    assert "Traceback" not in result.stderr and "eval/episodic_return=" in result.stdout
