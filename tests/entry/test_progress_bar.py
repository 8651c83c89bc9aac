"""The entries' progress bar follows the run's finite budget."""
from easydict import EasyDict

from entry.serial_entry_reward_model import NO_LIMIT, _progress_bar


def test_progress_bar_follows_the_budget(capsys):
    cfg = EasyDict(exp_name='run')
    bar = _progress_bar(cfg, NO_LIMIT, 3000, envstep=256)
    assert bar.unit == 'step' and bar.total == 3000 and bar.n == 256
    bar.update(100)
    bar.close()
    assert '356/3000' in capsys.readouterr().err
    bar = _progress_bar(cfg, 40, NO_LIMIT, envstep=0)
    assert bar.unit == 'iter' and bar.total == 40
    bar.close()
    assert _progress_bar(cfg, NO_LIMIT, NO_LIMIT, envstep=0) is None  # nothing to count towards
    assert _progress_bar(EasyDict(exp_name='run', progress=False), 40, 3000, envstep=0) is None
