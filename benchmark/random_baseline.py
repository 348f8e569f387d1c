"""The uniform-random reference of the benchmark tables: returns of uniform random actions, evaluation only.

Usage: python benchmark/random_baseline.py --env-ids Walker2d-v4 HalfCheetah-v4 --episodes 100 --out results/random.json
Each env id gets --episodes episodes, episode i seeded with seed + i (reset and action space), with actions drawn
uniformly from the action space; a MuJoCo -v4 task ends at its time limit (1,000 steps) or when it terminates, as
in training. Writes {env_id: {"mean", "std", "episodes", "seed", "returns"}} to --out (report.py --random reads it)
and prints one line per env.
"""

import argparse
import json
import sys
import warnings
from pathlib import Path

import gymnasium as gym
import numpy as np


def random_returns(env_id, episodes, seed):
    """Returns of `episodes` episodes of uniform random actions on env_id."""
    env = gym.make(env_id)
    returns = []
    for i in range(episodes):
        env.reset(seed=seed + i)
        env.action_space.seed(seed + i)
        total, done = 0.0, False
        while not done:
            _, reward, terminated, truncated, _ = env.step(env.action_space.sample())
            total, done = total + float(reward), terminated or truncated
        returns.append(total)
    env.close()
    return returns


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--env-ids", nargs="+", required=True, help="gymnasium env ids, e.g. Walker2d-v4")
    parser.add_argument("--episodes", type=int, default=100, help="episodes per env (default: 100)")
    parser.add_argument("--seed", type=int, default=0, help="episode i is seeded with seed + i (default: 0)")
    parser.add_argument("--out", type=Path, required=True, help="the JSON file to write (report.py --random)")
    args = parser.parse_args(argv)
    if args.episodes <= 0:
        parser.error(f"--episodes must be positive, got {args.episodes}")
    unknown = [env_id for env_id in args.env_ids if env_id not in gym.registry]
    if unknown:
        parser.error(f"unknown env id(s): {', '.join(unknown)}")
    warnings.filterwarnings("ignore", ".*is out of date", DeprecationWarning)  # the project runs the -v4 tasks
    results = {}
    for env_id in args.env_ids:
        returns = random_returns(env_id, args.episodes, args.seed)
        results[env_id] = {"mean": float(np.mean(returns)), "std": float(np.std(returns)), "episodes": args.episodes,
                           "seed": args.seed, "returns": returns}
        print(f"{env_id}: uniform random actions {np.mean(returns):.1f} ± {np.std(returns):.1f} over {args.episodes} "
              "episodes", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"written: {args.out}")


if __name__ == "__main__":
    sys.exit(main())
