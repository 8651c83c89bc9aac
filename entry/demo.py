"""`make demo`: the RLPD PickCube recipe in miniature on CPU, ending with a summary table.

1. collect: dense-reward PPO writes reward images (RL frames), and whole motion-planned episodes and episodes of
   the closed-loop expert in the RL control mode add the success frames and the hard negatives around them
   (approach, grasp, transport, the arm anywhere in the workspace, the cube at the goal while the arm moves, the
   cube held away from the goal), every frame labelled by the env and seen by the RL env's reward camera; every
   reward image is a clip of the env's last 2 frames;
2. calibrate the still-scene gate on the success clips (``ding_ext.motion_gate``: a clip whose 2 frames differ shows
   a moving robot, no success), train the ResNet classifier on the clips' last frames (train/val split by episode),
   print the gated reward's fidelity report on the validation episodes and store in the checkpoint the lowest
   threshold whose precision on them is at least 0.9 with 95% confidence; then judge it on held-out frames of seeds
   it never saw, on all frames and on the unambiguous ones;
3. RL with the classifier as the only reward: RLPD (SAC with a LayerNorm critic ensemble, half of every batch
   from demonstrations of a scripted expert, the actor first cloned from them) scores every step with the
   frozen classifier at the stored threshold, and is evaluated on 20 episodes of unseen initial states against
   the env's own success. The same budget with the env's sparse success reward (the oracle) follows when the demo
   still ends within 15 minutes (``--oracle auto``; ``yes`` / ``no`` force it).

    python -m entry.demo [--out demo_output] [--scale 1.0] [--rl-steps N] [--oracle auto|yes|no] [--verbose]
"""
import argparse
import contextlib
import copy
import logging
import os
import shutil
import time
import warnings
from typing import Any, Dict, List

import numpy as np

# seeds: held-out planner and random-action episodes, far from the classifier's training episodes (10000+), the demos
# (500000+) and every seed the collectors and evaluators draw (see dizoo_maniskill.rlpd_recipe)
HELDOUT_PLANNER_SEED, HELDOUT_RANDOM_SEED, HELDOUT_EXPERT_SEED = 200000, 300000, 400000
# precision the stored threshold reaches on all validation frames, the ambiguous ones included (see README), as a
# one-sided Wilson lower bound at PRECISION_CONFIDENCE: the point estimate on ~400 frames picked thresholds as low
# as 0.12 that fell to 0.94 precision on unseen seeds
TARGET_PRECISION, PRECISION_CONFIDENCE = 0.9, 0.95
PLANNER_EPISODES = 10
EXPERT_EPISODES = 40
DEMO_EPISODES = 40
# env steps of the RLPD stage (each arm): the actor starts cloned from the demos, RL keeps and refines it
RL_STEPS = 2000
# the demo's wall-time budget: ``--oracle auto`` adds the oracle arm when the frozen arm's RLPD time, added to the time
# so far, keeps the whole demo within it
DEMO_BUDGET_S = 15 * 60
# frames a single image cannot judge: the cube at or near the goal while the arm still moves
AMBIGUOUS_PHASES = ['at_goal_moving', 'near_goal']


def unambiguous_mask(frames: List[Dict[str, Any]]) -> np.ndarray:
    """Frames a single image can judge: success (held at the goal, robot static), or the cube more than 5 cm
    from the goal. Left out: the cube at or near the goal while the arm still moves (``AMBIGUOUS_PHASES``)."""
    return np.asarray([f.get('phase') not in AMBIGUOUS_PHASES for f in frames], dtype=bool)


def record_heldout(out_dir: str, env_cfg: Dict[str, Any], n_planner: int, n_expert: int, n_random: int) -> None:
    """Held-out frames of unseen seeds: every frame of planner and expert episodes, every 5th of random-action
    episodes."""
    from dizoo_maniskill.envs.scripted_success import failure_frames
    from dizoo_maniskill.record_planner_episodes import record_expert_episodes, record_planner_episodes, write_frames
    record_planner_episodes(out_dir, range(HELDOUT_PLANNER_SEED, HELDOUT_PLANNER_SEED + n_planner), env_cfg,
                            workers=2, frame_stride=1)
    record_expert_episodes(out_dir, range(HELDOUT_EXPERT_SEED, HELDOUT_EXPERT_SEED + n_expert), env_cfg, workers=2,
                           frame_stride=1)
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


def collect_rl_frames(data_dir: str, env_cfg: Dict[str, Any], n_frames: int, max_iters: int) -> Dict[str, int]:
    """Reward images written while dense-reward PPO trains in the RL env (every step has an image; 1 in 20 is kept)."""
    from dizoo_maniskill.config import pickcube_ppo_collect_config as s1
    from dizoo_maniskill.config.pickcube_base import RLPD_ACTION_SHAPE
    from entry import serial_pipeline_reward_model_onpolicy
    main, create = copy.deepcopy(s1.main_config), copy.deepcopy(s1.create_config)
    main.env.update({k: v for k, v in env_cfg.items() if k not in ('reward_mode', 'n_evaluator_episode')})
    main.env.update(collector_env_num=2, evaluator_env_num=1, n_evaluator_episode=1)
    main.policy.model.action_shape = RLPD_ACTION_SHAPE
    main.policy.eval.evaluator.eval_freq = 10 ** 6
    main.reward_data_collection.update(save_dir=data_dir, target_success=0, target_failure=n_frames,
                                       sample_rate_fail=0.05)
    hist = serial_pipeline_reward_model_onpolicy((main, create), seed=0, max_train_iter=max_iters).history
    return dict(hist.get('images', {}))


def run_demo(out: str = 'demo_output', scale: float = 1.0, rl_steps: int = RL_STEPS,
             oracle: str = 'auto') -> Dict[str, Any]:
    from ding_ext.evaluation import format_report
    from ding_ext.image_folder_dataset import scan_image_folder
    from dizoo_maniskill import rlpd_recipe as recipe

    if os.path.exists(out):
        shutil.rmtree(out)
    os.makedirs(out)
    os.chdir(out)
    n = lambda x: max(1, int(round(x * scale)))  # noqa: E731
    t_start, timings = time.time(), {}
    env_cfg = recipe.env_config()
    data_dir = 'pickcube_reward_data'

    # ---- stage 1: RL frames, then whole planner and expert episodes
    print("[stage 1/3] reward images from dense-reward PPO, then whole motion-planned and expert episodes (every "
          "frame labelled by the env), seen by the RL env's reward camera", flush=True)
    t = time.time()
    rl_counts = collect_rl_frames(data_dir, env_cfg, n(32), max_iters=n(4))
    episode_counts = recipe.record_classifier_data(data_dir, n(PLANNER_EPISODES), n(EXPERT_EPISODES), env_cfg)
    timings['1 collect'] = time.time() - t

    # ---- stage 2: the classifier, its report on the validation episodes, and on unseen seeds
    print("[stage 2/3] training the ResNet success classifier (train/val split by episode)", flush=True)
    t = time.time()
    result = recipe.train_classifier(data_dir, 'pickcube_reward_model', epochs=n(8), target_precision=TARGET_PRECISION,
                                     precision_confidence=PRECISION_CONFIDENCE)
    print(format_report(result['report']), flush=True)
    timings['2 train classifier'] = time.time() - t
    print("[stage 2/3] held-out frames of unseen seeds: planner and expert episodes (every frame), random actions",
          flush=True)
    t = time.time()
    record_heldout('pickcube_heldout', env_cfg, n(4), n(8), n(4))
    heldout = evaluate_heldout(result['best_path'], 'pickcube_heldout', 'pickcube_reward_model/fidelity_heldout')
    timings['2 held-out check'] = time.time() - t

    # ---- stage 3: RLPD with the classifier as the only reward
    print(f"[stage 3/3] demonstrations of a scripted expert, then RLPD for {rl_steps} env steps with the classifier as "
          "the only reward (per step, frozen, stored threshold)", flush=True)
    t = time.time()
    demo_counts = recipe.record_demos('pickcube_demos', n(DEMO_EPISODES), env_cfg)
    timings['3 demos'] = time.time() - t
    runs, oracle_note = {}, None
    for arm in ('frozen', 'oracle'):
        if arm == 'oracle':
            # about as long as the frozen arm (it renders no reward images, so a little less)
            ends_at = time.time() - t_start + timings['3 RLPD (frozen)']
            if oracle == 'no' or (oracle == 'auto' and ends_at > DEMO_BUDGET_S):
                oracle_note = ("not run (--oracle no)" if oracle == 'no' else
                               f"not run: the demo would end at ~{ends_at / 60:.0f} min, past its "
                               f"{DEMO_BUDGET_S // 60}-min budget (--oracle yes runs it)")
                break
            print(f"[stage 3/3] RLPD for {rl_steps} env steps with the env's own success reward (the oracle)",
                  flush=True)
        t = time.time()
        runs[arm] = recipe.run_arm(arm, f'pickcube_rlpd_{arm}', 'pickcube_demos', rl_steps,
                                   checkpoint=result['best_path'], eval_every=max(1000, rl_steps // 3))
        timings[f'3 RLPD ({arm})'] = time.time() - t
        print(f"[stage 3/3] {arm}: eval success {[(s, round(v, 2)) for s, v in runs[arm]['curve']]}", flush=True)
    plot_path = plot_curves(runs, 'rlpd_success.png')

    scan = scan_image_folder(data_dir, cache=False)
    sources = {}
    for f, label in zip(scan.frames, scan.labels.tolist()):
        key = f.get('source', 'unknown')
        sources.setdefault(key, [0, 0])[1 - label] += 1
    val, unamb = result['report'], heldout['subsets']['unambiguous']
    threshold = result['report']['chosen_threshold']
    gate = result.get('motion_gate')
    frozen = runs['frozen']
    agreement = frozen['agreement'] or {}
    summary = {
        'training images (success / failure)': ", ".join(f"{k} {s} / {f}" for k, (s, f) in sorted(sources.items()))
        + "".join(f" ({c['success'] + c['failure']} {k} frames of {n(e)} episodes)" for k, c, e in (
            ('planner', episode_counts['planner'], PLANNER_EPISODES), ('expert', episode_counts['expert'], EXPERT_EPISODES)))
        + f" ({rl_counts.get('failure', 0)} PPO frames)",
        'validation episodes (stage 2)': _pr(val['at_chosen'] or val['at_threshold'])
        + f"  over {val['num_images']} frames",
        'still-scene gate': (f"motion <= {gate['threshold']:.4f} between the clip's 2 frames (keeps "
                             f"{gate['success_kept']:.0%} of the training success clips; lets "
                             f"{gate.get('moving_failure_passed', float('nan')):.1%} of the moving failure clips through)"
                             if gate else "none"),
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
        'demonstrations': f"{demo_counts['recorded'] + demo_counts['skipped']} episodes of the scripted expert in "
                          f"pd_ee_delta_pos ({demo_counts['failed']} seeds failed)",
        'RLPD, learned reward: eval success': f"{frozen['final_success']:.2f} after {frozen['curve'][-1][0]} env steps "
                                              f"({frozen['eval_episodes']} episodes of unseen initial states; the "
                                              f"env's success flag); {frozen['curve'][0][1]:.2f} at step 0, the "
                                              "actor cloned from the demos",
        'eval success against env steps': ", ".join(f"{step}: {v:.2f}" for step, v in frozen['curve']),
        'learned reward vs env success (RL)': f"precision {agreement.get('precision', float('nan')):.3f}  recall "
                                              f"{agreement.get('recall', float('nan')):.3f}  over "
                                              f"{int(agreement.get('frames', 0))} frames",
        'RLPD, env reward (oracle)': (f"{runs['oracle']['final_success']:.2f} after {runs['oracle']['curve'][-1][0]} "
                                      "env steps (the same budget, seed and demos; eval success against env steps: "
                                      + ", ".join(f"{step}: {v:.2f}" for step, v in runs['oracle']['curve']) + ")")
                                     if 'oracle' in runs else f"{oracle_note}; bench/pickcube_learned_reward.py "
                                                              "compares them over seeds",
        'success curve': os.path.abspath(plot_path),
        'wall time': ", ".join(f"{k}: {v:.0f}s" for k, v in timings.items()) + f"; total {time.time() - t_start:.0f}s",
    }
    width = max(len(k) for k in summary)
    print("\n" + "=" * 110 + "\nPickCube with a learned reward (miniature)\n" + "-" * 110)
    for k, v in summary.items():
        print(f"{k:<{width}}  {v}")
    print("=" * 110)
    return dict(summary=summary, validation=val, heldout=heldout, runs=runs)


def plot_curves(runs: Dict[str, Dict[str, Any]], path: str) -> str:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4))
    labels = dict(frozen='learned reward (frozen classifier)', oracle="env's success reward", cotrain='co-trained')
    styles = dict(frozen=dict(marker='o', ls='-', lw=2.5), oracle=dict(marker='s', ls='--', lw=1.5))  # curves may coincide
    for arm, r in runs.items():
        steps, success = zip(*r['curve'])
        ax.plot(steps, success, label=labels.get(arm, arm), **styles.get(arm, dict(marker='^')))
    ax.set(xlabel='env steps', ylabel='eval success rate', ylim=(-0.03, 1.03), title='RLPD on PickCube')
    ax.legend(loc='lower right')
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


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
    p.add_argument('--rl-steps', type=int, default=RL_STEPS, help='env steps of the RLPD stage')
    p.add_argument('--oracle', choices=('auto', 'yes', 'no'), default='auto',
                   help="also run RLPD on the env's own success reward: auto = when the demo still ends within "
                        f"{DEMO_BUDGET_S // 60} min")
    p.add_argument('--verbose', action='store_true', help="show DI-engine's INFO logs on the console")
    args = p.parse_args(argv)
    if args.verbose:
        for handler in logging.getLogger().handlers:
            handler.setLevel(logging.INFO)
        logging.getLogger().setLevel(logging.INFO)
    run_demo(os.path.abspath(args.out), args.scale, args.rl_steps, args.oracle)
    return 0


if __name__ in ('__main__', '__mp_main__'):  # spawned children import this module as __mp_main__
    quiet_logs()

if __name__ == '__main__':
    raise SystemExit(main())
