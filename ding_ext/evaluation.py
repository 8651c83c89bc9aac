"""Fidelity of the image success classifier: metrics, the precision-recall curve, a threshold picked
from data, and a report with plots (``fidelity_report``).

The decision rule everywhere is the one of ``BaseImageRewardModel.apply_threshold``: success when
``prob > threshold``. Comparisons happen in the probabilities' own dtype (float32 model outputs stay
float32, as in ``apply_threshold``), so a threshold picked here decides the same way in the model.
"""
import os
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .checkpoint_io import update_checkpoint_metadata, write_json_atomic

METRIC_KEYS = ('loss', 'balanced_loss', 'accuracy', 'balanced_accuracy', 'precision', 'recall', 'f1',
               'tp', 'fp', 'fn', 'tn')
# checkpoint metadata written by ``store_calibration`` (read by reward_threshold='auto')
CALIBRATION_KEYS = ('calibrated_threshold', 'calibration_target_precision', 'calibration_confidence',
                    'calibration_data', 'calibration_precision', 'calibration_recall')
BREAKDOWN_SKIP = ('file', 'label', 'episode_id', 'step')  # per-frame fields that are no categories
MAX_GROUPS = 50  # a field with more distinct values is not broken down
WORST_K = 8  # tiles per row of worst_errors.png
REPORT_JSON = 'report.json'
_EPS = 1e-7


# ---------------------------------------------------------------------------------------- inputs
def _probs_array(probs: Any) -> np.ndarray:
    """1-D numpy array; float32 stays float32 (the model's dtype), anything else becomes float64."""
    if isinstance(probs, torch.Tensor):
        probs = probs.detach().cpu()
        probs = probs.numpy() if probs.dtype in (torch.float32, torch.float64) else probs.double().numpy()
    arr = np.asarray(probs).reshape(-1)
    if arr.dtype not in (np.float32, np.float64):
        arr = arr.astype(np.float64)
    if not np.all(np.isfinite(arr)) or (len(arr) and (arr.min() < 0 or arr.max() > 1)):
        raise ValueError("probabilities must be finite and lie in [0, 1]")
    return arr


def _labels_array(labels: Any, n: int) -> np.ndarray:
    """Boolean success labels (1/True = success)."""
    if isinstance(labels, torch.Tensor):
        labels = labels.detach().cpu().double().numpy()
    arr = np.asarray(labels, dtype=np.float64).reshape(-1) > 0.5
    if len(arr) != n:
        raise ValueError(f"{len(arr)} labels for {n} probabilities")
    return arr


# ---------------------------------------------------------------------------------------- metrics
def _metrics(per_sample_loss: np.ndarray, pred: np.ndarray, pos: np.ndarray) -> Dict[str, Any]:
    if not len(pos):
        raise ValueError("no samples to compute metrics on")
    neg = ~pos
    tp, fp = int((pred & pos).sum()), int((pred & neg).sum())
    fn, tn = int((~pred & pos).sum()), int((~pred & neg).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    rates = [r for r, m in ((recall, pos), (tn / (tn + fp) if tn + fp else 0.0, neg)) if m.any()]
    class_losses = [float(per_sample_loss[m].mean()) for m in (pos, neg) if m.any()]
    return dict(
        loss=float(per_sample_loss.mean()), balanced_loss=float(np.mean(class_losses)),
        accuracy=(tp + tn) / len(pos), balanced_accuracy=float(np.mean(rates)),
        precision=precision, recall=recall, f1=f1, tp=tp, fp=fp, fn=fn, tn=tn,
    )


def binary_metrics(logits: torch.Tensor, labels: torch.Tensor, threshold: float = 0.5) -> Dict[str, Any]:
    """BCE loss (plain and class-balanced), accuracy, balanced accuracy, precision/recall/F1 of success
    (success predicted when ``sigmoid(logit) > threshold``); keys ``METRIC_KEYS``."""
    logits = torch.as_tensor(logits).detach().float().reshape(-1).cpu()
    y = torch.as_tensor(labels).detach().float().reshape(-1).cpu()
    per = F.binary_cross_entropy_with_logits(logits, y, reduction='none').numpy()
    probs = torch.sigmoid(logits).numpy()
    return _metrics(per, probs > threshold, _labels_array(y, len(probs)))


def metrics_from_probs(probs: Any, labels: Any, threshold: float = 0.5) -> Dict[str, Any]:
    """``binary_metrics`` when only probabilities are known (the loss uses p clipped to [1e-7, 1 - 1e-7])."""
    p = _probs_array(probs)
    pos = _labels_array(labels, len(p))
    pc = np.clip(p.astype(np.float64), _EPS, 1 - _EPS)
    per = -np.where(pos, np.log(pc), np.log1p(-pc))
    return _metrics(per, p > threshold, pos)


def evaluate(model: Any, loader: Any) -> Dict[str, Any]:
    """``binary_metrics`` of a reward model on a loader of (images, labels), at ``model.threshold``
    (eval mode, no gradients)."""
    model.network.eval()
    logits, labels = [], []
    with torch.inference_mode(), model._autocast():
        for images, y in loader:
            logits.append(model.network(model.preprocess_images(images)).float().cpu())
            labels.append(torch.as_tensor(y, dtype=torch.float32))
    return binary_metrics(torch.cat(logits), torch.cat(labels), model.threshold)


# ---------------------------------------------------------------------------------------- PR curve
def _sweep(p: np.ndarray, pos: np.ndarray):
    """Every distinct decision ``p > t`` (t in [0, 1]), by ascending t: (lowest such t, tp, fp)."""
    order = np.argsort(-p, kind='stable')
    ps, ys = p[order], pos[order]
    ends = np.flatnonzero(np.r_[ps[1:] != ps[:-1], True])  # last index of each tie group
    vals = ps[ends]  # distinct values, descending
    tp, fp = np.cumsum(ys)[ends], np.cumsum(~ys)[ends]
    # {p >= vals[k]} is what every t in [vals[k + 1], vals[k]) selects; the lowest is vals[k + 1], or 0 for
    # the smallest value (when it is > 0; {p >= 0} cannot be selected with a threshold >= 0)
    thr = np.r_[vals[1:], np.zeros(1, dtype=p.dtype)]
    if len(vals) and vals[-1] <= 0:
        thr, tp, fp = thr[:-1], tp[:-1], fp[:-1]
    return thr[::-1], tp[::-1], fp[::-1]


def pr_curve(probs: Any, labels: Any) -> Dict[str, List[float]]:
    """Precision and recall of ``p > t`` for every threshold t that changes the decision (ascending;
    each t is the lowest with its decision); thresholds that predict no success are left out."""
    p = _probs_array(probs)
    pos = _labels_array(labels, len(p))
    thr, tp, fp = _sweep(p, pos)
    n_pos = int(pos.sum())
    return dict(thresholds=[float(t) for t in thr],
                precision=[float(a) / float(a + b) for a, b in zip(tp, fp)],
                recall=[float(a) / n_pos if n_pos else 0.0 for a in tp])


def precision_lower_bound(tp: Any, fp: Any, confidence: Optional[float]) -> np.ndarray:
    """One-sided Wilson score lower bound of precision tp / (tp + fp) at ``confidence`` (e.g. 0.95): the
    precision that the true one exceeds with that confidence. ``confidence=None`` gives the point estimate."""
    tp, fp = np.asarray(tp, dtype=np.float64), np.asarray(fp, dtype=np.float64)
    n = np.maximum(tp + fp, 1.0)
    p = tp / n
    if confidence is None:
        return p
    if not 0.5 <= float(confidence) < 1.0:
        raise ValueError(f"confidence must lie in [0.5, 1), got {confidence}")
    from statistics import NormalDist
    z = NormalDist().inv_cdf(float(confidence))
    centre = p + z * z / (2 * n)
    spread = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return np.where(tp + fp > 0, (centre - spread) / (1 + z * z / n), 0.0)


def threshold_for_precision(probs: Any, labels: Any, target: float,
                            confidence: Optional[float] = None) -> Optional[float]:
    """The lowest threshold t (success when ``prob > t``) whose precision on this data is >= ``target``
    (so the highest recall at that precision); None when no threshold reaches it. t is 0 or one of the
    probabilities: for float32 probabilities it decides exactly as ``apply_threshold`` does.

    With ``confidence`` (e.g. 0.95) the precision's Wilson lower bound must reach ``target`` instead of
    the point estimate: on a few hundred validation frames the point estimate jumps by several points
    between thresholds, and the lowest threshold that happens to reach it often falls short on new data."""
    if not 0.0 < float(target) <= 1.0:
        raise ValueError(f"target precision must lie in (0, 1], got {target}")
    p = _probs_array(probs)
    pos = _labels_array(labels, len(p))
    thr, tp, fp = _sweep(p, pos)
    ok = np.flatnonzero((tp > 0) & (precision_lower_bound(tp, fp, confidence) >= float(target)))
    if not len(ok):
        return None
    t = float(thr[ok[0]])
    pred = p > t  # the same comparison the model makes: check it
    tp_t, fp_t = int((pred & pos).sum()), int((pred & ~pos).sum())
    if not (tp_t and precision_lower_bound(tp_t, fp_t, confidence) >= float(target)):
        raise AssertionError(f"threshold {t} gives precision {tp_t}/{tp_t + fp_t} below {target}")
    return t


def average_precision(probs: Any, labels: Any) -> Optional[float]:
    """Area under the step PR curve: sum of (R_k - R_{k-1}) * P_k by descending threshold; None with no success."""
    curve = pr_curve(probs, labels)
    if not any(_labels_array(labels, len(_probs_array(probs)))):
        return None
    ap, prev = 0.0, 0.0
    for prec, rec in zip(reversed(curve['precision']), reversed(curve['recall'])):
        ap += (rec - prev) * prec
        prev = rec
    return float(ap)


# ---------------------------------------------------------------------------------------- report
def _group(p: np.ndarray, pos: np.ndarray, mask: np.ndarray, thresholds: Mapping[str, Optional[float]]):
    out: Dict[str, Any] = dict(num_images=int(mask.sum()), num_success=int((pos & mask).sum()))
    for key, t in thresholds.items():
        out[key] = metrics_from_probs(p[mask], pos[mask], t) if (mask.any() and t is not None) else None
    return out


def _category(value: Any) -> str:
    if value is None:
        return '(none)'
    return str(value).lower() if isinstance(value, bool) else str(value)


def categorical_fields(frames: Sequence[Mapping[str, Any]]) -> List[str]:
    """Per-frame fields whose values are all str or bool (with at most ``MAX_GROUPS`` distinct values),
    except file, label, episode_id and step."""
    keys: List[str] = []
    for f in frames:
        keys += [k for k in f if k not in keys and k not in BREAKDOWN_SKIP]
    out = []
    for k in keys:
        values = [f[k] for f in frames if f.get(k) is not None]
        if values and all(isinstance(v, (str, bool)) for v in values) and len(set(values)) <= MAX_GROUPS:
            out.append(k)
    return out


def short_name(path: Optional[str]) -> Optional[str]:
    """``/a/b/success/0001.png`` -> ``success/0001.png``."""
    if not path:
        return None
    return '/'.join(os.path.normpath(str(path)).split(os.sep)[-2:])


def _worst(p, pos, want_pos, operating, files, frames) -> List[Dict[str, Any]]:
    idx = np.flatnonzero(pos if want_pos else ~pos)
    idx = idx[np.argsort(p[idx] if want_pos else -p[idx], kind='stable')][:WORST_K]
    out = []
    for i in idx.tolist():
        row = frames[i] if frames is not None else {}
        wrong = bool(p[i] <= operating) if want_pos else bool(p[i] > operating)
        out.append(dict(index=i, prob=float(p[i]), error=wrong,
                        file=short_name(files[i]) if files is not None else row.get('file'),
                        source=row.get('source'), phase=row.get('phase')))
    return out


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if np.isfinite(obj) else None
    if isinstance(obj, (str, type(None))):
        return obj
    return str(obj)


def fidelity_report(probs: Any, labels: Any, *, frames: Optional[Sequence[Mapping[str, Any]]] = None,
                    images: Any = None, files: Optional[Sequence[str]] = None, threshold: float = 0.5,
                    target_precision: float = 0.95, out_dir: Optional[str] = None,
                    subsets: Optional[Mapping[str, Any]] = None, title: str = '',
                    confidence: Optional[float] = None) -> Dict[str, Any]:
    """Judge the classifier on held-out data (``probs``: success probabilities, aligned with ``labels``,
    and with ``frames`` / ``images`` / ``files`` when given).

    Returns a json-safe dict: ``at_threshold`` (metrics at ``threshold``), ``chosen_threshold`` (the
    lowest threshold reaching ``target_precision``, at ``confidence`` when given, see
    ``threshold_for_precision``; None with
    ``chosen_reason``), ``at_chosen``, ``operating_threshold`` (the chosen one, else ``threshold``),
    ``average_precision``, ``pr_curve``, ``subsets`` ({name: group} for boolean masks), ``breakdowns``
    ({field: {value: group}} for every categorical field of ``frames``), ``worst_false_positives`` /
    ``worst_false_negatives``, and ``paths``. A group is {num_images, num_success, at_threshold,
    at_chosen}. With ``out_dir`` it writes pr_curve.png, confusion_matrix.png,
    probability_histogram.png, worst_errors.png (only with ``images``) and report.json there.
    """
    p = _probs_array(probs)
    pos = _labels_array(labels, len(p))
    n = len(p)
    if not n:
        raise ValueError("no images to evaluate")
    for name, seq in (('frames', frames), ('images', images), ('files', files)):
        if seq is not None and len(seq) != n:
            raise ValueError(f"{name} has {len(seq)} entries for {n} probabilities")
    threshold = float(threshold)
    chosen = threshold_for_precision(p, pos, target_precision, confidence)
    curve = pr_curve(p, pos)
    reason = None
    if chosen is None:
        if not pos.any():
            reason = 'the data has no success images'
        elif confidence is None:
            best = int(np.argmax(curve['precision']))
            reason = (f"no threshold reaches precision {target_precision:g}: the highest is "
                      f"{curve['precision'][best]:.3f} (threshold {curve['thresholds'][best]:.4g})")
        else:
            _, tp, fp = _sweep(p, pos)
            lb = precision_lower_bound(tp, fp, confidence)
            best = int(np.argmax(lb))
            reason = (f"no threshold reaches precision {target_precision:g} at {confidence:g} confidence: the "
                      f"highest lower bound is {lb[best]:.3f} ({int(tp[best])} true of {int(tp[best] + fp[best])} "
                      f"predicted successes); more validation frames narrow the bound")
    operating = chosen if chosen is not None else threshold
    at_t = {'at_threshold': threshold, 'at_chosen': chosen}
    report: Dict[str, Any] = dict(
        title=title, num_images=n, num_success=int(pos.sum()), num_failure=int(n - pos.sum()),
        threshold=threshold, target_precision=float(target_precision), confidence=confidence,
        chosen_threshold=chosen,
        chosen_reason=reason, operating_threshold=operating,
        at_threshold=metrics_from_probs(p, pos, threshold),
        at_chosen=metrics_from_probs(p, pos, chosen) if chosen is not None else None,
        average_precision=average_precision(p, pos), pr_curve=curve, subsets={}, breakdowns={},
    )
    for name, mask in (subsets or {}).items():
        m = np.asarray(mask, dtype=bool).reshape(-1)
        if len(m) != n:
            raise ValueError(f"subset {name!r} has {len(m)} entries for {n} probabilities")
        report['subsets'][str(name)] = _group(p, pos, m, at_t)
    if frames is not None:
        for field in categorical_fields(frames):
            values = np.asarray([_category(f.get(field)) for f in frames], dtype=object)
            report['breakdowns'][field] = {v: _group(p, pos, values == v, at_t) for v in sorted(set(values))}
    report['worst_false_positives'] = _worst(p, pos, False, operating, files, frames)
    report['worst_false_negatives'] = _worst(p, pos, True, operating, files, frames)
    report['paths'] = {}
    report = _jsonable(report)
    if out_dir is not None:
        from .evaluation_plots import write_plots
        out_dir = os.path.abspath(out_dir)
        os.makedirs(out_dir, exist_ok=True)
        report['paths'] = write_plots(report, p, pos, images, out_dir)
        report['paths']['report_json'] = os.path.join(out_dir, REPORT_JSON)
        write_json_atomic(report['paths']['report_json'], report)
    return report


def report_summary(report: Mapping[str, Any]) -> Dict[str, Any]:
    """The report without its curve, groups and example lists (for summaries)."""
    keys = ('num_images', 'num_success', 'num_failure', 'threshold', 'target_precision', 'confidence',
            'chosen_threshold',
            'chosen_reason', 'average_precision', 'at_threshold', 'at_chosen', 'paths')
    return {k: report.get(k) for k in keys}


# ---------------------------------------------------------------------------------------- console
def _fmt(v: Any, spec: str = '.3f') -> str:
    return '-' if v is None else format(v, spec)


def _row(name: str, m: Optional[Mapping[str, Any]], width: int, n: Optional[int] = None,
         n_pos: Optional[int] = None) -> str:
    head = f"  {name:<{width}}" + ('' if n is None else f" {n:>6} {n_pos:>6}")
    if m is None:
        return head + "  -"
    prec = m['precision'] if m['tp'] + m['fp'] else None
    rec = m['recall'] if m['tp'] + m['fn'] else None
    return head + (f" {_fmt(m['accuracy']):>6} {_fmt(m['balanced_accuracy']):>7} {_fmt(prec):>6} {_fmt(rec):>6} "
                   f"{_fmt(m['f1']):>6} {m['tp']:>5} {m['fp']:>5} {m['fn']:>5} {m['tn']:>5}")


def format_report(report: Mapping[str, Any], groups_at: str = 'chosen') -> str:
    """A compact console table of the report; subsets and breakdowns at the chosen threshold (when there is one),
    or with ``groups_at='given'`` at the given threshold."""
    cols = f" {'acc':>6} {'balacc':>7} {'prec':>6} {'recall':>6} {'F1':>6} {'tp':>5} {'fp':>5} {'fn':>5} {'tn':>5}"
    lines = [f"fidelity report{': ' + report['title'] if report.get('title') else ''} "
             f"({report['num_images']} images: {report['num_success']} success / {report['num_failure']} failure)"]
    ap = report.get('average_precision')
    chosen = report.get('chosen_threshold')
    conf = report.get('confidence')
    target = f"{report['target_precision']:g}" + (f" at {conf:g} confidence" if conf is not None else '')
    lines.append(f"average precision {_fmt(ap)}; target precision {target}: " +
                 (f"chosen threshold {chosen:.6g}" if chosen is not None else
                  f"no threshold chosen ({report.get('chosen_reason')})"))
    lines.append(f"  {'threshold':<22}" + cols)
    lines.append(_row(f"given  {report['threshold']:.4g}", report['at_threshold'], 22))
    lines.append(_row(f"chosen {chosen:.4g}" if chosen is not None else 'chosen -', report.get('at_chosen'), 22))
    key = 'at_chosen' if chosen is not None and groups_at == 'chosen' else 'at_threshold'
    group_threshold = report['operating_threshold'] if key == 'at_chosen' else report['threshold']
    groups = [('subset', report.get('subsets') or {})] + \
        [(f"by {field}", g) for field, g in (report.get('breakdowns') or {}).items()]
    for name, group in groups:
        if not group:
            continue
        width = max(14, *(len(v) for v in group))
        lines.append(f"{name} (at threshold {group_threshold:.4g}):")
        lines.append(f"  {'':<{width}} {'n':>6} {'succ':>6}" + cols)
        lines += [_row(v, g[key], width, g['num_images'], g['num_success']) for v, g in group.items()]
    for name, path in (report.get('paths') or {}).items():
        lines.append(f"{name}: {path}")
    return '\n'.join(lines)


# ---------------------------------------------------------------------------------------- model I/O
def score_images(model: Any, images: Any, batch_size: int = 256, states: Any = None) -> np.ndarray:
    """Success probabilities (float32 numpy) of ``images`` with ``model.predict_proba``, in batches (``states``: the
    robot's reward state per image, for a model that gates on it)."""
    n = len(images)
    if not n:
        raise ValueError("no images to score")
    bs = max(1, int(batch_size))
    return torch.cat([model.predict_proba(images[i:i + bs], states=None if states is None else states[i:i + bs])
                      for i in range(0, n, bs)]).numpy()


def calibration_metadata(report: Mapping[str, Any], data: str) -> Dict[str, Any]:
    """Checkpoint metadata (``CALIBRATION_KEYS``) for the report's chosen threshold."""
    if report.get('chosen_threshold') is None:
        raise ValueError(f"no threshold to store: {report.get('chosen_reason')}")
    m = report['at_chosen']
    return dict(calibrated_threshold=float(report['chosen_threshold']),
                calibration_target_precision=float(report['target_precision']),
                calibration_confidence=report.get('confidence'),
                calibration_data=str(data), calibration_precision=float(m['precision']),
                calibration_recall=float(m['recall']))


def store_calibration(checkpoint_path: str, report: Mapping[str, Any], data: str) -> Dict[str, Any]:
    """Rewrite ``checkpoint_path`` (atomically, same weights) with ``calibration_metadata`` added; returns it."""
    return update_checkpoint_metadata(checkpoint_path, calibration_metadata(report, data))
