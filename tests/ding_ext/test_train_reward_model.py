"""Stage-2 trainer: PNG folders -> best/last safetensors checkpoints that load into ResNetRewardModel."""
import json
import os

import numpy as np
import pytest
import torch

from ding_ext.checkpoint_io import load_checkpoint
from ding_ext.image_folder_dataset import (
    DataError, class_balanced_sampler, list_pngs, scan_image_folder, split_train_val
)
from ding_ext.png_writer import write_png
from ding_ext.train_reward_model import OptionError, main, parse_overrides, resolve_options, train_reward_model

from .helpers import force_probability, make_model, separable_images

SMALL = {'model.image_size': [3, 32, 32], 'model.hidden_dim': 16}
ENV_META = {'control_mode': 'pd_joint_delta_pos', 'reward_render_mode': 'sensors', 'show_goal_site': False,
            'image_size': [128, 128]}


def write_dataset(root, n_success, n_failure, seed=0, first_index=1, metadata=None):
    """success/ and failure/ PNG folders of separable images; returns root."""
    n = max(n_success, n_failure)
    images, labels = separable_images(n, size=32, seed=seed)
    succ, fail = images[labels][:n_success], images[~labels][:n_failure]
    for cls, ims in (('success', succ), ('failure', fail)):
        for i, im in enumerate(ims):
            write_png(os.path.join(root, cls, f'{first_index + i:04d}.png'), im)
    if metadata is not None:
        with open(os.path.join(root, 'metadata.json'), 'w') as f:
            json.dump(metadata, f)
    return str(root)


@pytest.fixture(scope='module')
def dataset(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp('data') / 'demo', 40, 40, seed=1, metadata=ENV_META)


def heldout_accuracy(model, n=40, seed=123):
    images, labels = separable_images(n, size=32, seed=seed)
    probs = model.predict_proba(images).numpy()
    return float(((probs > 0.5) == labels).mean())


def test_cli_trains_writes_checkpoints_and_they_load(dataset, tmp_path, capsys):
    save_dir = tmp_path / 'ckpt'
    rc = main(['--data', dataset, 'epochs=4', 'lr=1e-3', 'batch_size=24', f'save_dir={save_dir}',
               'model.image_size=[3,32,32]', 'model.hidden_dim=16', 'num_workers=2'])  # DataLoader workers
    assert rc == 0
    out = capsys.readouterr().out
    assert 'best epoch' in out and 'best_model.safetensors' in out
    best, last = save_dir / 'best_model.safetensors', save_dir / 'last_model.safetensors'
    assert best.is_file() and last.is_file()
    assert not [p for p in os.listdir(save_dir) if p.startswith('.tmp-')]  # atomic writes left no temp files

    # metadata.json reaches the checkpoint; the env's image_size does not shadow the network's
    _, meta = load_checkpoint(str(best))
    assert meta['control_mode'] == 'pd_joint_delta_pos' and meta['reward_render_mode'] == 'sensors'
    assert meta['show_goal_site'] is False and meta['env_image_size'] == [128, 128]
    assert meta['image_size'] == [3, 32, 32] and meta['arch'] == 'resnet18' and meta['hidden_dim'] == 16

    model = make_model(checkpoint_path=str(best), env_metadata={'control_mode': 'pd_joint_delta_pos'})
    assert model.loaded_metadata['control_mode'] == 'pd_joint_delta_pos'
    assert heldout_accuracy(model) >= 0.9
    assert heldout_accuracy(make_model(checkpoint_path=str(last))) >= 0.9
    with pytest.raises(ValueError, match="'arch'"):
        make_model(checkpoint_path=str(best), arch='resnet34')
    with pytest.raises(ValueError, match='control_mode'):
        make_model(checkpoint_path=str(best), env_metadata={'control_mode': 'pd_ee_delta_pose'})

    # per-epoch scalars in <save_dir>/tb, and the summary file
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(save_dir / 'tb'))
    acc.Reload()
    tags = set(acc.Tags()['scalars'])
    assert {'train/loss', 'train/accuracy', 'val/loss', 'val/accuracy', 'val/precision', 'val/recall',
            'val/f1'} <= tags
    assert len(acc.Scalars('val/f1')) == 4
    summary = json.loads((save_dir / 'train_summary.json').read_text())
    assert summary['num_images'] == {'success': 40, 'failure': 40} and summary['epochs_run'] == 4


def test_function_api_skips_corrupt_pngs_and_orders_numerically(tmp_path):
    root = write_dataset(tmp_path / 'd', 6, 6, seed=2, first_index=9997)  # 9997 .. 10002
    png = open(os.path.join(root, 'success', '9997.png'), 'rb').read()
    with open(os.path.join(root, 'success', '10003.png'), 'wb') as f:
        f.write(png[:len(png) // 2])  # truncated
    with open(os.path.join(root, 'failure', '10003.png'), 'w') as f:
        f.write('not a png')
    open(os.path.join(root, 'failure', '10004.png'), 'wb').close()  # empty
    with open(os.path.join(root, 'failure', '.tmp-abc.png'), 'wb') as f:  # leftover of an atomic write
        f.write(b'partial')

    names = [os.path.basename(p) for p in list_pngs(os.path.join(root, 'failure'))]
    assert names == ['9997.png', '9998.png', '9999.png', '10000.png', '10001.png', '10002.png', '10003.png',
                     '10004.png']

    res = train_reward_model(root, epochs=1, batch_size=8, val_split=0.25, num_workers=0, progress=False,
                             save_dir=str(tmp_path / 'out'), **SMALL)
    assert res['skipped'] == 3
    assert sorted(os.path.relpath(p, root) for p in res['skipped_files']) == \
        ['failure/10003.png', 'failure/10004.png', 'success/10003.png']
    assert res['num_images'] == {'success': 6, 'failure': 6}
    used = {os.path.relpath(p, root) for p in res['train_files'] + res['val_files']}
    assert {'success/9999.png', 'success/10000.png', 'failure/9999.png', 'failure/10002.png'} <= used
    assert len(used) == 12 and not set(res['train_files']) & set(res['val_files'])
    assert os.path.isfile(res['best_path']) and os.path.isfile(res['last_path'])
    assert res['epochs_run'] == len(res['history']) == 1
    assert {'loss', 'accuracy', 'precision', 'recall', 'f1'} <= set(res['best_val'])
    assert {'epoch', 'train/loss', 'train/accuracy', 'val/loss', 'val/f1'} <= set(res['history'][0])
    assert res['metadata']['image_size'] == [3, 32, 32]


def test_default_save_dir_is_next_to_the_data(tmp_path):
    root = write_dataset(tmp_path / 'demo', 3, 3)
    res = train_reward_model(root, epochs=1, num_workers=0, progress=False, val_split=0.0, **SMALL)
    assert res['save_dir'] == str(tmp_path / 'reward_model_ckpt')
    assert os.path.isfile(tmp_path / 'reward_model_ckpt' / 'best_model.safetensors')
    assert res['val_files'] == [] and res['best_val'] == {} and res['monitor'] == 'train/loss'


def test_missing_empty_or_unreadable_class_folder_is_an_error_naming_it(tmp_path):
    root = write_dataset(tmp_path / 'd', 3, 3)
    for p in list_pngs(os.path.join(root, 'failure')):
        os.unlink(p)
    with pytest.raises(DataError, match=r'failure.*no \.png images'):
        train_reward_model(root, epochs=1, num_workers=0, progress=False, **SMALL)

    with open(os.path.join(root, 'failure', '0001.png'), 'w') as f:
        f.write('garbage')
    with pytest.raises(DataError, match=r'failure.*no readable image'):
        scan_image_folder(root)

    os.rename(os.path.join(root, 'success'), os.path.join(root, 'elsewhere'))
    with pytest.raises(DataError, match=r'success.* is missing'):
        scan_image_folder(root)


def test_cli_reports_data_errors_and_unknown_keys(tmp_path, capsys):
    root = write_dataset(tmp_path / 'd', 2, 2)
    for p in list_pngs(os.path.join(root, 'failure')):
        os.unlink(p)
    with pytest.raises(SystemExit) as e:
        main(['--data', root, 'epochs=1'])
    assert e.value.code == 1 and os.path.join(root, 'failure') in capsys.readouterr().err

    with pytest.raises(SystemExit) as e:
        main(['--data', root, 'epochz=3'])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "'epochz'" in err and 'early_stopping_patience' in err and 'batch_size' in err

    with pytest.raises(OptionError) as e:
        train_reward_model(root, **{'model.archh': 'resnet34'})
    assert "model.archh" in str(e.value) and 'hidden_dim' in str(e.value) and 'arch' in str(e.value)
    with pytest.raises(OptionError, match='balance'):
        train_reward_model(root, balance='oversample')
    # `balance=none` on the command line parses to None and means no balancing
    assert resolve_options(parse_overrides(['balance=none']))[0]['balance'] == 'none'


def test_config_env_metadata_contradicting_metadata_json_is_an_error(dataset, tmp_path):
    with pytest.raises(DataError, match=r"metadata.json says control_mode='pd_joint_delta_pos'.*pd_ee_delta_pose"):
        train_reward_model(dataset, epochs=1, num_workers=0, progress=False, save_dir=str(tmp_path / 'o'),
                           **SMALL, **{'model.env_metadata': {'control_mode': 'pd_ee_delta_pose'}})


def test_values_are_parsed_with_literal_eval_and_fall_back_to_strings():
    parsed = parse_overrides(['epochs=5', 'lr=1e-3', 'model.image_size=[3,64,64]', 'model.normalize=false',
                              'model.pretrained=/path/weights.pth', 'model.arch=resnet34', 'model.hidden_dim=None'])
    assert parsed == {'epochs': 5, 'lr': 1e-3, 'model.image_size': [3, 64, 64], 'model.normalize': False,
                      'model.pretrained': '/path/weights.pth', 'model.arch': 'resnet34', 'model.hidden_dim': None}
    with pytest.raises(OptionError, match='key=value'):
        parse_overrides(['epochs'])


def test_split_is_reproducible_and_stratified(dataset):
    scan = scan_image_folder(dataset, cache=False)
    assert scan.images is None and scan.num_images == {'success': 40, 'failure': 40}

    def val_files(seed, files=scan.files, labels=scan.labels):
        return sorted(files[i] for i in split_train_val(files, labels, 0.1, seed)[1])

    a, b, c = val_files(0), val_files(0), val_files(1)
    assert a == b and a != c
    assert len(a) == 8 and sum('/success/' in p for p in a) == 4 and sum('/failure/' in p for p in a) == 4
    order = np.random.default_rng(0).permutation(len(scan.files))  # input order does not matter
    assert val_files(0, [scan.files[i] for i in order], scan.labels[order]) == a
    # at least one of each class in val as soon as the class has 2 images; never the whole class
    train, val = split_train_val(['s/1.png', 's/2.png', 'f/1.png', 'f/2.png', 'f/3.png'], [1, 1, 0, 0, 0], 0.01)
    assert len(val) == 2 and sorted(val + train) == [0, 1, 2, 3, 4] and {0, 1} & set(val) and {2, 3, 4} & set(val)


def test_class_balanced_sampler_draws_the_minority_class_half_the_time():
    labels = np.array([1] * 500 + [0] * 5)
    draws = list(class_balanced_sampler(labels, 4000, seed=0))
    assert 0.45 < np.mean(labels[draws]) < 0.55
    assert draws == list(class_balanced_sampler(labels, 4000, seed=0))


def test_early_stopping_when_validation_cannot_improve(tmp_path):
    root = write_dataset(tmp_path / 'd', 8, 8)
    init = make_model()
    force_probability(init, 0.3)  # zero last layer: every image gets p = 0.3, whatever the trunk does
    init_path = init.save(str(tmp_path / 'init.safetensors'))
    res = train_reward_model(root, epochs=20, lr=0.0, early_stopping_patience=2, batch_size=8, num_workers=0,
                             progress=False, save_dir=str(tmp_path / 'out'),
                             **SMALL, **{'model.checkpoint_path': init_path})
    assert res['stopped_early'] and res['epochs_run'] == 3 and res['best_epoch'] == 1
    losses = [h['val/loss'] for h in res['history']]
    assert losses[0] == pytest.approx(-(np.log(0.3) + np.log(0.7)) / 2, abs=1e-5) and len(set(losses)) == 1
    assert [h['improved'] for h in res['history']] == [True, False, False]


def test_imbalanced_data_with_pos_weight(tmp_path):
    root = write_dataset(tmp_path / 'd', 12, 3)
    res = train_reward_model(root, epochs=1, batch_size=8, balance='pos_weight', num_workers=0, progress=False,
                             save_dir=str(tmp_path / 'out'), **SMALL)
    # 1 failure and 1 success held out; pos_weight = n_failure / n_success over the training files
    assert res['num_val'] == 2 and res['num_train'] == 13
    assert res['pos_weight'] == pytest.approx(2 / 11)
    assert torch.isfinite(torch.tensor(res['history'][0]['train/loss']))


def test_summary_line_is_printed_without_progress(tmp_path, capsys):
    root = write_dataset(tmp_path / 'd', 3, 3)
    res = train_reward_model(root, epochs=1, num_workers=0, progress=False, val_split=0.0,
                             save_dir=str(tmp_path / 'out'), **SMALL)
    out = capsys.readouterr().out
    lines = [ln for ln in out.splitlines() if ln.startswith('reward model: best epoch')]
    assert len(lines) == 1 and res['best_path'] in lines[0]


def test_writer_sidecar_and_trainer_split_by_episode(tmp_path):
    """The writer's sidecar rows reach the scan; the trainer keeps each episode on one side of the split."""
    from ding_ext.image_dataset_writer import LabelledImageWriter
    from ding_ext.image_folder_dataset import read_sidecar
    images, labels = separable_images(60, size=32, seed=3)
    root = str(tmp_path / 'episodes')
    w = LabelledImageWriter(root, 10 ** 6, 10 ** 6, 1.0, 1.0, metadata=ENV_META, progress=False)
    for i, (im, y) in enumerate(zip(images, labels)):  # 12 episodes of 10 frames, both classes in each
        w.add(im, bool(y), dict(episode_id=f'ep{i % 12}', step=np.int64(i // 12), dist=np.float32(0.5)),
              source='planner' if i % 2 else 'policy')
    w.close()
    rows = read_sidecar(root)
    assert len(rows) == 120 and all(os.path.isfile(os.path.join(root, f)) for f in rows)
    row = rows['success/0001.png']
    assert row == {'file': 'success/0001.png', 'label': 1, 'episode_id': 'ep0', 'step': 0, 'source': 'policy',
                   'dist': 0.5}
    out = train_reward_model(root, epochs=1, batch_size=16, val_split=0.25, num_workers=0, progress=False,
                             save_dir=str(tmp_path / 'ckpt'), **SMALL)
    episode = {os.path.join(root, f): r['episode_id'] for f, r in rows.items()}
    train_eps = {episode[f] for f in out['train_files']}
    val_eps = {episode[f] for f in out['val_files']}
    assert val_eps and not train_eps & val_eps
    assert 20 <= out['num_val'] <= 40  # about a quarter of the frames, in whole episodes
    # the report breaks the validation frames down by the sidecar's categorical fields
    assert set(out['report']['breakdowns']['source']) == {'planner', 'policy'}


def test_cosine_lr_schedule_and_bad_schedule(dataset, tmp_path):
    with pytest.raises(OptionError, match='lr_schedule'):
        resolve_options({'lr_schedule': 'step'})
    out = train_reward_model(dataset, epochs=2, batch_size=16, lr=1e-3, lr_schedule='cosine', num_workers=0,
                             progress=False, save_dir=str(tmp_path / 'ckpt'), **SMALL)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    ea = EventAccumulator(str(tmp_path / 'ckpt' / 'tb'))
    ea.Reload()
    lrs = [e.value for e in ea.Scalars('train/lr')]
    assert len(lrs) == 2 and lrs[0] < 1e-3 and lrs[-1] == pytest.approx(0.0, abs=1e-9)  # decays to 0 at the end
    assert out['options']['lr_schedule'] == 'cosine'


def test_model_selection_last_keeps_the_final_epoch(dataset, tmp_path):
    with pytest.raises(OptionError, match='model_selection'):
        resolve_options({'model_selection': 'best'})
    out = train_reward_model(dataset, epochs=3, batch_size=16, lr=1e-3, lr_schedule='cosine', model_selection='last',
                             num_workers=0, progress=False, save_dir=str(tmp_path / 'ckpt'), **SMALL)
    assert out['best_epoch'] == out['epochs_run'] == 3
    best, last = load_checkpoint(out['best_path'])[0], load_checkpoint(out['last_path'])[0]
    assert all(torch.equal(best[k], last[k]) for k in best)


def test_precision_confidence_reaches_the_validation_report(dataset, tmp_path):
    with pytest.raises(OptionError, match=r"precision_confidence must be none or lie in \[0.5, 1\), got 1.0"):
        resolve_options({'precision_confidence': 1.0})
    out = train_reward_model(dataset, epochs=1, batch_size=16, lr=1e-3, num_workers=0, progress=False,
                             save_dir=str(tmp_path / 'ckpt'), target_precision=0.6, precision_confidence=0.9, **SMALL)
    assert out['report']['confidence'] == 0.9 and out['options']['precision_confidence'] == 0.9
