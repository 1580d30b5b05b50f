"""Privileged-state experts for the robosuite tasks (Panda, OSC_POSE delta actions).

Each expert is a small state machine over waypoints: move above the object, descend, close,
lift, carry, release. Position actions are (target - eef) / 0.05 m (the controller's full-scale
delta), clipped to [-1, 1]; rotation actions only turn the gripper about z where a grasp needs it.
"""

from __future__ import annotations

import numpy as np

from envs.robosuite_env import RobosuiteEnv

OPEN, CLOSE = -1.0, 1.0
POS_SCALE = 0.05  # metres per unit action (robosuite OSC_POSE output_max)
ROT_SCALE = 0.5  # radians per unit action


class _WaypointExpert:
    def __init__(self, env: RobosuiteEnv):
        self.env = env
        self.sim_env = env.sim_env

    def reset(self) -> None:
        self.phase = 0
        self.phase_steps = 0
        self.memory: dict[str, np.ndarray] = {}

    # -- state ---------------------------------------------------------------------------------
    @property
    def eef(self) -> np.ndarray:
        robot = self.sim_env.robots[0]
        return np.array(self.sim_env.sim.data.site_xpos[robot.eef_site_id["right"]])

    @property
    def eef_yaw(self) -> float:
        robot = self.sim_env.robots[0]
        xmat = np.array(self.sim_env.sim.data.site_xmat[robot.eef_site_id["right"]]).reshape(3, 3)
        return float(np.arctan2(xmat[1, 0], xmat[0, 0]))

    def body(self, body_id: int) -> np.ndarray:
        return np.array(self.sim_env.sim.data.body_xpos[body_id])

    # -- actions -------------------------------------------------------------------------------
    def move(
        self,
        target: np.ndarray,
        gripper: float,
        gain: float = 1.0,
        yaw_error: float = 0.0,
        tilt_error: np.ndarray | None = None,
    ) -> np.ndarray:
        action = np.zeros(7, dtype=np.float32)
        action[:3] = np.clip(gain * (target - self.eef) / POS_SCALE, -1.0, 1.0)
        if tilt_error is not None:
            action[3:5] = np.clip(tilt_error[:2] / ROT_SCALE, -1.0, 1.0)
        action[5] = np.clip(yaw_error / ROT_SCALE, -1.0, 1.0)
        action[6] = gripper
        return action

    def near(self, target: np.ndarray, tol: float = 0.01, tol_z: float | None = None) -> bool:
        err = target - self.eef
        return bool(np.linalg.norm(err[:2]) < tol and abs(err[2]) < (tol_z if tol_z is not None else tol))

    def next_phase(self, condition: bool, timeout: int = 60) -> None:
        self.phase_steps += 1
        if condition or self.phase_steps >= timeout:
            self.phase += 1
            self.phase_steps = 0

    def pick_and_place(
        self,
        obj: np.ndarray,
        place: np.ndarray | None,
        grasp_offset: np.ndarray | None = None,
        carry_height: float = 0.15,
        yaw_error: float = 0.0,
        tilt_error: np.ndarray | None = None,
    ) -> np.ndarray:
        """Phases: above, down, close, lift, (carry, lower, open, retreat). ``place`` None = just lift."""
        grasp = obj + (grasp_offset if grasp_offset is not None else 0.0)
        p = self.phase
        if p == 0:  # above the object, gripper open, yaw aligned
            target = grasp + [0, 0, 0.08]
            action = self.move(target, OPEN, yaw_error=yaw_error)
            self.next_phase(self.near(target, 0.006, 0.02) and abs(yaw_error) < 0.05)
        elif p == 1:  # straight down
            action = self.move(grasp, OPEN, yaw_error=yaw_error)
            self.next_phase(self.near(grasp, 0.01, 0.008), timeout=40)
        elif p == 2:  # close
            action = self.move(grasp, CLOSE)
            self.next_phase(False, timeout=10)
        elif p == 3:  # lift
            if "lift_xy" not in self.memory:
                self.memory["lift_xy"] = self.eef[:2].copy()
                self.memory["lift_z"] = np.array(self.eef[2] + carry_height)
                self.memory["grasp_z"] = np.array([self.eef[2], obj[2]])
            target = np.array([*self.memory["lift_xy"], float(self.memory["lift_z"])])
            action = self.move(target, CLOSE)
            eef_rise, obj_rise = np.array([self.eef[2], obj[2]]) - self.memory["grasp_z"]
            if eef_rise > 0.06 and obj_rise < 0.02:  # the object stayed behind: open and grasp again
                self.phase, self.phase_steps, self.memory = 0, 0, {}
                return self.move(self.eef + [0, 0, 0.02], OPEN)
            self.next_phase(
                place is not None and self.near(target, 0.02, 0.02), timeout=10**6 if place is None else 60
            )
        elif p == 4:  # carry above the place target
            target = np.array([place[0], place[1], float(self.memory["lift_z"])])
            action = self.move(target, CLOSE, yaw_error=yaw_error, tilt_error=tilt_error)
            self.next_phase(self.near(target, 0.01, 0.03) and abs(yaw_error) < 0.05, timeout=100)
        elif p == 5:  # lower
            action = self.move(place, CLOSE, gain=0.7, yaw_error=yaw_error, tilt_error=tilt_error)
            self.next_phase(self.near(place, 0.01, 0.01), timeout=50)
        elif p == 6:  # open
            action = self.move(place, OPEN)
            self.next_phase(False, timeout=8)
        else:  # retreat upwards
            action = self.move(place + [0, 0, 0.12], OPEN)
        return action


class LiftExpert(_WaypointExpert):
    def act(self) -> np.ndarray:
        env = self.sim_env
        body = env.cube_body_ids[env.target] if hasattr(env, "cube_body_ids") else env.cube_body_id
        return self.pick_and_place(self.body(body), None, grasp_offset=np.array([0, 0, -0.005]))


class StackExpert(_WaypointExpert):
    def act(self) -> np.ndarray:
        env = self.sim_env
        cube_a, cube_b = self.body(env.cubeA_body_id), self.body(env.cubeB_body_id)
        place = cube_b + [0, 0, 0.05]  # cubeA centre lands one cube height above cubeB's centre
        return self.pick_and_place(cube_a, place, grasp_offset=np.array([0, 0, -0.005]), carry_height=0.12)


class PickPlaceCanExpert(_WaypointExpert):
    def act(self) -> np.ndarray:
        env = self.sim_env
        can_id = env.object_to_id["can"]
        can = self.body(env.obj_body_id[env.objects[can_id].name])
        bin_target = np.array(env.target_bin_placements[can_id]) + [0, 0, 0.08]
        return self.pick_and_place(can, bin_target, grasp_offset=np.array([0, 0, 0.0]), carry_height=0.18)


class NutAssemblyExpert(_WaypointExpert):
    """Grasp the square nut by its handle (gripper turned across the handle), carry it so the nut's
    hole is above the square peg, lower and release."""

    def act(self) -> np.ndarray:
        env = self.sim_env
        nut = env.nuts[0]
        center = self.body(env.obj_body_id[nut.name])
        handle = np.array(env.sim.data.site_xpos[env.object_site_ids[0]])
        along = handle[:2] - center[:2]
        handle_yaw = np.arctan2(along[1], along[0])
        # fingers close across the handle bar: gripper x axis along the handle (mod pi)
        yaw_error = (handle_yaw - self.eef_yaw + np.pi / 2) % np.pi - np.pi / 2
        if self.phase == 2 or self.phase == 3:
            yaw_error = 0.0
        elif self.phase >= 4:
            # Turn the held nut (slowly: a fast wrist swing sets it rocking) so its square hole lines
            # up with the square peg; the smallest turn that does it.
            yaw_error = 0.4 * ((np.pi / 2 - handle_yaw + np.pi / 2) % np.pi - np.pi / 2)
        peg = self.body(env.peg1_body_id)
        offset = self.eef[:2] - center[:2]  # where the nut hangs from the gripper, now
        # release just above the peg top (table + 0.13): a nut hanging by its handle is tilted and
        # jams if lowered onto the peg, but drops cleanly around it when level and aligned
        place = np.array([peg[0] + offset[0], peg[1] + offset[1], env.table_offset[2] + 0.175])
        # grasp the handle nearer the ring: less torque about the finger axis, the nut hangs level
        grasp_offset = np.array([*(-0.2 * along), 0.0])
        # a nut held by its handle droops about the finger axis; tilt the wrist to hold it level
        nut_z = np.array(env.sim.data.body_xmat[env.obj_body_id[nut.name]]).reshape(3, 3)[:, 2]
        tilt_error = 0.7 * np.cross(nut_z, [0.0, 0.0, 1.0])  # rotation vector taking nut z to world z
        return self.pick_and_place(
            handle,
            place,
            grasp_offset=grasp_offset,
            carry_height=0.15,
            yaw_error=yaw_error,
            tilt_error=tilt_error,
        )


class DoorExpert(_WaypointExpert):
    """Grasp the handle, press it down to release the latch, then pull the door open along its arc."""

    def act(self) -> np.ndarray:
        env = self.sim_env
        # the fingers stop ~1.3 cm short of the handle site (the door is behind it)
        handle = np.array(env.sim.data.site_xpos[env.door_handle_site_id]) + [0.0, 0.013, 0.0]
        p = self.phase
        if p == 0:
            target = handle + [0.0, 0.0, 0.06]
            action = self.move(target, OPEN)
            self.next_phase(self.near(target, 0.01, 0.02))
        elif p == 1:
            action = self.move(handle, OPEN)
            self.next_phase(self.near(handle, 0.008, 0.008), timeout=40)
        elif p == 2:
            action = self.move(handle, CLOSE)
            self.next_phase(False, timeout=10)
        elif p == 3:  # turn the lever: push the handle down while holding it
            action = self.move(handle + [0, 0, -0.05], CLOSE, gain=0.8)
            latch = env.sim.data.qpos[env.handle_qpos_addr] if env.use_latch else 2.0
            self.next_phase(abs(latch) > 1.2, timeout=90)
        else:  # pull towards the robot (+y), following the handle along the door's arc, lever held down
            target = np.array([handle[0], self.eef[1] + 0.05, handle[2] - 0.03])
            action = self.move(target, CLOSE)
        return action


EXPERTS = {
    "Lift": LiftExpert,
    "LiftColor": LiftExpert,
    "Stack": StackExpert,
    "PickPlaceCan": PickPlaceCanExpert,
    "NutAssemblySquare": NutAssemblyExpert,
    "Door": DoorExpert,
}


def make_robosuite_expert(env: RobosuiteEnv) -> _WaypointExpert:
    task = env.name.split("/", 1)[1]
    if task not in EXPERTS:
        raise KeyError(f"no robosuite expert for {task!r}; experts exist for {sorted(EXPERTS)}")
    return EXPERTS[task](env)
