"""`make demo`: the PickCube recipe in miniature on CPU, ending with a summary table.

1. collect: dense-reward PPO writes episode-end reward images, and whole motion-planned episodes add
   the success frames and the hard negatives around them (approach, grasp, transport, the cube at the
   goal while the arm moves, the cube held away from the goal), every frame labelled by the env;
2. train the ResNet classifier (train/val split by episode), print its fidelity report on the
   validation episodes and store in the checkpoint the lowest threshold that reaches precision 0.9 on
   them (about 3% of the frames, the cube at the goal while the arm still moves, cannot be judged from
   one image and take up that error budget);
   then judge it on held-out frames of seeds it never saw: planner episodes (every frame) and
   random-action episodes, on all frames and on the unambiguous ones;
3. dense-reward PPO to a checkpoint;
4. resume it with the classifier as the only reward (terminal mode, reward_threshold='auto'), with the
   reward-hacking alarm watching its precision against env success.

    python -m entry.demo [--out demo_output] [--scale 1.0] [--verbose]
"""
import argparse
import contextlib
import logging
import os
import shutil
import time
import warnings
from typing import Any, Dict, List

import numpy as np

# seeds: planner training episodes, then held-out planner and random-action episodes far from every seed the
# PPO collectors draw (seed + 100 * randint(1, 1000) < 100100)
TRAIN_PLANNER_SEED, HELDOUT_PLANNER_SEED, HELDOUT_RANDOM_SEED = 10000, 200000, 300000
# precision the stored threshold reaches on all validation frames, the ambiguous ones included (see README), as a
# one-sided Wilson lower bound at PRECISION_CONFIDENCE: the point estimate on ~400 frames picked thresholds as low
# as 0.12 that fell to 0.94 precision on unseen seeds
TARGET_PRECISION, PRECISION_CONFIDENCE = 0.9, 0.95
PLANNER_EPISODES = 28
# frames a single image cannot judge: the cube at or near the goal while the arm still moves
AMBIGUOUS_PHASES = ['at_goal_moving', 'near_goal']


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
    alarm = 'raised' if any(r.get('hacking_alarm') for r in rows) else 'not raised'
    return f"accuracy {acc:.3f} over {len(rows)} iterations; reward-hacking alarm {alarm}"


def unambiguous_mask(frames: List[Dict[str, Any]]) -> np.ndarray:
    """Frames a single image can judge: success (held at the goal, robot static), or the cube more than 5 cm
    from the goal. Left out: the cube at or near the goal while the arm still moves (``AMBIGUOUS_PHASES``)."""
    return np.asarray([f.get('phase') not in AMBIGUOUS_PHASES for f in frames], dtype=bool)


def record_heldout(out_dir: str, env_cfg: Dict[str, Any], n_planner: int, n_random: int) -> None:
    """Held-out frames of unseen seeds: every frame of planner episodes, every 5th of random-action episodes."""
    from dizoo_maniskill.envs.scripted_success import failure_frames
    from dizoo_maniskill.record_planner_episodes import record_planner_episodes, write_frames
    record_planner_episodes(out_dir, range(HELDOUT_PLANNER_SEED, HELDOUT_PLANNER_SEED + n_planner), env_cfg,
                            workers=2, frame_stride=1)
    write_frames(out_dir, env_cfg, lambda: failure_frames(n_random, seed=HELDOUT_RANDOM_SEED, env_cfg=env_cfg,
                                                          episode_steps=50, frame_stride=5))


def evaluate_heldout(checkpoint: str, data_dir: str, out_dir: str) -> Dict[str, Any]:
    """The fidelity report of ``checkpoint`` on ``data_dir`` at its calibrated threshold, with the unambiguous subset."""
    from ding_ext.evaluate_reward_model import evaluate_checkpoint
    from ding_ext.evaluation import format_report
    report = evaluate_checkpoint(checkpoint, data_dir, out_dir, threshold=None, target_precision=TARGET_PRECISION,
                                 confidence=PRECISION_CONFIDENCE,
                                 subsets=lambda frames: {'unambiguous': unambiguous_mask(frames)},
                                 title='held-out frames of unseen seeds')
    print(format_report(report, groups_at='given'), flush=True)
    return report


def _pr(m: Dict[str, Any]) -> str:
    return f"precision {m['precision']:.3f}  recall {m['recall']:.3f}"


def run_demo(out: str = 'demo_output', scale: float = 1.0) -> Dict[str, Any]:
    from ding_ext.evaluation import format_report
    from ding_ext.image_folder_dataset import scan_image_folder
    from dizoo_maniskill.rlpd_recipe import MODEL_IMAGE_SIZE, train_classifier
    from dizoo_maniskill.config import pickcube_ppo_collect_config as s1
    from dizoo_maniskill.config import pickcube_ppo_config as s3
    from dizoo_maniskill.config import pickcube_ppo_resnet_reward_config as s4
    from dizoo_maniskill.record_planner_episodes import record_planner_episodes
    from entry import serial_pipeline_reward_model_onpolicy

    if os.path.exists(out):
        shutil.rmtree(out)
    os.makedirs(out)
    os.chdir(out)
    n = lambda x: max(1, int(round(x * scale)))  # noqa: E731
    t_start, timings = time.time(), {}

    def small(main):
        main.env.update(collector_env_num=2, evaluator_env_num=2, n_evaluator_episode=4)
        main.policy.eval.evaluator.eval_freq = 10 ** 6  # evaluate at the start and the end only
        return main

    # ---- stage 1: dense PPO + image collection, then whole planner episodes
    print("[stage 1/4] dense-reward PPO on PickCube writing episode-end reward images, then whole motion-planned "
          "episodes (every frame labelled by the env)", flush=True)
    t = time.time()
    main, create = s1.main_config, s1.create_config
    small(main)
    main.reward_data_collection.update(target_success=n(16), target_failure=n(16), sample_rate_fail=1.0)
    hist = serial_pipeline_reward_model_onpolicy((main, create), seed=0, max_train_iter=n(16)).history
    data_dir = main.reward_data_collection.save_dir
    ppo_counts = dict(hist.get('images', {}))
    env_cfg = dict(main.env)
    planner_counts = record_planner_episodes(
        data_dir, range(TRAIN_PLANNER_SEED, TRAIN_PLANNER_SEED + n(PLANNER_EPISODES)), env_cfg, workers=2)
    timings['1 collect'] = time.time() - t

    # ---- stage 2: the classifier, its report on the validation episodes, and on unseen seeds
    print("[stage 2/4] training the ResNet success classifier (train/val split by episode)", flush=True)
    t = time.time()
    rm = s4.main_config.reward_model
    # the miniature classifier (the recipe's configs use 128 px): the reward camera's whole image at 64 px, so that
    # training fits in minutes on 2 CPU cores; stage 4 builds the same network
    rm.image_size, rm.image_crop = MODEL_IMAGE_SIZE, None
    result = train_classifier(data_dir, os.path.dirname(rm.checkpoint_path), epochs=n(8),
                              target_precision=TARGET_PRECISION, precision_confidence=PRECISION_CONFIDENCE)
    print(format_report(result['report']), flush=True)
    timings['2 train classifier'] = time.time() - t
    print("[stage 2/4] held-out frames of unseen seeds: planner episodes (every frame) and random actions", flush=True)
    t = time.time()
    record_heldout('pickcube_heldout', env_cfg, n(8), n(4))
    heldout = evaluate_heldout(result['best_path'], 'pickcube_heldout', 'pickcube_reward_model/fidelity_heldout')
    timings['2 held-out check'] = time.time() - t

    # ---- stage 3: dense PPO to a checkpoint
    print("[stage 3/4] dense-reward PPO to a checkpoint", flush=True)
    t = time.time()
    main, create = s3.main_config, s3.create_config
    small(main)
    hist3 = serial_pipeline_reward_model_onpolicy((main, create), seed=0, max_train_iter=n(24)).history
    timings['3 dense PPO'] = time.time() - t

    # ---- stage 4: resume with the ResNet reward at the calibrated threshold
    print("[stage 4/4] resuming PPO with the classifier as the reward (terminal, replace, threshold auto)", flush=True)
    t = time.time()
    main, create = s4.main_config, s4.create_config
    small(main)
    # the threshold stage 2 stored; 0.5 when no threshold reached the target precision on the validation episodes
    main.reward_model.reward_threshold = 'auto' if (result['report'] or {}).get('chosen_threshold') is not None else 0.5
    hist4 = serial_pipeline_reward_model_onpolicy(
        (main, create), seed=0, max_train_iter=n(16), cooptrain_reward=False, pretrain_reward=False
    ).history
    timings['4 PPO + ResNet reward'] = time.time() - t

    scan = scan_image_folder(data_dir, cache=False)
    sources = {}
    for f, label in zip(scan.frames, scan.labels.tolist()):
        key = f.get('source', 'unknown')
        sources.setdefault(key, [0, 0])[1 - label] += 1
    val, unamb = result['report'], heldout['subsets']['unambiguous']
    threshold = result['report']['chosen_threshold']
    summary = {
        'training images (success / failure)': ", ".join(f"{k} {s} / {f}" for k, (s, f) in sorted(sources.items()))
        + f" ({planner_counts['success'] + planner_counts['failure']} planner frames of {n(PLANNER_EPISODES)} episodes, "
          f"{ppo_counts.get('failure', 0)} PPO frames)",
        'validation episodes (stage 2)': _pr(val['at_chosen'] or val['at_threshold'])
        + f"  over {val['num_images']} frames",
        'chosen threshold': (f"{threshold:.4f} (lowest whose precision on all validation frames is >= "
                             f"{TARGET_PRECISION} with {PRECISION_CONFIDENCE:.0%} confidence; stored in the checkpoint)")
        if threshold is not None
        else f"none ({val['chosen_reason']}); 0.5 used",
        'held-out, all frames': f"{_pr(heldout['at_threshold'])}  over {heldout['num_images']} frames "
                                f"({heldout['num_success']} success) at the stored threshold",
        'held-out, unambiguous frames': f"{_pr(unamb['at_threshold'])}  over {unamb['num_images']} frames",
        'held-out report': heldout['paths'].get('report_json', ''),
        'held-out plots': ", ".join(os.path.basename(p) for k, p in heldout['paths'].items() if p.endswith('.png'))
        + f" in {os.path.dirname(heldout['paths'].get('report_json', ''))}",
        'success rate after stage 3': f"{_success_rate(hist3):.3f}",
        'success rate after stage 4': f"{_success_rate(hist4):.3f}",
        'reward model vs env success (stage 4)': _agreement(hist4),
        'wall time': ", ".join(f"{k}: {v:.0f}s" for k, v in timings.items()) + f"; total {time.time() - t_start:.0f}s",
    }
    width = max(len(k) for k in summary)
    print("\n" + "=" * 110 + "\nPickCube recipe (miniature)\n" + "-" * 110)
    for k, v in summary.items():
        print(f"{k:<{width}}  {v}")
    print("=" * 110)
    return dict(summary=summary, validation=val, heldout=heldout)


def quiet_logs() -> None:
    """Keep third-party import chatter (gym, DI-engine's optional-package notes, numba, deprecation warnings) and
    DI-engine's per-iteration INFO tables off the console; the tables stay in DI-engine's log files. Runs when
    this module is the main module, which spawned env and planner processes import too (as __mp_main__)."""
    os.environ['PYTHONWARNINGS'] = 'ignore'  # processes started by the ones below
    warnings.filterwarnings('ignore')
    with open(os.devnull, 'w') as devnull, contextlib.redirect_stdout(devnull), contextlib.redirect_stderr(devnull):
        import ding.envs  # noqa: F401  (DI-engine, gym, treevalue: each prints on import)
        import ding.policy  # noqa: F401
    warnings.filterwarnings('ignore')  # imports above may have added their own filters
    import mani_skill  # outside the redirect: its logger keeps the stream it finds at import
    for handler in logging.getLogger().handlers:  # DI-engine's console handler
        handler.setLevel(logging.WARNING)
    mani_skill.logger.setLevel(logging.ERROR)  # "no CUDA, rendering on CPU" on every env


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--out', default='demo_output', help='working directory (recreated)')
    p.add_argument('--scale', type=float, default=1.0, help='multiply targets, episodes and iterations')
    p.add_argument('--verbose', action='store_true', help="show DI-engine's INFO logs on the console")
    args = p.parse_args(argv)
    if args.verbose:
        for handler in logging.getLogger().handlers:
            handler.setLevel(logging.INFO)
        logging.getLogger().setLevel(logging.INFO)
    run_demo(os.path.abspath(args.out), args.scale)
    return 0


if __name__ in ('__main__', '__mp_main__'):  # spawned children import this module as __mp_main__
    quiet_logs()

if __name__ == '__main__':
    raise SystemExit(main())
