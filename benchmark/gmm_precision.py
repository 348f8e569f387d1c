"""The GMM entropy estimate in float32 against float64, on the actions of real policies: the same samples fitted in
both precisions, trained and untrained, with each fit's wall time.

Usage: python benchmark/gmm_precision.py runs/RUN/EXP.pt [runs/RUN2/EXP.pt ...] [--batches 3]

Each checkpoint must hold its replay buffer (a run with --checkpoint-buffer): its states are the batches' states. Per
checkpoint, its actor and an untrained actor of the same sizes (--seed 1's initialisation, the checkpoint's initial
alpha) each act on --batches batches of 256 buffer states x 200 actions (the script's estimate at its defaults), and
gmm_entropy fits the same actions in float64 and in float32 (one torch thread).
"""

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import dacerv2_continuous as dacer  # noqa: E402

DEFAULTS = dacer.Args()


def timed_entropy(samples, dtype):
    start = time.perf_counter()
    entropy = dacer.gmm_entropy(samples, DEFAULTS.gmm_components, dtype=dtype)
    return entropy.mean().item(), time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoints", nargs="+", help="checkpoints written with --checkpoint-buffer")
    parser.add_argument("--batches", type=int, default=3, help="batches of 256 states per actor (default: 3)")
    args = parser.parse_args()
    if args.batches < 1:
        dacer.fail(f"--batches must be positive, got {args.batches}")
    torch.set_num_threads(1)
    print("checkpoint  actor  batch  float64 H  float32 H  |difference|  float64 s  float32 s")
    differences, ratios = [], []
    for path in args.checkpoints:
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=False)
            saved, states = checkpoint["args"], checkpoint["buffer"]["obs"][: checkpoint["buffer"]["size"]]
        except Exception as e:  # a missing or unreadable file, no buffer in it
            dacer.fail(f"{path}: not a checkpoint with its replay buffer (--checkpoint-buffer): "
                       f"{dacer.error_summary(e)}")
        states = torch.as_tensor(states, dtype=torch.float32)
        act_dim = checkpoint["buffer"]["actions"].shape[1]
        for trained in (True, False):
            torch.manual_seed(saved["seed"])
            actor = dacer.DiffusionActor(states.shape[1], act_dim, saved["hidden_dim"], saved["num_layers"],
                                         saved["diffusion_steps"])
            if trained:
                actor.load_state_dict(checkpoint["actor"])
            alpha = checkpoint["log_alpha"].exp() if trained else torch.tensor(saved["init_alpha"])
            for batch in range(args.batches):
                obs = states[torch.randint(len(states), (DEFAULTS.batch_size,))]
                with torch.no_grad():
                    actions = torch.cat([dacer.policy_action(actor, chunk, alpha, saved["noise_scale"])
                                         for chunk in obs.repeat(DEFAULTS.gmm_samples, 1).split(1024)])
                samples = actions.view(DEFAULTS.gmm_samples, len(obs), -1).transpose(0, 1)
                (h64, s64), (h32, s32) = timed_entropy(samples, torch.float64), timed_entropy(samples, torch.float32)
                differences.append(abs(h64 - h32))
                ratios.append(s32 / s64)
                print(f"{Path(path).parent.name}  {'trained' if trained else 'untrained'}  {batch + 1}  {h64:.4f}  "
                      f"{h32:.4f}  {abs(h64 - h32):.4f}  {s64:.3f}  {s32:.3f}")
    print(f"largest |difference| {max(differences):.4f} nats; float32 time / float64 time: median "
          f"{sorted(ratios)[len(ratios) // 2]:.2f}")


if __name__ == "__main__":
    main()
