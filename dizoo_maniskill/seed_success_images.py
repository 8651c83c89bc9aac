"""Add real, env-verified PickCube success frames (ManiSkill's motion planner) to a stage-1 image folder.

On a CPU an untrained PPO policy practically never succeeds within minutes, so the success class of
a small collection run can be seeded with planner solutions. The frames go through the same writer
(numbering continues, nothing is overwritten) and are rendered with the same camera settings.

    python -m dizoo_maniskill.seed_success_images --save-dir pickcube_reward_data --num 100
"""
import argparse
from typing import Optional, Sequence

from ding_ext.image_dataset_writer import LabelledImageWriter


def seed_success_images(save_dir: str, num: int, env_cfg: Optional[dict] = None, seed: int = 10000) -> int:
    """Write ``num`` planner-solved success frames into ``save_dir/success``; returns how many were written."""
    from dizoo_maniskill.config.pickcube_base import ENV
    from dizoo_maniskill.envs.scripted_success import solved_frames
    from entry.serial_entry_reward_model import env_metadata
    cfg = dict(ENV, **(env_cfg or {}))
    writer = LabelledImageWriter(save_dir, target_success=10 ** 9, target_failure=0, sample_rate_success=1.0,
                                 sample_rate_fail=0.0, metadata=env_metadata(cfg), progress=False)
    written = 0
    try:
        for frame in solved_frames(num, seed=seed, env_cfg=cfg):
            written += writer.add(frame['image'], True)
    finally:
        writer.close()
    return written


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--save-dir', required=True)
    p.add_argument('--num', type=int, default=100)
    p.add_argument('--seed', type=int, default=10000, help='first motion-planner seed (away from RL seeds)')
    args = p.parse_args(argv)
    n = seed_success_images(args.save_dir, args.num, seed=args.seed)
    print(f"wrote {n} success images to {args.save_dir}/success")
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
