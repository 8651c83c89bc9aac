"""Serial pipelines: DI-engine's learner, collector, evaluator and buffer, with an image reward model.

Compared with DI-engine 0.5.3's ``serial_pipeline_reward_model_onpolicy/offpolicy`` these add:

- ``cooptrain_reward``: ``collect_data`` / ``train`` / ``clear_data`` every iteration, labels from the
  env's success flag; ``pretrain_reward``: train the reward model on its configured dataset before RL
  (unless ``checkpoint_path`` already holds one); both false: a frozen model from ``checkpoint_path``.
- an optional reward model (plain dense-reward RL) and optional ``reward_data_collection`` (stage 1:
  success/failure images written while the policy trains);
- policy resume from ``policy.resume_dir`` (an experiment directory) or ``policy.load_path``;
- per-iteration agreement between the learned reward and env success (``reward_model/precision``,
  ``reward_model/recall``, ``reward_model/env_accuracy``), a reward-hacking alarm and hard-negative
  mining (``entry.reward_monitor``);
- off-policy: an image reward model's ``estimate()`` scores every sampled batch, and with ``score_once`` (its
  default) each stored transition keeps its probability (``ding_ext.transitions.StoredScore``), so a frozen model
  scores each image once: online transitions as they enter the replay buffer (their images then stay out of it),
  the demos of a ``demo_mix`` buffer (``ding_ext.demo_replay_buffer``) when first sampled. A co-trained model
  scores a stored transition again when it is sampled after the weights changed (the buffer keeps its images);
  ``policy.learn.utd_ratio`` sets the updates per collected env step (RLPD);
- ``<exp_name>/rerun_config.py``: a config that repeats the run (``entry.experiment_config``).

Any reward model of DI-engine's registry runs; the image-specific steps apply to image reward models only.
Rewards reach the learner only through ``reward_model.estimate()``.
"""
import os
from dataclasses import dataclass
from functools import partial
from typing import Any, Dict, List, Optional, Tuple, Union

import numpy as np
import torch
from ding.envs import create_env_manager, get_vec_env_setting
from ding.policy import create_policy
from ding.reward_model import create_reward_model
from ding.utils import set_pkg_seed
from ding.worker import BaseLearner, BaseSerialCommander, InteractionSerialEvaluator, create_buffer, \
    create_serial_collector
from ditk import logging
from easydict import EasyDict
from tensorboardX import SummaryWriter

from ding_ext.demo_episodes import DemoBuffer
from ding_ext.demo_replay_buffer import DEMO_KEY
from ding_ext.image_dataset_writer import LabelledImageWriter
from ding_ext.reward_models import BaseImageRewardModel
from ding_ext.transitions import strip_images
from entry.experiment_config import env_metadata, prepare_configs
from entry.reward_monitor import RewardMonitor

@dataclass
class Workers:
    cfg: EasyDict
    policy: Any
    learner: BaseLearner
    collector: Any
    evaluator: InteractionSerialEvaluator
    commander: BaseSerialCommander
    replay_buffer: Any
    reward_model: Any
    image_writer: Optional[LabelledImageWriter]
    tb_logger: SummaryWriter
    monitor: Optional[RewardMonitor] = None
    demo_pretrain: Optional[Dict[str, Any]] = None  # the policy's pretraining on the demos at set-up, if any

    @property
    def demo_buffer(self) -> Optional[DemoBuffer]:
        """The demonstrations of a ``demo_mix`` replay buffer (``ding_ext.demo_replay_buffer``)."""
        return getattr(self.replay_buffer, 'demos', None)

    @property
    def image_reward(self) -> bool:
        """An image reward model: the monitor, image stripping and scoring at insertion apply."""
        return isinstance(self.reward_model, BaseImageRewardModel)


def setup_workers(
        input_cfg, seed: int, env_setting, model, cooptrain_reward: bool, pretrain_reward: bool, with_buffer: bool
) -> Workers:
    """DI-engine's serial set-up, written once for both entries."""
    cfg, _ = prepare_configs(input_cfg, seed, env_setting, cooptrain_reward, pretrain_reward)
    if env_setting is None:
        env_fn, collector_env_cfg, evaluator_env_cfg = get_vec_env_setting(cfg.env)
    else:
        env_fn, collector_env_cfg, evaluator_env_cfg = env_setting
    set_pkg_seed(cfg.seed, use_cuda=cfg.policy.cuda)
    policy = create_policy(cfg.policy, model=model, enable_field=['learn', 'collect', 'eval', 'command'])
    tb_logger = SummaryWriter(os.path.join('./{}/log/'.format(cfg.exp_name), 'serial'))
    made: List[Any] = []  # what set-up has started, closed again if a later step fails
    replay_buffer = None
    try:
        # the reward model and the replay buffer (whose demos are checked against the env) before any env process
        # starts: a bad reward or demo config fails fast and leaves nothing running
        reward_model, monitor = None, None
        if 'reward_model' in cfg:
            reward_model = create_reward_model(cfg.reward_model, policy.collect_mode.get_attribute('device'),
                                               tb_logger)
            if isinstance(reward_model, BaseImageRewardModel):
                monitor = RewardMonitor(reward_model, tb_logger, env_metadata(cfg.env))
                made.append(monitor)
            elif pretrain_reward:
                logging.warning(f"pretrain_reward: reward model {type(reward_model).__name__} has no pretraining "
                                "step (only image reward models train on a dataset before RL); it trains during RL")
        if with_buffer:
            replay_buffer = create_buffer(cfg.policy.other.replay_buffer, tb_logger=tb_logger, exp_name=cfg.exp_name)
            made.append(replay_buffer)
        demos, stats = getattr(replay_buffer, 'demos', None), None
        if demos is not None:
            if not isinstance(reward_model, BaseImageRewardModel):
                demos.rescore(None)  # the env reward without the images (another reward model scores sampled batches)
            # else: the image reward model scores demos in the sampled batches (once each with score_once)
            logging.info(f"demo buffer: {len(demos)} transitions from {cfg.policy.other.replay_buffer.demo_path}")
            # a policy that can learn from the demos before RL (RLPD: learn.bc_pretrain_iterations) does so now,
            # from the seed again: whatever reward model was built (its random init draws numbers), a seed's runs
            # start from the same pretrained policy
            pretrain = getattr(policy, 'pretrain_on_demos', None)
            set_pkg_seed(cfg.seed, use_cuda=cfg.policy.cuda)
            stats = pretrain(demos.raw) if pretrain is not None else None
            if stats:
                logging.info(f"actor pretrained on the demos: {stats}")
        collector_env = create_env_manager(cfg.env.manager, [partial(env_fn, cfg=c) for c in collector_env_cfg])
        made.append(collector_env)
        evaluator_env = create_env_manager(cfg.env.manager, [partial(env_fn, cfg=c) for c in evaluator_env_cfg])
        made.append(evaluator_env)
        collector_env.seed(cfg.seed)
        evaluator_env.seed(cfg.seed, dynamic_seed=False)
        learner = BaseLearner(cfg.policy.learn.learner, policy.learn_mode, tb_logger, exp_name=cfg.exp_name)
        collector = create_serial_collector(
            cfg.policy.collect.collector, env=collector_env, policy=policy.collect_mode, tb_logger=tb_logger,
            exp_name=cfg.exp_name
        )
        evaluator = InteractionSerialEvaluator(
            cfg.policy.eval.evaluator, evaluator_env, policy.eval_mode, tb_logger, exp_name=cfg.exp_name
        )
        commander = BaseSerialCommander(
            cfg.policy.other.commander, learner, collector, evaluator, replay_buffer, policy.command_mode
        )
        image_writer = None
        rdc = cfg.get('reward_data_collection', None)
        if rdc and rdc.get('enabled', False):
            image_writer = LabelledImageWriter(
                rdc.save_dir, rdc.get('target_success', 5000), rdc.get('target_failure', 5000),
                rdc.get('sample_rate_success', 1.0), rdc.get('sample_rate_fail', 0.01),
                metadata=env_metadata(cfg.env), seed=cfg.seed, tb_logger=tb_logger
            )
    except BaseException:
        # nothing keeps running or writing (tensorboard files under a relative path land wherever the caller's
        # working directory is by then)
        for part in reversed(made):
            if part is replay_buffer:
                close_replay_buffer(part)
            else:
                part.close()
        tb_logger.close()
        raise
    return Workers(
        cfg, policy, learner, collector, evaluator, commander, replay_buffer, reward_model, image_writer, tb_logger,
        monitor, stats
    )


def close_replay_buffer(replay_buffer: Any) -> None:
    """Close a DI-engine buffer. Its naive buffer logs to tensorboard under a relative path from a thread that its
    close() leaves running: that thread is stopped first, or it writes into whatever directory is current later."""
    thruput = getattr(replay_buffer, '_periodic_thruput_monitor', None)
    if thruput is not None:
        thruput.close()
        thruput._thruput_log_thread.join(timeout=5)
    replay_buffer.close()


def update_reward_model(w: Workers, new_data: List[Dict[str, Any]], count: int, history: Dict[str, Any]) -> None:
    """collect_data / train / clear_data on the new transitions; for an image reward model also the agreement with env
    success (``RewardMonitor``)."""
    rm = w.reward_model
    if not w.image_reward:  # DI-engine's own reward models, called as DI-engine's entries call them
        if rm.cfg.get('cooptrain_reward', True):
            rm.collect_data(new_data)
            rm.train()
            if count % int(rm.cfg.get('clear_buffer_per_iters', 1)) == 0:
                rm.clear_data()
        return
    stats = w.monitor.update(new_data, w.learner.train_iter)
    if stats is not None:
        history['agreement'].append({'train_iter': w.learner.train_iter, **stats})
    rm.collect_data(new_data)
    rm.train()
    rm.clear_data(count + 1)  # after every clear_buffer_per_iters iterations


def to_store(w: Workers, new_data: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """The transitions as they enter the replay buffer. A frozen image reward model with ``score_once`` scores them
    now (each keeps its probability) and they are stored without their images, which it never needs again; a
    co-trained (or ``score_once: false``) model's transitions keep their images for scoring when sampled. Without an
    image reward model the images stay out."""
    if not w.image_reward:
        return strip_images(new_data)
    rm = w.reward_model
    if rm.cfg.score_once and not rm.cfg.cooptrain_reward:
        rm.estimate(new_data)
        return strip_images(new_data, keep_scores=True)
    return new_data


def num_updates(cfg: EasyDict, new_env_steps: int) -> int:
    """Learner updates this iteration: ``policy.learn.utd_ratio`` per new env step when set (RLPD's update-to-data
    ratio), else DI-engine's ``update_per_collect``."""
    utd = cfg.policy.learn.get('utd_ratio', None)
    if utd is None:
        return int(cfg.policy.learn.get('update_per_collect', 1))
    return max(1, int(round(float(utd) * new_env_steps)))


NO_LIMIT = int(1e10)  # DI-engine's "no limit" for max_train_iter / max_env_step


def count_rewards(counts: Dict[str, Dict[str, float]], batch: List[Dict[str, Any]]) -> None:
    """Add a batch's rewards as the reward model gave them to ``counts`` ('demo' / 'online', by ``is_demo``)."""
    for t in batch:
        c = counts['demo' if t.get(DEMO_KEY, False) else 'online']
        c['transitions'] += 1
        c['reward_sum'] += float(torch.as_tensor(t['reward']).reshape(-1)[0])


def _progress_bar(cfg: EasyDict, max_train_iter: int, max_env_step: int, envstep: int):
    """A tqdm bar over the run's finite budget (env steps, else iterations; None without one), showing the last eval
    success; ``progress: false`` at the config's top level turns it off."""
    from tqdm import tqdm
    if not cfg.get('progress', True):
        return None
    if max_env_step < NO_LIMIT:
        return tqdm(total=int(max_env_step), initial=int(envstep), unit='step', desc=cfg.exp_name, dynamic_ncols=True)
    if max_train_iter < NO_LIMIT:
        return tqdm(total=int(max_train_iter), unit='iter', desc=cfg.exp_name, dynamic_ncols=True)
    return None


def _run(w: Workers, max_train_iter: int, max_env_step: int, onpolicy: bool) -> Dict[str, Any]:
    cfg, learner, collector, evaluator, rm = w.cfg, w.learner, w.collector, w.evaluator, w.reward_model
    learner.call_hook('before_run')
    start_iter = learner.train_iter
    if not onpolicy and cfg.policy.get('random_collect_size', 0) > 0:
        from ding.entry.utils import random_collect
        random_collect(cfg.policy, w.policy, collector, collector._env, w.commander, w.replay_buffer,
                       postprocess_data_fn=partial(to_store, w))
    history = dict(eval=[], agreement=[], alarm_stop=False, demo_pretrain=w.demo_pretrain,
                   learned_rewards={'demo': dict(transitions=0, reward_sum=0.0),
                                    'online': dict(transitions=0, reward_sum=0.0)})
    best_return, count = -np.inf, 0

    def evaluate() -> bool:
        nonlocal best_return
        stop, eval_info = evaluator.eval(learner.save_checkpoint, learner.train_iter, collector.envstep)
        history['eval'].append({'train_iter': learner.train_iter, 'envstep': collector.envstep,
                                **{k: v for k, v in eval_info.items() if np.isscalar(v)}})
        ret = float(np.mean(eval_info['eval_episode_return']))
        if rm is not None and ret >= best_return:
            rm.save(path=cfg.exp_name, name='best')
        best_return = max(best_return, ret)
        return stop

    # evaluate the policy as this run receives it (also a resumed one, which DI-engine's
    # should_eval skips); should_eval marks the iteration so the loop does not repeat it
    evaluator.should_eval(learner.train_iter)
    stopped = evaluate()
    bar = _progress_bar(cfg, max_train_iter, max_env_step, collector.envstep)
    try:  # the bar closes (its line ends) also when the loop raises
        while not stopped:
            collect_kwargs = w.commander.step()
            if evaluator.should_eval(learner.train_iter):
                if evaluate():
                    stopped = True
                    break
            envstep_before = collector.envstep
            new_data = collector.collect(train_iter=learner.train_iter, policy_kwargs=collect_kwargs)
            if w.image_writer is not None:
                w.image_writer.add_transitions(new_data, step=collector.envstep)
            if rm is not None:
                update_reward_model(w, new_data, count, history)
            if w.replay_buffer is not None:
                w.replay_buffer.push(to_store(w, new_data), cur_collector_envstep=collector.envstep)
            for i in range(num_updates(cfg, collector.envstep - envstep_before)):
                if onpolicy:
                    train_data = new_data
                else:
                    train_data = w.replay_buffer.sample(learner.policy.get_attribute('batch_size'), learner.train_iter)
                    if train_data is None:
                        logging.warning(f"replay buffer holds too little data to train: stopped after {i} updates")
                        break
                if rm is not None:  # an image reward model reuses the probabilities stored with the transitions
                    train_data = rm.estimate(train_data)
                    count_rewards(history['learned_rewards'], train_data)
                if not w.image_reward:  # an image reward model's estimate() already left the images out
                    train_data = strip_images(train_data)
                learner.train(train_data, collector.envstep)
                if not onpolicy and learner.policy.get_attribute('priority') and w.demo_buffer is None:
                    w.replay_buffer.update(learner.priority_info)
            count += 1
            if bar is not None:
                bar.update((collector.envstep if bar.unit == 'step' else learner.train_iter - start_iter) - bar.n)
                last = history['eval'][-1]
                bar.set_postfix(eval_success=last.get('success_mean', float('nan')), at_step=last['envstep'],
                                refresh=False)
            if w.monitor is not None and w.monitor.should_stop:
                history['alarm_stop'] = True
                break
            if w.image_writer is not None and w.image_writer.done and \
                    cfg.reward_data_collection.get('stop_when_done', True):
                logging.info("reward_data_collection: both image targets reached, stopping")
                break
            if collector.envstep >= max_env_step or learner.train_iter - start_iter >= max_train_iter:
                break
    finally:
        if bar is not None:
            bar.close()
    if not stopped and history['eval'][-1]['train_iter'] != learner.train_iter:
        evaluate()  # the policy as it leaves this run
    learner.call_hook('after_run')
    if rm is not None:
        rm.save(path=cfg.exp_name, name='last')
    if w.image_reward:
        rm.flush_debug_images()
    if w.image_writer is not None:
        history['images'] = dict(w.image_writer.counts)
    history['envstep'], history['train_iter'] = collector.envstep, learner.train_iter
    collector.close()
    evaluator.close()
    if w.replay_buffer is not None:
        close_replay_buffer(w.replay_buffer)
    return history


def _pipeline(onpolicy, input_cfg, seed, env_setting, model, max_train_iter, max_env_step, cooptrain_reward,
              pretrain_reward):
    w = setup_workers(input_cfg, seed, env_setting, model, cooptrain_reward, pretrain_reward, with_buffer=not onpolicy)
    try:
        w.policy.history = _run(w, max_train_iter, max_env_step, onpolicy)
    finally:  # an interrupted run still gets every queued reward image onto disk
        if w.image_writer is not None:
            w.image_writer.close()
        if w.monitor is not None:
            w.monitor.close()
    w.policy.reward_model = w.reward_model
    w.policy.exp_name = w.cfg.exp_name
    return w.policy


def serial_pipeline_reward_model_onpolicy(
        input_cfg: Union[str, Tuple[dict, dict]],
        seed: int = 0,
        env_setting: Optional[List[Any]] = None,
        model: Optional[torch.nn.Module] = None,
        max_train_iter: Optional[int] = NO_LIMIT,
        max_env_step: Optional[int] = NO_LIMIT,
        cooptrain_reward: bool = True,
        pretrain_reward: bool = False,
) -> 'Policy':  # noqa
    """On-policy (PPO) training with an image reward model; arguments as DI-engine's entry plus the two flags.

    ``max_train_iter`` counts the learner iterations of this run (a resumed policy continues from its
    checkpoint's iteration). Returns the policy; ``policy.history`` holds evaluations, reward-model
    agreement per iteration, ``learned_rewards`` (transitions the learner received with the reward model's reward,
    and their sum, for demos and online data), the final ``envstep`` and ``train_iter``, and (stage 1) the image
    counts.
    """
    return _pipeline(True, input_cfg, seed, env_setting, model, max_train_iter, max_env_step, cooptrain_reward,
                     pretrain_reward)


def serial_pipeline_reward_model_offpolicy(
        input_cfg: Union[str, Tuple[dict, dict]],
        seed: int = 0,
        env_setting: Optional[List[Any]] = None,
        model: Optional[torch.nn.Module] = None,
        max_train_iter: Optional[int] = NO_LIMIT,
        max_env_step: Optional[int] = NO_LIMIT,
        cooptrain_reward: bool = True,
        pretrain_reward: bool = False,
) -> 'Policy':  # noqa
    """Off-policy (SAC, ...) training with an image reward model; see ``serial_pipeline_reward_model_onpolicy``."""
    return _pipeline(False, input_cfg, seed, env_setting, model, max_train_iter, max_env_step, cooptrain_reward,
                     pretrain_reward)
