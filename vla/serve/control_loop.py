"""`vla robot`: episodes of a simulated robot (`SimRobot`) driven through a running server by the robot-side
`vla_client.ControlLoop`, its safety layer included. The loop itself lives in `vla_client`."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from vla_client import ControlLoop, RobotClient

log = logging.getLogger("vla.serve.robot")


def run_robot(cfg) -> dict[str, Any]:
    """Run ``cfg.episodes`` episodes (``RobotConfig``) and return the summary; ``cfg.out`` gets control.json.
    Ctrl-C / SIGTERM ends the current episode with a hold and runs no more."""
    from tqdm import tqdm

    from .recording import DeploymentRecorder
    from .robot import ScriptedOperator, SimRobot

    robot = SimRobot(cfg.env, max_steps=cfg.max_steps)
    operator = ScriptedOperator(robot, *cfg.takeover) if cfg.operator == "expert" else None
    recorder = DeploymentRecorder(cfg.record, robot.meta, task=cfg.env) if cfg.record else None
    client = RobotClient(cfg.url, api_key=cfg.api_key, timeout_s=cfg.request_timeout_s or 2.0)
    episodes = []
    try:
        loop = ControlLoop(
            robot,
            client,
            rate_hz=cfg.rate_hz,
            strategy=cfg.strategy,
            execute_steps=cfg.execute_steps,
            ensemble_decay=cfg.ensemble_decay,
            lead_steps=cfg.lead_steps,
            safety=cfg.safety,
            request_timeout_s=cfg.request_timeout_s,
            observe_timeout_s=cfg.observe_timeout_s,
            max_obs_age_s=cfg.max_obs_age_s,
            allow_fps_mismatch=cfg.allow_fps_mismatch,
            operator=operator,
            recorder=recorder,
        )
        try:
            bar = tqdm(total=cfg.episodes, desc=f"{cfg.env} @ {loop.rate_hz:g} Hz", unit="episode")
            for episode in loop.episodes(cfg.episodes, seed=cfg.seed):
                episodes.append(episode)
                bar.update(1)
                bar.set_postfix(success=sum(bool(e.success) for e in episodes), held=episode.held_steps)
            bar.close()
        finally:
            loop.close()
    finally:
        client.close()
        robot.close()
    summary = {
        "env": cfg.env,
        "url": cfg.url,
        "rate_hz": loop.rate_hz,
        "strategy": cfg.strategy,
        "safety": {"action_kind": str(loop.safety.kind), "hold": loop.safety.hold_mode},
        "server": {k: client.metadata.get(k) for k in ("model", "action_horizon", "fps")},
        "episodes": len(episodes),
        "successes": sum(bool(e.success) for e in episodes),
        "stopped_by": next((e.stopped_by for e in episodes if e.stopped_by), None),
        "recorded": {"dataset": cfg.record, "episodes": recorder.episodes} if recorder else None,
        "per_episode": [e.summary() for e in episodes],
    }
    if cfg.out:
        out = Path(cfg.out)
        out.mkdir(parents=True, exist_ok=True)
        detail = {
            "ticks": [e.ticks() for e in episodes],
            "actions": [e.actions for e in episodes],
            "sources": [e.sources for e in episodes],
        }
        (out / "control.json").write_text(json.dumps(summary | detail))
    return summary
