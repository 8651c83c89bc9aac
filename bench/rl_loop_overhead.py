"""What the learned reward costs the RL loop: collector env steps/s and learner updates/s of the PickCube RLPD pipeline.

Built from ``pickcube_rlpd_resnet_reward_config`` (through ``dizoo_maniskill.rlpd_recipe.arm_config``) with our
entry's own set-up (``setup_workers``) and per-iteration steps, one env, the base env manager, and a frozen
resnet18 classifier (random weights: speed does not depend on them; 64 px, as the recipe trains it):

  collector  env steps/s of ``collector.collect`` plus what our entry does with every new batch (the reward monitor,
             ``collect_data``/``train``/``clear_data``, the transitions into the replay buffer, scored there once):
               none      no reward model (reward_render_mode none: nothing renders a reward image);
               terminal  reward image and score at the episode's end (reward_render_mode episode_end);
               per_step  reward image and score every step (reward_render_mode every_step).
  learner    updates/s of the learner side of an iteration at the config's update-to-data ratio (utd_ratio updates
             per new env step, batch 256, half demos): new transitions into the buffer, then per update one sample,
             ``estimate()``, ``learner.train``. Frozen per_step reward,
               score_once      the probability stored with each transition (scored as it enters the buffer; demos
                               when first sampled) is reused;
               every_batch     score_once off: every sampled image is scored on every update (as DI-engine's entry).
             The new transitions come from a pool collected once beforehand (fresh copies each iteration), so env
             time stays out of this figure.

    python bench/rl_loop_overhead.py                        # ~5 min on 2 CPU cores
    python bench/rl_loop_overhead.py --collect-steps 100 --learner-seconds 20
    python bench/rl_loop_overhead.py --parts learner --pool-steps 128 --out /tmp/learner.json

Writes ``bench/results/rl_loop_overhead.json`` (``--out``) with a machine description. Demos (2 scripted episodes)
and the classifier checkpoint are made once in ``--work-dir`` (bench/work/rl_loop).
"""
import argparse
import copy
import json
import os
import sys
import time
from typing import Any, Dict, List

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
os.environ.pop('DEBUG_IMAGE_SAVE_DIR', None)  # nothing writes the scored images while being timed

import torch  # noqa: E402

from bench.machine import machine  # noqa: E402

MODEL_SIZE = [3, 64, 64]


def prepare(work_dir: str) -> Dict[str, str]:
    """Two scripted demos and a random-weight classifier checkpoint in ``work_dir`` (reused when present)."""
    from ding_ext.reward_models import ResNetRewardModel
    from dizoo_maniskill import rlpd_recipe as recipe
    demo_dir, ckpt = os.path.join(work_dir, 'demos'), os.path.join(work_dir, 'classifier.safetensors')
    recipe.record_demos(demo_dir, 2, recipe.env_config(), workers=1)
    if not os.path.isfile(ckpt):
        torch.manual_seed(0)
        ResNetRewardModel(dict(type='resnet', image_size=MODEL_SIZE, hidden_dim=256), 'cpu').save(ckpt)
    return dict(demo_dir=demo_dir, checkpoint=ckpt)


def workers(arm: str, prep: Dict[str, str], exp_dir: str, score_once: bool = True):
    """Our entry's workers for one arm (one env each for collector and evaluator, no cloning before RL)."""
    from dizoo_maniskill.rlpd_recipe import arm_config
    from entry.serial_entry_reward_model import setup_workers
    kind = 'oracle' if arm == 'none' else 'frozen'
    main, create = arm_config(kind, os.path.join(exp_dir, arm), prep['demo_dir'], prep['checkpoint'],
                              collector_env_num=1, evaluator_env_num=1, n_evaluator_episode=1)
    main.policy.learn.bc_pretrain_iterations = 0
    main.progress = False
    create.env_manager.type = 'base'
    if arm == 'terminal':
        main.env.reward_render_mode = 'episode_end'
        main.reward_model.reward_mode = 'terminal'
    if 'reward_model' in main:
        main.reward_model.update(reward_threshold=0.5, score_once=score_once)
    return setup_workers((main, create), 0, None, None, cooptrain_reward=False, pretrain_reward=False,
                         with_buffer=True)


def close(w) -> None:
    from entry.serial_entry_reward_model import close_replay_buffer
    w.collector.close()
    w.evaluator.close()
    close_replay_buffer(w.replay_buffer)
    if w.monitor is not None:
        w.monitor.close()
    w.tb_logger.close()


def collector_rate(arm: str, prep: Dict[str, str], exp_dir: str, steps: int) -> Dict[str, Any]:
    from entry.serial_entry_reward_model import to_store, update_reward_model
    w = workers(arm, prep, exp_dir)
    n_sample = int(w.cfg.policy.collect.n_sample)
    history: Dict[str, Any] = dict(agreement=[])
    try:
        def one_iteration(count: int) -> int:
            before = w.collector.envstep
            new = w.collector.collect(train_iter=0)
            if w.reward_model is not None:
                update_reward_model(w, new, count, history)
            w.replay_buffer.push(to_store(w, new), cur_collector_envstep=w.collector.envstep)
            return w.collector.envstep - before

        one_iteration(0)  # warm-up: env reset, first renders, the reward model's first call
        done, t0, count = 0, time.perf_counter(), 1
        while done < steps:
            done += one_iteration(count)
            count += 1
        seconds = time.perf_counter() - t0
    finally:
        close(w)
    return dict(arm=arm, env_steps=done, seconds=seconds, env_steps_per_s=done / seconds, n_sample=n_sample)


def transition_pool(prep: Dict[str, str], exp_dir: str, steps: int) -> List[Dict[str, Any]]:
    """Transitions with per-step reward images, collected once for both learner arms."""
    w = workers('per_step', prep, exp_dir)
    pool: List[Dict[str, Any]] = []
    try:
        while len(pool) < steps:
            pool += w.collector.collect(train_iter=0)
    finally:
        close(w)
    return pool


def learner_rate(score_once: bool, pool: List[Dict[str, Any]], prep: Dict[str, str], exp_dir: str,
                 seconds: float) -> Dict[str, Any]:
    from ding_ext.transitions import SCORE_KEY
    from entry.serial_entry_reward_model import num_updates, to_store
    w = workers('per_step', prep, os.path.join(exp_dir, 'score_once' if score_once else 'every_batch'), score_once)
    rm, cfg = w.reward_model, w.cfg
    batch_size = w.learner.policy.get_attribute('batch_size')
    n_new = int(cfg.policy.collect.n_sample)
    fresh = lambda ts: [{k: v for k, v in t.items() if k != SCORE_KEY} for t in ts]  # noqa: E731  (never scored)
    scored: List[int] = []
    real_predict = rm.predict_proba

    def counted(images):
        scored.append(len(images))
        return real_predict(images)
    rm.predict_proba = counted
    try:
        w.replay_buffer.push(to_store(w, fresh(pool[:int(cfg.policy.random_collect_size)])), cur_collector_envstep=0)
        updates, iterations, start, t0 = 0, 0, int(cfg.policy.random_collect_size), time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            new = fresh([pool[(start + i) % len(pool)] for i in range(n_new)])
            start += n_new
            w.replay_buffer.push(to_store(w, new), cur_collector_envstep=start)
            iterations += 1
            for _ in range(num_updates(cfg, n_new)):
                data = rm.estimate(w.replay_buffer.sample(batch_size, w.learner.train_iter))
                w.learner.train(data, start)
                updates += 1
                if time.perf_counter() - t0 >= seconds:
                    break
        elapsed = time.perf_counter() - t0
    finally:
        close(w)
    return dict(score_once=score_once, updates=updates, iterations=iterations, seconds=elapsed,
                updates_per_s=updates / elapsed, images_scored=sum(scored), images_scored_per_update=sum(scored) /
                max(updates, 1), utd_ratio=float(cfg.policy.learn.utd_ratio), batch_size=int(batch_size),
                new_transitions_per_iteration=n_new)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--collect-steps', type=int, default=200, help="timed env steps per collector arm")
    p.add_argument('--learner-seconds', type=float, default=40.0, help="timed seconds per learner arm")
    p.add_argument('--pool-steps', type=int, default=384, help="transitions collected once for the learner arms")
    p.add_argument('--parts', default='collector,learner', help="which parts to run (comma list)")
    p.add_argument('--work-dir', default=os.path.join(ROOT, 'bench', 'work', 'rl_loop'))
    p.add_argument('--out', default=os.path.join(ROOT, 'bench', 'results', 'rl_loop_overhead.json'))
    a = p.parse_args()
    a.out, a.work_dir = os.path.abspath(a.out), os.path.abspath(a.work_dir)
    from ding_ext.checkpoint_io import write_json_atomic
    os.makedirs(a.work_dir, exist_ok=True)
    prep = {k: os.path.abspath(v) for k, v in prepare(a.work_dir).items()}
    os.makedirs(os.path.join(a.work_dir, 'runs'), exist_ok=True)
    os.chdir(os.path.join(a.work_dir, 'runs'))  # DI-engine writes logs under the working directory
    exp_dir = '.'
    result = dict(machine=machine(), command=' '.join(sys.argv), collector=[], learner=[],
                  config=dict(collect_steps=a.collect_steps, learner_seconds=a.learner_seconds, model_size=MODEL_SIZE,
                              pool_steps=a.pool_steps, model='resnet18, hidden_dim 256, random init, frozen'))
    print(json.dumps(result['machine']), flush=True)
    parts = a.parts.split(',')
    for arm in ('none', 'terminal', 'per_step') if 'collector' in parts else ():
        row = collector_rate(arm, prep, exp_dir, a.collect_steps)
        result['collector'].append(row)
        write_json_atomic(a.out, result)
        print(f"collector {arm:>9}: {row['env_steps_per_s']:6.2f} env steps/s ({row['env_steps']} in "
              f"{row['seconds']:.1f} s)", flush=True)
    pool = transition_pool(prep, exp_dir, a.pool_steps) if 'learner' in parts else []
    for score_once in (True, False) if 'learner' in parts else ():
        row = learner_rate(score_once, copy.copy(pool), prep, exp_dir, a.learner_seconds)
        result['learner'].append(row)
        write_json_atomic(a.out, result)
        print(f"learner {'score_once' if score_once else 'every_batch':>11}: {row['updates_per_s']:7.2f} updates/s "
              f"({row['updates']} in {row['seconds']:.1f} s, {row['images_scored_per_update']:.1f} images scored per "
              "update)", flush=True)
    c = {r['arm']: r['env_steps_per_s'] for r in result['collector']}
    lr = {r['score_once']: r['updates_per_s'] for r in result['learner']}
    result['ratios'] = dict(collector_terminal_vs_none=c['terminal'] / c['none'],
                            collector_per_step_vs_none=c['per_step'] / c['none']) if c else {}
    if lr:
        result['ratios']['learner_score_once_vs_every_batch'] = lr[True] / lr[False]
    write_json_atomic(a.out, result)
    print(json.dumps(result['ratios'], indent=1))
    print(f"wrote {a.out}")


if __name__ == '__main__':
    main()
