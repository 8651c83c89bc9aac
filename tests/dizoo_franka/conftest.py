"""The real franky-sim cell (``dizoo_franka.sim_cell``) as fixtures: subprocesses of the robot-sim venv."""
import pytest

from dizoo_franka.sim_cell_process import SimCellProcess


def _start(workdir) -> SimCellProcess:
    try:
        return SimCellProcess(workdir)
    except RuntimeError as e:
        pytest.fail(str(e))


@pytest.fixture(scope="module")
def sim_cell(tmp_path_factory):
    """Start the cell, wait for its READY line, yield its READY dict (robot_ip, camera_port, log_path, ...), stop
    it; a clean SIGTERM shutdown is part of the cell's contract."""
    cell = _start(tmp_path_factory.mktemp("sim_cell"))
    try:
        yield cell.ready
    finally:
        returncode = cell.stop()
    assert returncode == 0, f"the sim cell exited with {returncode} after SIGTERM; log: {cell.log_path}"


@pytest.fixture
def own_sim_cell(tmp_path):
    """A cell for one test alone (which may stop or kill it): the ``SimCellProcess``."""
    cell = _start(tmp_path / "cell")
    try:
        yield cell
    finally:
        cell.stop()
