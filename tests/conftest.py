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
