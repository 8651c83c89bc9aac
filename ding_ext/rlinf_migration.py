"""RLinf ``reward:`` YAML blocks -> our DI-engine ``reward_model`` config.

    python -m ding_ext.rlinf_migration path/to/rlinf_config.yaml     # prints the DI-engine config block

Two RLinf styles are read (unknown keys are an error naming them):

- the ``model:`` style (RLinf's torchvision-ResNet reward model)::

    reward: {use_reward_model, reward_mode, success_reward, fail_reward, reward_threshold, combine_mode,
             reward_weight, env_reward_weight, group_name, standalone_realworld,
             model: {model_type, arch, pretrained, hidden_dim, dropout, image_size, normalize, precision,
                     checkpoint_path | model_path, debug_save_dir, reward_threshold}}

  With ``success_reward`` / ``fail_reward`` / ``combine_mode`` given, the model reward is success_reward when the
  probability p > reward_threshold, else fail_reward, combined as replace (w*r), add (env + w*r) or weighted
  (w_env*env + w*r), as here. Without them (RLinf's later configs) the model reward is p, zeroed at or below
  ``reward_threshold`` (``use_soft_reward: 'above_threshold'`` here), and always combined as
  ``env_reward_weight * env + reward_weight * r`` (RLinf's default env_reward_weight is 0).
- the first style (``reward_model_type`` with a ``resnet:`` block)::

    reward: {use_reward_model, reward_model_type: resnet, alpha, mode, resnet: {checkpoint_path, image_size,
             threshold, use_soft_reward, hidden_dim, freeze_backbone, device}}

  ``alpha`` scales the model reward (``scale_reward``; our ``reward_weight``); ``mode`` is replace (the reward is
  alpha*r) or add (env + alpha*r); per step or at the episode's end as ``env.train.reward_render_mode`` says.

Hydra interpolations ``${oc.env:NAME}``, ``${oc.env:NAME,default}`` and ``${a.b.c}`` (into the same file) are
resolved; others are an error naming the key.
"""
import argparse
import os
import re
import sys
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from easydict import EasyDict

# the create_config entry that imports and registers our reward models
CREATE_REWARD_MODEL = dict(type='resnet', import_names=['ding_ext'])
RESNET_MODEL_TYPES = ('resnet', 'resnet_reward')
# where RLinf's FSDP trainer writes the full weights inside a checkpoint folder
RLINF_WEIGHT_FILES = (os.path.join('actor', 'model_state_dict', 'full_weights.pt'),
                      os.path.join('model_state_dict', 'full_weights.pt'))
# RLinf's precision strings (rlinf.config.torch_dtype_from_precision) -> ours
PRECISIONS = {'bf16': 'bf16', 'bf16-mixed': 'bf16', 16: 'fp16', '16': 'fp16', 'fp16': 'fp16', '16-mixed': 'fp16',
              32: 'fp32', '32': 'fp32', 'fp32': 'fp32', '32-true': 'fp32', None: 'fp32', 'null': 'fp32'}

MODEL_STYLE_KEYS = ('use_reward_model', 'reward_mode', 'success_reward', 'fail_reward', 'reward_threshold',
                    'combine_mode', 'reward_weight', 'env_reward_weight', 'model', 'group_name', 'enable_offload',
                    'standalone_realworld')
MODEL_BLOCK_KEYS = ('model_type', 'arch', 'pretrained', 'hidden_dim', 'dropout', 'image_size', 'normalize',
                    'precision', 'checkpoint_path', 'model_path', 'debug_save_dir', 'reward_threshold', 'device')
FIRST_STYLE_KEYS = ('use_reward_model', 'reward_model_type', 'alpha', 'mode', 'resnet')
RESNET_BLOCK_KEYS = ('checkpoint_path', 'image_size', 'threshold', 'use_soft_reward', 'hidden_dim',
                     'freeze_backbone', 'device')
# RLinf keys that only place or schedule RLinf's Ray workers: nothing to carry over
WORKER_KEYS = ('group_name', 'enable_offload', 'device')

_INTERPOLATION = re.compile(r"\$\{([^}]*)\}")


@dataclass
class MigratedRewardConfig:
    """``reward_model``: our ``main_config.reward_model`` (None when RLinf runs without a reward model);
    ``notes``: what was dropped or means something else here, one line each; ``style``: 'model' or 'first'."""
    reward_model: Optional[EasyDict]
    notes: List[str] = field(default_factory=list)
    style: str = 'model'


class _Block:
    """One YAML mapping: values read with interpolations resolved; keys outside ``known`` are an error."""

    def __init__(self, data: Any, path: str, known: Sequence[str], root: Mapping) -> None:
        if not isinstance(data, Mapping):
            raise ValueError(f"{path} must be a mapping, got {type(data).__name__}")
        unknown = sorted(str(k) for k in data if k not in known)
        if unknown:
            raise ValueError(f"unknown RLinf key(s) {', '.join(f'{path}.{k}' for k in unknown)}; "
                             f"known keys of {path}: {', '.join(known)}")
        self.data, self.path, self.root = data, path, root

    def __contains__(self, key: str) -> bool:
        return key in self.data

    def get(self, key: str, default: Any = None) -> Any:
        if key not in self.data:
            return default
        return _resolve(self.data[key], f"{self.path}.{key}", self.root)


def _resolve(value: Any, path: str, root: Mapping, depth: int = 0) -> Any:
    if isinstance(value, list):
        return [_resolve(v, f"{path}[{i}]", root, depth) for i, v in enumerate(value)]
    if not isinstance(value, str) or '${' not in value:
        return value
    if depth > 10:
        raise ValueError(f"{path}: interpolation nested too deep in {value!r}")
    whole = _INTERPOLATION.fullmatch(value)

    def lookup(expr: str) -> Any:
        if expr.startswith('oc.env:'):
            name, _, default = expr[len('oc.env:'):].partition(',')
            if name.strip() in os.environ:
                return os.environ[name.strip()]
            if default:
                return default.strip().strip('"\'')
            raise ValueError(f"{path}: cannot resolve ${{{expr}}}: environment variable {name.strip()} is not set; "
                             "set it or write the value into the YAML")
        node: Any = root
        for part in expr.split('.'):
            if not isinstance(node, Mapping) or part not in node:
                raise ValueError(f"{path}: cannot resolve ${{{expr}}}: no such key in the YAML file; write the "
                                 "value into the YAML")
            node = node[part]
        return _resolve(node, expr, root, depth + 1)

    if whole:
        return lookup(whole.group(1))
    return _INTERPOLATION.sub(lambda m: str(lookup(m.group(1))), value)


def _precision(value: Any, path: str) -> str:
    if value not in PRECISIONS:
        raise ValueError(f"{path} is {value!r}; RLinf's precisions are {sorted(map(str, PRECISIONS))}")
    return PRECISIONS[value]


def _checkpoint(path: Optional[str], notes: List[str]) -> Optional[str]:
    """A checkpoint path; an existing RLinf checkpoint folder becomes the weights file inside it."""
    if not path or not os.path.isdir(path):
        if not path:
            notes.append("no checkpoint in the RLinf block: set checkpoint_path to the trained weights (a frozen "
                         "reward model needs them)")
        return path or None
    for name in RLINF_WEIGHT_FILES:
        if os.path.isfile(os.path.join(path, name)):
            notes.append(f"checkpoint folder {path}: using its {name}")
            return os.path.join(path, name)
    raise ValueError(f"checkpoint folder {path} holds none of {list(RLINF_WEIGHT_FILES)}; point checkpoint_path at "
                     "the weights file (.pt or .safetensors)")


def _base_config() -> Dict[str, Any]:
    # RLinf resizes with plain bilinear interpolation (no antialiasing)
    return dict(type='resnet', import_names=list(CREATE_REWARD_MODEL['import_names']), pretrained=False,
                resize_antialias=False, cooptrain_reward=False, pretrain_reward=False)


def _model_style(reward: _Block, root: Mapping, notes: List[str]) -> Dict[str, Any]:
    model = _Block(reward.get('model', {}), f"{reward.path}.model", MODEL_BLOCK_KEYS, root)
    model_type = model.get('model_type', 'resnet')
    if model_type not in RESNET_MODEL_TYPES:
        raise ValueError(f"{model.path}.model_type is {model_type!r}: only RLinf's ResNet reward model "
                         f"({' / '.join(RESNET_MODEL_TYPES)}) migrates")
    if reward.get('standalone_realworld', False):
        raise ValueError(f"{reward.path}.standalone_realworld is true: there the reward model's decision replaces the "
                         "robot env's success and triggers resets, which our pipelines do not do; set it to false "
                         "(the model reward is then combined with the env reward)")
    reward_mode = reward.get('reward_mode', 'per_step')
    if reward_mode not in ('per_step', 'terminal'):
        raise ValueError(f"{reward.path}.reward_mode is {reward_mode!r}: only per_step and terminal migrate "
                         "(history_buffer feeds a VLM with frame histories)")
    paths = {k: model.get(k) for k in ('checkpoint_path', 'model_path') if model.get(k)}
    if len(set(paths.values())) > 1:
        raise ValueError(f"{model.path} sets checkpoint_path and model_path to different files: {paths}")
    cfg = _base_config()
    cfg.update(
        reward_mode=reward_mode, arch=model.get('arch', 'resnet18'), hidden_dim=model.get('hidden_dim', None),
        dropout=float(model.get('dropout', 0.1)), image_size=list(model.get('image_size', [3, 224, 224])),
        normalize=bool(model.get('normalize', True)),
        precision=_precision(model.get('precision', 'fp32'), f"{model.path}.precision"),
        checkpoint_path=_checkpoint(next(iter(paths.values()), None), notes),
        debug_save_dir=model.get('debug_save_dir', None),
        reward_weight=float(reward.get('reward_weight', 1.0)),
        env_reward_weight=float(reward.get('env_reward_weight', 0.0)),
    )
    binary = any(k in reward for k in ('success_reward', 'fail_reward', 'combine_mode'))
    if binary:
        combine = reward.get('combine_mode', 'replace')
        if combine not in ('replace', 'add', 'weighted'):
            raise ValueError(f"{reward.path}.combine_mode is {combine!r}: replace, add and weighted migrate")
        cfg.update(success_reward=float(reward.get('success_reward', 1.0)),
                   fail_reward=float(reward.get('fail_reward', 0.0)),
                   reward_threshold=float(reward.get('reward_threshold', 0.5)), use_soft_reward=False,
                   combine_mode=combine)
        if model.get('reward_threshold') is not None:
            notes.append(f"{model.path}.reward_threshold dropped: {reward.path}.reward_threshold decides success")
    else:
        threshold = model.get('reward_threshold', reward.get('reward_threshold'))
        cfg.update(combine_mode='weighted' if cfg['env_reward_weight'] else 'replace',
                   use_soft_reward='above_threshold' if threshold is not None else True,
                   reward_threshold=float(threshold) if threshold is not None else 0.5)
        notes.append("no success_reward / fail_reward: the model reward is the success probability p"
                     + (f", 0 where p <= {float(threshold)}" if threshold is not None else "")
                     + ", as RLinf's later ResNet reward returns it")
    if model.get('pretrained', True):
        notes.append("pretrained: RLinf downloads ImageNet weights; nothing is downloaded here (pretrained=False: "
                     "the checkpoint holds every weight; to train from ImageNet weights, set pretrained to a local "
                     "torchvision weights file)")
    for key in WORKER_KEYS:
        for block in (reward, model):
            if key in block:
                notes.append(f"{block.path}.{key} dropped: it places RLinf's Ray workers (pass the device to "
                             "create_reward_model / RewardManager)")
    return cfg


def _first_style(reward: _Block, root: Mapping, notes: List[str]) -> Dict[str, Any]:
    model_type = reward.get('reward_model_type', 'resnet')
    if model_type != 'resnet':
        raise ValueError(f"{reward.path}.reward_model_type is {model_type!r}: only 'resnet' migrates")
    resnet = _Block(reward.get('resnet', {}), f"{reward.path}.resnet", RESNET_BLOCK_KEYS, root)
    mode = reward.get('mode', 'replace')
    if mode not in ('replace', 'add'):
        raise ValueError(f"{reward.path}.mode is {mode!r}: RLinf's modes are replace and add")
    env = root.get('env', {}) if isinstance(root, Mapping) else {}
    render = ((env.get('train') or {}) if isinstance(env, Mapping) else {}).get('reward_render_mode', 'always')
    cfg = _base_config()
    cfg.update(
        arch='resnet18', hidden_dim=resnet.get('hidden_dim', 256), image_size=list(resnet.get('image_size',
                                                                                            [3, 224, 224])),
        normalize=True, precision='fp32', reward_mode='terminal' if render == 'episode_end' else 'per_step',
        success_reward=1.0, fail_reward=0.0, reward_threshold=float(resnet.get('threshold', 0.5)),
        use_soft_reward=bool(resnet.get('use_soft_reward', False)), combine_mode=mode,
        reward_weight=float(reward.get('alpha', 1.0)), env_reward_weight=0.0,
        checkpoint_path=_checkpoint(resnet.get('checkpoint_path'), notes),
    )
    notes.append("this RLinf style scored a ResNet-10 with GroupNorm, which has no counterpart here: its checkpoints "
                 "do not load (the error says so); arch=resnet18 is set, train a new classifier here")
    notes.append("threshold: RLinf's first model called p >= threshold a success, ours p > threshold")
    if 'freeze_backbone' in resnet:
        notes.append(f"{resnet.path}.freeze_backbone dropped: it only affects RLinf's training (our frozen model "
                     "does not train: cooptrain_reward=False)")
    if 'device' in resnet:
        notes.append(f"{resnet.path}.device dropped (pass the device to create_reward_model / RewardManager)")
    return cfg


def rlinf_reward_to_ding(reward: Mapping, root: Optional[Mapping] = None, path: str = 'reward') -> MigratedRewardConfig:
    """Our ``reward_model`` config for an RLinf ``reward:`` block (``root``: the whole YAML document, for
    interpolations and ``env.train.reward_render_mode``). Raises ``ValueError`` naming unknown keys and settings
    that have no counterpart here."""
    root = root if root is not None else {path: reward}
    first = isinstance(reward, Mapping) and any(k in reward for k in ('reward_model_type', 'resnet', 'alpha', 'mode'))
    block = _Block(reward, path, FIRST_STYLE_KEYS if first else MODEL_STYLE_KEYS, root)
    style = 'first' if first else 'model'
    if not block.get('use_reward_model', True):
        return MigratedRewardConfig(None, [f"{path}.use_reward_model is false: RLinf trains on the env reward; run "
                                           "our plain pipelines (no reward_model block)"], style)
    notes: List[str] = []
    cfg = _first_style(block, root, notes) if first else _model_style(block, root, notes)
    return MigratedRewardConfig(EasyDict(cfg), notes, style)


def load_rlinf_reward_block(yaml_path: str) -> Tuple[Mapping, Mapping]:
    """(the ``reward:`` block, the whole document) of an RLinf YAML file; a file holding only the block works too."""
    import yaml
    with open(yaml_path, encoding='utf-8') as f:
        doc = yaml.safe_load(f)
    if not isinstance(doc, Mapping):
        raise ValueError(f"{yaml_path} does not hold a YAML mapping")
    if isinstance(doc.get('reward'), Mapping):
        return doc['reward'], doc
    if any(k in doc for k in ('use_reward_model', 'model', 'reward_model_type', 'resnet')):
        return doc, {'reward': doc}
    raise ValueError(f"{yaml_path} has no 'reward:' block (RLinf's reward-model settings)")


def migrate_rlinf_yaml(yaml_path: str) -> MigratedRewardConfig:
    """``rlinf_reward_to_ding`` of the ``reward:`` block in an RLinf YAML file."""
    reward, root = load_rlinf_reward_block(yaml_path)
    return rlinf_reward_to_ding(reward, root)


def format_ding_config(result: MigratedRewardConfig, source: str = '') -> str:
    """Python text: ``reward_model`` (for main_config) and ``reward_model_create`` (for create_config)."""
    lines = [f"# DI-engine reward-model config migrated from RLinf{f' ({source})' if source else ''}, "
             f"{result.style} style"]
    lines += [f"# note: {n}" for n in result.notes]
    if result.reward_model is None:
        lines.append("reward_model = None")
        return '\n'.join(lines) + '\n'
    lines.append("# main_config['reward_model'] = reward_model; create_config['reward_model'] = reward_model_create")
    lines.append("reward_model = dict(")
    lines += [f"    {k}={v!r}," for k, v in result.reward_model.items()]
    lines.append(")")
    lines.append(f"reward_model_create = dict(type={CREATE_REWARD_MODEL['type']!r}, "
                 f"import_names={CREATE_REWARD_MODEL['import_names']!r})")
    return '\n'.join(lines) + '\n'


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog='python -m ding_ext.rlinf_migration', description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('config', help="an RLinf YAML file with a 'reward:' block (or the block alone)")
    args = parser.parse_args(argv)
    try:
        result = migrate_rlinf_yaml(args.config)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    sys.stdout.write(format_ding_config(result, args.config))
    return 0


if __name__ == '__main__':
    sys.exit(main())
