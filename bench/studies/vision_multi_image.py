"""Probe: does V2PE help the tiny InternVL find the first of several images? delta 1 vs 1/16, a few seeds.

    OMP_NUM_THREADS=1 python -m bench.studies.vision_multi_image --images 8 --seeds 0 1 2 --deltas 1 0.0625

Each run is recipes/internvl_tiny_v2pe.yaml (YaRN 128 -> 256, 40 steps of 16 samples at 8 and 32 filler
tokens) with `vision.task.images` images per sample: the answer is the first image's colour, the other images
are distractors, so the question must attend back past all of them. The seed sets both the random weights
(`seed`) and the training samples (`vision.train.seed`); evaluation samples are the same for every run.
Writes results/vision_multi_image.json and prints after-training accuracy per delta, filler and seed.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from extend.config import CONF_DIR, REPO_ROOT
from extend.vision.run import run_vision


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=8, help="images per sample")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="model and training seeds")
    parser.add_argument("--deltas", type=float, nargs="+", default=[1.0, 0.0625], help="V2PE increments")
    parser.add_argument("--fillers", default="[8,32,100]", help="vision.eval.filler_tokens")
    parser.add_argument("--out", default=str(REPO_ROOT / "results/vision_multi_image.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    runs = []
    with tempfile.TemporaryDirectory() as tmp, initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        for delta in args.deltas:
            for seed in args.seeds:
                overrides = ["recipe=internvl_tiny_v2pe", f"output_dir={tmp}/{delta}_{seed}", f"seed={seed}",
                             f"vision.train.seed={seed + 1}", f"vision.task.images={args.images}",
                             f"vision.v2pe_delta={delta}", f"vision.eval.filler_tokens={args.fillers}"]
                data = run_vision(OmegaConf.to_object(compose("vision", overrides=overrides)))
                after = {f: r["accuracy"] for f, r in data["results"]["after"].items()}
                lengths = {f: r["length"] for f, r in data["results"]["after"].items()}
                runs.append({"delta": delta, "seed": seed, "accuracy_after": after, "tokens": lengths,
                             "last_loss": data["train"]["last_loss"]})
                print(f"delta {delta} seed {seed}: accuracy after {after} (tokens {lengths})")
    summary = {}
    for delta in args.deltas:
        mine = [r for r in runs if r["delta"] == delta]
        summary[str(delta)] = {f: round(sum(r["accuracy_after"][f] for r in mine) / len(mine), 3)
                               for f in mine[0]["accuracy_after"]}
    print("mean accuracy after training:", json.dumps(summary))
    Path(args.out).write_text(json.dumps({"images": args.images, "seeds": args.seeds, "runs": runs,
                                          "mean_accuracy_after": summary}, indent=2) + "\n")


if __name__ == "__main__":
    main()
