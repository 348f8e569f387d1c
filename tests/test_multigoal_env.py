# Unit tests for multigoal_env.py: dynamics, reward, registration, gymnasium checker, rendering and Fig. 2 metrics
import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import multigoal_env
from multigoal_env import (
    MultiGoalEnv,
    goal_positions,
    multigoal_step,
    multimodality_metrics,
    plot_trajectories,
    rollout_trajectories,
)

ENV_IDS = {"MultiGoal-v0": 4, "MultiGoal4-v0": 4, "MultiGoal5-v0": 5, "MultiGoal6-v0": 6}


def steer_to_goals(num_goals):
    """A policy with unit speed: from the origin trajectory i heads to goal i mod N, elsewhere to the nearest goal."""
    goals = goal_positions(num_goals)

    def policy(obs):
        nearest = np.linalg.norm(obs[:, None] - goals[None], axis=-1).argmin(axis=1)
        at_origin = np.all(obs == 0.0, axis=1)
        targets = goals[np.where(at_origin, np.arange(len(obs)) % num_goals, nearest)]
        direction = targets - obs
        return (direction / np.linalg.norm(direction, axis=1, keepdims=True)).astype(np.float32)

    return policy


def zero_policy(obs):
    return np.zeros_like(obs)


# ---------------------------------------------------------------- goals, constructor, registration


@pytest.mark.parametrize("num_goals", [4, 5, 6])
def test_goal_layout_is_regular_polygon_of_radius_5(num_goals):
    goals = goal_positions(num_goals)
    assert goals.shape == (num_goals, 2)
    np.testing.assert_allclose(np.linalg.norm(goals, axis=1), 5.0)
    np.testing.assert_allclose(goals[0], [5.0, 0.0], atol=1e-12)
    angles = np.unwrap(np.arctan2(goals[:, 1], goals[:, 0]))
    np.testing.assert_allclose(np.diff(angles), 2 * np.pi / num_goals)
    np.testing.assert_allclose(MultiGoalEnv(num_goals).goals, goals)


def test_four_goals_match_the_original_task():
    np.testing.assert_allclose(goal_positions(4), [[5, 0], [0, 5], [-5, 0], [0, -5]], atol=1e-12)


@pytest.mark.parametrize("num_goals", [0, 3, 7, 4.5])
def test_invalid_num_goals_raises(num_goals):
    with pytest.raises(ValueError, match="num_goals must be one of"):
        MultiGoalEnv(num_goals=num_goals)
    with pytest.raises(ValueError, match="num_goals must be one of"):
        multimodality_metrics([0], num_goals)


def test_invalid_render_mode_raises():
    with pytest.raises(ValueError, match="render_mode"):
        MultiGoalEnv(render_mode="human")


def test_registration_and_no_double_registration():
    for env_id, num_goals in ENV_IDS.items():
        spec = gym.spec(env_id)
        assert spec.max_episode_steps == 100
        assert spec.kwargs["num_goals"] == num_goals
        assert gym.make(env_id).unwrapped.num_goals == num_goals
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # gymnasium warns when an id is registered again
        multigoal_env._register_envs()


# ---------------------------------------------------------------- dynamics, reward, termination


def test_step_moves_by_clipped_action():
    env = MultiGoalEnv(start_at_origin=True)
    obs, _ = env.reset(seed=0)
    np.testing.assert_array_equal(obs, [0.0, 0.0])
    obs, *_ = env.step(np.array([0.5, -0.25], dtype=np.float32))
    np.testing.assert_allclose(obs, [0.5, -0.25])
    obs, *_ = env.step(np.array([3.0, -0.2], dtype=np.float32))  # x component is clipped to 1
    np.testing.assert_allclose(obs, [1.5, -0.45], rtol=1e-6)
    assert obs.dtype == np.float32 and obs in env.observation_space


def test_state_is_clipped_to_box():
    goals = goal_positions(4)
    next_states, *_ = multigoal_step(np.array([[6.5, -6.8], [-7.0, 7.0]]), np.array([[1.0, -1.0], [-1.0, 0.5]]), goals)
    np.testing.assert_array_equal(next_states, [[7.0, -7.0], [-7.0, 7.0]])
    env = MultiGoalEnv(start_at_origin=True)
    env.reset(seed=0)
    for _ in range(10):  # the diagonal stays more than 1 away from every goal
        obs, _, terminated, _, _ = env.step(np.array([1.0, 1.0], dtype=np.float32))
        assert not terminated
    np.testing.assert_array_equal(obs, [7.0, 7.0])


def test_reward_action_and_distance_cost():
    env = MultiGoalEnv(start_at_origin=True)
    env.reset(seed=0)
    _, reward, terminated, truncated, info = env.step(np.array([0.5, 0.0], dtype=np.float32))
    # -30 * 0.5^2 - (5 - 0.5)^2
    assert reward == pytest.approx(-7.5 - 20.25)
    assert not terminated and not truncated
    assert info == {"goal": -1, "distance": pytest.approx(4.5)}


def test_reward_uses_clipped_action():
    _, rewards, *_ = multigoal_step(np.zeros((1, 2)), np.array([[2.0, 0.0]]), goal_positions(4))
    assert rewards[0] == pytest.approx(-30.0 * 1.0 - 4.0**2)


def test_goal_bonus_and_termination():
    goals = goal_positions(4)
    _, rewards, terminated, goal_index, distances = multigoal_step(
        np.array([[3.5, 0.0]]), np.array([[1.0, 0.5]]), goals
    )
    # s' = (4.5, 0.5): -30 * 1.25 - 0.5 + 10
    assert rewards[0] == pytest.approx(-28.0)
    assert terminated[0] and goal_index[0] == 0
    assert distances[0] == pytest.approx(np.sqrt(0.5))


def test_env_terminates_at_goal_but_not_at_distance_exactly_one():
    env = MultiGoalEnv(start_at_origin=True)
    env.reset(seed=0)
    up = np.array([0.0, 1.0], dtype=np.float32)
    for _ in range(4):
        obs, reward, terminated, _, info = env.step(up)
    np.testing.assert_array_equal(obs, [0.0, 4.0])
    assert not terminated and info["goal"] == -1 and info["distance"] == 1.0
    obs, reward, terminated, _, info = env.step(up)
    assert terminated and info["goal"] == 1 and info["distance"] == pytest.approx(0.0, abs=1e-12)
    assert reward == pytest.approx(-30.0 + 10.0)


@pytest.mark.parametrize("num_goals", [4, 5, 6])
def test_termination_only_within_distance_one(num_goals):
    goals = goal_positions(num_goals)
    phis = np.random.default_rng(0).uniform(0, 2 * np.pi, size=num_goals)
    offsets = np.stack([np.cos(phis), np.sin(phis)], axis=1)
    zero = np.zeros((num_goals, 2))
    _, _, terminated, goal_index, _ = multigoal_step(goals + 0.99 * offsets, zero, goals)
    assert terminated.all()
    np.testing.assert_array_equal(goal_index, np.arange(num_goals))
    _, _, terminated, goal_index, _ = multigoal_step(goals + 1.01 * offsets, zero, goals)
    assert not terminated.any()
    np.testing.assert_array_equal(goal_index, -1)


def test_truncation_at_100_steps():
    env = gym.make("MultiGoal-v0")
    env.reset(seed=0)
    action = np.zeros(2, dtype=np.float32)
    for _ in range(99):
        _, _, terminated, truncated, _ = env.step(action)
        assert not terminated and not truncated
    _, _, terminated, truncated, _ = env.step(action)
    assert truncated and not terminated


# ---------------------------------------------------------------- reset


def test_reset_at_origin_is_exact():
    obs, info = MultiGoalEnv(start_at_origin=True).reset(seed=3)
    np.testing.assert_array_equal(obs, [0.0, 0.0])
    assert info["goal"] == -1 and info["distance"] == pytest.approx(5.0)
    obs, _ = MultiGoalEnv().reset(seed=3, options={"start_at_origin": True})
    np.testing.assert_array_equal(obs, [0.0, 0.0])


def test_default_reset_is_seeded_gaussian_near_origin():
    env = MultiGoalEnv()
    obs = np.array([env.reset(seed=0)[0]] + [env.reset()[0] for _ in range(499)])
    assert obs.dtype == np.float32
    assert np.abs(obs).max() < 0.6 and np.abs(obs).max() > 0.0
    assert 0.08 < obs.std() < 0.12 and np.abs(obs.mean()) < 0.02
    np.testing.assert_array_equal(env.reset(seed=0)[0], obs[0])
    assert not np.array_equal(env.reset(seed=1)[0], obs[0])


# ---------------------------------------------------------------- gymnasium checker and rendering


@pytest.mark.parametrize("env_id", list(ENV_IDS))
def test_gymnasium_checker_passes_without_warnings(env_id):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(gym.make(env_id).unwrapped)
    assert [str(w.message) for w in caught] == []


def test_gymnasium_checker_passes_on_wrapped_env():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(gym.make("MultiGoal6-v0"))
    assert all("different from the unwrapped version" in str(w.message) for w in caught)


def test_render_returns_rgb_image_that_follows_the_agent():
    env = gym.make("MultiGoal5-v0", render_mode="rgb_array")
    env.reset(seed=0, options={"start_at_origin": True})
    first = env.render()
    assert first.dtype == np.uint8 and first.ndim == 3 and first.shape[2] == 3
    assert first.shape[0] >= 100 and first.shape[1] >= 100
    assert first.min() < 128 < first.max()  # more than a blank canvas
    env.step(np.array([1.0, 1.0], dtype=np.float32))
    second = env.render()
    assert second.shape == first.shape and not np.array_equal(second, first)


# ---------------------------------------------------------------- multimodality metrics


def test_metrics_all_in_one_goal():
    metrics = multimodality_metrics([2] * 10, num_goals=6)
    assert metrics["goals_reached"] == 1
    assert metrics["goals_reached_fraction"] == pytest.approx(1 / 6)
    assert metrics["uniformity"] == 0.0 and metrics["min_max_ratio"] == 0.0
    assert metrics["success_rate"] == 1.0
    assert metrics["hit_counts"] == [0, 0, 10, 0, 0, 0]


@pytest.mark.parametrize("num_goals", [4, 5, 6])
def test_metrics_evenly_spread(num_goals):
    metrics = multimodality_metrics(np.repeat(np.arange(num_goals), 3), num_goals)
    assert metrics["goals_reached"] == num_goals and metrics["goals_reached_fraction"] == 1.0
    assert metrics["uniformity"] == pytest.approx(1.0)
    assert metrics["min_max_ratio"] == 1.0
    assert metrics["hit_counts"] == [3] * num_goals


def test_metrics_with_misses():
    metrics = multimodality_metrics([0, 0, 1, -1, 3, -1, 0, 1, -1, -1], num_goals=4)
    assert metrics["success_rate"] == pytest.approx(0.6)
    assert metrics["hit_counts"] == [3, 2, 0, 1]
    assert metrics["goals_reached"] == 3 and metrics["goals_reached_fraction"] == 0.75
    p = np.array([3, 2, 1]) / 6
    assert metrics["uniformity"] == pytest.approx(-np.sum(p * np.log(p)) / np.log(4))
    assert metrics["min_max_ratio"] == 0.0


def test_metrics_none_succeed():
    metrics = multimodality_metrics(np.full(100, -1), num_goals=5)
    assert metrics["success_rate"] == 0.0 and metrics["goals_reached"] == 0
    assert metrics["uniformity"] == 0.0 and metrics["min_max_ratio"] == 0.0


def test_metrics_of_hand_made_paths():
    """Path efficiency: 1 for a straight path, less for one that doubles back; steps and return as given."""
    straight = np.array([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0], [3.0, 0.0], [4.5, 0.0]])
    doubling_back = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 0.0], [1.0, 0.0], [2.0, 0.0], [3.0, 0.0], [4.5, 0.0]])
    wandering_miss = np.array([[0.0, 0.0], [0.5, 0.5], [0.0, 0.0]])
    paths = [straight, doubling_back, wandering_miss]
    metrics = multimodality_metrics([0, 0, -1], 4, paths, returns=[-1.0, -2.0, -6.0])
    assert metrics["mean_steps_to_goal"] == 5.0  # (4 + 6) / 2: the miss does not count
    assert metrics["path_efficiency"] == pytest.approx((1.0 + 4.5 / 6.5) / 2)  # doubling back: 4.5 over a 6.5 path
    assert metrics["mean_return"] == -3.0
    alone = multimodality_metrics([0], 4, [doubling_back])
    assert alone["path_efficiency"] == pytest.approx(4.5 / 6.5) and "mean_return" not in alone
    nothing = multimodality_metrics([-1], 4, [wandering_miss], [-6.0])
    assert np.isnan(nothing["path_efficiency"]) and np.isnan(nothing["mean_steps_to_goal"])


def test_metrics_reject_unknown_goal_index():
    with pytest.raises(ValueError, match="goal_hits"):
        multimodality_metrics([0, 4], num_goals=4)


# ---------------------------------------------------------------- rollouts and plots


@pytest.mark.parametrize("num_goals", [4, 5, 6])
def test_rollout_steering_policy_hits_every_goal(num_goals):
    steer = steer_to_goals(num_goals)
    batch_sizes = []

    def policy(obs):
        batch_sizes.append(len(obs))
        return steer(obs)

    trajectories, goal_hits, _ = rollout_trajectories(policy, num_goals, num_trajectories=12)
    np.testing.assert_array_equal(goal_hits, np.arange(12) % num_goals)
    assert multimodality_metrics(goal_hits, num_goals)["goals_reached"] == num_goals
    goals = goal_positions(num_goals)
    for trajectory, goal in zip(trajectories, goal_hits):
        np.testing.assert_array_equal(trajectory[0], [0.0, 0.0])
        assert np.linalg.norm(trajectory[-1] - goals[goal]) < 1.0
        assert np.all(np.linalg.norm(trajectory[:-1] - goals[goal], axis=1) >= 1.0)
        assert len(trajectory) <= 6
    assert batch_sizes[0] == 12 and len(batch_sizes) == max(len(t) for t in trajectories) - 1


def test_rollout_zero_policy_hits_nothing():
    trajectories, goal_hits, _ = rollout_trajectories(zero_policy, 4, num_trajectories=7, max_steps=100)
    np.testing.assert_array_equal(goal_hits, -1)
    assert len(trajectories) == 7
    assert all(t.shape == (101, 2) and not t.any() for t in trajectories)


def test_rollout_matches_env_dynamics():
    def policy(obs):
        return np.tile(np.array([0.9, 0.1], dtype=np.float32), (len(obs), 1))

    trajectories, goal_hits, _ = rollout_trajectories(policy, 4, num_trajectories=3)
    env = MultiGoalEnv(start_at_origin=True)
    positions = [env.reset(seed=0)[0]]
    terminated = False
    while not terminated:
        obs, _, terminated, _, info = env.step(policy(positions[-1][None])[0])
        positions.append(obs)
    for trajectory in trajectories:
        np.testing.assert_allclose(trajectory, np.array(positions), rtol=1e-6)
    np.testing.assert_array_equal(goal_hits, info["goal"])


def test_rollout_random_starts_depend_on_seed():
    runs = [rollout_trajectories(zero_policy, 4, 5, seed=s, max_steps=1, start_at_origin=False)[0] for s in (0, 0, 1)]
    first = [np.array([trajectory[0] for trajectory in run]) for run in runs]
    np.testing.assert_array_equal(first[0], first[1])
    assert not np.array_equal(first[0], first[2]) and np.abs(first[0]).max() < 0.6


def test_rollout_rejects_bad_policy_output():
    with pytest.raises(ValueError, match="policy must return actions of shape"):
        rollout_trajectories(lambda obs: np.zeros(2), 4, num_trajectories=3)


def test_plot_trajectories_writes_png(tmp_path):
    trajectories, _, _ = rollout_trajectories(steer_to_goals(6), 6, num_trajectories=12)
    path = tmp_path / "trajectories.png"
    ax = plot_trajectories(trajectories, 6, path, title="steering policy")
    assert path.stat().st_size > 1000 and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert ax.get_xlim() == (-7.0, 7.0) and ax.get_ylim() == (-7.0, 7.0)
    assert ax.get_title() == "steering policy"


def test_plot_trajectories_into_given_axes():
    fig = multigoal_env._new_figure(size_inches=6.0)
    axes = fig.subplots(2, 3)
    for ax, num_goals in zip(axes.flat, [4, 5, 6, 4, 5, 6]):
        trajectories, _, _ = rollout_trajectories(steer_to_goals(num_goals), num_goals, num_trajectories=num_goals)
        assert plot_trajectories(trajectories, num_goals, None, ax=ax) is ax
        assert len(ax.lines) >= num_goals
