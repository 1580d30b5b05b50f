"""``diffusion`` head: DDPM noise prediction with DDIM sampling (diffusers schedulers), the
Diffusion Policy baseline, on the same transformer and prefix conditioning as the flow heads."""

from __future__ import annotations

import torch
from diffusers import DDIMScheduler, DDPMScheduler
from torch import nn

from ..config import HeadConfig
from ..losses import masked_mse
from .flow import FlowHead, Generators, randn


class DiffusionHead(nn.Module):
    needs_future_frames = False
    supports_guidance = False  # DDIM from a scheduler: no inpainting of a frozen prefix

    def __init__(self, config: HeadConfig, state_dim: int, action_dim: int, horizon: int, feature_dim: int):
        super().__init__()
        self.config = config
        # One stream; its time embedding takes the discrete step (scale 1 instead of tau * 1000).
        self.net = FlowHead(config, state_dim, action_dim, horizon, feature_dim, time_scale=1.0)
        # clip_sample off: normalized actions may leave [-1, 1] (mean_std / quantile modes)
        kwargs = dict(
            num_train_timesteps=config.diffusion_train_steps,
            beta_schedule="squaredcos_cap_v2",
            clip_sample=False,
            prediction_type="epsilon",
        )
        self.train_scheduler = DDPMScheduler(**kwargs)
        self.sample_scheduler = DDIMScheduler(**kwargs)

    def prefix_cache(self, prefix):
        return self.net.prefix_cache(prefix)

    def draw_noise(self, n: int, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        return {
            "t": torch.randint(0, self.config.diffusion_train_steps, (n,), generator=generator),
            "eps": torch.randn(n, self.net.horizon, self.net.action_dim, generator=generator),
        }

    def loss(
        self, prefix, batch: dict, noise: dict[str, torch.Tensor] | None = None
    ) -> dict[str, torch.Tensor]:
        x = batch["action"]
        noise = {k: v.to(x.device) for k, v in (noise or self.draw_noise(x.shape[0])).items()}
        t, eps = noise["t"], noise["eps"]
        noisy = self.train_scheduler.add_noise(x, eps, t)
        pred, _ = self.net.velocity(self.prefix_cache(prefix), batch["state"], noisy, t)
        loss = masked_mse(pred, eps, batch["action_mask"])
        return {"loss": loss, "loss_action": loss}

    @torch.no_grad()
    def sample(
        self,
        prefix,
        state: torch.Tensor,
        action_steps: int | None = None,
        vision_steps: int | None = None,
        cache: list | None = None,
        generator: Generators = None,
        guide: torch.Tensor | None = None,
        guide_weights: torch.Tensor | None = None,
        noise_scale: float = 1.0,
    ) -> torch.Tensor:
        if guide is not None:
            raise ValueError(
                "real-time chunking (a guided prefix) is implemented for the flow heads, not diffusion"
            )
        # a scheduler per call: diffusers schedulers are stateful (set_timesteps) and must not be shared
        scheduler = DDIMScheduler.from_config(self.sample_scheduler.config)
        scheduler.set_timesteps(action_steps or self.config.diffusion_sample_steps)
        cache = cache if cache is not None else self.prefix_cache(prefix)
        b = state.shape[0]
        x = randn((b, self.net.horizon, self.net.action_dim), generator, state.device) * noise_scale
        times = scheduler.timesteps.to(state.device)[:, None].expand(-1, b)
        planned = self.net.schedule(state, times) if self.precompute_schedule else None
        for step, t in enumerate(scheduler.timesteps):
            per_step = {"mods": planned[0][step], "state_tokens": planned[1]} if planned is not None else {}
            eps, _ = self.net.velocity(cache, state, x, times[step], **per_step)
            x = scheduler.step(eps, t, x).prev_sample
        return x

    @property
    def precompute_schedule(self) -> bool:
        """As FlowHead's: every DDIM step's time embedding and AdaLN parameters before the first step."""
        return self.net.precompute_schedule

    @precompute_schedule.setter
    def precompute_schedule(self, value: bool) -> None:
        self.net.precompute_schedule = value
