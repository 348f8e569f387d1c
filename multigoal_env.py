# Multi-goal 2-D point environment and its multimodality metrics (paper Fig. 2); docs in README "Implementation details"
# Evaluate a checkpoint with its own script: python dacerv2_continuous.py --eval-only --resume CHECKPOINT
from pathlib import Path

import gymnasium as gym
import numpy as np
from gymnasium import spaces

BOUND = 7.0  # positions are clipped to [-BOUND, BOUND] per coordinate
GOAL_RADIUS = 5.0  # the goals lie on a circle of this radius around the origin
GOAL_THRESHOLD = 1.0  # an episode terminates when the nearest goal is closer than this
ACTION_COST = 30.0  # weight of the squared action norm in the reward
DISTANCE_COST = 1.0  # weight of the squared distance to the nearest goal in the reward
GOAL_REWARD = 10.0  # bonus for reaching a goal
RESET_STD = 0.1  # standard deviation of the Gaussian start position around the origin
MAX_EPISODE_STEPS = 100  # horizon of the registered ids (truncation)
LEVEL_SIGMA = 1.7  # width of the Gaussian bumps drawn as level curves (visual only)
VALID_NUM_GOALS = (4, 5, 6)
ENV_NUM_GOALS = {"MultiGoal-v0": 4, "MultiGoal4-v0": 4, "MultiGoal5-v0": 5, "MultiGoal6-v0": 6}  # registered ids
# TensorBoard tags of the training script's final multimodality evaluation, by key of `multimodality_metrics`
METRIC_TAGS = {
    "goals_reached": "eval/goals_reached",
    "goals_reached_fraction": "eval/goals_reached_fraction",
    "success_rate": "eval/success_rate",
    "uniformity": "eval/coverage_uniformity",
    "min_max_ratio": "eval/min_max_ratio",
    "mean_steps_to_goal": "eval/mean_steps_to_goal",
    "path_efficiency": "eval/path_efficiency",
    "mean_return": "eval/mean_return",
}


def _check_num_goals(num_goals):
    """Raise a ValueError unless num_goals is 4, 5 or 6 (the settings of paper Fig. 2)."""
    if num_goals not in VALID_NUM_GOALS:
        raise ValueError(f"num_goals must be one of {VALID_NUM_GOALS}, got {num_goals!r}")


def goal_positions(num_goals):
    """Return the (num_goals, 2) goal array g_k = 5 (cos 2 pi k / N, sin 2 pi k / N), k = 0..N-1 (angular offset 0)."""
    _check_num_goals(num_goals)
    angles = 2.0 * np.pi * np.arange(num_goals) / num_goals
    return GOAL_RADIUS * np.stack([np.cos(angles), np.sin(angles)], axis=1)


def sample_initial_states(rng, num, start_at_origin=False):
    """Return (num, 2) start positions: N(0, 0.1^2 I) clipped to the box, or exactly the origin."""
    if start_at_origin:
        return np.zeros((num, 2))
    return np.clip(rng.normal(0.0, RESET_STD, size=(num, 2)), -BOUND, BOUND)


def multigoal_step(states, actions, goals):
    """One batched transition shared by `MultiGoalEnv` and `rollout_trajectories`.

    states: (n, 2) positions, actions: (n, 2) velocities (clipped to [-1, 1] here), goals: (N, 2).
    Returns next_states (n, 2), rewards (n,), terminated (n,) bool, goal index (n,) int (-1 if no goal
    was reached) and the distance from each next state to its nearest goal (n,).
    """
    actions = np.clip(np.asarray(actions, dtype=np.float64), -1.0, 1.0)
    next_states = np.clip(states + actions, -BOUND, BOUND)
    distances = np.linalg.norm(next_states[:, None, :] - goals[None, :, :], axis=-1)
    nearest = distances.argmin(axis=1)
    min_distances = distances.min(axis=1)
    terminated = min_distances < GOAL_THRESHOLD
    rewards = -ACTION_COST * np.sum(actions**2, axis=1) - DISTANCE_COST * min_distances**2 + GOAL_REWARD * terminated
    goal_index = np.where(terminated, nearest, -1)
    return next_states, rewards, terminated, goal_index, min_distances


class MultiGoalEnv(gym.Env):
    """Point mass in the plane with N goals on a circle (Haarnoja et al. 2017), a test bed for multimodal policies.

    Observation: position in [-7, 7]^2. Action: velocity in [-1, 1]^2. The episode terminates within
    distance 1 of a goal; the 100-step horizon is a `max_episode_steps` truncation of the registered ids.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(self, num_goals=4, render_mode=None, start_at_origin=False):
        self.goals = goal_positions(num_goals)
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be None or one of {self.metadata['render_modes']}, got {render_mode!r}")
        self.num_goals = num_goals
        self.render_mode = render_mode
        self.start_at_origin = start_at_origin
        self.observation_space = spaces.Box(-BOUND, BOUND, shape=(2,), dtype=np.float32)
        self.action_space = spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
        self._state = np.zeros(2)
        self._path = [self._state]

    def reset(self, *, seed=None, options=None):
        """Start near the origin (or exactly at it with `start_at_origin`, also accepted in `options`)."""
        super().reset(seed=seed)
        at_origin = (options or {}).get("start_at_origin", self.start_at_origin)
        self._state = sample_initial_states(self.np_random, 1, at_origin)[0]
        self._path = [self._state]
        distance = np.linalg.norm(self.goals - self._state, axis=1).min()
        return self._state.astype(np.float32), {"goal": -1, "distance": float(distance)}

    def step(self, action):
        """Move by the clipped action; info["goal"] is the index of the goal reached (-1 if none)."""
        next_states, rewards, terminated, goal_index, distances = multigoal_step(
            self._state[None], np.asarray(action, dtype=np.float64).reshape(1, 2), self.goals
        )
        self._state = next_states[0]
        self._path.append(self._state)
        info = {"goal": int(goal_index[0]), "distance": float(distances[0])}
        return self._state.astype(np.float32), float(rewards[0]), bool(terminated[0]), False, info

    def render(self):
        """Return an RGB image of the level curves, the goals, this episode's path and the current position."""
        if self.render_mode is None:
            gym.logger.warn("Calling render() without a render_mode; use MultiGoalEnv(render_mode='rgb_array').")
            return None
        fig = _new_figure(size_inches=4.0)
        ax = fig.add_axes((0.0, 0.0, 1.0, 1.0))
        draw_background(ax, self.num_goals)
        ax.set_axis_off()
        path = np.array(self._path)
        ax.plot(path[:, 0], path[:, 1], color="tab:blue", linewidth=1.5)
        ax.plot(*self._state, marker="o", markersize=8, color="tab:blue")
        fig.canvas.draw()
        return np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()


def rollout_trajectories(policy, num_goals, num_trajectories=100, seed=0, max_steps=100, start_at_origin=True):
    """Run `num_trajectories` batched episodes of `policy` with the environment's dynamics and termination.

    `policy` maps float32 observations (n, 2) to actions (n, 2) in [-1, 1]; it is called once per time step on
    the trajectories still running. Trajectories start at the origin (paper Fig. 2); with
    `start_at_origin=False` they start from the reset distribution drawn with `seed`.
    Returns the list of position arrays (steps + 1, 2), `goal_hits`, an int array holding the goal index each
    trajectory terminated at, or -1 if it reached none within `max_steps`, and each trajectory's undiscounted return.
    """
    goals = goal_positions(num_goals)
    positions = np.zeros((max_steps + 1, num_trajectories, 2))
    positions[0] = sample_initial_states(np.random.default_rng(seed), num_trajectories, start_at_origin)
    lengths = np.zeros(num_trajectories, dtype=np.int64)
    goal_hits = np.full(num_trajectories, -1, dtype=np.int64)
    returns = np.zeros(num_trajectories)
    running = np.ones(num_trajectories, dtype=bool)
    for t in range(max_steps):
        idx = np.flatnonzero(running)
        if idx.size == 0:
            break
        actions = np.asarray(policy(positions[t, idx].astype(np.float32)))
        if actions.shape != (idx.size, 2):
            raise ValueError(f"policy must return actions of shape {(idx.size, 2)}, got {actions.shape}")
        next_states, rewards, terminated, goal_index, _ = multigoal_step(positions[t, idx], actions, goals)
        positions[t + 1, idx] = next_states
        returns[idx] += rewards
        lengths[idx] += 1
        goal_hits[idx] = goal_index
        running[idx[terminated]] = False
    trajectories = [positions[: lengths[i] + 1, i].copy() for i in range(num_trajectories)]
    return trajectories, goal_hits, returns


def multimodality_metrics(goal_hits, num_goals, trajectories=None, returns=None):
    """Summarise goal hits (goal index per trajectory, -1 for a miss) as in paper Sec. 4.1, and how well they were
    reached: a policy that wanders into every goal by chance must not look like one that learned to go to them.

    n_k is the number of trajectories that terminated at goal k. Returns goals_reached (#{k: n_k >= 1}),
    goals_reached_fraction, success_rate (sum n_k / #trajectories), hit_counts, uniformity H(p) / ln N with
    p_k = n_k / sum n_k (0 when nothing succeeded) and min_max_ratio min_k n_k / max_k n_k (0 when nothing succeeded).
    With the trajectories (position arrays) also mean_steps_to_goal and path_efficiency over the trajectories that
    reached a goal (nan when none did): efficiency = the straight-line distance from the start to where the goal was
    reached / the length of the path taken (1 for a straight path); with the returns, their mean_return.
    """
    _check_num_goals(num_goals)
    goal_hits = np.asarray(goal_hits, dtype=np.int64)
    if goal_hits.size and (goal_hits.min() < -1 or goal_hits.max() >= num_goals):
        raise ValueError(f"goal_hits must lie in [-1, {num_goals - 1}]")
    counts = np.bincount(goal_hits[goal_hits >= 0], minlength=num_goals)
    total = counts.sum()
    if total > 0:
        p = counts[counts > 0] / total
        uniformity = float(-np.sum(p * np.log(p)) / np.log(num_goals)) + 0.0  # + 0.0: one goal gives 0, not -0
        min_max_ratio = float(counts.min() / counts.max())
    else:
        uniformity, min_max_ratio = 0.0, 0.0
    goals_reached = int(np.count_nonzero(counts))
    metrics = {
        "goals_reached": goals_reached,
        "goals_reached_fraction": goals_reached / num_goals,
        "success_rate": float(total / max(goal_hits.size, 1)),
        "hit_counts": counts.tolist(),
        "uniformity": uniformity,
        "min_max_ratio": min_max_ratio,
    }
    if trajectories is not None:
        reached = [np.asarray(path) for path, goal in zip(trajectories, goal_hits) if goal >= 0]
        lengths = [np.linalg.norm(np.diff(path, axis=0), axis=1).sum() for path in reached]
        efficiency = [np.linalg.norm(path[-1] - path[0]) / length for path, length in zip(reached, lengths)]
        metrics["mean_steps_to_goal"] = float(np.mean([len(path) - 1 for path in reached])) if reached else np.nan
        metrics["path_efficiency"] = float(np.mean(efficiency)) if reached else np.nan
    if returns is not None:
        metrics["mean_return"] = float(np.mean(returns))
    return metrics


def _new_figure(size_inches):
    """Create a square matplotlib figure on the Agg canvas (no pyplot, never a window)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(size_inches, size_inches), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def draw_background(ax, num_goals):
    """Draw the level curves (sum of Gaussian bumps, sigma 1.7, around the goals), the goal regions and the box."""
    from matplotlib.patches import Circle

    goals = goal_positions(num_goals)
    grid = np.linspace(-BOUND, BOUND, 141)
    xx, yy = np.meshgrid(grid, grid)
    sq_dist = (xx[..., None] - goals[:, 0]) ** 2 + (yy[..., None] - goals[:, 1]) ** 2
    levels = np.exp(-sq_dist / (2.0 * LEVEL_SIGMA**2)).sum(axis=-1)
    ax.contour(xx, yy, levels, levels=12, cmap="viridis", linewidths=0.8)
    for gx, gy in goals:
        ax.add_patch(Circle((gx, gy), GOAL_THRESHOLD, fill=False, color="tab:red", linewidth=1.0))
        ax.plot(gx, gy, marker="*", markersize=10, color="tab:red")
    ax.set_xlim(-BOUND, BOUND)
    ax.set_ylim(-BOUND, BOUND)
    ax.set_aspect("equal")


def plot_trajectories(trajectories, num_goals, path=None, title=None, ax=None):
    """Draw trajectories over the level curves with the goals marked; return the axes.

    With `ax=None` a new figure is created; pass an axes to fill one panel of a grid (e.g. the 2x3 grid of
    paper Fig. 2). When `path` is given the axes' figure is saved there as a PNG.
    """
    if ax is None:
        ax = _new_figure(size_inches=5.0).add_subplot()
    draw_background(ax, num_goals)
    for trajectory in trajectories:
        ax.plot(trajectory[:, 0], trajectory[:, 1], color="tab:blue", alpha=0.5, linewidth=1.0)
    ax.plot(0.0, 0.0, marker="o", markersize=4, color="black")
    if title is not None:
        ax.set_title(title)
    if path is not None:
        ax.figure.savefig(path, format="png", bbox_inches="tight")
    return ax


def evaluate_policy(policy, num_goals, num_trajectories=100):
    """The multimodality protocol of paper Sec. 4.1 / Fig. 2: episodes from exactly the origin, 100-step horizon.

    `policy` is a numpy callable as for `rollout_trajectories`, which brings its own randomness (dacerv2_continuous.py's
    `multigoal_evaluation` wraps its actor as one). Returns (trajectories, goal_hits, metrics) as given by
    `rollout_trajectories` and `multimodality_metrics`.
    """
    trajectories, goal_hits, returns = rollout_trajectories(policy, num_goals, num_trajectories,
                                                            max_steps=MAX_EPISODE_STEPS)
    return trajectories, goal_hits, multimodality_metrics(goal_hits, num_goals, trajectories, returns)


def metrics_summary(metrics, num_goals):
    """One line of text: goals reached k/N, success rate, hits per goal, uniformity, min/max ratio, and how well."""
    return (
        f"goals reached {metrics['goals_reached']}/{num_goals}, success rate {metrics['success_rate']:.2f}, "
        f"hits per goal {metrics['hit_counts']}, uniformity H(p)/ln N {metrics['uniformity']:.3f}, "
        f"min/max ratio {metrics['min_max_ratio']:.2f}, mean steps to goal {metrics['mean_steps_to_goal']:.1f}, "
        f"path efficiency {metrics['path_efficiency']:.2f}, mean return {metrics['mean_return']:.1f}"
    )


def random_policy(seed=0):
    """Uniform random actions in [-1, 1]^2 (a reference row of every multimodality table)."""
    rng = np.random.default_rng(seed)
    return lambda obs: rng.uniform(-1.0, 1.0, size=(len(obs), 2))


def report(policy, num_goals, out_png, title=None, num_trajectories=100):
    """Evaluate `policy` with `evaluate_policy`, print one summary line and save the trajectory figure to `out_png`
    (its folder is created; its title is `title`, if given, above a line with k/N and the uniformity). Returns the
    metrics dict and the trajectories."""
    trajectories, _, metrics = evaluate_policy(policy, num_goals, num_trajectories)
    label, summary = f" [{title}]" if title else "", metrics_summary(metrics, num_goals)
    print(f"multimodality{label} ({num_trajectories} trajectories from the origin): {summary}")
    reached, uniformity = metrics["goals_reached"], metrics["uniformity"]
    heading = f"{num_goals} goals: {reached}/{num_goals} reached, uniformity {uniformity:.2f}"
    Path(out_png).parent.mkdir(parents=True, exist_ok=True)
    plot_trajectories(trajectories, num_goals, out_png, title=heading if title is None else f"{title}\n{heading}")
    return metrics, trajectories


def _register_envs():
    """Register the multi-goal ids once (importing the module twice must not re-register them)."""
    for env_id, num_goals in ENV_NUM_GOALS.items():
        if env_id not in gym.registry:
            gym.register(
                id=env_id,
                entry_point="multigoal_env:MultiGoalEnv",
                max_episode_steps=MAX_EPISODE_STEPS,
                kwargs={"num_goals": num_goals},
            )


_register_envs()
