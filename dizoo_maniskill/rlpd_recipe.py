"""The RLPD PickCube recipe as functions, shared by `make demo` and ``bench/pickcube_learned_reward.py``.

1. ``record_classifier_data``: whole motion-planned episodes and episodes of the closed-loop expert in the RL
   control mode (successes and the hard negatives around them: the arm anywhere in the workspace, the cube held
   still off the goal), every frame labelled by the env, recorded with the RL env's reward camera;
2. ``train_classifier``: the ResNet success classifier on them, its fidelity report on the validation
   episodes, and the threshold that reaches ``target_precision`` there stored in the checkpoint;
3. ``record_demos``: demonstrations in the RL control mode, of the scripted expert by default (``dizoo_maniskill.record_demos``);
4. ``run_arm``: RLPD (``pickcube_rlpd_resnet_reward_config``) with one reward: the env's sparse success
   (``oracle``), the frozen classifier (``frozen``) or the classifier co-trained on env success labels
   (``cotrain``); returns the eval success curve against env steps and the learned reward's online
   precision and recall against env success.
"""
import copy
import logging
import os
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

ARMS = ('oracle', 'frozen', 'cotrain')
# seeds: classifier training episodes, demonstrations; RL resets use seed + 100 * k (< 10**5 + seed), evaluation
# resets 10**7 + 1000 * seed + k (ManiSkillEnv.vary_static_seed)
CLASSIFIER_SEED, EXPERT_SEED, DEMO_SEED = 10000, 30000, 500000
MODEL_IMAGE_SIZE = [3, 64, 64]
# a clip classifier's settings, taken from its checkpoint
VIDEO_KEYS = ('clip_length', 'num_frames', 'frame_sampling', 'fusion')
# a clip reward: the env keeps its last 5 frames (0.25 s at 20 Hz), the classifier compares the first and the last
CLIP = dict(reward_frames=5, reward_frame_stride=1, num_frames=2, frame_sampling='uniform', fusion='early')
# the recipe's reward: the env keeps its last 2 frames, the classifier judges the last one, and the still-scene gate
# (ding_ext.motion_gate) compares the two: "cube at the goal, arm still moving" is no success. The gate keeps
# STILL_KEEP of the training data's success clips (on held-out clips of unseen seeds it let 1% of the moving failure
# clips through; a single-frame classifier called 26 of 57 "at the goal, still moving" frames a success)
STILL = dict(reward_frames=2, reward_frame_stride=1, num_frames=1, frame_sampling='last', fusion='early')
STILL_KEEP = 0.8
# the reward that reads the robot's own joint velocities for "robot static" (ding_ext.joint_speed_gate; the env's
# reward_state): the classifier sees the env's last 2 frames and judges the scene; the gate, calibrated on the
# training data's success clips, zeroes every clip whose arm moves. On held-out clips of unseen seeds (128 px, 264
# episodes) it reached precision 0.98 / recall 0.98 on all frames, the "cube at the goal, arm moving" ones included
# (one training; a second one 0.989 / 0.965 at 0.5, bench/results/pickcube_clip_fidelity_joint_speed.json).
JOINT = dict(reward_frames=2, reward_frame_stride=1, num_frames=2, frame_sampling='last', fusion='early')
# the co-trained arm: the classifier trains on the run's own frames (labelled by env success) every 16 collect
# iterations (1,024 env steps), 160 BCE steps each (10 per iteration on average); between trainings the replay buffer's
# stored probabilities stay valid, so it is scored again once per training, not after every collect iteration
COTRAIN = dict(train_interval=16, update_per_collect=160)


def env_config(**overrides: Any) -> Dict[str, Any]:
    """The env of ``pickcube_rlpd_resnet_reward_config`` (with ``overrides``)."""
    from dizoo_maniskill.config import pickcube_rlpd_resnet_reward_config as rlpd
    return dict(copy.deepcopy(dict(rlpd.main_config.env)), **overrides)


def record_classifier_data(data_dir: str, planner_episodes: int, expert_episodes: int, env_cfg: Dict[str, Any],
                           workers: int = 2) -> Dict[str, Dict[str, int]]:
    """Planner and expert episodes into ``data_dir`` (resumed: episodes already there are skipped); counts per source.

    The expert's episodes matter: a classifier trained on planner episodes alone (the gripper turned to the cube,
    joint-space paths) called 51 frames of an RL policy in ``pd_ee_delta_pos`` success in its first 2,000 steps
    (the arm swung towards the camera, the cube on the table), of which the env called none a success."""
    from dizoo_maniskill.record_planner_episodes import record_expert_episodes, record_planner_episodes
    return dict(
        planner=record_planner_episodes(data_dir, range(CLASSIFIER_SEED, CLASSIFIER_SEED + planner_episodes), env_cfg,
                                        workers=workers),
        expert=record_expert_episodes(data_dir, range(EXPERT_SEED, EXPERT_SEED + expert_episodes), env_cfg,
                                      workers=workers))


def train_classifier(data_dir: str, save_dir: str, epochs: int = 8, target_precision: float = 0.9,
                     precision_confidence: float = 0.95, clip: Optional[Dict[str, Any]] = STILL,
                     still_keep: Optional[float] = STILL_KEEP, image_size: Optional[Sequence[int]] = None,
                     joint_keep: Optional[float] = None, **options: Any) -> Dict[str, Any]:
    """The miniature classifier: the reward camera's image at 64 px (``image_size`` [C, H, W] for another input size),
    cosine schedule, last epoch kept; the stored
    threshold is the lowest whose validation precision reaches ``target_precision`` with ``precision_confidence``.
    ``clip`` (``STILL``, ``CLIP``; None for single frames): the data holds clips of ``reward_frames`` frames; train
    ``resnet_video`` on them. ``still_keep`` (clips only): the still-scene gate, calibrated on the data's success clips
    first, so that the validation report and the stored threshold are those of the gated reward (``motion_gate`` in
    the result). ``joint_keep`` (clips recorded with ``reward_state``): the joint-speed gate likewise
    (``joint_speed_gate`` in the result)."""
    from dizoo_maniskill.config.pickcube_base import RESNET_REWARD
    from ding_ext.train_reward_model import train_reward_model
    opts = dict(epochs=epochs, batch_size=32, lr=3e-4, lr_schedule='cosine', model_selection='last', val_split=0.2,
                early_stopping_patience=0, save_dir=save_dir, num_workers=0, target_precision=target_precision,
                precision_confidence=precision_confidence, store_threshold=True)
    opts.update(options)
    model = {'model.arch': RESNET_REWARD['arch'], 'model.hidden_dim': RESNET_REWARD['hidden_dim'],
             'model.image_size': list(image_size or MODEL_IMAGE_SIZE)}
    if clip:
        model.update({'model.type': 'resnet_video', 'model.clip_length': int(clip['reward_frames']),
                      **{f'model.{k}': clip[k] for k in ('num_frames', 'frame_sampling', 'fusion')}})
    if clip and still_keep and int(clip['reward_frames']) >= 2:  # the trainer calibrates it and stores it
        model.update({'model.still_motion_threshold': 'auto', 'model.still_motion_keep': float(still_keep)})
    if clip and joint_keep:  # the joint-speed gate: calibrated on the data's reward states, trained on what it passes
        model.update({'model.still_joint_speed': 'auto', 'model.still_joint_speed_keep': float(joint_keep)})
    return train_reward_model(data_dir, **opts, **model)


def record_demos(demo_dir: str, episodes: int, env_cfg: Dict[str, Any], workers: int = 2,
                 source: str = 'scripted') -> Dict[str, int]:
    """Demonstrations in the RL control mode: the closed-loop scripted expert (``scripted``) or motion-planner
    episodes converted to it (``planner``; its sparse joint-space waypoints clone badly into a policy)."""
    from dizoo_maniskill.record_demos import record_demos as record
    return record(demo_dir, range(DEMO_SEED, DEMO_SEED + episodes), env_cfg, workers=workers, source=source)


def arm_config(arm: str, exp_name: str, demo_dir: str, checkpoint: Optional[str] = None,
               eval_every: int = 2000, learn: Optional[Dict[str, Any]] = None, demo_episodes: Optional[int] = None,
               **env_overrides: Any) -> Tuple[Any, Any]:
    """``pickcube_rlpd_resnet_reward_config`` for one arm of the benchmark (``learn``: policy.learn overrides;
    ``demo_episodes``: use the folder's first N episodes)."""
    from dizoo_maniskill.config import pickcube_rlpd_resnet_reward_config as rlpd
    from ding_ext.checkpoint_io import load_checkpoint
    from entry.experiment_config import demo_env_metadata
    if arm not in ARMS:
        raise ValueError(f"unknown arm {arm!r}; expected one of {ARMS}")
    main, create = copy.deepcopy(rlpd.main_config), copy.deepcopy(rlpd.create_config)
    main.exp_name = exp_name
    main.env.update(env_overrides)
    main.policy.learn.update(learn or {})
    main.policy.other.replay_buffer.update(demo_path=demo_dir, demo_max_episodes=demo_episodes)
    # train_iter counts updates: at utd_ratio 1 it follows the env steps
    main.policy.eval.evaluator.eval_freq = int(eval_every * float(main.policy.learn.utd_ratio))
    if arm == 'oracle':
        main.pop('reward_model')
        create.pop('reward_model')
        main.env.reward_render_mode = 'none'  # nothing scores images: rendering would only cost time
        # the demos' images are not used: any reward camera and clip length will do
        main.policy.other.replay_buffer.demo_env_metadata = {
            k: v for k, v in demo_env_metadata(main.env).items() if k in ('env_id', 'control_mode')}
        return main, create
    if not checkpoint or not os.path.isfile(checkpoint):
        raise FileNotFoundError(f"arm {arm!r} needs the trained classifier; not found: {checkpoint}")
    rm = main.reward_model
    meta = load_checkpoint(checkpoint)[1]
    rm.update(checkpoint_path=os.path.abspath(checkpoint), image_size=meta.get('image_size', MODEL_IMAGE_SIZE),
              cooptrain_reward=arm == 'cotrain', **(COTRAIN if arm == 'cotrain' else {}))
    if meta.get('type') == 'resnet_video':  # a clip classifier: its clip settings, and an env that renders clips
        rm.update(type='resnet_video', **{k: meta[k] for k in VIDEO_KEYS if k in meta})
        # the checkpoint's still-scene gate (ding_ext.motion_gate), or none
        rm.still_motion_threshold = 'auto' if meta.get('still_motion_threshold') is not None else None
        # and its joint-speed gate (ding_ext.joint_speed_gate), read from the joint velocities the env emits
        rm.still_joint_speed = 'auto' if meta.get('still_joint_speed') is not None else None
        main.env.reward_state = rm.still_joint_speed is not None
        main.env.update({k: meta[k] for k in ('reward_frames', 'reward_frame_stride') if k in meta})
    else:  # a single-frame classifier: single frames
        rm.type = 'resnet'
        for k in VIDEO_KEYS + ('still_motion_threshold', 'still_joint_speed'):
            rm.pop(k, None)
        main.env.update(reward_frames=1, reward_frame_stride=1)
    create.reward_model.type = rm.type
    main.policy.other.replay_buffer.demo_env_metadata = demo_env_metadata(main.env)
    calibrated = meta.get('calibrated_threshold')
    if calibrated is None:
        # e.g. a validation split too small to show the target precision with confidence: say so, use 0.5
        logging.warning(f"{checkpoint} has no calibrated threshold; the {arm} arm uses 0.5")
        rm.reward_threshold = 0.5
    elif arm == 'cotrain':
        # the stored threshold as a number: it describes the weights it was calibrated on, a start point here
        rm.reward_threshold = float(calibrated)
    return main, create


def pooled_agreement(rows: Sequence[Dict[str, float]]) -> Dict[str, float]:
    """Precision and recall of the learned reward against env success over all frames of a run."""
    tp, fp, fn = (sum(r.get(k, 0.0) for r in rows) for k in ('tp', 'fp', 'fn'))
    return dict(precision=tp / (tp + fp) if tp + fp else float('nan'),
                recall=tp / (tp + fn) if tp + fn else float('nan'),
                frames=float(sum(r.get('frames', 0.0) for r in rows)), env_successes=float(tp + fn))


def run_arm(arm: str, exp_name: str, demo_dir: str, budget_steps: int, seed: int = 0,
            checkpoint: Optional[str] = None, eval_every: int = 2000, learn: Optional[Dict[str, Any]] = None,
            demo_episodes: Optional[int] = None, **env_overrides: Any) -> Dict[str, Any]:
    """One RLPD run; the curve is the eval success rate (``n_evaluator_episode`` episodes) against env steps."""
    from entry import serial_pipeline_reward_model_offpolicy
    cfg = arm_config(arm, exp_name, demo_dir, checkpoint, eval_every, learn, demo_episodes, **env_overrides)
    t = time.time()
    policy = serial_pipeline_reward_model_offpolicy(cfg, seed=seed, max_env_step=budget_steps,
                                                    cooptrain_reward=arm == 'cotrain', pretrain_reward=False)
    hist = policy.history
    curve: List[Tuple[int, float]] = [(int(e['envstep']), float(e.get('success_mean', np.nan))) for e in hist['eval']]
    return dict(arm=arm, seed=seed, exp_name=exp_name, wall_time_s=time.time() - t, budget_steps=budget_steps,
                demo_pretrain=hist.get('demo_pretrain'),
                curve=curve, final_success=curve[-1][1] if curve else float('nan'),
                agreement=pooled_agreement(hist.get('agreement') or []) if arm != 'oracle' else None,
                eval_episodes=int(cfg[0].env.n_evaluator_episode))


def steps_to_reach(curve: Sequence[Tuple[int, float]], level: float) -> Optional[int]:
    """The first evaluated env step whose success rate is at least ``level`` (None when none is)."""
    for step, success in curve:
        if success >= level - 1e-9:  # success rates averaged over seeds: 0.95 and 0.85 reach 0.9
            return int(step)
    return None
