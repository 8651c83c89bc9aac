"""A collision reflex for the sim cell, as the real robot has one (franky-sim itself simulates no errors), and
the robot's external force estimate (``O_F_ext_hat_K``) from the contacts with the board.

When the contact force between the robot (peg, hand, fingers) and the board exceeds ``force_threshold`` newtons
during a motion, the cell does what the robot's controller does on a Cartesian collision reflex:

- the running motion is aborted: its Move command is answered ``kReflexAborted``, which libfranka turns into
  ``franka::ControlException("libfranka: Move command aborted: motion aborted by reflex! [\"cartesian_reflex\"]")``
  (franky raises it from ``poll_motion`` / ``join_motion`` as ``franky.ControlException``);
- the robot reports robot mode ``kReflex`` with ``cartesian_reflex`` set in ``current_errors`` and
  ``last_motion_errors``, holds its measured joint positions, and rejects new motions
  (``kCommandNotPossibleRejected``, a ``franky.CommandException``);
- ``automaticErrorRecovery`` (``franky.Robot.recover_from_errors``) clears the errors.

Each reflex and each recovery prints one line (``sim_cell: reflex ...`` / ``sim_cell: error recovery``). Runs in
the robot-sim venv; franky-sim's server internals are reached by their (name-mangled) attribute names, pinned by
``scripts/setup_robot_sim.sh``.
"""
import numpy as np

CARTESIAN_REFLEX = 7  # index of cartesian_reflex in libfranka's Errors (41 flags)
N_ERRORS = 41


class CollisionReflex:
    """Watches the robot-board contact force after every physics step of ``sim`` and aborts motions of
    ``robot_server`` (a franky-sim ``FrankaRobotServer``) above ``force_threshold`` newtons."""

    def __init__(self, sim, robot_server, board_geoms, robot_body_prefix: str = "robot0_",
                 force_threshold: float = 60.0) -> None:
        from franky_sim.franka_robot_protocol import (AutomaticErrorRecoveryCommand, MoveCommand, MoveStatus,
                                                      RobotCommand, RobotMode)
        self.sim, self.server = sim, robot_server
        self.force_threshold = float(force_threshold)
        self.active = False  # in reflex until an error recovery
        self._armed = True
        self.count = 0
        from franky_sim.franka_server import BaseCommand
        self._protocol = (MoveStatus, RobotCommand, RobotMode)
        self._send_response = BaseCommand.send_response
        import mujoco
        model = sim.model
        self._board = {mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_GEOM, name) for name in board_geoms}
        self._robot = {
            g for g in range(model.ngeom)
            if (mujoco.mj_id2name(model, mujoco.mjtObj.mjOBJ_BODY, int(model.geom_bodyid[g])) or "").startswith(
                robot_body_prefix)
        }
        self._force = np.zeros(6)
        self.external_force = np.zeros(3)  # of the board on the robot (N, world frame), after the last step
        reflex = self

        class RecoveryCommand(AutomaticErrorRecoveryCommand):

            def handle(self, server):
                reflex.clear()
                super().handle(server)

        class GuardedMoveCommand(MoveCommand):

            def handle(self, server):
                if reflex.active:  # the real robot refuses motions until the error is recovered
                    self.reply(MoveStatus.kCommandNotPossibleRejected)
                    return
                super().handle(server)

        commands = robot_server._FrankaServer__command_class_map
        commands[RobotCommand.kAutomaticErrorRecovery] = RecoveryCommand
        commands[RobotCommand.kMove] = GuardedMoveCommand
        robot_server._get_state_bytes = self._state_bytes
        sim.register_post_step_callback(self._check)

    def contact_force(self):
        """(total normal force (N), force vector (N, world frame) of the board on the robot) over their contacts."""
        import mujoco
        model, data = self.sim.model, self.sim.data
        normal, vector = 0.0, np.zeros(3)
        for i in range(data.ncon):
            contact = data.contact[i]
            geom1, geom2 = int(contact.geom1), int(contact.geom2)
            if {geom1, geom2} & self._board and {geom1, geom2} & self._robot:
                mujoco.mj_contactForce(model, data, i, self._force)
                normal += abs(float(self._force[0]))
                # the contact frame's rows are world vectors (normal from geom1 to geom2); the force acts on geom2
                on_geom2 = np.asarray(contact.frame).reshape(3, 3).T @ self._force[:3]
                vector += on_geom2 if geom2 in self._robot else -on_geom2
        return normal, vector

    def _check(self, sim) -> None:
        """Post-step callback (physics thread, the same thread that serves the protocol)."""
        force, self.external_force = self.contact_force() if self.sim.data.ncon else (0.0, np.zeros(3))
        if force <= self.force_threshold:
            self._armed = True
        if self.active or not self.server.current_motion_id:
            return
        # armed again only once the force fell below the threshold: the arm that stopped pressing on the board
        # can lift off it (its first millisecond still presses harder than the threshold)
        if force > self.force_threshold and self._armed:
            self.trigger(f"contact force {force:.0f} N with the board > {self.force_threshold:.0f} N")

    def trigger(self, reason: str) -> None:
        MoveStatus, RobotCommand, _ = self._protocol
        server, motion_id = self.server, self.server.current_motion_id
        self.active, self._armed = True, False
        self.count += 1
        server.stop_motion(send_preemption_signal=False)
        server._FrankaRobotServer__holding_q = tuple(server.robot.inner_state.q)  # stop where it is
        server.reset_current_motion_id()
        if motion_id and server._tcp_socket is not None:
            self._send_response(server._tcp_socket, RobotCommand.kMove, motion_id, MoveStatus.kReflexAborted)
        print(f"sim_cell: reflex {self.count}: cartesian_reflex ({reason})", flush=True)

    def clear(self) -> None:
        if self.active:
            print("sim_cell: error recovery", flush=True)
        self.active = False

    def _state_bytes(self) -> bytes:
        # libfranka's external wrench estimate O_F_ext_hat_K is what the robot exerts on its surroundings (the
        # negative of their force on it); franky-sim reports zeros, the cell reports the board's contact forces
        state = self.server.robot_state.replace(O_F_ext_hat_K=tuple(-self.external_force) + (0.0, 0.0, 0.0))
        if self.active:
            errors = tuple(i == CARTESIAN_REFLEX for i in range(N_ERRORS))
            state = state.replace(robot_mode=self._protocol[2].kReflex, errors=errors, reflex_reason=errors)
        return state.pack_state()
