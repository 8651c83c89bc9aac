"""`make demo`: a miniature of the four-stage PickCube recipe on CPU, ending with a summary table.

1. collect: dense-reward PPO writes success/failure reward images (success class topped up with
   motion-planner solutions, since an untrained policy rarely succeeds in minutes on a CPU);
2. train the ResNet classifier on them (held-out validation metrics);
3. dense-reward PPO to a checkpoint;
4. resume it with the classifier as the reward (terminal mode, replace).

    python -m entry.demo [--out demo_output] [--scale 1.0]
"""
import argparse
import os
import shutil
import time
from typing import Any, Dict, List

import numpy as np


def _success_rate(history: Dict[str, Any]) -> float:
    evals = history.get('eval') or []
    if not evals:
        return float('nan')
    last = evals[-1]
    return float(last.get('success_mean', last.get('success_once_mean', float('nan'))))


def _agreement(history: Dict[str, Any]) -> str:
    rows: List[Dict[str, float]] = history.get('agreement') or []
    if not rows:
        return 'n/a'
    acc = np.mean([r['env_accuracy'] for r in rows])
    return f"{acc:.3f} over {len(rows)} iterations"


def run_demo(out: str = 'demo_output', scale: float = 1.0) -> Dict[str, Any]:
    from ding_ext.train_reward_model import train_reward_model
    from dizoo_maniskill.config import pickcube_ppo_collect_config as s1
    from dizoo_maniskill.config import pickcube_ppo_config as s3
    from dizoo_maniskill.config import pickcube_ppo_resnet_reward_config as s4
    from dizoo_maniskill.seed_success_images import seed_success_images
    from entry import serial_pipeline_reward_model_onpolicy

    if os.path.exists(out):
        shutil.rmtree(out)
    os.makedirs(out)
    os.chdir(out)
    n = lambda x: max(1, int(round(x * scale)))  # noqa: E731
    t_start, timings, summary = time.time(), {}, {}

    def small(main):
        main.env.update(collector_env_num=2, evaluator_env_num=2, n_evaluator_episode=8)
        main.policy.eval.evaluator.eval_freq = 10 ** 6  # evaluate at the start and the end only
        return main

    # ---- stage 1: dense PPO + image collection
    print("[stage 1/4] dense-reward PPO on PickCube, writing success/failure reward images", flush=True)
    t = time.time()
    main, create = s1.main_config, s1.create_config
    small(main)
    main.reward_data_collection.update(target_success=n(60), target_failure=n(120), sample_rate_fail=1.0)
    hist = serial_pipeline_reward_model_onpolicy((main, create), seed=0, max_train_iter=n(120)).history
    data_dir = main.reward_data_collection.save_dir
    ppo_counts = dict(hist.get('images', {}))
    seeded = 0
    if ppo_counts.get('success', 0) < n(60):
        print(f"  PPO produced {ppo_counts.get('success', 0)} success frames; adding motion-planner solutions", flush=True)
        seeded = seed_success_images(data_dir, n(60) - ppo_counts.get('success', 0))
    timings['1 collect'] = time.time() - t

    # ---- stage 2: the classifier
    print("[stage 2/4] training the ResNet success classifier", flush=True)
    t = time.time()
    rm = s4.main_config.reward_model
    rm.image_size = [3, 64, 64]  # the miniature classifier works on 64x64 (the recipe's configs use 128)
    result = train_reward_model(
        data_dir, epochs=n(30), batch_size=32, lr=3e-4, val_split=0.2, early_stopping_patience=0,
        save_dir=os.path.dirname(rm.checkpoint_path), num_workers=0,
        **{'model.arch': rm.arch, 'model.hidden_dim': rm.hidden_dim, 'model.image_size': rm.image_size}
    )
    timings['2 train classifier'] = time.time() - t

    # ---- stage 3: dense PPO to a checkpoint
    print("[stage 3/4] dense-reward PPO to a checkpoint", flush=True)
    t = time.time()
    main, create = s3.main_config, s3.create_config
    small(main)
    hist3 = serial_pipeline_reward_model_onpolicy((main, create), seed=0, max_train_iter=n(160)).history
    timings['3 dense PPO'] = time.time() - t

    # ---- stage 4: resume with the ResNet reward
    print("[stage 4/4] resuming PPO with the classifier as the reward (terminal, replace)", flush=True)
    t = time.time()
    main, create = s4.main_config, s4.create_config
    small(main)
    hist4 = serial_pipeline_reward_model_onpolicy(
        (main, create), seed=0, max_train_iter=n(80), cooptrain_reward=False, pretrain_reward=False
    ).history
    timings['4 PPO + ResNet reward'] = time.time() - t

    val = result['best_val']
    summary = {
        'images (success / failure)': f"{result['num_images']['success']} / {result['num_images']['failure']} "
        f"({ppo_counts.get('success', 0)} success and {ppo_counts.get('failure', 0)} failure from PPO, "
        f"{seeded} success from the motion planner)",
        'classifier validation': f"acc {val['accuracy']:.3f}  precision {val['precision']:.3f}  "
        f"recall {val['recall']:.3f}  F1 {val['f1']:.3f}",
        'success rate after stage 3': f"{_success_rate(hist3):.3f}",
        'success rate after stage 4': f"{_success_rate(hist4):.3f}",
        'reward model vs env success (stage 4)': _agreement(hist4),
        'wall time': ", ".join(f"{k}: {v:.0f}s" for k, v in timings.items()) + f"; total {time.time() - t_start:.0f}s",
    }
    width = max(len(k) for k in summary)
    print("\n" + "=" * 100 + "\nPickCube four-stage recipe (miniature)\n" + "-" * 100)
    for k, v in summary.items():
        print(f"{k:<{width}}  {v}")
    print("=" * 100)
    return summary


def quiet_logs() -> None:
    """Keep DI-engine's per-iteration INFO tables in its log files, off the console (warnings still show)."""
    import logging
    import warnings

    import ding  # noqa: F401  (installs DI-engine's console handler)
    for handler in logging.getLogger().handlers:
        handler.setLevel(logging.WARNING)
    logging.getLogger('mani_skill').setLevel(logging.ERROR)  # "no CUDA, rendering on CPU" on every env
    warnings.filterwarnings('ignore')


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--out', default='demo_output', help='working directory (recreated)')
    p.add_argument('--scale', type=float, default=1.0, help='multiply targets and iterations')
    p.add_argument('--verbose', action='store_true', help="show DI-engine's INFO logs on the console")
    args = p.parse_args(argv)
    if not args.verbose:
        quiet_logs()
    run_demo(os.path.abspath(args.out), args.scale)
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
