"""Reward-model training on torch.distributed: 2 gloo processes (torchrun, DDP and FSDP2) reach the weights of 1 process
with the same global batch and seed; the sampler, the accumulation arithmetic, the override aliases and the trainer's
step-based options."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from ding_ext.checkpoint_io import load_checkpoint
from ding_ext.distributed import DistContext
from ding_ext.train_data import (
    MicroBatchSampler, default_num_workers, epoch_order, frames_per_episode_subset, shard_positions, write_debug_images
)
from ding_ext.train_options import OptionError, accumulation_steps, resolve_options
from ding_ext.train_reward_model import main, parse_overrides, train_reward_model
from ding_ext.train_step import BatchNormMerge

from .helpers import make_model, separable_images
from .test_train_reward_model import write_dataset

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# 48 images of 32 px, 36 for training: 2 optimiser steps of 32 images per epoch, micro-batches of 8 (4 per step in one
# process, 2 per process with two); dropout and the random shift on, so their seeding is part of what is compared
COMMON = ['epochs=2', 'batch_size=32', 'micro_batch_size=8', 'val_split=0.25', 'progress=false',
          'model.image_size=[3,32,32]', 'model.hidden_dim=16', 'model.dropout=0.1']
# Tolerance of "the same weights": the runs differ only in the order of float sums (two partial gradients
# all-reduced instead of one accumulation; BatchNorm statistics merged over processes), so every parameter must agree
# to 2e-5 (observed: 1e-6; Adam's normalised step, lr 1e-4, lets rounding on a near-zero gradient grow), BatchNorm
# running statistics to 2e-5 relative (observed: 1e-6), the logged losses to 1e-5. Training moves the weights by
# 20x the tolerance and more.
WEIGHT_ATOL, STATS_RTOL, LOSS_ATOL = 2e-5, 2e-5, 1e-5


def weight_differences(path_a, path_b):
    a, b = load_checkpoint(path_a)[0], load_checkpoint(path_b)[0]
    assert a.keys() == b.keys()
    params = max((a[k] - b[k]).abs().max().item() for k in a if 'running' not in k and 'num_batches' not in k)
    stats = max(((a[k] - b[k]).norm() / a[k].norm()).item() for k in a if 'running' in k)
    counts_equal = all(torch.equal(a[k], b[k]) for k in a if 'num_batches' in k)
    return params, stats, counts_equal


STRATEGIES = ('ddp', 'fsdp')


def train_with_each_strategy(data, out):
    """Run by torchrun in each of its processes (see the end of this file): join the process group from torchrun's
    environment, then train with DDP and with FSDP through the CLI (one group for both: a process cannot reliably
    join a second group on the same rendezvous store)."""
    from ding_ext.distributed import init_distributed, shutdown
    ctx = init_distributed('cpu')
    assert ctx.world_size == 2 and ctx.owns_group
    for strategy in STRATEGIES:
        assert main(['--data', data, *COMMON, f'save_dir={out}/{strategy}', f'strategy={strategy}']) == 0
    shutdown(ctx)


def test_two_gloo_processes_reach_the_weights_of_one(tmp_path):
    data = write_dataset(tmp_path / 'data', 24, 24, seed=1)
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2',
           '-m', 'tests.ding_ext.test_distributed_training', data, str(tmp_path)]
    torchrun = subprocess.Popen(cmd, cwd=ROOT, env=dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=ROOT),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    options = parse_overrides(COMMON)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each torchrun process (OMP_NUM_THREADS=1): the same float summation order
    try:  # the one-process run, while torchrun's processes start
        one = train_reward_model(data, save_dir=str(tmp_path / 'one'), **options)
    finally:
        torch.set_num_threads(threads)
        stdout, stderr = torchrun.communicate(timeout=600)
    assert torchrun.returncode == 0, f"torchrun failed ({torchrun.returncode}):\n{stdout[-3000:]}\n{stderr[-6000:]}"
    assert one['world_size'] == 1 and one['accumulation_steps'] == 4 and one['steps_run'] == 4

    assert stdout.count('reward model: best epoch') == len(STRATEGIES)  # rank 0 alone prints the summary line
    for strategy in STRATEGIES:
        out = tmp_path / strategy
        summary = json.loads((out / 'train_summary.json').read_text())
        assert summary['world_size'] == 2 and summary['strategy'] == strategy
        assert summary['accumulation_steps'] == 2 and summary['micro_batch_size'] == 8 and summary['steps_run'] == 4
        assert len([f for f in os.listdir(out / 'tb') if 'tfevents' in f]) == 1  # one writer, on rank 0
        assert not [f for f in os.listdir(out) if f.startswith('.tmp-')]
        assert (out / 'fidelity_val' / 'report.json').is_file()

        params, stats, counts_equal = weight_differences(one['last_path'], str(out / 'last_model.safetensors'))
        print(f"{strategy}: max |weight difference| {params:.2e}, BatchNorm statistics {stats:.2e} relative")
        assert params <= WEIGHT_ATOL and stats <= STATS_RTOL and counts_equal, (strategy, params, stats)
        for mine, theirs in zip(one['history'], summary['history']):
            assert mine['step'] == theirs['step']
            for key in ('train/loss', 'val/loss', 'val/balanced_loss'):
                assert theirs[key] == pytest.approx(mine[key], abs=LOSS_ATOL), (strategy, key)
        assert summary['best_epoch'] == one['best_epoch']

    # the agreement is not trivial: training moved the weights far more than the tolerance
    torch.manual_seed(0)  # as the trainer (seed=0) right before it builds the model: the initial weights
    init = make_model(dropout=0.1)
    trained = load_checkpoint(one['last_path'])[0]
    moved = max((trained[k] - v).abs().max().item() for k, v in init.network.state_dict().items()
                if 'running' not in k and 'num_batches' not in k)
    assert moved > 20 * WEIGHT_ATOL, moved


@pytest.mark.parametrize('balance', ['sampler', 'pos_weight', 'none'])
def test_micro_batches_do_not_depend_on_the_process_count(balance):
    labels = np.array([1] * 7 + [0] * 30)
    single = MicroBatchSampler(labels, balance, 3, batch_size=16, micro_batch_size=4)
    shards = [MicroBatchSampler(labels, balance, 3, 16, 4, rank=r, world_size=2) for r in range(2)]
    assert single.accumulation == 4 and shards[0].accumulation == 2 and len(single) == 3 * 4 and len(shards[0]) == 6
    for epoch in (1, 2):
        for s in [single] + shards:
            s.set_epoch(epoch)
        one = list(single)
        ranks = [list(s) for s in shards]
        for step in range(3):  # micro-batch k of each global batch runs on rank k % 2
            global_batch = one[4 * step:4 * step + 4]
            assert ranks[0][2 * step:2 * step + 2] == global_batch[0::2]
            assert ranks[1][2 * step:2 * step + 2] == global_batch[1::2]
    single.set_epoch(1)
    first = list(single)
    single.set_epoch(2)
    assert list(single) != first  # each epoch has its own order


def test_epoch_order_draws_the_class_ratio_or_shuffles_every_image():
    labels = np.array([1] * 7 + [0] * 30)
    order = epoch_order(labels, 'sampler', 0, 1, batch_size=64, fail_success_ratio=3.0)
    assert len(order) == 64 and 0.15 < labels[epoch_order(labels, 'sampler', 0, 1, 4000, 3.0)].mean() < 0.35
    shuffled = epoch_order(labels, 'none', 0, 1, batch_size=16)  # a permutation, wrapped to 3 full batches
    assert len(shuffled) == 48 and sorted(shuffled[:37]) == list(range(37)) and list(shuffled[37:]) == \
        list(shuffled[:11])


def test_validation_shards_cover_the_split_once():
    n, world = 11, 3
    parts = [shard_positions(n, r, world) for r in range(world)]
    assert {len(p) for p, _ in parts} == {4}  # every rank runs the same number of batches
    interleaved = np.stack([np.array(p) for p, _ in parts], axis=1).reshape(-1)
    valid = np.stack([v for _, v in parts], axis=1).reshape(-1)
    assert interleaved[valid].tolist() == list(range(n)) and valid.sum() == n and not valid[n:].any()


def test_loader_workers_only_where_they_decode():
    assert default_num_workers(None, cache_images=True) == 0  # cached images: workers would only copy them
    assert default_num_workers(3, cache_images=True) == 3
    assert default_num_workers(None, cache_images=False) == max(0, min(4, (os.cpu_count() or 1) - 1))


def test_accumulation_arithmetic_names_the_numbers():
    assert accumulation_steps(64, None, 1) == (64, 1)
    assert accumulation_steps(64, 8, 2) == (8, 4)
    assert accumulation_steps(32, 16, 2) == (16, 1)
    with pytest.raises(OptionError, match=r"batch_size=48 is not a multiple of micro_batch_size=16 x 2 process\(es\) "
                                          r"= 32.*1\.5"):
        accumulation_steps(48, 16, 2)
    with pytest.raises(OptionError, match=r"batch_size=6 cannot be split over 4 processes"):
        accumulation_steps(6, None, 4)


def test_dotted_override_names_are_aliases_and_unknown_keys_are_errors(tmp_path):
    opts, model = resolve_options(parse_overrides([
        'actor.global_batch_size=32', 'actor.micro_batch_size=16', 'runner.max_epochs=7',
        'runner.val_check_interval=50', 'runner.save_interval=100', 'runner.early_stop.patience=5',
        'data.num_samples_per_episode=5', 'data.fail_success_ratio=2.0', f'data.debug_save_dir={tmp_path}',
        f'runner.logger.log_path={tmp_path}/logs', 'actor.model.arch=resnet34', 'actor.optim.lr=3e-4']))
    assert (opts['batch_size'], opts['micro_batch_size'], opts['epochs'], opts['val_check_interval']) == (32, 16, 7, 50)
    assert (opts['save_interval'], opts['early_stopping_patience'], opts['frames_per_episode']) == (100, 5, 5)
    assert opts['fail_success_ratio'] == 2.0 and opts['debug_save_dir'] == str(tmp_path)
    assert opts['save_dir'] == f'{tmp_path}/logs' and opts['lr'] == 3e-4 and model == {'arch': 'resnet34'}
    assert resolve_options({'global_batch_size': 8})[0]['batch_size'] == 8

    with pytest.raises(OptionError, match=r"unknown option 'runner.max_epoch'.*runner\.max_epochs \(epochs\)"):
        resolve_options({'runner.max_epoch': 3})
    with pytest.raises(OptionError, match=r"batch_size=16 and actor.global_batch_size=32 both set batch_size"):
        resolve_options({'batch_size': 16, 'actor.global_batch_size': 32})
    with pytest.raises(OptionError, match=r"unknown model option 'model.model_type'"):
        resolve_options({'actor.model.model_type': 'resnet'})
    with pytest.raises(OptionError, match=r"sampler_fail_ratio=2.0 sets the draws of balance=sampler"):
        resolve_options({'sampler_fail_ratio': 2.0, 'balance': 'pos_weight'})
    with pytest.raises(OptionError, match='strategy'):
        resolve_options({'strategy': 'deepspeed'})


def test_cli_takes_the_overrides_and_reports_an_indivisible_batch(tmp_path, capsys):
    data = write_dataset(tmp_path / 'd', 6, 6)
    with pytest.raises(SystemExit) as e:
        main(['--data', data, 'actor.global_batch_size=20', 'actor.micro_batch_size=8', 'progress=false'])
    assert e.value.code == 2 and 'batch_size=20 is not a multiple of micro_batch_size=8' in capsys.readouterr().err
    log_path = tmp_path / 'logs'
    assert main(['--data', data, 'actor.global_batch_size=8', 'actor.micro_batch_size=4', 'runner.max_epochs=1',
                 f'runner.logger.log_path={log_path}', 'model.image_size=[3,32,32]', 'model.hidden_dim=16',
                 'progress=false']) == 0
    summary = json.loads((log_path / 'train_summary.json').read_text())
    assert summary['accumulation_steps'] == 2 and summary['epochs_run'] == 1


def test_step_based_validation_checkpoints_episode_subsampling_and_debug_images(tmp_path):
    from ding_ext.image_dataset_writer import LabelledImageWriter
    images, labels = separable_images(40, size=32, seed=4)
    root = str(tmp_path / 'episodes')
    writer = LabelledImageWriter(root, 10 ** 6, 10 ** 6, 1.0, 1.0, progress=False)
    for i, (im, y) in enumerate(zip(images, labels)):  # 8 episodes of 10 frames, both classes in each
        writer.add(im, bool(y), dict(episode_id=f'ep{i % 8}', step=i // 8), source='planner')
    writer.close()
    debug = tmp_path / 'debug'
    out = train_reward_model(root, epochs=3, batch_size=8, val_split=0.25, frames_per_episode=4, val_check_interval=2,
                             save_interval=3, debug_save_dir=str(debug), sampler_fail_ratio=2.0, progress=False,
                             save_dir=str(tmp_path / 'ckpt'), **{'model.image_size': [3, 24, 24],
                                                                  'model.hidden_dim': 16})
    assert out['num_train'] == 6 * 4  # the 6 training episodes, 4 frames each
    assert out['steps_run'] == 9 and [h['step'] for h in out['history']] == [2, 4, 6, 8, 9]  # and the final weights
    assert sorted(f for f in os.listdir(tmp_path / 'ckpt') if f.startswith('step_')) == \
        ['step_3_model.safetensors', 'step_6_model.safetensors', 'step_9_model.safetensors']
    counts = {split: sum(len(os.listdir(debug / split / c)) for c in ('success', 'failure'))
              for split in ('train', 'val')}
    assert counts == {'train': out['num_train'], 'val': out['num_val']}
    from ding_ext.png_writer import read_png
    assert read_png(str(debug / 'train' / 'success' / sorted(os.listdir(debug / 'train' / 'success'))[0])).shape == \
        (24, 24, 3)  # as the network sees it: resized to image_size

    with pytest.raises(Exception, match='frames_per_episode=4 needs the episode of each frame'):
        frames_per_episode_subset([0, 1], [{}, {}], None, 4)
    frames = [dict(step=s) for s in range(10)]
    assert frames_per_episode_subset(range(10), frames, ['a'] * 10, 4) == [0, 3, 6, 9]


def test_debug_images_keep_the_crop(tmp_path):
    image = np.zeros((32, 32, 3), np.uint8)
    image[:16] = 255  # top half white
    counts = write_debug_images([(image, 1.0), (image, 0.0)], str(tmp_path), [3, 8, 8], crop=[0.0, 0.0, 0.5, 1.0])
    from ding_ext.png_writer import read_png
    assert counts == {'success': 1, 'failure': 1}
    assert read_png(str(tmp_path / 'success' / '000000.png')).min() == 255  # the crop kept the white half only


def test_batchnorm_merge_matches_sequential_updates():
    """The merge formula, in one process: K micro-batches through zeroed buffers, merged, equal BatchNorm's own
    sequential running statistics."""
    torch.manual_seed(0)
    model = make_model()
    xs = [torch.rand(4, 3, 32, 32) for _ in range(3)]
    model.network.train()
    reference = {k: v.clone() for k, v in model.network.state_dict().items()}
    with torch.no_grad():
        for x in xs:
            model.network(x)
    sequential = {k: v.clone() for k, v in model.network.state_dict().items() if 'running' in k or 'num_batches' in k}
    model.network.load_state_dict(reference)
    merge = BatchNormMerge(model.network, len(xs))
    merge.begin_step()
    with torch.no_grad():
        for k, x in enumerate(xs):
            merge.before_micro_batch()
            model.network(x)
            merge.after_micro_batch(k)
    merge.end_step(DistContext(torch.device('cpu')))
    merged = model.network.state_dict()
    for key, value in sequential.items():
        assert torch.allclose(merged[key].double(), value.double(), rtol=1e-5, atol=1e-6), key


if __name__ == '__main__':  # python -m torch.distributed.run ... -m tests.ding_ext.test_distributed_training DATA OUT
    train_with_each_strategy(*sys.argv[1:3])
