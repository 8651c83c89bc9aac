"""Experiment configs for the serial pipelines: the env settings recorded with images, demos and checkpoints, policy
resume, the compiled config, and ``rerun_config.py`` (a config that repeats a run, reward model included).
"""
import glob
import os
import re
from copy import deepcopy
from typing import Any, Dict, Optional, Tuple

from ding.config import compile_config, read_config
from easydict import EasyDict

from ding_ext.checkpoint_io import atomic_write

# the file in a run's experiment folder that repeats the run: `ding -m serial_reward_model -c <it>` or `ding-reward`
RERUN_CONFIG_FILE = 'rerun_config.py'

# env config fields recorded with collected images and checked against a reward checkpoint
ENV_METADATA_FIELDS = {'control_mode': 'control_mode', 'reward_render_mode': 'reward_render_mode',
                       'show_goal_site': 'show_goal_site', 'image_size': 'env_image_size',
                       'reward_camera': 'reward_camera', 'reward_camera_pose': 'reward_camera_pose',
                       'reward_camera_fov': 'reward_camera_fov', 'reward_frames': 'reward_frames',
                       'reward_frame_stride': 'reward_frame_stride'}


def env_metadata(env_cfg: EasyDict) -> Dict[str, Any]:
    """The env settings that must agree between image collection and reward use."""
    return {meta: env_cfg[key] for key, meta in ENV_METADATA_FIELDS.items() if key in env_cfg}


def demo_env_metadata(env_cfg: EasyDict) -> Dict[str, Any]:
    """The env settings demonstrations record and are checked against: the task, the control mode and everything
    that shapes a reward image (not when the env renders one: demos keep a frame for every step)."""
    meta = {k: v for k, v in env_metadata(env_cfg).items() if k != 'reward_render_mode'}
    if 'env_id' in env_cfg:
        meta['env_id'] = env_cfg['env_id']
    return meta


def latest_checkpoint(resume_dir: str) -> str:
    """The newest ``iteration_N.pth.tar`` (or ``ckpt_best.pth.tar``) under ``<resume_dir>/ckpt``."""
    ckpt_dir = os.path.join(resume_dir, 'ckpt')
    its = []
    for path in glob.glob(os.path.join(ckpt_dir, 'iteration_*.pth.tar')):
        m = re.search(r'iteration_(\d+)\.pth\.tar$', path)
        if m:
            its.append((int(m.group(1)), path))
    if its:
        return max(its)[1]
    best = os.path.join(ckpt_dir, 'ckpt_best.pth.tar')
    if os.path.isfile(best):
        return best
    raise FileNotFoundError(f"policy.resume_dir {resume_dir}: no iteration_*.pth.tar or ckpt_best.pth.tar in {ckpt_dir}")


def apply_resume(cfg: EasyDict) -> Optional[str]:
    path = cfg.policy.get('load_path') or None
    if cfg.policy.get('resume_dir'):
        path = latest_checkpoint(cfg.policy.resume_dir)
    if path:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"policy checkpoint to resume from not found: {path}")
        cfg.policy.setdefault('learn', EasyDict()).setdefault('learner', EasyDict()).setdefault('hook', EasyDict())
        cfg.policy.learn.learner.hook.load_ckpt_before_run = path
    return path


def prepare_configs(input_cfg, seed, env_setting, cooptrain_reward, pretrain_reward) -> Tuple[EasyDict, Any]:
    if isinstance(input_cfg, str):
        cfg, create_cfg = read_config(input_cfg)
    else:
        cfg, create_cfg = deepcopy(input_cfg)
    cfg, create_cfg = EasyDict(cfg), EasyDict(create_cfg)
    create_cfg.policy.type = create_cfg.policy.type + '_command'
    if 'reward_model' in cfg:
        rm = cfg.reward_model
        rm.cooptrain_reward = bool(cooptrain_reward)
        rm.pretrain_reward = bool(pretrain_reward)
        rm.env_metadata = {**env_metadata(cfg.env), **dict(rm.get('env_metadata') or {})}
        # DI-engine's compile_config drops create_config.reward_model.import_names: keep our modules
        # importable from the compiled reward-model config itself
        rm.import_names = sorted(set(rm.get('import_names', [])) | {'ding_ext'})
        if 'reward_model' not in create_cfg:
            create_cfg.reward_model = EasyDict(type=rm.get('type', 'resnet'), import_names=rm.import_names)
    apply_resume(cfg)
    buffer_cfg = cfg.policy.get('other', {}).get('replay_buffer', {})
    if buffer_cfg.get('demo_path'):  # demos are checked against the env this run trains in (plus the config's own keys)
        buffer_cfg.demo_env_metadata = {**dict(buffer_cfg.get('demo_env_metadata') or {}), **demo_env_metadata(cfg.env)}
        buffer_cfg.setdefault('demo_seed', seed)
    rerun = deepcopy(cfg), deepcopy(create_cfg)
    env_fn = None if env_setting is None else env_setting[0]
    cfg = compile_config(cfg, seed=seed, env=env_fn, auto=True, create_cfg=create_cfg, save_cfg=True)
    if 'reward_model' in cfg:
        cfg.reward_model.exp_name = cfg.exp_name
    write_rerun_config(os.path.join(cfg.exp_name, RERUN_CONFIG_FILE), *rerun, seed=seed)
    return cfg, create_cfg


def write_rerun_config(path: str, main_config: EasyDict, create_config: EasyDict, seed: int) -> None:
    """A config file that repeats the run, reward model included (DI-engine's ``formatted_total_config.py`` drops
    the ``reward_model`` block): ``main_config`` / ``create_config`` as this entry received them."""
    create_config = deepcopy(create_config)
    create_config.policy.type = create_config.policy.type[:-len('_command')]  # the entries add it again

    def plain(d):
        return {k: plain(v) for k, v in d.items()} if isinstance(d, dict) else \
            [plain(v) for v in d] if isinstance(d, (list, tuple)) else d

    text = (f'"""Repeats the run of experiment {main_config.exp_name!r} (seed {seed}):\n'
            f'    ding -m serial_reward_model -c {RERUN_CONFIG_FILE} -s {seed}\n"""\n'
            'from easydict import EasyDict\n\n'
            f'main_config = EasyDict({plain(main_config)!r})\n'
            f'create_config = EasyDict({plain(create_config)!r})\n')
    compile(text, path, 'exec')  # a config that does not parse back is a bug here, not at the next run

    def _write(tmp: str) -> None:
        with open(tmp, 'w') as f:
            f.write(text)

    os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
    atomic_write(path, _write)
