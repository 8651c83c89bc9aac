"""A simulated Franka peg-insertion cell: franky-sim (MuJoCo) behind the real libfranka protocol, plus a camera.

Run it with the robot-sim venv (franky-sim's pinocchio needs numpy>=2, the main venv pins numpy<2)::

    MUJOCO_GL=egl .robot-sim-venv/bin/python -m dizoo_franka.sim_cell --camera-port 0

Scene: an FR3 on the ground with a peg rigidly attached to its hand (pointing along the tool axis, its tip
``PEG_TIP_OFFSET`` beyond the TCP), a board whose top is at ``BOARD_TOP_Z`` with a square hole at
``HOLE_XY``, and a fixed camera ``insertion_cam`` that sees the peg and the hole.

Once the robot server and the frame server accept connections it prints one line::

    READY {"robot_ip": "127.0.0.1", "camera_port": 40123, "image_size": [128, 128], ...}

Frame protocol (TCP, loopback): the client sends the single byte ``b"F"``; the cell renders the current state
and answers with a header ``struct.pack("!IHHH", n_bytes, height, width, channels)`` followed by ``n_bytes`` of
row-major RGB uint8. Any other request byte closes the connection. SIGTERM / SIGINT stop the cell cleanly.

While a motion runs, the cell steps in lockstep with the client (``start_lockstep``): on a loaded machine
simulated time runs slower than wall time instead of dropping the client's commands.

A collision reflex (``sim_cell_reflex``) aborts the running motion when the robot presses on the board with more
than ``--reflex-force`` newtons, as the real robot's controller does; ``recover_from_errors`` clears it.
"""
import argparse
import json
import logging
import os
import select
import signal
import socket
import struct
import sys
import threading
import time
import xml.etree.ElementTree as ET

import numpy as np

os.environ.setdefault("MUJOCO_GL", "egl")

FRAME_REQUEST = b"F"
FRAME_HEADER = struct.Struct("!IHHH")  # n_bytes, height, width, channels

# Scene geometry (metres, robot base frame = world frame).
HOLE_XY = (0.55, 0.08)  # centre of the hole
BOARD_TOP_Z = 0.10  # the board is a block from the ground to this height
BOARD_HALF_SIZE = 0.10  # half the board's side
HOLE_HALF_WIDTH = 0.012  # square hole, 4 mm clearance around the peg
HOLE_DEPTH = 0.05
BOARD_GEOMS = ("board_front", "board_back", "board_left", "board_right", "board_hole_floor")
PEG_RADIUS = 0.008
PEG_TIP_OFFSET = 0.05  # the peg tip lies this far beyond the TCP along the tool z axis
PEG_LENGTH = 0.09
TCP_IN_HAND = 0.1034  # franky-sim's TCP: 0.1034 m along the hand's z axis (same rotation as the hand)


def inserted_tcp_z(depth: float = 0.03) -> float:
    """TCP height when the peg tip is ``depth`` below the board's top (peg vertical)."""
    return BOARD_TOP_Z - depth + PEG_TIP_OFFSET


def add_peg(sim) -> None:
    """Attach the peg to robot 0's hand body: a cylinder on the tool axis, ending PEG_TIP_OFFSET past the TCP."""
    hand = next(b for b in sim.worldbody.iter("body") if b.get("name") == "robot0_hand")
    tip_z = TCP_IN_HAND + PEG_TIP_OFFSET
    ET.SubElement(
        hand, "geom", name="peg", type="cylinder", size=f"{PEG_RADIUS} {PEG_LENGTH / 2}",
        pos=f"0 0 {tip_z - PEG_LENGTH / 2}", mass="0.02", rgba="0.85 0.45 0.1 1", group="1",
        contype="2", conaffinity="2", friction="0.3 0.005 0.0001"
    )


def add_board(sim) -> None:
    """A block with a square hole: four walls around the hole and a floor under it (collides with the peg only)."""
    board = ET.SubElement(sim.worldbody, "body", name="board", pos=f"{HOLE_XY[0]} {HOLE_XY[1]} 0")
    s, h, top = BOARD_HALF_SIZE, HOLE_HALF_WIDTH, BOARD_TOP_Z
    common = dict(type="box", rgba="0.55 0.4 0.3 1", contype="2", conaffinity="2", group="1")
    wall = (s - h) / 2  # half width of the walls beside the hole
    for name, pos, size in [
        ("board_front", (s - wall, 0, top / 2), (wall, s, top / 2)),
        ("board_back", (-(s - wall), 0, top / 2), (wall, s, top / 2)),
        ("board_left", (0, s - wall, top / 2), (h, wall, top / 2)),
        ("board_right", (0, -(s - wall), top / 2), (h, wall, top / 2)),
    ]:
        ET.SubElement(board, "geom", name=name, pos="%g %g %g" % pos, size="%g %g %g" % size, **common)
    floor_half = (top - HOLE_DEPTH) / 2
    ET.SubElement(board, "geom", name="board_hole_floor", pos=f"0 0 {floor_half}", size=f"{h} {h} {floor_half}",
                  **dict(common, rgba="0.2 0.15 0.1 1"))
    ET.SubElement(board, "site", name="hole", pos=f"0 0 {top}", size="0.004", rgba="0 1 0 1")


def add_camera(sim) -> None:
    """A fixed camera in front of and above the board, looking at the hole."""
    hx, hy = HOLE_XY
    ET.SubElement(sim.worldbody, "body", name="camera_target", pos=f"{hx} {hy} {BOARD_TOP_Z + 0.08}")
    ET.SubElement(sim.worldbody, "camera", name="insertion_cam", mode="targetbody", target="camera_target",
                  pos=f"{hx + 0.30} {hy - 0.30} {BOARD_TOP_Z + 0.25}", fovy="45")


def cheap_rendering(sim) -> None:
    """No shadow maps and little multisampling: franky-sim's 4096 px shadows cost ~0.25 s per frame on CPU (EGL
    with Mesa llvmpipe), ~0.02 s without."""
    quality = sim.scene.find("visual/quality")
    quality.set("shadowsize", "0")
    quality.set("offsamples", "2")


def copy_kinematics(robot) -> None:
    """Make the robot's forward kinematics return copies.

    franky-sim's ``BaseRobot.kinematics`` returns pinocchio's ``data.oMf[tcp]`` itself, a reference that every
    later kinematics call overwrites: the measured pose ``O_T_EE`` it reports then holds the last pose computed,
    the desired one (from ``q_d``), and the arm's tracking error never shows. With a copy, ``O_T_EE`` is the
    forward kinematics of the measured joint positions, as on the real robot.
    """
    kinematics = robot.kinematics
    robot.kinematics = lambda q: kinematics(q).copy()


def exact_command_derivatives(robot) -> None:
    """Report the commanded TCP velocity and acceleration (``O_dP_EE_c``, ``O_ddP_EE_c``) as they are.

    franky-sim smooths their finite differences with an exponential filter (alpha 0.95 per 1 ms tick, ~20 ms of
    lag). franky starts every new motion from these values, so each step that replaced a running motion restarted
    the planner from a stale speed (too high while braking), and the commanded pose overshot its target by more
    than the braking distance, the more so the slower the loaded simulation ran. The real robot reports the
    commanded derivatives without such lag.
    """
    for name in ("O_T_EE_c", "O_dP_EE_c"):
        robot._tracked_state_components[name].observers["fd"]._alpha = 0.0


def build_simulation(initial_q=None):
    """The franky-sim MuJoCo simulator with the cell's scene, and its robot (not started yet)."""
    from franky_sim.mujoco_simulator import MujocoSimulator
    sim = MujocoSimulator(enable_visualization=False)
    sim.init()
    robot = sim.add_robot() if initial_q is None else sim.add_robot(initial_q=initial_q)
    copy_kinematics(robot)
    exact_command_derivatives(robot)
    add_peg(sim)
    add_board(sim)
    add_camera(sim)
    cheap_rendering(sim)
    return sim, robot


class SharedQpos:
    """The simulator's joint positions after the latest physics step, in shared memory for the frame process.

    The physics thread copies qpos (a few dozen floats, microseconds) after every step; the frame process renders
    from the latest copy and never holds the physics thread's GIL (a renderer thread in the cell's own process
    held it for ~0.2 s per frame on a loaded machine, long enough for libfranka's UDP timeout).
    """

    def __init__(self, context, size: int) -> None:
        self.buffer = context.Array("d", size, lock=False)

    def attach(self, sim) -> None:
        view = np.frombuffer(self.buffer, dtype=np.float64)
        view[:] = sim.data.qpos

        def publish(sim) -> None:
            view[:] = sim.data.qpos

        sim.register_post_step_callback(publish)


class FrameServer:
    """Serves rendered frames of the cell's scene over a loopback TCP socket (one thread per client); runs in its
    own process (``serve_frames``). Each client gets its own renderer and MjData; a frame shows the latest qpos."""

    def __init__(self, model, qpos, width: int = 128, height: int = 128, camera: str = "insertion_cam",
                 host: str = "127.0.0.1", port: int = 0):
        self.model, self.qpos = model, qpos
        self.width, self.height, self.camera = width, height, camera
        self._listener = socket.create_server((host, port))
        self.port = self._listener.getsockname()[1]

    def serve_forever(self) -> None:
        while True:
            conn, _ = self._listener.accept()
            threading.Thread(target=self._serve, args=(conn, ), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        import mujoco
        data = mujoco.MjData(self.model)
        renderer = mujoco.Renderer(self.model, self.height, self.width)
        try:
            with conn:
                while conn.recv(1) == FRAME_REQUEST:
                    data.qpos[:] = self.qpos
                    mujoco.mj_kinematics(self.model, data)
                    mujoco.mj_camlight(self.model, data)  # cameras and lights (targetbody mode) follow the bodies
                    renderer.update_scene(data, camera=self.camera)
                    payload = renderer.render().tobytes()
                    conn.sendall(FRAME_HEADER.pack(len(payload), self.height, self.width, 3) + payload)
        except (ConnectionError, OSError):
            pass
        finally:
            renderer.close()


def serve_frames(scene_xml: str, qpos_buffer, image_size: int, port: int, port_out) -> None:
    """The frame process: build the scene's model, report the bound port through ``port_out``, serve until killed
    (it ends with the cell: SIGTERM from the cell, or from the kernel when the cell dies)."""
    import ctypes
    import mujoco
    if sys.platform.startswith("linux"):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    model = mujoco.MjModel.from_xml_string(scene_xml)
    server = FrameServer(model, np.frombuffer(qpos_buffer, dtype=np.float64), image_size, image_size, port=port)
    port_out.send(server.port)
    server.serve_forever()


def start_frame_process(sim, image_size: int, port: int):
    """Spawn the frame process for a started simulator; returns (process, port)."""
    import multiprocessing
    context = multiprocessing.get_context("spawn")
    qpos = SharedQpos(context, sim.model.nq)
    qpos.attach(sim)
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(
        target=serve_frames, args=(ET.tostring(sim.scene, encoding="unicode"), qpos.buffer, image_size, port, sender),
        daemon=True, name="sim_cell frames"
    )
    process.start()
    if not receiver.poll(120):
        process.terminate()
        raise RuntimeError("the frame process did not start in 120 s")
    return process, receiver.recv()


def _udp_socket(robot_server):
    return robot_server._FrankaServer__udp_socket  # franky-sim's (name-mangled) per-client UDP socket


def start_lockstep(server, command_wait_s: float = 0.1) -> None:
    """Run franky-sim's 1 kHz loop in lockstep with the client while a motion runs.

    franky-sim's own loop (``SimulationServer.run_async``) steps every millisecond of wall time whether or not the
    client has answered the last state, as the real robot does. A client on a loaded non-realtime machine then
    misses states ("packets lost in a row"): the cell repeats the last command, then jumps, and the commanded
    velocity and acceleration it reports (which franky starts every new motion from) spike. Motions replaced in
    flight then overshot their targets by centimetres, or franky's planner failed (error -111). The real robot's
    controller would stop with ``communication_constraints_violation`` instead; the cell waits: while a motion
    runs, after sending a state it waits up to ``command_wait_s`` for the client's command before the next
    physics step. Simulated time then runs slower than wall time on a loaded machine, and every state gets its
    command, as on a robot PC with a realtime kernel. Idle (no motion), the loop keeps franky-sim's 1 kHz pace.
    """
    robot_servers, sim = server.robot_servers, server.sim

    def loop() -> None:
        while server.running:
            start = time.monotonic()
            for robot_server in robot_servers:
                robot_server.process_commands()
            sim.step()
            for robot_server in robot_servers:
                robot_server.send_state()
            waiting = [s for s in (_udp_socket(rs) for rs in robot_servers if rs.current_motion_id) if s is not None]
            if waiting:
                select.select(waiting, [], [], command_wait_s)
            time.sleep(max(0.0, 0.001 - (time.monotonic() - start)))

    server.running = True
    server.async_thread = threading.Thread(target=loop, daemon=True, name="sim_cell lockstep")
    server.async_thread.start()


def run_cell(camera_port: int = 0, image_size: int = 128, hostname: str = None, reflex_force: float = 60.0,
             lockstep: bool = True) -> None:
    """Start physics, robot server and frame server; print READY; block until SIGTERM/SIGINT."""
    from franky_sim import SimulationServer

    from dizoo_franka.sim_cell_reflex import CollisionReflex
    sim, robot = build_simulation()
    kwargs = {} if hostname is None else {"hostname_candidates": [hostname]}
    server = SimulationServer(sim, **kwargs)
    server.init()  # binds the robot (and gripper) servers and builds the MuJoCo model
    # also reports the board's contact force as the robot's external force estimate; reflex_force 0: no reflex
    CollisionReflex(sim, server.robot_servers[0], BOARD_GEOMS,
                    force_threshold=reflex_force if reflex_force > 0 else float("inf"))
    frames, frames_port = start_frame_process(sim, image_size, camera_port)
    if lockstep:
        start_lockstep(server)
    else:
        server.run_async()

    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    ready = {
        "robot_ip": robot.hostname,
        "camera_port": frames_port,
        "image_size": [image_size, image_size],
        "hole_xy": list(HOLE_XY),
        "board_top_z": BOARD_TOP_Z,
        "inserted_tcp_z": inserted_tcp_z(),
        "reflex_force": reflex_force,
        "lockstep": lockstep,
        "pid": os.getpid(),
    }
    print("READY " + json.dumps(ready), flush=True)
    while not stop.wait(0.2):
        if not server.async_thread.is_alive():
            print("sim_cell: physics thread died", file=sys.stderr, flush=True)
            break
    frames.terminate()
    frames.join(10)
    server.cleanup()
    sim.cleanup()
    print("sim_cell: stopped", flush=True)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--camera-port", type=int, default=0, help="TCP port of the frame server (0: any free)")
    parser.add_argument("--image-size", type=int, default=128, help="rendered frame side in pixels")
    parser.add_argument("--hostname", default=None, help="loopback address for the robot server (default: auto)")
    parser.add_argument("--reflex-force", type=float, default=60.0,
                        help="robot-board contact force (N) that triggers a collision reflex (0: never)")
    parser.add_argument("--no-lockstep", dest="lockstep", action="store_false",
                        help="step every millisecond of wall time, answered or not (franky-sim's own loop)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    run_cell(args.camera_port, args.image_size, args.hostname, args.reflex_force, args.lockstep)
    # everything is stopped and closed: skip the interpreter's teardown of mujoco / EGL / pinocchio, which crashed
    # (SIGSEGV) or stalled for more than 20 s on a loaded machine
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
