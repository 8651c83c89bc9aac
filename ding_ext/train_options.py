"""Options of the reward-model trainer: ``key=value`` parsing, validation, and the env metadata it stores.

Values are parsed with ``ast.literal_eval`` (``true``/``false``/``none`` are understood too) and fall
back to plain strings. Trainer keys are listed in ``TRAIN_OPTIONS``; every reward-model config key is
given as ``model.<key>=value``. The dotted names of ``OVERRIDE_ALIASES`` (``actor.global_batch_size``,
``runner.max_epochs`` ...: the overrides of hydra-style reward-model trainers) are accepted as aliases of
our keys, and ``actor.model.<key>`` as ``model.<key>``.
"""
import ast
import json
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from .image_folder_dataset import METADATA_FILE, DataError

# key: (default, help)
TRAIN_OPTIONS: Dict[str, Tuple[Any, str]] = {
    'epochs': (100, "maximum number of epochs"),
    'batch_size': (64, "global batch: images per optimiser step over all processes (>= 2)"),
    'micro_batch_size': (None, "images per forward/backward pass in each process; batch_size must be a multiple of "
                               "micro_batch_size x processes, and the gradient is accumulated over batch_size / "
                               "(micro_batch_size x processes) passes; none: batch_size / processes"),
    'strategy': ('ddp', "data parallelism under torchrun: ddp (DistributedDataParallel) | fsdp (FSDP2 fully_shard: "
                        "parameters, gradients and optimiser state sharded over the processes)"),
    'lr': (1e-4, "Adam learning rate (sets model.learning_rate)"),
    'lr_schedule': ('constant', "constant | cosine (per optimiser step, from lr down to 0 at the last epoch)"),
    'model_selection': ('best_val_loss', "best_val_loss (the validation with the lowest class-balanced loss) | "
                                         "last (the final weights; natural with lr_schedule=cosine)"),
    'val_split': (0.1, "fraction of each class held out for validation, in [0, 1)"),
    'fail_success_ratio': (None, "at most this many failure images per success image in the training split "
                                 "(a seeded subsample; validation keeps all); none: all"),
    'val_check_interval': (None, "validate every this many optimiser steps (and after the last); none: after every "
                                 "epoch"),
    'save_interval': (None, "also write step_<k>_model.safetensors every this many optimiser steps; none: only the "
                            "best and last models"),
    'early_stopping_patience': (15, "stop after this many validations without a better model; 0 disables"),
    'min_delta': (0.0, "a new best model must lower the monitored loss by more than this"),
    'save_dir': (None, "output folder; default <data>/../reward_model_ckpt"),
    'seed': (0, "seed of the split, the sampler, the augmentation and the weight initialisation"),
    'num_workers': (None, "DataLoader worker processes per training process; default 0 when the images are cached "
                          "in memory (workers only copy them), else min(4, cpus per process - 1) to decode PNGs"),
    'pin_memory': (None, "page-locked batches for faster host-to-GPU copies; default true on CUDA"),
    'device': ('cpu', "cpu | cuda | cuda:N (under torchrun, cuda gives each process cuda:LOCAL_RANK)"),
    'balance': ('sampler', "class imbalance: sampler (class-balanced sampling) | pos_weight (BCE) | none"),
    'sampler_fail_ratio': (1.0, "balance=sampler: failure draws per success draw (1.0: half the batch each)"),
    'frames_per_episode': (None, "train on at most this many frames of each training episode, evenly spaced by step "
                                 "(first and last kept; needs episode ids in frames.jsonl); none: all frames"),
    'cache_images': (True, "keep the decoded images in memory (false: decode again in the workers)"),
    'debug_save_dir': (None, "write the train and validation images as the network sees them (crop and resize, "
                             "no augmentation) to <dir>/{train,val}/{success,failure}/ before training"),
    'progress': (True, "show a tqdm progress bar (the summary line is always printed)"),
    'target_precision': (0.95, "fidelity report: pick the lowest threshold with this validation precision"),
    'precision_confidence': (None, "with it (e.g. 0.95) the precision's Wilson lower bound at this confidence must reach "
                                   "target_precision (robust on small validation splits); none: the point estimate"),
    'store_threshold': (False, "store that threshold in best_model's metadata (for reward_threshold='auto')"),
}
# the overrides users of hydra-style reward-model trainers pass, as aliases of our keys
OVERRIDE_ALIASES: Dict[str, str] = {
    'global_batch_size': 'batch_size',
    'actor.global_batch_size': 'batch_size',
    'actor.micro_batch_size': 'micro_batch_size',
    'actor.seed': 'seed',
    'actor.optim.lr': 'lr',
    'runner.max_epochs': 'epochs',
    'runner.val_check_interval': 'val_check_interval',
    'runner.save_interval': 'save_interval',
    'runner.early_stop.patience': 'early_stopping_patience',
    'runner.early_stop.min_delta': 'min_delta',
    'runner.logger.log_path': 'save_dir',
    'data.num_samples_per_episode': 'frames_per_episode',
    'data.fail_success_ratio': 'fail_success_ratio',
    'data.debug_save_dir': 'debug_save_dir',
    'data.val_split': 'val_split',
    'data.num_workers': 'num_workers',
}
MODEL_PREFIXES = ('model.', 'actor.model.')
BALANCE_MODES = ('sampler', 'pos_weight', 'none')
LR_SCHEDULES = ('constant', 'cosine')
MODEL_SELECTIONS = ('best_val_loss', 'last')
STRATEGIES = ('ddp', 'fsdp')


class OptionError(ValueError):
    """An unknown or invalid trainer / model option."""


# ---------------------------------------------------------------------------------------- options
def parse_value(text: str) -> Any:
    """``ast.literal_eval`` of ``text``; true/false/none/null in any case; else the string itself."""
    low = text.strip().lower()
    if low in ('true', 'false'):
        return low == 'true'
    if low in ('none', 'null'):
        return None
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return text


def parse_overrides(items: Sequence[str]) -> Dict[str, Any]:
    """``['epochs=5', 'model.arch=resnet34']`` -> ``{'epochs': 5, 'model.arch': 'resnet34'}``."""
    out: Dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition('=')
        key = key.strip()
        if not sep or not key:
            raise OptionError(f"expected key=value, got {item!r}")
        out[key] = parse_value(value)
    return out


def model_config_keys(model_type: str = 'resnet') -> List[str]:
    """The config keys of the registered reward model ``model_type``."""
    import ding_ext  # noqa: F401  (registers the image reward models)
    from ding.utils import REWARD_MODEL_REGISTRY
    if model_type not in REWARD_MODEL_REGISTRY:
        raise OptionError(f"model.type {model_type!r} is not a registered reward model")
    return sorted(REWARD_MODEL_REGISTRY.get(model_type).default_config().keys())


def resolve_options(options: Mapping[str, Any]) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """Split ``options`` into (trainer options with defaults, model config overrides); validate keys.

    Model keys come as ``model.<key>`` (or ``actor.model.<key>``) entries or as a ``model`` dict; the names of
    ``OVERRIDE_ALIASES`` stand for our keys. A key given twice (under two names) is an error.
    """
    train: Dict[str, Any] = {}
    given_as: Dict[str, str] = {}
    model: Dict[str, Any] = {}
    for key, value in options.items():
        prefix = next((p for p in MODEL_PREFIXES if key.startswith(p)), None)
        if key == 'model':
            if not isinstance(value, Mapping):
                raise OptionError(f"model must be a dict of reward-model config keys, got {value!r}")
            model.update(value)
        elif prefix is not None:
            model[key[len(prefix):]] = value
        elif key in TRAIN_OPTIONS or key in OVERRIDE_ALIASES:
            name = OVERRIDE_ALIASES.get(key, key)
            if name in train:
                raise OptionError(f"{given_as[name]}={train[name]!r} and {key}={value!r} both set {name}; give one")
            train[name], given_as[name] = value, key
        else:
            raise OptionError(
                f"unknown option {key!r}; valid options: {', '.join(sorted(TRAIN_OPTIONS))}; dotted override names: "
                f"{', '.join(f'{k} ({v})' for k, v in OVERRIDE_ALIASES.items())}; and model.<key> (or "
                "actor.model.<key>) for any reward-model config key"
            )
    valid_model = model_config_keys(model.get('type', 'resnet'))
    for key in model:
        if key not in valid_model:
            raise OptionError(f"unknown model option 'model.{key}'; valid model keys: {', '.join(valid_model)}")
    # model.learning_rate / model.batch_size stand in for lr / batch_size when those are not given
    if 'lr' not in train and 'learning_rate' in model:
        train['lr'] = model['learning_rate']
    if 'batch_size' not in train and 'batch_size' in model:
        train['batch_size'] = model['batch_size']
    for key, (default, _) in TRAIN_OPTIONS.items():
        train.setdefault(key, default)
    _check_train_options(train)
    return train, model


def accumulation_steps(batch_size: int, micro_batch_size: Optional[int], world_size: int) -> Tuple[int, int]:
    """``(micro_batch_size, gradient accumulation steps)`` for a global ``batch_size`` over ``world_size``
    processes: accumulation = batch_size / (micro_batch_size x world_size); an error naming the numbers when
    that is not a whole number."""
    if micro_batch_size is None:
        if batch_size % world_size or batch_size // world_size < 2:
            raise OptionError(
                f"batch_size={batch_size} cannot be split over {world_size} processes into micro-batches of >= 2 "
                f"images; give a batch_size that is a multiple of {world_size} and >= {2 * world_size}, or set "
                "micro_batch_size"
            )
        return batch_size // world_size, 1
    per_step = micro_batch_size * world_size
    if batch_size % per_step:
        raise OptionError(
            f"batch_size={batch_size} is not a multiple of micro_batch_size={micro_batch_size} x {world_size} "
            f"process(es) = {per_step}: the gradient accumulation steps batch_size / (micro_batch_size x processes) "
            f"= {batch_size / per_step:g} must be a whole number"
        )
    return micro_batch_size, batch_size // per_step


def _check_train_options(o: Dict[str, Any]) -> None:
    def need(cond: bool, msg: str) -> None:
        if not cond:
            raise OptionError(msg)

    def int_or_none(key: str, low: int) -> None:
        v = o[key]
        need(v is None or (isinstance(v, int) and not isinstance(v, bool) and v >= low),
             f"{key} must be none or an int >= {low}, got {v!r}")

    if o['balance'] is None:  # `balance=none` on the command line parses to None
        o['balance'] = 'none'
    need(isinstance(o['epochs'], int) and o['epochs'] >= 1, f"epochs must be an int >= 1, got {o['epochs']!r}")
    need(isinstance(o['batch_size'], int) and o['batch_size'] >= 2,
         f"batch_size must be an int >= 2, got {o['batch_size']!r}")
    int_or_none('micro_batch_size', 2)  # BatchNorm needs two images per pass
    int_or_none('val_check_interval', 1)
    int_or_none('save_interval', 1)
    int_or_none('frames_per_episode', 1)
    need(o['strategy'] in STRATEGIES, f"strategy must be one of {STRATEGIES}, got {o['strategy']!r}")
    need(isinstance(o['sampler_fail_ratio'], (int, float)) and not isinstance(o['sampler_fail_ratio'], bool)
         and o['sampler_fail_ratio'] > 0, f"sampler_fail_ratio must be a number > 0, got {o['sampler_fail_ratio']!r}")
    need(o['sampler_fail_ratio'] == 1.0 or o['balance'] == 'sampler',
         f"sampler_fail_ratio={o['sampler_fail_ratio']!r} sets the draws of balance=sampler, but balance="
         f"{o['balance']!r}")
    need(o['pin_memory'] is None or isinstance(o['pin_memory'], bool),
         f"pin_memory must be none, true or false, got {o['pin_memory']!r}")
    need(o['debug_save_dir'] is None or isinstance(o['debug_save_dir'], str),
         f"debug_save_dir must be none or a folder path, got {o['debug_save_dir']!r}")
    need(isinstance(o['lr'], (int, float)) and o['lr'] >= 0, f"lr must be a number >= 0, got {o['lr']!r}")
    need(isinstance(o['val_split'], (int, float)) and 0 <= o['val_split'] < 1,
         f"val_split must lie in [0, 1), got {o['val_split']!r}")
    need(isinstance(o['early_stopping_patience'], int) and o['early_stopping_patience'] >= 0,
         f"early_stopping_patience must be an int >= 0, got {o['early_stopping_patience']!r}")
    need(isinstance(o['min_delta'], (int, float)) and o['min_delta'] >= 0,
         f"min_delta must be a number >= 0, got {o['min_delta']!r}")
    need(isinstance(o['seed'], int), f"seed must be an int, got {o['seed']!r}")
    need(o['fail_success_ratio'] is None or (isinstance(o['fail_success_ratio'], (int, float))
                                            and o['fail_success_ratio'] > 0),
         f"fail_success_ratio must be a number > 0 or none, got {o['fail_success_ratio']!r}")
    need(o['num_workers'] is None or (isinstance(o['num_workers'], int) and o['num_workers'] >= 0),
         f"num_workers must be an int >= 0, got {o['num_workers']!r}")
    need(o['model_selection'] in MODEL_SELECTIONS,
         f"model_selection must be one of {MODEL_SELECTIONS}, got {o['model_selection']!r}")
    need(o['lr_schedule'] in LR_SCHEDULES, f"lr_schedule must be one of {LR_SCHEDULES}, got {o['lr_schedule']!r}")
    need(o['balance'] in BALANCE_MODES, f"balance must be one of {BALANCE_MODES}, got {o['balance']!r}")
    need(isinstance(o['device'], str), f"device must be a string such as 'cpu' or 'cuda', got {o['device']!r}")
    need(isinstance(o['target_precision'], (int, float)) and 0 < o['target_precision'] <= 1,
         f"target_precision must lie in (0, 1], got {o['target_precision']!r}")
    need(o['precision_confidence'] is None or (isinstance(o['precision_confidence'], (int, float))
                                                and 0.5 <= o['precision_confidence'] < 1),
         f"precision_confidence must be none or lie in [0.5, 1), got {o['precision_confidence']!r}")
    need(isinstance(o['store_threshold'], bool), f"store_threshold must be true or false, got {o['store_threshold']!r}")


def merge_env_metadata(file_meta: Mapping[str, Any], explicit: Mapping[str, Any],
                       reserved: Sequence[str], source: str = METADATA_FILE) -> Dict[str, Any]:
    """Env metadata for the checkpoint: the ``metadata.json`` entries plus explicit ``model.env_metadata``.

    A ``metadata.json`` key that names a network metadata field (``image_size``, ``arch`` ...) is stored
    as ``env_<key>``: the env's camera ``image_size`` is not the network's input ``image_size``, and
    storing it under the same name would overwrite the network field the loader checks. An explicit
    entry that contradicts ``metadata.json`` is an error (the checkpoint must describe its images).
    """
    out: Dict[str, Any] = {}
    for key, value in file_meta.items():
        out[f'env_{key}' if key in reserved else key] = value
    for key, value in (explicit or {}).items():
        if key in out and _json_norm(out[key]) != _json_norm(value):
            raise DataError(
                f"{source} says {key}={out[key]!r} but model.env_metadata says {key}={value!r}: the images were "
                f"collected with {key}={out[key]!r}; collect data with the configured setting, or fix the config"
            )
        out[key] = value
    return out


def _json_norm(v: Any) -> str:
    return json.dumps(v, sort_keys=True, default=str)
