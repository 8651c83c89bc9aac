"""``ding-reward``: DI-engine's main CLI flags, for our reward-model pipelines, plus the two flags.

    ding-reward -m serial_reward_model -c dizoo_maniskill/config/pickcube_sac_resnet_reward_config.py -s 0
    ding-reward -m serial_reward_model_onpolicy -c dizoo_maniskill/config/pickcube_ppo_resnet_reward_config.py \\
        --train-iter 200 --no-cooptrain-reward
    ding-reward -m serial_onpolicy -c dizoo_maniskill/config/pickcube_ppo_config.py --train-iter 100

Without ``--cooptrain-reward/--no-cooptrain-reward`` and ``--pretrain-reward/--no-pretrain-reward``
the config's ``reward_model.cooptrain_reward`` / ``pretrain_reward`` apply (defaults true / false).
"""
import argparse
import sys
from typing import Optional, Sequence

MODES = {
    'serial_reward_model': 'offpolicy',
    'serial_reward_model_offpolicy': 'offpolicy',
    'serial_reward_model_onpolicy': 'onpolicy',
    # plain RL (configs without reward_model, e.g. stage 1 collection and stage 3 dense PPO)
    'serial': 'offpolicy',
    'serial_onpolicy': 'onpolicy',
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog='ding-reward', description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('-m', '--mode', choices=sorted(MODES), default='serial_reward_model',
                   help='pipeline: serial_reward_model (= off-policy, as in ding), serial_reward_model_onpolicy, ...')
    p.add_argument('-c', '--config', required=True, help='path of a main_config/create_config python file')
    p.add_argument('-s', '--seed', type=int, default=0, help='random seed')
    p.add_argument('--exp-name', default=None, help='experiment directory name (overrides the config)')
    p.add_argument('--train-iter', type=float, default=1e8, help='maximum learner iterations of this run')
    p.add_argument('--env-step', type=float, default=1e8, help='maximum env steps')
    p.add_argument('--load-path', default=None, help='policy checkpoint to resume from (policy.load_path)')
    p.add_argument('--cooptrain-reward', action=argparse.BooleanOptionalAction, default=None,
                   help='train the reward model during RL on env success labels')
    p.add_argument('--pretrain-reward', action=argparse.BooleanOptionalAction, default=None,
                   help='train the reward model on reward_model.pretrain_data_dir before RL')
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    from ding.config import read_config

    from . import serial_pipeline_reward_model_offpolicy, serial_pipeline_reward_model_onpolicy
    cfg, create_cfg = read_config(args.config)
    if args.exp_name:
        cfg.exp_name = args.exp_name
    if args.load_path:
        cfg.policy.load_path = args.load_path
    rm = cfg.get('reward_model', {})
    cooptrain = args.cooptrain_reward if args.cooptrain_reward is not None else rm.get('cooptrain_reward', True)
    pretrain = args.pretrain_reward if args.pretrain_reward is not None else rm.get('pretrain_reward', False)
    pipeline = serial_pipeline_reward_model_onpolicy if MODES[args.mode] == 'onpolicy' else \
        serial_pipeline_reward_model_offpolicy
    pipeline((cfg, create_cfg), seed=args.seed, max_train_iter=int(args.train_iter), max_env_step=int(args.env_step),
             cooptrain_reward=cooptrain, pretrain_reward=pretrain)
    return 0


if __name__ == '__main__':
    sys.exit(main())
