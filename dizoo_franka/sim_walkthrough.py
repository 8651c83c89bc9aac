"""The whole Franka learned-reward path in the sim cell, end to end, with the wall time of every stage.

    python -m dizoo_franka.sim_walkthrough --out logs/walkthrough [--episodes 12 --heldout-episodes 4 --rl-steps 300]

1. **collect**: ``--episodes`` scripted episodes (``dizoo_franka.collect_data``; approach and insert with noise,
   a ``--miss-prob`` fraction hovering beside the hole), and a separate held-out set of ``--heldout-episodes``
   (other seeds) for the fidelity report. Collection episodes run ``--max-steps`` steps (no termination on success:
   the peg stays in the hole, so every frame after ``--hold-steps`` steps there is a success frame);
2. **process**: both folders into classifier datasets (``dizoo_franka.process_realworld_data``);
3. **train**: the ResNet classifier (``ding_ext.train_reward_model``; ``store_threshold``: the lowest threshold
   reaching ``--target-precision`` on its validation episodes is stored in the checkpoint);
4. **fidelity**: the report on the held-out episodes (``ding_ext.evaluate_reward_model``) at the stored threshold
   (0.5 when none reached the target, said in the summary): precision, recall, and the false positives among the
   hard negatives: failure frames within ``--near-dist`` of the target (``_off_target``: those not at the target
   pose at all; the others are at the target but not yet held ``--hold-steps`` steps, which no single frame can tell);
5. **rlpd**: ``--rl-steps`` env steps of RLPD (``dizoo_franka/config/realworld_peginsertion_rlpd_config.py``) with
   the image+state policy, the successful collected episodes as demos and the frozen classifier as the per-step
   reward, on demo and online transitions alike.

Prints a table of stage wall times and the fidelity numbers and writes them to ``<out>/summary.json``.
"""
import argparse
import contextlib
import copy
import json
import os
import time
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Dict, List, Optional

import numpy as np

SUMMARY_FILE = 'summary.json'


def _opt(default: Any, help: str) -> Any:
    return field(default=default, metadata=dict(help=help))


@dataclass
class WalkthroughOptions:
    episodes: int = _opt(12, "training episodes (the classifier's data and the RLPD demos)")
    heldout_episodes: int = _opt(4, "episodes of other seeds, for the fidelity report only")
    max_steps: int = _opt(60, "steps of a collected episode")
    hold_steps: int = _opt(5, "steps at the target that make a success (the env's success_hold_steps)")
    reset_height: float = _opt(0.08, "episodes start this far (m) above the inserted pose")
    reset_random_xyz: List[float] = _opt((0.02, 0.02, 0.005), "uniform random offset (+-, m) of the start per axis")
    miss_prob: float = _opt(0.3, "fraction of collected episodes that hover beside the hole (near misses)")
    noise: float = _opt(0.1, "the scripted driver's action noise")
    image_size: int = _opt(64, "camera frames (the reward images), pixels")
    policy_image_size: int = _opt(64, "the policy's observation image, pixels")
    classifier_image_size: int = _opt(64, "the classifier's input, pixels")
    classifier_hidden_dim: int = _opt(256, "the classifier head's hidden size")
    classifier_epochs: int = _opt(10, "classifier training epochs")
    classifier_batch_size: int = _opt(32, "classifier batch size")
    target_precision: float = _opt(0.9, "the stored threshold is the lowest reaching this validation precision")
    near_dist: float = _opt(0.05, "failure frames within this distance (m) of the target are hard negatives")
    rl_steps: int = _opt(300, "env steps of RLPD")
    rl_episode_steps: Optional[int] = _opt(None, "steps of an RL episode (default: max_steps)")
    rl_batch_size: int = _opt(64, "RLPD batch (half demos, half online)")
    rl_n_sample: int = _opt(32, "env steps per RLPD iteration")
    rl_utd_ratio: float = _opt(0.5, "RLPD gradient updates per env step")
    rl_hidden_size: int = _opt(256, "hidden size of the actor and critic MLPs")
    bc_pretrain_iterations: int = _opt(200, "behaviour-cloning steps of the actor on the demos before RL")
    seed: int = _opt(0, "seed of the collection (held-out: seed + 1000), the classifier and RLPD")
    env_overrides: Dict[str, Any] = field(default_factory=dict)  # further franka env settings (every stage)


def collection_env(opts: WalkthroughOptions, ready: Dict[str, Any]) -> Dict[str, Any]:
    """The franka env settings of every stage: the collection config's, sized by ``opts``, in the cell."""
    from dizoo_franka.config.realworld_collect_data import main_config as collect_config
    from dizoo_franka.sim_cell_process import sim_env_overrides
    env = copy.deepcopy(dict(collect_config.env))
    target = np.asarray(env['target_ee_pose'], dtype=float)
    reset = np.concatenate([target[:2], [target[2] + opts.reset_height], target[3:]])
    env.update(sim_env_overrides(ready), image_size=[3, opts.image_size, opts.image_size],
               max_episode_steps=opts.max_steps, success_hold_steps=opts.hold_steps, reset_ee_pose=reset.tolist(),
               reset_random_xyz=list(opts.reset_random_xyz), reset_dynamics_factor=0.3)
    env.update(copy.deepcopy(opts.env_overrides))
    return env


def collect_episodes(opts: WalkthroughOptions, env: Dict[str, Any], out_dir: str, episodes: int, seed: int) -> int:
    from easydict import EasyDict

    from dizoo_franka.collect_data import collect
    from dizoo_franka.config.realworld_collect_data import main_config as collect_config
    cfg = EasyDict(copy.deepcopy(dict(collect_config)))
    cfg.env = EasyDict(dict(env, terminate_on_success=False))  # the peg stays in: every held frame is a success
    cfg.collect.update(driver='scripted', num_data_episodes=episodes, noise=opts.noise, miss_prob=opts.miss_prob,
                       seed=seed)
    return len(collect(cfg, out_dir))


def hard_negative_subsets(near_dist: float):
    """``subsets`` for the fidelity report: failure frames near the target (and those of them not at it)."""

    def subsets(rows: List[Dict[str, Any]]) -> Dict[str, np.ndarray]:
        near = np.array([r.get('label') == 0 and r.get('target_dist', np.inf) <= near_dist for r in rows])
        at_target = np.array([bool(r.get('at_target', False)) for r in rows])
        return dict(hard_negatives=near, hard_negatives_off_target=near & ~at_target)

    return subsets


def fidelity(checkpoint: str, data: str, out_dir: str, opts: WalkthroughOptions) -> Dict[str, Any]:
    from ding_ext.checkpoint_io import load_checkpoint
    from ding_ext.evaluate_reward_model import evaluate_checkpoint
    stored = load_checkpoint(checkpoint)[1].get('calibrated_threshold')
    report = evaluate_checkpoint(checkpoint, data, out_dir, threshold=None, target_precision=opts.target_precision,
                                 subsets=hard_negative_subsets(opts.near_dist), title='held-out episodes')
    at = report['at_threshold']
    out = dict(threshold=report['threshold'], threshold_stored=stored is not None, num_images=report['num_images'],
               num_success=report['num_success'], precision=at['precision'], recall=at['recall'], f1=at['f1'],
               average_precision=report['average_precision'], report_dir=out_dir)
    for name, group in report['subsets'].items():
        m = group['at_threshold']
        out[name] = dict(num_images=group['num_images'], false_positives=m['fp'] if m else 0,
                         false_positive_rate=m['fp'] / group['num_images'] if m else None)
    return out


def rlpd_config(opts: WalkthroughOptions, env: Dict[str, Any], demo_dir: str, checkpoint: str, threshold_stored: bool):
    """The RLPD config file's pair, sized by ``opts``, on the collected demos and the trained classifier."""
    from dizoo_franka.collect_data import demo_check_metadata
    from dizoo_franka.config import realworld_peginsertion_rlpd_config as rlpd
    main, create = copy.deepcopy(rlpd.main_config), copy.deepcopy(rlpd.create_config)
    policy_image = [3, opts.policy_image_size, opts.policy_image_size]
    main.exp_name = 'rlpd'
    main.env.update(copy.deepcopy(env), obs_image_size=policy_image, n_evaluator_episode=1,
                    max_episode_steps=opts.rl_episode_steps or opts.max_steps)
    p = main.policy
    p.model.update(image_shape=policy_image, hidden_size=opts.rl_hidden_size)
    p.learn.update(batch_size=opts.rl_batch_size, utd_ratio=opts.rl_utd_ratio,
                   bc_pretrain_iterations=opts.bc_pretrain_iterations)
    p.collect.n_sample = opts.rl_n_sample
    p.eval.evaluator.eval_freq = 10 ** 6  # evaluations at the start and the end only
    p.other.replay_buffer.update(demo_path=os.path.abspath(demo_dir), demo_obs_image_size=policy_image,
                                 demo_env_metadata=demo_check_metadata(main.env))
    main.reward_model.update(checkpoint_path=os.path.abspath(checkpoint), hidden_dim=opts.classifier_hidden_dim,
                             image_size=[3, opts.classifier_image_size, opts.classifier_image_size],
                             reward_threshold='auto' if threshold_stored else 0.5)
    return main, create


def rl_summary(history: Dict[str, Any]) -> Dict[str, Any]:
    agreement = history['agreement']
    tp, fp, fn = (sum(a[k] for a in agreement) for k in ('tp', 'fp', 'fn'))
    rewards = {k: dict(v, reward_mean=v['reward_sum'] / v['transitions'] if v['transitions'] else None)
               for k, v in history['learned_rewards'].items()}
    return dict(envstep=history['envstep'], train_iter=history['train_iter'], learned_rewards=rewards,
                online_frames_scored=int(sum(a['frames'] for a in agreement)),
                online_precision=tp / (tp + fp) if tp + fp else None, online_recall=tp / (tp + fn) if tp + fn else None,
                eval_success=[e.get('success_mean') for e in history['eval']], demo_pretrain=history['demo_pretrain'])


def run_walkthrough(out_dir: str, opts: WalkthroughOptions, log=print) -> Dict[str, Any]:
    from ding_ext.train_reward_model import train_reward_model
    from dizoo_franka.process_realworld_data import process
    from dizoo_franka.sim_cell_process import SimCellProcess
    from entry import serial_pipeline_reward_model_offpolicy
    out_dir = os.path.abspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    train_dir, heldout_dir = os.path.join(out_dir, 'episodes'), os.path.join(out_dir, 'heldout')
    stages: Dict[str, float] = {}
    summary: Dict[str, Any] = dict(options=asdict(opts), stages_s=stages, out_dir=out_dir)

    @contextlib.contextmanager
    def stage(name: str):
        log(f"== {name}")
        start = time.monotonic()
        yield
        stages[name] = round(time.monotonic() - start, 1)
        log(f"== {name}: {stages[name]:.1f} s")

    total = time.monotonic()
    with stage('sim cell start'):
        cell = SimCellProcess(os.path.join(out_dir, 'sim_cell'), image_size=opts.image_size)
    try:
        env = collection_env(opts, cell.ready)
        with stage('collect'):
            summary['episodes'] = collect_episodes(opts, env, train_dir, opts.episodes, opts.seed)
        with stage('collect held-out'):
            summary['heldout_episodes'] = collect_episodes(opts, env, heldout_dir, opts.heldout_episodes,
                                                           opts.seed + 1000)
        with stage('process'):
            data = process(train_dir, overwrite=True, log=log)
            heldout = process(heldout_dir, overwrite=True, log=log)
        summary['dataset'], summary['heldout_dataset'] = data, heldout
        with stage('train classifier'):
            size = [3, opts.classifier_image_size, opts.classifier_image_size]
            trained = train_reward_model(
                data['out_dir'], epochs=opts.classifier_epochs, batch_size=opts.classifier_batch_size, val_split=0.25,
                num_workers=0, seed=opts.seed, store_threshold=True, target_precision=opts.target_precision,
                early_stopping_patience=0, save_dir=os.path.join(out_dir, 'reward_model'),
                **{'model.image_size': size, 'model.hidden_dim': opts.classifier_hidden_dim})
        val = trained['report'] or {}
        summary['classifier'] = dict(checkpoint=trained['best_path'], best_epoch=trained['best_epoch'],
                                     val_chosen_threshold=val.get('chosen_threshold'),
                                     val_chosen_reason=val.get('chosen_reason'))
        with stage('fidelity (held-out)'):
            summary['fidelity'] = fidelity(trained['best_path'], heldout['out_dir'],
                                           os.path.join(out_dir, 'fidelity_heldout'), opts)
        main, create = rlpd_config(opts, env, train_dir, trained['best_path'], summary['fidelity']['threshold_stored'])
        cwd = os.getcwd()
        os.chdir(out_dir)  # DI-engine writes the experiment under the working directory
        try:
            with stage('rlpd'):
                policy = serial_pipeline_reward_model_offpolicy((main, create), seed=opts.seed,
                                                                max_env_step=opts.rl_steps, cooptrain_reward=False)
        finally:
            os.chdir(cwd)
        summary['rlpd'] = dict(rl_summary(policy.history), exp_dir=os.path.join(out_dir, main.exp_name))
    finally:
        cell.stop()
    stages['total'] = round(time.monotonic() - total, 1)
    with open(os.path.join(out_dir, SUMMARY_FILE), 'w') as f:
        json.dump(summary, f, indent=2, default=str)
    log(format_summary(summary))
    return summary


def _num(v: Any) -> str:
    return '-' if v is None else f'{v:.3f}' if isinstance(v, float) else str(v)


def format_summary(s: Dict[str, Any]) -> str:
    rows = [('stage', 'wall time (s)')] + [(k, f'{v:.1f}') for k, v in s['stages_s'].items()]
    f, rl = s.get('fidelity', {}), s.get('rlpd', {})
    threshold = f"{_num(f.get('threshold'))} ({'stored' if f.get('threshold_stored') else 'none stored: 0.5'})"
    rows += [('', ''), ('held-out fidelity', ''), ('threshold', threshold),
             ('frames (success)', f"{f.get('num_images')} ({f.get('num_success')})"),
             ('precision', _num(f.get('precision'))), ('recall', _num(f.get('recall'))),
             ('average precision', _num(f.get('average_precision')))]
    for name in ('hard_negatives', 'hard_negatives_off_target'):
        g = f.get(name) or {}
        rows.append((f'{name}: false positives', f"{g.get('false_positives')} of {g.get('num_images')}"))
    if rl:
        demo, online = rl['learned_rewards']['demo'], rl['learned_rewards']['online']
        rows += [('', ''), ('rlpd env steps / updates', f"{rl['envstep']} / {rl['train_iter']}"),
                 ('learned reward on demo transitions', f"{demo['transitions']} (mean {_num(demo['reward_mean'])})"),
                 ('learned reward on online transitions',
                  f"{online['transitions']} (mean {_num(online['reward_mean'])})"),
                 ('online precision / recall vs env', f"{_num(rl['online_precision'])} / {_num(rl['online_recall'])}"),
                 ('eval success (start .. end)', ' .. '.join(_num(v) for v in rl['eval_success']))]
    width = max(len(a) for a, _ in rows)
    return '\n'.join(f'{a:<{width}}  {b}' for a, b in rows)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog='python -m dizoo_franka.sim_walkthrough', description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--out', required=True, help='output folder (episodes, datasets, checkpoints, summary.json)')
    for f in fields(WalkthroughOptions):
        if 'help' not in f.metadata:
            continue
        kind = float if f.name == 'reset_random_xyz' else int if f.name == 'rl_episode_steps' else type(f.default)
        parser.add_argument('--' + f.name.replace('_', '-'), type=kind, default=f.default, help=f.metadata['help'],
                            nargs=3 if f.name == 'reset_random_xyz' else None)
    args = vars(parser.parse_args(argv))
    out = args.pop('out')
    run_walkthrough(out, WalkthroughOptions(**args))
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
