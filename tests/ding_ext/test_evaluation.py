"""Fidelity report: metrics, PR curve, the threshold picked from data, the CLI, 'auto' thresholds, the trainer's report."""
import json
import math
import os
import shutil

import numpy as np
import pytest
import torch

from ding_ext.checkpoint_io import load_checkpoint, save_checkpoint
from ding_ext.evaluate_reward_model import main as evaluate_main
from ding_ext.evaluation import (
    CALIBRATION_KEYS, METRIC_KEYS, average_precision, binary_metrics, fidelity_report, format_report,
    metrics_from_probs, pr_curve, precision_lower_bound, score_images, threshold_for_precision
)
from ding_ext.image_folder_dataset import scan_image_folder
from ding_ext.png_writer import write_png
from ding_ext.train_reward_model import train_reward_model

from .helpers import force_probability, make_model, separable_images

PNGS = ('pr_curve.png', 'confusion_matrix.png', 'probability_histogram.png', 'worst_errors.png')
SMALL = {'model.image_size': [3, 32, 32], 'model.hidden_dim': 16}
# hand-made: the PR curve and thresholds below are computed by hand from these
P8 = [0.1, 0.2, 0.35, 0.4, 0.6, 0.7, 0.8, 0.9]
Y8 = [0, 0, 1, 0, 1, 0, 1, 1]


def write_data(root, n, seed=0, sidecar=True, missing=()):
    """n success + n failure separable 32x32 PNGs; frames.jsonl (two frames per episode) unless sidecar=False.

    Frame i of a class: source 'planner' for even i else 'policy'; phase 'success' / ('grasp', 'lift');
    is_grasped a bool, cube_goal_dist a float. Files in ``missing`` get no sidecar row."""
    images, labels = separable_images(n, size=32, seed=seed)
    rows = []
    for cls, ims in (('success', images[labels]), ('failure', images[~labels])):
        for i, im in enumerate(ims):
            name = f'{cls}/{i + 1:04d}.png'
            write_png(os.path.join(root, name), im)
            rows.append(dict(file=name, label=int(cls == 'success'), episode_id=f'{cls}-{i // 2}', step=i % 2,
                             source='planner' if i % 2 == 0 else 'policy',
                             phase='success' if cls == 'success' else ('grasp', 'lift')[i % 2],
                             is_grasped=bool(i % 3), cube_goal_dist=0.01 * i))
    if sidecar:
        with open(os.path.join(root, 'frames.jsonl'), 'w') as f:
            f.writelines(json.dumps(r) + '\n' for r in rows if r['file'] not in missing)
    return str(root)


def precision_of(pred, labels):
    pred, labels = np.asarray(pred, bool), np.asarray(labels, bool)
    return (pred & labels).sum() / pred.sum()


# ------------------------------------------------------------------------------------ pure functions
def test_threshold_for_precision_on_hand_made_probabilities():
    curve = pr_curve(P8, Y8)
    assert curve['thresholds'] == [0.0, 0.1, 0.2, 0.35, 0.4, 0.6, 0.7, 0.8]
    assert curve['precision'] == pytest.approx([4 / 8, 4 / 7, 4 / 6, 3 / 5, 3 / 4, 2 / 3, 2 / 2, 1 / 1])
    assert curve['recall'] == pytest.approx([1, 1, 1, 3 / 4, 3 / 4, 2 / 4, 2 / 4, 1 / 4])
    # the lowest threshold t with precision(p > t) >= target
    for target, want in ((0.5, 0.0), (0.6, 0.2), (0.7, 0.4), (0.75, 0.4), (0.8, 0.7), (1.0, 0.7)):
        t = threshold_for_precision(P8, Y8, target)
        assert t == want, (target, t)
        assert precision_of(np.array(P8) > t, Y8) >= target
    # ties decide together: {0.5, 0.5, 0.5} has precision 2/3
    assert threshold_for_precision([0.5, 0.5, 0.5, 0.2], [1, 0, 1, 0], 0.6) == 0.2
    assert threshold_for_precision([0.5, 0.5, 0.5, 0.2], [1, 0, 1, 0], 0.7) is None
    # impossible: the highest-scored image is a failure and the rest do not help; or no success at all
    assert threshold_for_precision([0.9, 0.8, 0.1], [0, 0, 1], 0.5) is None
    assert threshold_for_precision([0.9, 0.1], [0, 0], 0.5) is None
    with pytest.raises(ValueError, match='target precision'):
        threshold_for_precision(P8, Y8, 0.0)
    assert average_precision(P8, Y8) == pytest.approx(0.25 + 0.25 + 0.25 * 0.75 + 0.25 * 2 / 3)


def test_confidence_asks_the_precisions_lower_bound_to_reach_the_target():
    # Wilson lower bound: with no false positive it is n / (n + z^2); 9 of 10 is far below 0.9
    z2 = 1.6448536269514722 ** 2
    assert precision_lower_bound(80, 0, 0.95) == pytest.approx(80 / (80 + z2))
    assert precision_lower_bound(9, 1, 0.95) == pytest.approx(0.6523, abs=1e-4)  # by hand
    assert precision_lower_bound(9, 1, None) == pytest.approx(0.9)
    assert precision_lower_bound(0, 0, 0.95) == 0.0
    lb = precision_lower_bound([10, 100, 1000], [1, 10, 100], 0.95)
    assert np.all(np.diff(lb) > 0) and np.all(lb < 10 / 11)  # same ratio: more frames, a tighter bound
    with pytest.raises(ValueError, match='confidence'):
        precision_lower_bound(1, 0, 1.0)
    # 200 successes above 0.5; one failure at 0.95 among the top ten, 40 failures in [0.1, 0.3)
    probs = np.r_[np.linspace(0.96, 0.99, 9), 0.95, np.linspace(0.5, 0.94, 191), np.linspace(0.1, 0.29, 40)]
    labels = np.r_[np.ones(9), 0, np.ones(191), np.zeros(40)]
    point = threshold_for_precision(probs, labels, 0.9)
    bound = threshold_for_precision(probs, labels, 0.9, confidence=0.95)
    fp = lambda t: int(((probs > t) & (labels == 0)).sum())  # noqa: E731
    assert point < bound < 0.5 and np.all(probs[labels == 1] > bound)  # both keep all 200 successes
    assert fp(point) == 22 and fp(bound) == 14  # 200 / 222 >= 0.9; the bound: 200 / 214 = 0.935, lower bound 0.90
    assert precision_lower_bound(((probs > bound) & (labels == 1)).sum(), ((probs > bound) & (labels == 0)).sum(),
                                 0.95) >= 0.9
    # ten clean successes are too few to show 0.9 at 95% confidence (10 / (10 + z^2) = 0.787)
    tiny = fidelity_report(np.r_[np.full(10, 0.9), np.full(10, 0.1)], np.r_[np.ones(10), np.zeros(10)],
                           target_precision=0.9, confidence=0.95)
    assert tiny['chosen_threshold'] is None and tiny['confidence'] == 0.95
    assert 'at 0.95 confidence' in tiny['chosen_reason'] and 'lower bound is 0.787' in tiny['chosen_reason']
    assert 'at 0.95 confidence' in format_report(tiny)


def test_picked_threshold_reaches_the_target_with_the_models_comparison():
    """float32 probabilities, compared the way apply_threshold does; and no lower threshold reaches the target."""
    rng = np.random.default_rng(0)
    model = make_model(success_reward=1.0, fail_reward=0.0)
    for trial in range(100):
        n = int(rng.integers(5, 60))
        labels = rng.random(n) < 0.5
        probs = np.clip(labels * rng.random() + rng.random(n) * 0.8, 0, 1).astype(np.float32)
        probs[rng.random(n) < 0.2] = probs[0]  # ties
        target = float(rng.choice([0.5, 0.8, 0.9, 0.95, 1.0]))
        t = threshold_for_precision(torch.from_numpy(probs), labels, target)
        curve = pr_curve(probs, labels)
        if t is None:
            assert all(p < target for p in curve['precision'])
            continue
        model.cfg.reward_threshold = t
        decided = model.apply_threshold(torch.from_numpy(probs)).numpy() > 0.5
        assert np.array_equal(decided, probs > t) and precision_of(decided, labels) >= target
        assert all(p < target for th, p in zip(curve['thresholds'], curve['precision']) if th < t)


def test_metrics_against_hand_computed_values():
    p = np.array([0.9, 0.6, 0.3, 0.7, 0.1])
    y = np.array([1, 1, 1, 0, 0])
    m = metrics_from_probs(p, y, 0.5)  # predicted 1 1 0 1 0
    assert tuple(m) == METRIC_KEYS
    assert (m['tp'], m['fp'], m['fn'], m['tn']) == (2, 1, 1, 1)
    assert m['accuracy'] == pytest.approx(3 / 5) and m['balanced_accuracy'] == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert m['precision'] == pytest.approx(2 / 3) and m['recall'] == pytest.approx(2 / 3)
    assert m['f1'] == pytest.approx(2 / 3)
    losses = -np.log([0.9, 0.6, 0.3, 0.3, 0.9])
    assert m['loss'] == pytest.approx(losses.mean())
    assert m['balanced_loss'] == pytest.approx((losses[:3].mean() + losses[3:].mean()) / 2)
    logits = torch.tensor([math.log(q / (1 - q)) for q in p])
    ml = binary_metrics(logits, torch.tensor(y, dtype=torch.float32), 0.5)
    assert tuple(ml) == METRIC_KEYS
    for k in METRIC_KEYS:
        assert ml[k] == pytest.approx(m[k], abs=1e-6), k
    # at 0.65 only 0.9 and 0.7 are success
    assert {k: metrics_from_probs(p, y, 0.65)[k] for k in ('tp', 'fp', 'fn', 'tn')} == dict(tp=1, fp=1, fn=2, tn=1)


def test_breakdowns_by_sidecar_fields_and_subsets(tmp_path):
    root = write_data(tmp_path / 'd', 6, missing=('failure/0006.png',))
    scan = scan_image_folder(root)
    assert scan.frames[0]['source'] == 'planner' and scan.frames[-1] == {}
    rng = np.random.default_rng(1)
    probs = np.where(scan.labels == 1, 0.6, 0.4) + rng.uniform(-0.3, 0.3, len(scan.labels))
    unambiguous = np.abs(probs - 0.5) > 0.15
    report = fidelity_report(probs, scan.labels, frames=scan.frames, files=scan.files, threshold=0.5,
                             subsets={'unambiguous': unambiguous}, title='hand')
    assert set(report['breakdowns']) == {'source', 'phase', 'is_grasped'}  # no file/step/episode/label/numbers
    src = np.array([f.get('source', '(none)') for f in scan.frames])
    assert set(report['breakdowns']['source']) == {'planner', 'policy', '(none)'}
    for value, group in report['breakdowns']['source'].items():
        mask = src == value
        assert group['num_images'] == mask.sum() and group['num_success'] == scan.labels[mask].sum()
        assert group['at_threshold'] == pytest.approx(metrics_from_probs(probs[mask], scan.labels[mask], 0.5))
    assert set(report['breakdowns']['phase']) == {'success', 'grasp', 'lift', '(none)'}
    assert set(report['breakdowns']['is_grasped']) == {'true', 'false', '(none)'}
    sub = report['subsets']['unambiguous']
    assert sub['num_images'] == unambiguous.sum()
    assert sub['at_threshold'] == pytest.approx(metrics_from_probs(probs[unambiguous], scan.labels[unambiguous]))
    if report['chosen_threshold'] is not None:
        assert sub['at_chosen']['tp'] == int(((probs > report['chosen_threshold']) & unambiguous & (scan.labels == 1)).sum())
    json.dumps(report, allow_nan=False)  # json-safe
    text = format_report(report)
    assert 'by source' in text and 'planner' in text and 'unambiguous' in text and 'by is_grasped' in text
    worst = report['worst_false_positives']
    assert worst[0]['prob'] == pytest.approx(probs[scan.labels == 0].max()) and worst[0]['file'].startswith('failure/')


# ------------------------------------------------------------------------------------ trainer and CLI
@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    base = tmp_path_factory.mktemp('eval')
    data = write_data(base / 'train_data', 20, seed=1)
    res = train_reward_model(data, epochs=3, lr=1e-3, batch_size=16, val_split=0.25, num_workers=0, progress=False,
                             save_dir=str(base / 'ckpt'), target_precision=0.9, store_threshold=True, **SMALL)
    heldout = write_data(base / 'heldout', 12, seed=7)
    return dict(base=base, result=res, heldout=heldout)


def test_trainer_reports_on_the_validation_split(trained):
    res = trained['result']
    report, val = res['report'], res['best_val']
    assert res['report_dir'] == os.path.join(res['save_dir'], 'fidelity_val')
    for name in PNGS + ('report.json',):
        assert os.path.isfile(os.path.join(res['report_dir'], name)), name
    assert report['num_images'] == res['num_val'] == len(res['val_files'])
    for k in ('tp', 'fp', 'fn', 'tn'):
        assert report['at_threshold'][k] == val[k], k  # the best model, reloaded, on the same images
    assert report['at_threshold']['loss'] == pytest.approx(val['loss'], abs=1e-3)
    assert 'source' in report['breakdowns']  # the validation frames' sidecar rows
    summary = json.load(open(res['summary_path']))
    assert summary['report']['at_threshold'] == pytest.approx(report['at_threshold'])
    assert 'pr_curve' not in summary['report']
    # store_threshold=True: the chosen threshold went into best_model's metadata, not into last_model's
    assert report['chosen_threshold'] is not None, report['chosen_reason']
    meta = load_checkpoint(res['best_path'])[1]
    assert meta['calibrated_threshold'] == report['chosen_threshold']
    assert meta['calibration_target_precision'] == 0.9 and meta['calibration_precision'] >= 0.9
    assert 'calibrated_threshold' not in load_checkpoint(res['last_path'])[1]


def test_cli_writes_plots_and_json_and_prints_the_table(trained, tmp_path, capsys):
    ckpt = str(tmp_path / 'model.safetensors')
    shutil.copy(trained['result']['last_path'], ckpt)
    assert evaluate_main(['--checkpoint', ckpt, '--data', trained['heldout'], '--target-precision', '0.9']) == 0
    out_dir = tmp_path / 'fidelity_heldout'
    for name in PNGS + ('report.json',):
        assert (out_dir / name).is_file(), name
    report = json.loads((out_dir / 'report.json').read_text())
    assert report['num_images'] == 24 and report['target_precision'] == 0.9
    assert set(report['breakdowns']) >= {'source', 'phase'}
    text = capsys.readouterr().out
    assert 'fidelity report: heldout (24 images: 12 success / 12 failure)' in text
    assert 'by source' in text and str(out_dir / 'pr_curve.png') in text
    assert 'calibrated_threshold' not in load_checkpoint(ckpt)[1]  # no --store-threshold: untouched


def test_store_threshold_then_auto_threshold_uses_it(trained, tmp_path, capsys):
    ckpt = str(tmp_path / 'model.safetensors')
    shutil.copy(trained['result']['last_path'], ckpt)
    weights_before = load_checkpoint(ckpt)[0]
    rc = evaluate_main(['--checkpoint', ckpt, '--data', trained['heldout'], '--target-precision', '0.9',
                        '--store-threshold', '--out', str(tmp_path / 'rep')])
    assert rc == 0 and 'stored in' in capsys.readouterr().out
    report = json.loads((tmp_path / 'rep' / 'report.json').read_text())
    t = report['chosen_threshold']
    weights, meta = load_checkpoint(ckpt)
    assert meta['calibrated_threshold'] == t and set(CALIBRATION_KEYS) <= set(meta)
    assert meta['calibration_data'] == os.path.abspath(trained['heldout'])
    assert meta['calibration_precision'] == report['at_chosen']['precision'] >= 0.9
    assert all(torch.equal(weights[k], weights_before[k]) for k in weights_before)

    model = make_model(reward_threshold='auto', checkpoint_path=ckpt, cooptrain_reward=False,
                       success_reward=1.0, fail_reward=0.0)
    assert model.threshold == t
    t32 = np.float32(t)
    above = np.nextafter(t32, np.float32(1))
    assert model.apply_threshold(torch.tensor([t32, above])).tolist() == [0.0, 1.0]  # flips exactly at t
    scan = scan_image_folder(trained['heldout'])
    probs = score_images(model, scan.images, batch_size=7)
    decided = model.apply_threshold(torch.from_numpy(probs)).numpy() > 0.5
    assert precision_of(decided, scan.labels) >= 0.9  # the target, on the data it was picked on
    # a frozen model keeps the calibration when it saves; a co-trained one drops it once it trains
    assert load_checkpoint(model.save(str(tmp_path / 'frozen.safetensors')))[1]['calibrated_threshold'] == t
    cotrained = make_model(reward_threshold='auto', checkpoint_path=ckpt, batch_size=4)
    cotrained.train_step(scan.images[:4], torch.tensor([1.0, 1.0, 0.0, 0.0]))
    assert 'calibrated_threshold' not in load_checkpoint(cotrained.save(str(tmp_path / 'co.safetensors')))[1]

    # evaluate_checkpoint(threshold=None) reports at the stored threshold; subsets come from the sidecar rows
    from ding_ext.evaluate_reward_model import evaluate_checkpoint
    again = evaluate_checkpoint(ckpt, trained['heldout'], str(tmp_path / 'rep2'), threshold=None,
                                subsets=lambda frames: {'planner': [f.get('source') == 'planner' for f in frames]},
                                title='stored threshold')
    assert again['threshold'] == t and again['title'] == 'stored threshold'
    assert again['at_threshold'] == report['at_chosen']
    n_planner = sum(f.get('source') == 'planner' for f in scan.frames)
    assert 0 < n_planner and again['subsets']['planner']['num_images'] == n_planner


def test_auto_threshold_without_a_calibrated_checkpoint_is_a_clear_error(trained, tmp_path):
    ckpt = trained['result']['last_path']
    with pytest.raises(ValueError, match=r"(?s)has no calibrated_threshold.*evaluate_reward_model.*--store-threshold") as e:
        make_model(reward_threshold='auto', checkpoint_path=ckpt, cooptrain_reward=False)
    assert ckpt in str(e.value)
    with pytest.raises(ValueError, match='checkpoint_path is not set'):
        make_model(reward_threshold='auto')  # co-training from scratch: nothing to take it from
    with pytest.raises(ValueError, match="reward_threshold must be a number in \\[0, 1\\] or 'auto'"):
        make_model(reward_threshold='high')


def test_store_threshold_with_confidence_records_it(trained, tmp_path, capsys):
    ckpt = str(tmp_path / 'model.safetensors')
    shutil.copy(trained['result']['last_path'], ckpt)
    rc = evaluate_main(['--checkpoint', ckpt, '--data', trained['heldout'], '--target-precision', '0.7',
                        '--confidence', '0.9', '--store-threshold', '--out', str(tmp_path / 'rep')])
    out = capsys.readouterr().out
    assert rc == 0 and 'at 0.9 confidence' in out
    meta = load_checkpoint(ckpt)[1]
    report = json.loads((tmp_path / 'rep' / 'report.json').read_text())
    assert meta['calibration_confidence'] == 0.9 and meta['calibrated_threshold'] == report['chosen_threshold']
    m = report['at_chosen']
    assert precision_lower_bound(m['tp'], m['fp'], 0.9) >= 0.7
    with pytest.raises(SystemExit):
        evaluate_main(['--checkpoint', ckpt, '--data', trained['heldout'], '--confidence', '1.5'])
    assert '--confidence must lie in [0.5, 1), got 1.5' in capsys.readouterr().err


def test_store_threshold_writes_nothing_when_no_threshold_reaches_the_target(trained, tmp_path, capsys):
    model = make_model()
    force_probability(model, 0.3)  # every image scores 0.3: precision 0.5 at best
    ckpt = model.save(str(tmp_path / 'flat.safetensors'))
    before = open(ckpt, 'rb').read()
    with pytest.raises(SystemExit) as e:
        evaluate_main(['--checkpoint', ckpt, '--data', trained['heldout'], '--store-threshold'])
    assert e.value.code == 1
    err = capsys.readouterr().err
    assert 'no threshold reaches precision 0.95' in err and 'nothing written' in err
    assert open(ckpt, 'rb').read() == before and not (tmp_path / 'fidelity_heldout').exists()


def test_cli_errors_are_one_line_messages(trained, tmp_path, capsys):
    ckpt = trained['result']['last_path']
    bare = str(tmp_path / 'bare.safetensors')
    save_checkpoint(bare, make_model().network.state_dict(), {})
    cases = [
        (['--checkpoint', str(tmp_path / 'nope.safetensors'), '--data', trained['heldout']], 'does not exist'),
        (['--checkpoint', bare, '--data', trained['heldout']], 'lacks the metadata arch, hidden_dim, image_size'),
        (['--checkpoint', ckpt, '--data', str(tmp_path / 'no_data')], 'no_data does not exist'),
        (['--checkpoint', ckpt, '--data', trained['heldout'], '--target-precision', '1.5'], 'target-precision'),
    ]
    for argv, match in cases:
        with pytest.raises(SystemExit) as e:
            evaluate_main(argv)
        err = capsys.readouterr().err
        assert e.value.code == 1 and match in err and 'Traceback' not in err, (argv, err)
        assert len(err.strip().splitlines()) == 1, err

