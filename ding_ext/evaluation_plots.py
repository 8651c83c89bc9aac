"""PNG plots of the fidelity report (``evaluation.fidelity_report``): matplotlib figures drawn on an
Agg canvas (no pyplot, no global backend switch, no display needed), written atomically."""
import os
from typing import Any, Dict, List, Mapping, Optional

import numpy as np

from .checkpoint_io import atomic_write

PLOT_NAMES = ('pr_curve', 'confusion_matrix', 'probability_histogram', 'worst_errors')


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: str) -> str:
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format='png'))
    return path


def _title(report: Mapping[str, Any], what: str) -> str:
    return f"{report['title']}: {what}" if report.get('title') else what


def pr_curve_png(report: Mapping[str, Any], path: str) -> str:
    curve, chosen = report['pr_curve'], report.get('chosen_threshold')
    fig = _figure(5.5, 4.5)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(curve['recall'][::-1], curve['precision'][::-1], '.-', ms=3, color='tab:blue', label='PR curve')
    ax.axhline(report['target_precision'], color='tab:gray', ls='--', lw=1,
               label=f"target precision {report['target_precision']:g}")
    given = report['at_threshold']
    if given['tp'] + given['fp']:  # precision is undefined when nothing is predicted success
        ax.plot([given['recall']], [given['precision']], 's', color='tab:orange',
                label=f"given threshold {report['threshold']:.4g}")
    if chosen is not None:
        m = report['at_chosen']
        ax.plot([m['recall']], [m['precision']], 'o', color='tab:red', ms=8,
                label=f"chosen threshold {chosen:.4g} (P {m['precision']:.3f}, R {m['recall']:.3f})")
    ap = report.get('average_precision')
    ax.set(xlabel='recall (success)', ylabel='precision (success)', xlim=(-0.02, 1.02), ylim=(-0.02, 1.02),
           title=_title(report, f"PR curve, AP {ap:.3f}" if ap is not None else "PR curve"))
    ax.grid(alpha=0.3)
    ax.legend(loc='lower left', fontsize=7)
    return _save(fig, path)


def confusion_matrix_png(report: Mapping[str, Any], path: str) -> str:
    chosen = report.get('chosen_threshold')
    if chosen is not None:
        m = report['at_chosen']
        what = f"at chosen threshold {chosen:.4g}\n(lowest with precision >= {report['target_precision']:g})"
    else:
        m = report['at_threshold']
        what = (f"at given threshold {report['threshold']:.4g}\n"
                f"(no threshold reaches precision {report['target_precision']:g})")
    counts = np.array([[m['tn'], m['fp']], [m['fn'], m['tp']]])
    fig = _figure(4.5, 4.2)
    ax = fig.add_subplot(1, 1, 1)
    ax.imshow(counts, cmap='Blues')
    for (r, c), v in np.ndenumerate(counts):
        ax.text(c, r, str(v), ha='center', va='center', fontsize=14,
                color='white' if v > counts.max() / 2 else 'black')
    ax.set_xticks([0, 1], ['failure', 'success'])
    ax.set_yticks([0, 1], ['failure', 'success'])
    ax.set(xlabel='predicted', ylabel='label', title=_title(report, f"confusion matrix {what}"))
    ax.title.set_fontsize(9)
    return _save(fig, path)


def probability_histogram_png(report: Mapping[str, Any], probs: np.ndarray, pos: np.ndarray, path: str) -> str:
    fig = _figure(6, 4)
    ax = fig.add_subplot(1, 1, 1)
    bins = np.linspace(0.0, 1.0, 41)
    for mask, name, color in ((~pos, 'failure (label 0)', 'tab:red'), (pos, 'success (label 1)', 'tab:green')):
        if mask.any():
            ax.hist(probs[mask].astype(np.float64), bins=bins, alpha=0.55, color=color, log=True,
                    label=f"{name}: {int(mask.sum())}")
    ax.axvline(report['threshold'], color='tab:orange', ls='--', label=f"given threshold {report['threshold']:.4g}")
    if report.get('chosen_threshold') is not None:
        ax.axvline(report['chosen_threshold'], color='black', label=f"chosen threshold {report['chosen_threshold']:.4g}")
    ax.set(xlabel='success probability', ylabel='images (log)', xlim=(0, 1),
           title=_title(report, 'probability per class'))
    ax.legend(fontsize=7)
    return _save(fig, path)


def _caption(entry: Mapping[str, Any]) -> str:
    parts = [f"p={entry['prob']:.3f}" + (' (error)' if entry.get('error') else '')]
    if entry.get('file'):
        parts.append(str(entry['file']))
    extra = '/'.join(str(entry[k]) for k in ('source', 'phase') if entry.get(k) is not None)
    if extra:
        parts.append(extra)
    return '\n'.join(parts)


def worst_errors_png(report: Mapping[str, Any], images: Any, path: str) -> str:
    from .image_utils import to_uint8_hwc
    rows: List = [('highest p among failures (false positives)', report['worst_false_positives']),
                  ('lowest p among successes (false negatives)', report['worst_false_negatives'])]
    cols = max(1, max(len(r[1]) for r in rows))
    fig = _figure(1.7 * cols + 0.4, 4.8)
    for r, (name, entries) in enumerate(rows):
        for c in range(cols):
            ax = fig.add_subplot(2, cols, r * cols + c + 1)
            ax.set_xticks([])
            ax.set_yticks([])
            if c < len(entries):
                ax.imshow(to_uint8_hwc(images[entries[c]['index']]))
                ax.set_title(_caption(entries[c]), fontsize=6, color='tab:red' if entries[c]['error'] else 'black')
            else:
                ax.axis('off')
            if c == 0:
                ax.set_ylabel(name if entries else f"{name}: none", fontsize=6)
    fig.suptitle(_title(report, f"worst examples at threshold {report['operating_threshold']:.4g} "
                                "(red: misclassified)"), fontsize=9)
    return _save(fig, path)


def write_plots(report: Mapping[str, Any], probs: np.ndarray, pos: np.ndarray, images: Optional[Any],
                out_dir: str) -> Dict[str, str]:
    """The report's PNGs in ``out_dir``; returns {plot name: path} (no worst_errors without images)."""
    paths = {
        'pr_curve': pr_curve_png(report, os.path.join(out_dir, 'pr_curve.png')),
        'confusion_matrix': confusion_matrix_png(report, os.path.join(out_dir, 'confusion_matrix.png')),
        'probability_histogram': probability_histogram_png(
            report, probs, pos, os.path.join(out_dir, 'probability_histogram.png')),
    }
    if images is not None:
        paths['worst_errors'] = worst_errors_png(report, images, os.path.join(out_dir, 'worst_errors.png'))
    return paths
