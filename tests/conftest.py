import os
import warnings

import pytest

os.environ.setdefault("DEBUG_IMAGE_SAVE_DIR", "")  # tests set debug dirs explicitly
warnings.filterwarnings("ignore", category=DeprecationWarning)
warnings.filterwarnings("ignore", category=FutureWarning)


@pytest.fixture
def tb_logger(tmp_path):
    from torch.utils.tensorboard import SummaryWriter
    writer = SummaryWriter(str(tmp_path / "tb"))
    yield writer
    writer.close()


@pytest.fixture(scope="session", autouse=True)
def nothing_written_outside_tmp_path():
    """Tests write only under tmp_path: the checkout gains no files or folders while the suite runs."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ignore = {'.pytest_cache', '__pycache__'}
    before = set(os.listdir(root))
    yield
    added = sorted(set(os.listdir(root)) - before - ignore)
    assert not added, f"the test suite wrote {added} into the checkout {root}; write under tmp_path"


@pytest.fixture(scope="session")
def tiny_qwen_vl(tmp_path_factory):
    """A tiny Qwen2-VL with random weights, saved as a local model folder (``ding_ext.random_qwen_vl``)."""
    from ding_ext.random_qwen_vl import build_random_qwen_vl
    return build_random_qwen_vl(str(tmp_path_factory.mktemp("tiny_qwen_vl")))


@pytest.fixture(scope="session")
def tiny_qwen25_vl(tmp_path_factory):
    """The same sizes in the Qwen2.5-VL family."""
    from ding_ext.random_qwen_vl import build_random_qwen_vl
    return build_random_qwen_vl(str(tmp_path_factory.mktemp("tiny_qwen25_vl")), arch='tiny-qwen2.5')
