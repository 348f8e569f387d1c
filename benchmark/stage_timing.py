"""Where an update's time goes: the training loop's update step split into stages, timed on random data.

Usage: python benchmark/stage_timing.py [--diffusion-steps 5] [--q-grad-coef 1.0] [--iterations 400]
       python benchmark/stage_timing.py --profile [--compile] [--iterations 100]

Runs dacerv2_continuous.py's update (critic step every iteration, actor step every 2nd) with the paper's sizes and
Hopper-v4's dimensions (11-dimensional states, 3-dimensional actions) on one CPU thread, and prints each stage's
median wall time per call and its share of an iteration. The stages are the calls inside the script's
critic_objective and actor_objective, in their order.

--profile: the training loop's update instead (critic_objective and actor_objective, torch.compile'd by name with
--compile, as the script's --compile does), under torch.profiler: its table of operators by self CPU time, and the
share of the matrix products (aten::mm, addmm, bmm), the floor that no fusion removes.
"""

import argparse
import collections
import copy
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import dacerv2_continuous as dacer  # noqa: E402

OBS_DIM, ACT_DIM, BUFFER = 11, 3, 100_000  # Hopper-v4
WARMUP = 40


class StageClock:
    """Wall time of consecutive stages: lap(name) closes the stage that began at the previous lap."""

    def __init__(self):
        self.times, self.last = collections.defaultdict(list), time.perf_counter()

    def start(self):
        self.last = time.perf_counter()

    def lap(self, name):
        now = time.perf_counter()
        self.times[name].append(1000 * (now - self.last))
        self.last = now


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--diffusion-steps", type=int, default=5, help="T (default: 5; DACER: 20)")
    parser.add_argument("--q-grad-coef", type=float, default=1.0, help="eta (default: 1.0; DACER: 0)")
    parser.add_argument("--iterations", type=int, default=400, help="timed iterations (default: 400)")
    parser.add_argument("--profile", action="store_true", help="torch.profiler's table of the loop's update instead")
    parser.add_argument("--compile", action="store_true", help="with --profile: the update as the script's --compile")
    args = parser.parse_args()
    if args.compile and not args.profile:
        dacer.fail("--compile goes with --profile (the stages are timed eagerly)")
    if args.diffusion_steps < 1 or args.iterations < 2 or args.q_grad_coef < 0:
        dacer.fail("--diffusion-steps must be >= 1, --iterations >= 2 and --q-grad-coef >= 0")
    defaults, device = dacer.Args(), torch.device("cpu")
    torch.set_num_threads(1)
    torch.manual_seed(0)
    dacer.keep_freed_memory()
    T, B, hidden, layers = args.diffusion_steps, defaults.batch_size, defaults.hidden_dim, defaults.num_layers
    actor = dacer.DiffusionActor(OBS_DIM, ACT_DIM, hidden, layers, T)
    critic = dacer.CriticEnsemble([dacer.Critic(OBS_DIM, ACT_DIM, hidden, layers) for _ in range(defaults.num_critics)])
    critic_target = copy.deepcopy(critic).requires_grad_(False)
    q_optimizer = torch.optim.Adam(critic.parameters(), lr=defaults.q_lr, fused=True)
    actor_optimizer = torch.optim.Adam(actor.parameters(), lr=defaults.policy_lr, fused=True)
    rb = dacer.ReplayBuffer(BUFFER, OBS_DIM, ACT_DIM, device)
    rb.add(torch.randn(BUFFER, OBS_DIM), torch.randn(BUFFER, OBS_DIM), torch.rand(BUFFER, ACT_DIM) * 2 - 1,
           torch.randn(BUFFER), (torch.rand(BUFFER) < 0.01).float())
    q_grad_weights = dacer.q_grad_time_weights(T)
    alpha, omega, clock = torch.tensor(defaults.init_alpha), torch.ones(defaults.num_critics), StageClock()

    if args.profile:
        return profile(args, actor, critic, critic_target, q_optimizer, actor_optimizer, rb, q_grad_weights, alpha)

    def iteration(policy):
        clock.start()
        obs, actions, rewards, next_obs, terminations = rb.sample(B)
        with torch.no_grad():
            next_actions = dacer.policy_action(actor, next_obs, alpha, defaults.noise_scale)
            clock.lap("critic step: next-action chain (no grad)")
            y, y_sample = dacer.critic_targets(critic_target, defaults.reward_scale * rewards, next_obs, next_actions,
                                               terminations, defaults.gamma)
        mu, sigma = critic(obs, actions)
        qf_losses = dacer.dsac_critic_loss(mu, sigma, y, y_sample, omega.lerp(sigma.detach().mean(1), defaults.tau))
        q_optimizer.zero_grad(set_to_none=True)
        qf_losses.sum().backward()
        q_optimizer.step()
        clock.lap("critic step: batch, target, critic update")
        if not policy:
            return
        critic.requires_grad_(False)
        a0, chain = actor.sample(obs, keep_chain=True)
        clock.lap("actor step: chain with gradient")
        action = dacer.policy_action(actor, obs, alpha, defaults.noise_scale, a0)
        loss = -dacer.smallest_mean(critic, obs, action).mean()
        clock.lap("actor step: L_q")
        if args.q_grad_coef > 0:
            loss = loss + args.q_grad_coef * dacer.q_grad_loss(actor, critic, obs, chain, q_grad_weights)
            clock.lap(f"actor step: L_g forward ({T * B} rows)")
        actor_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        clock.lap("actor step: backward")
        actor_optimizer.step()
        critic.requires_grad_(True)
        with torch.no_grad():
            for p, p_target in zip(critic.parameters(), critic_target.parameters()):
                p_target.lerp_(p, defaults.tau)
        clock.lap("actor step: Adam, target critics")

    for i in range(WARMUP + args.iterations):
        if i == WARMUP:
            clock.times.clear()
        iteration(policy=i % defaults.policy_frequency == 0)
    per_iteration = {name: statistics.median(t) * len(t) / args.iterations for name, t in clock.times.items()}
    total = sum(per_iteration.values())
    print(f"T = {T}, eta = {args.q_grad_coef}, batch {B}, {layers} x {hidden}, 1 CPU thread, {args.iterations} iterations")
    for name, times in clock.times.items():
        print(f"{name:45s} {statistics.median(times):6.2f} ms per call  {100 * per_iteration[name] / total:5.1f} %")
    print(f"{'sum of the stages per iteration':45s} {total:6.2f} ms")


def profile(args, actor, critic, critic_target, q_optimizer, actor_optimizer, rb, q_grad_weights, alpha):
    """--profile: the training loop's update step under torch.profiler, eager or as the script's --compile."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as profiler

    defaults = dacer.Args(diffusion_steps=args.diffusion_steps)
    update_critics, update_actor = dacer.critic_objective, dacer.actor_objective
    if args.compile:
        import torch._inductor.config as inductor_config

        inductor_config.fallback_random, inductor_config.cpp_wrapper = True, True  # as the script's --compile
        inductor_config.cpp.enable_kernel_profile = True  # each fused kernel a row of the table
        update_critics, update_actor = torch.compile(update_critics), torch.compile(update_actor)
    omega = torch.zeros(defaults.num_critics)

    def iteration(i):
        nonlocal omega
        batch = rb.sample(defaults.batch_size)
        qf_losses, _, omega = update_critics(actor, critic, critic_target, batch, omega, alpha, defaults)
        q_optimizer.zero_grad(set_to_none=True)
        qf_losses.sum().backward()
        q_optimizer.step()
        if i % defaults.policy_frequency == 0:
            critic.requires_grad_(False)
            loss, _ = update_actor(actor, critic, batch[0], alpha, q_grad_weights, args.q_grad_coef, defaults)
            actor_optimizer.zero_grad(set_to_none=True)
            loss.backward()
            actor_optimizer.step()
            critic.requires_grad_(True)
            with torch.no_grad():
                for p, p_target in zip(critic.parameters(), critic_target.parameters()):
                    p_target.lerp_(p, defaults.tau)

    for i in range(WARMUP):
        iteration(i)
    start = time.perf_counter()
    with profiler(activities=[ProfilerActivity.CPU]) as prof:
        for i in range(args.iterations):
            iteration(i)
    total_ms = 1000 * (time.perf_counter() - start) / args.iterations
    events = prof.key_averages()
    print(events.table(sort_by="self_cpu_time_total", row_limit=25, max_name_column_width=60))
    names = {f"{prefix}{op}" for op in ("mm", "addmm", "bmm") for prefix in ("aten::", "aoti_torch_cpu_")}
    products = sum(e.self_cpu_time_total for e in events if e.key.removesuffix("_out") in names)  # _out: compiled
    print(f"{'--compile' if args.compile else 'eager'}, T = {args.diffusion_steps}, eta = {args.q_grad_coef}: "
          f"{total_ms:.2f} ms per iteration under the profiler, of which matrix products "
          f"{products / 1000 / args.iterations:.2f} ms ({100 * products / 1000 / args.iterations / total_ms:.0f} %)")


if __name__ == "__main__":
    main()
