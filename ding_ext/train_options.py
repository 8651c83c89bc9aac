"""Options of the reward-model trainer: ``key=value`` parsing, validation, and the env metadata it stores.

Values are parsed with ``ast.literal_eval`` (``true``/``false``/``none`` are understood too) and fall
back to plain strings. Trainer keys are listed in ``TRAIN_OPTIONS``; every reward-model config key is
given as ``model.<key>=value``.
"""
import ast
import json
from typing import Any, Dict, List, Mapping, Sequence, Tuple

from .image_folder_dataset import METADATA_FILE, DataError

# key: (default, help)
TRAIN_OPTIONS: Dict[str, Tuple[Any, str]] = {
    'epochs': (100, "maximum number of epochs"),
    'batch_size': (64, "mini-batch size (>= 2)"),
    'lr': (1e-4, "Adam learning rate (sets model.learning_rate)"),
    'lr_schedule': ('constant', "constant | cosine (per batch, from lr down to 0 at the last epoch)"),
    'model_selection': ('best_val_loss', "best_val_loss (the epoch with the lowest class-balanced validation loss) | "
                                         "last (the final epoch; natural with lr_schedule=cosine)"),
    'val_split': (0.1, "fraction of each class held out for validation, in [0, 1)"),
    'fail_success_ratio': (None, "at most this many failure images per success image in the training split "
                                 "(a seeded subsample; validation keeps all); none: all"),
    'early_stopping_patience': (15, "stop after this many epochs without a better model; 0 disables"),
    'min_delta': (0.0, "a new best model must lower the monitored loss by more than this"),
    'save_dir': (None, "output folder; default <data>/../reward_model_ckpt"),
    'seed': (0, "seed of the split, the sampler and the weight initialisation"),
    'num_workers': (None, "DataLoader worker processes; default min(2, cpu count)"),
    'device': ('cpu', "cpu | cuda | cuda:N"),
    'balance': ('sampler', "class imbalance: sampler (class-balanced sampling) | pos_weight (BCE) | none"),
    'cache_images': (True, "keep the decoded images in memory (false: decode again in the workers)"),
    'progress': (True, "show a tqdm progress bar (the summary line is always printed)"),
    'target_precision': (0.95, "fidelity report: pick the lowest threshold with this validation precision"),
    'precision_confidence': (None, "with it (e.g. 0.95) the precision's Wilson lower bound at this confidence must reach "
                                   "target_precision (robust on small validation splits); none: the point estimate"),
    'store_threshold': (False, "store that threshold in best_model's metadata (for reward_threshold='auto')"),
}
BALANCE_MODES = ('sampler', 'pos_weight', 'none')
LR_SCHEDULES = ('constant', 'cosine')
MODEL_SELECTIONS = ('best_val_loss', 'last')


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

    Model keys come as ``model.<key>`` entries or as a ``model`` dict.
    """
    train: Dict[str, Any] = {}
    model: Dict[str, Any] = {}
    for key, value in options.items():
        if key == 'model':
            if not isinstance(value, Mapping):
                raise OptionError(f"model must be a dict of reward-model config keys, got {value!r}")
            model.update(value)
        elif key.startswith('model.'):
            model[key[len('model.'):]] = value
        elif key in TRAIN_OPTIONS:
            train[key] = value
        else:
            raise OptionError(
                f"unknown option {key!r}; valid options: {', '.join(sorted(TRAIN_OPTIONS))}, "
                "and model.<key> for any reward-model config key"
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


def _check_train_options(o: Dict[str, Any]) -> None:
    def need(cond: bool, msg: str) -> None:
        if not cond:
            raise OptionError(msg)

    need(isinstance(o['epochs'], int) and o['epochs'] >= 1, f"epochs must be an int >= 1, got {o['epochs']!r}")
    need(isinstance(o['batch_size'], int) and o['batch_size'] >= 2,
         f"batch_size must be an int >= 2, got {o['batch_size']!r}")
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
    if o['balance'] is None:  # `balance=none` on the command line parses to None
        o['balance'] = 'none'
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
