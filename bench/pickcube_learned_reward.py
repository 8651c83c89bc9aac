"""Does the learned reward make a policy succeed? RLPD on PickCube with three rewards, same seeds, same env-step budget.

Arms (``--arms``):
  oracle   the env's sparse success reward;
  frozen   the ResNet classifier, frozen, as the only reward (per step);
  cotrain  the same classifier, co-trained on env success labels during RL.

Each arm reports the eval success rate (``--eval-episodes`` episodes of distinct initial states) against env
steps, its wall time, and for the learned arms the reward's online precision and recall against env success. The
target: ``frozen`` reaches 90% success in at most 1.5x the env steps ``oracle`` needs (or, short of 90%, ``oracle``'s
final level within 1.5x its steps). Writes ``bench/results/pickcube_learned_reward.json`` and a PNG of the curves.

The classifier (planner and expert episodes with hard negatives, recorded with the RL env's reward camera) and the demos are
made once and cached in ``--work-dir``, one set per ``--reward``: ``still`` (the recipe's: the last of the env's 2 frames,
with the still-scene gate of ``ding_ext.motion_gate`` on both), ``frame`` (single frames), ``clip`` (2 of 5 frames) or
``joint`` (the last 2 frames, with the joint-speed gate of ``ding_ext.joint_speed_gate`` on the arm's joint velocities).

    python bench/pickcube_learned_reward.py                                   # all arms, 40k steps, seed 0
    python bench/pickcube_learned_reward.py --arms frozen --budget-steps 6000  # one arm, about 10 minutes
"""
import argparse
import json
import os
import sys
import time
from typing import Any, Dict, List, Optional, Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

RESULTS = os.path.join(ROOT, 'bench', 'results')


# --reward: the clip settings (rlpd_recipe), the gate calibrated with the classifier (pixel: the still-scene gate;
# joint: the joint-speed gate, with the env's reward_state), folder suffix
REWARDS = dict(still=('STILL', 'pixel', '_still2'), frame=(None, None, ''), clip=('CLIP', None, '_clip5'),
               joint=('JOINT', 'joint', '_joint2'))


def prepare(work_dir: str, planner_episodes: int, expert_episodes: int, demo_episodes: int, epochs: int,
            demo_source: str = 'scripted', reward: str = 'still') -> Dict[str, Any]:
    """Demos and a trained classifier in ``work_dir`` (reused when present), per ``reward`` (``REWARDS``): the
    recipe's last frame with the still-scene gate (``still``), a single frame (``frame``) or the 2-of-5-frame clip
    classifier (``clip``); each has its own folders, its demos recorded with the same clips."""
    from dizoo_maniskill import rlpd_recipe as recipe
    from ding_ext.checkpoint_io import load_checkpoint
    clip_name, gate, suffix = REWARDS[reward]
    clip_cfg = getattr(recipe, clip_name) if clip_name else None
    env_cfg = recipe.env_config(**({k: clip_cfg[k] for k in ('reward_frames', 'reward_frame_stride')} if clip_cfg
                                   else dict(reward_frames=1)), reward_state=gate == 'joint')
    # one folder per source (a folder is resumed, never mixed); the first demo_episodes episodes by seed are used
    out: Dict[str, Any] = dict(demo_dir=os.path.join(work_dir, f'demos_{demo_source}{suffix}'), demo_source=demo_source,
                               reward=reward, clip=clip_cfg)
    t = time.time()
    counts = recipe.record_demos(out['demo_dir'], demo_episodes, env_cfg, source=demo_source)
    out['demos'] = dict(counts, seconds=round(time.time() - t, 1))
    ckpt = os.path.join(work_dir, f'classifier{suffix}', 'best_model.safetensors')
    if not os.path.isfile(ckpt):
        t = time.time()
        data = os.path.join(work_dir, f'classifier_data{suffix}')
        out['classifier_data'] = recipe.record_classifier_data(data, planner_episodes, expert_episodes, env_cfg)
        result = recipe.train_classifier(data, os.path.dirname(ckpt), epochs=epochs, clip=clip_cfg,
                                         still_keep=recipe.STILL_KEEP if gate == 'pixel' else None,
                                         joint_keep=1.0 if gate == 'joint' else None)
        out['classifier_seconds'] = round(time.time() - t, 1)
        out['motion_gate'] = result.get('motion_gate')
        out['joint_speed_gate'] = result.get('joint_speed_gate')
        ckpt = result['best_path']
    meta = load_checkpoint(ckpt)[1]
    out.update(checkpoint=ckpt, threshold=meta.get('calibrated_threshold'),
               still_motion_threshold=meta.get('still_motion_threshold'),
               still_joint_speed=meta.get('still_joint_speed'),
               validation=dict(precision=meta.get('calibration_precision'), recall=meta.get('calibration_recall')))
    return out


def summarise(runs: List[Dict[str, Any]], level: float) -> Dict[str, Any]:
    from dizoo_maniskill.rlpd_recipe import steps_to_reach
    import numpy as np
    table: Dict[str, Any] = {}
    for arm in sorted({r['arm'] for r in runs}):
        rs = [r for r in runs if r['arm'] == arm]
        reach = [steps_to_reach(r['curve'], level) for r in rs]
        # the seeds' curves averaged evaluation by evaluation (each at the largest env step of that evaluation)
        n = min(len(r['curve']) for r in rs)
        mean_curve = [(max(r['curve'][i][0] for r in rs), float(np.mean([r['curve'][i][1] for r in rs])))
                      for i in range(n)]
        table[arm] = dict(
            mean_curve=mean_curve, mean_curve_steps_to_target=steps_to_reach(mean_curve, level),
            seeds=[r['seed'] for r in rs], final_success=float(np.mean([r['final_success'] for r in rs])),
            # the first evaluation, before any RL update: the actor cloned from the demos
            start_success=float(np.mean([r['curve'][0][1] for r in rs])),
            # every evaluation after the start, all seeds: the level RL holds, less noisy than a single evaluation
            rl_mean_success=float(np.mean([v for r in rs for _, v in r['curve'][1:]])) if n > 1 else float('nan'),
            steps_to_target=None if any(s is None for s in reach) else float(np.mean(reach)),
            wall_time_s=float(np.mean([r['wall_time_s'] for r in rs])),
            env_steps=int(max(r['curve'][-1][0] for r in rs)),
            agreement=[r['agreement'] for r in rs if r['agreement']],
        )
    for arm in ('frozen', 'cotrain'):
        if 'oracle' not in table or arm not in table:
            continue
        o, f = table['oracle'], table[arm]
        if o['steps_to_target'] and f['steps_to_target']:  # per seed, then averaged
            table[f'{arm}_vs_oracle_steps_ratio'] = f['steps_to_target'] / o['steps_to_target']
        if o['mean_curve_steps_to_target'] and f['mean_curve_steps_to_target']:
            table[f'{arm}_vs_oracle_mean_curve_steps_ratio'] = (f['mean_curve_steps_to_target']
                                                                 / o['mean_curve_steps_to_target'])
        table[f'{arm}_vs_oracle_per_seed'] = per_seed_ratios(runs, arm, level)
    return table


def per_seed_ratios(runs: List[Dict[str, Any]], arm: str, level: float, within: float = 1.5) -> Dict[str, Any]:
    """Seed by seed: the env steps ``arm`` and the oracle need to reach ``level``, their ratio, and whether ``arm``
    reached it within ``within`` times the oracle's steps (a seed where the oracle never reaches it is left out)."""
    from dizoo_maniskill.rlpd_recipe import steps_to_reach
    oracle = {r['seed']: steps_to_reach(r['curve'], level) for r in runs if r['arm'] == 'oracle'}
    rows = []
    for r in runs:
        if r['arm'] != arm or r['seed'] not in oracle:
            continue
        o, a = oracle[r['seed']], steps_to_reach(r['curve'], level)
        rows.append(dict(seed=r['seed'], oracle_steps=o, steps=a, ratio=a / o if a and o else None,
                         within=None if o is None else bool(a is not None and a <= within * o)))
    judged = [row for row in rows if row['within'] is not None]
    return dict(seeds=rows, met=sum(row['within'] for row in judged), judged=len(judged), within=within)


def plot(runs: List[Dict[str, Any]], summary: Dict[str, Any], path: str, level: float) -> str:
    """Each run's curve thin, each arm's mean curve (``summary``, from ``summarise``) thick."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    colors = dict(oracle='black', frozen='tab:blue', cotrain='tab:orange')
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in runs:
        steps, success = zip(*r['curve'])
        ax.plot(steps, success, color=colors.get(r['arm']), lw=0.8, alpha=0.35)
    for arm, row in summary.items():
        if isinstance(row, dict) and 'mean_curve' in row:
            steps, success = zip(*row['mean_curve'])
            ax.plot(steps, success, marker='o', lw=2.2, color=colors.get(arm),
                    label=f"{arm} (mean of {len(row['seeds'])} seeds)")
    ax.axhline(level, color='grey', ls=':', lw=1)
    ax.set(xlabel='env steps', ylabel=f"eval success rate ({runs[0]['eval_episodes']} episodes)", ylim=(-0.03, 1.03),
           title='RLPD on PickCube: env reward vs learned reward')
    ax.legend(loc='lower right', fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def combine(paths: Sequence[str], out: str, level: float) -> int:
    """One result file (summary, plot) from the runs of several, e.g. one arm per process on a multi-core machine."""
    from ding_ext.checkpoint_io import write_json_atomic
    parts = []
    for path in paths:
        with open(path, encoding='utf-8') as f:
            parts.append(json.load(f))
    runs = [r for part in parts for r in part['runs']]
    summary = summarise(runs, level)
    png = plot(runs, summary, os.path.splitext(os.path.abspath(out))[0] + '.png', level)
    result = dict(parts[0], command=[part['command'] for part in parts], combined_from=[os.path.abspath(p) for p in paths],
                  summary=summary, runs=runs, plot=png)
    write_json_atomic(out, result)
    print(json.dumps(result['summary'], indent=2))
    print(f"wrote {out} and {png}")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--arms', default='oracle,frozen,cotrain', help='comma list of oracle, frozen, cotrain')
    p.add_argument('--budget-steps', type=int, default=40000, help='env steps per arm')
    p.add_argument('--seeds', default='0', help='comma list of RL seeds (the same for every arm)')
    p.add_argument('--eval-every', type=int, default=1000, help='env steps between evaluations')
    p.add_argument('--eval-episodes', type=int, default=40,
                   help='eval episodes per evaluation (distinct initial states, the same in every arm and seed)')
    p.add_argument('--target', type=float, default=0.9, help='success level whose env steps the arms compare')
    p.add_argument('--work-dir', default=os.path.join(ROOT, 'bench', 'work'), help='demos, classifier, runs')
    p.add_argument('--demo-episodes', type=int, default=40, help='demonstrations in the demo buffer')
    p.add_argument('--demo-source', choices=('scripted', 'planner'), default='scripted',
                   help='scripted expert (pd_ee_delta_pos) or motion planner episodes converted to it')
    p.add_argument('--planner-episodes', type=int, default=28, help="the classifier's motion-planned episodes")
    p.add_argument('--expert-episodes', type=int, default=60,
                   help="the classifier's episodes of the closed-loop expert in the RL control mode")
    p.add_argument('--classifier-epochs', type=int, default=8)
    p.add_argument('--reward', choices=sorted(REWARDS), default='still',
                   help="still: the classifier sees the current frame and the still-scene gate the last two (the "
                        "recipe's reward); frame: the current frame only; clip: the first and last of the env's last "
                        "5 frames (rlpd_recipe.CLIP); joint: the env's last 2 frames with the joint-speed gate on "
                        "the arm's joint velocities (rlpd_recipe.JOINT)")
    p.add_argument('--out', default=os.path.join(RESULTS, 'pickcube_learned_reward.json'))
    p.add_argument('--combine', nargs='+', metavar='JSON',
                   help="write --out from the runs of these result files (arms run as parallel processes) and exit")
    args = p.parse_args(argv)
    if args.combine:
        return combine(args.combine, args.out, args.target)
    from dizoo_maniskill.rlpd_recipe import ARMS, run_arm
    arms = [a.strip() for a in args.arms.split(',') if a.strip()]
    bad = [a for a in arms if a not in ARMS]
    if bad:
        p.error(f"unknown arms {bad}; choose from {list(ARMS)}")
    seeds = [int(s) for s in args.seeds.split(',')]
    work = os.path.abspath(args.work_dir)
    os.makedirs(work, exist_ok=True)
    prep = prepare(work, args.planner_episodes, args.expert_episodes, args.demo_episodes, args.classifier_epochs,
                   args.demo_source, reward=args.reward)
    print(f"classifier {prep['checkpoint']} (threshold {prep['threshold']}); demos {prep['demos']}", flush=True)
    runs = []
    os.chdir(work)
    for seed in seeds:
        for arm in arms:
            print(f"[{arm} seed {seed}] RLPD for {args.budget_steps} env steps", flush=True)
            name = f"rlpd_{arm}{'_' + args.reward if arm != 'oracle' else ''}_seed{seed}"
            r = run_arm(arm, name, prep['demo_dir'], args.budget_steps, seed=seed,
                        checkpoint=prep['checkpoint'], eval_every=args.eval_every, demo_episodes=args.demo_episodes,
                        n_evaluator_episode=args.eval_episodes)
            runs.append(r)
            print(f"[{arm} seed {seed}] success {r['curve']}  wall {r['wall_time_s']:.0f}s  "
                  f"agreement {r['agreement']}", flush=True)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    summary = summarise(runs, args.target)
    png = plot(runs, summary, os.path.splitext(os.path.abspath(args.out))[0] + '.png', args.target)
    result = dict(command=' '.join(['python', 'bench/pickcube_learned_reward.py'] + list(argv or sys.argv[1:])),
                  machine=f"{os.cpu_count()} CPU cores", prepare=prep, target=args.target,
                  demo_episodes=args.demo_episodes, budget_steps=args.budget_steps,
                  summary=summary, runs=runs, plot=png)
    from ding_ext.checkpoint_io import write_json_atomic
    write_json_atomic(args.out, result)
    print(json.dumps(result['summary'], indent=2))
    print(f"wrote {args.out} and {png}")
    return 0


if __name__ in ('__main__', '__mp_main__'):  # spawned env and planner processes import this module as __mp_main__
    from entry.demo import quiet_logs
    quiet_logs()

if __name__ == '__main__':
    raise SystemExit(main())
