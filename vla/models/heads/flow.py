"""Flow-matching action heads: ``dual_stream`` (actions + future vision, after DUST) and ``flow``
(the same transformer with the vision stream off, the pi0 / GR00T-style baseline).

Convention (DUST): tau = 0 is noise, tau = 1 is data; x_tau = tau * x + (1 - tau) * eps and the
network predicts the velocity x - eps. Sampling integrates forward Euler from tau = 0 to 1.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from torch import nn

from ..config import HeadConfig
from ..losses import masked_mse
from .transformer import MultiStreamTransformer


def sincos_1d(positions: int, width: int) -> torch.Tensor:
    pos = torch.arange(positions, dtype=torch.float32)[:, None]
    freq = torch.exp(-math.log(10000.0) * torch.arange(0, width, 2, dtype=torch.float32) / width)
    return torch.cat([torch.sin(pos * freq), torch.cos(pos * freq)], dim=1)[:, :width]


def sincos_2d(tokens: int, width: int) -> torch.Tensor:
    side = int(math.isqrt(tokens))
    if side * side != tokens:
        raise ValueError(f"vision tokens must be a square number, got {tokens}")
    rows = sincos_1d(side, width // 2)
    cols = sincos_1d(side, width - width // 2)
    return torch.cat([rows[:, None].expand(side, side, -1), cols[None].expand(side, side, -1)], -1).reshape(
        tokens, width
    )


Generators = torch.Generator | list[torch.Generator] | None


def randn(shape: tuple[int, ...], generator: Generators = None, device=None) -> torch.Tensor:
    """Gaussian noise; with a list of generators (one per sample along dim 0) each sample's noise
    depends only on its own generator, so a request's result does not depend on its batch mates."""
    if isinstance(generator, (list, tuple)):
        if len(generator) != shape[0]:
            raise ValueError(f"got {len(generator)} generators for a batch of {shape[0]}")
        return torch.stack([torch.randn(shape[1:], generator=g) for g in generator]).to(device)
    return torch.randn(shape, device=device, generator=generator)


class TimeEmbedding(nn.Module):
    """tau in [0, 1] (or a discrete diffusion step) -> (B, width), via diffusers' embeddings."""

    def __init__(self, width: int, scale: float = 1000.0):
        super().__init__()
        self.scale = scale
        self.proj = Timesteps(256, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.embed = TimestepEmbedding(256, width)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.embed(self.proj(t.float() * self.scale))


class FlowHead(nn.Module):
    """``loss(prefix, batch)`` and ``sample(prefix, state)``: the ``flow`` baseline (actions only), and with
    ``vision=True`` the dual stream. ``time_scale`` multiplies the time before its sinusoidal embedding (tau
    in [0, 1] -> [0, 1000]; a diffusion step is already an integer)."""

    # what a head declares to the policy, the trainer and the server
    needs_future_frames = False  # its training batch carries the frame `horizon` steps ahead (future_images)
    supports_guidance = True  # sample() takes guide / guide_weights (real-time chunking's frozen prefix)
    # sampling computes every step's time embeddings and AdaLN parameters before the first step (False: inside
    # each step, the reference path)
    precompute_schedule = True

    def __init__(
        self,
        config: HeadConfig,
        state_dim: int,
        action_dim: int,
        horizon: int,
        feature_dim: int,
        vision: bool = False,
        time_scale: float = 1000.0,
    ):
        super().__init__()
        w = config.width
        self.config, self.horizon, self.action_dim, self.vision = config, horizon, action_dim, vision
        # the "state" vector is the policy's global condition (proprio state, plus the grounded keypoint
        # tokens when the backbone has a conv stem): a token in the action stream, and added to every
        # stream's timestep embedding so it modulates every block (AdaLN, as Diffusion Policy's FiLM)
        self.state_in = nn.Linear(state_dim, w) if state_dim else None
        self.condition_in = nn.Linear(state_dim, w) if state_dim else None
        self.state_token = nn.Parameter(torch.zeros(1, 1, w))
        self.action_in = nn.Linear(action_dim, w)
        self.action_out = nn.Linear(w, action_dim)
        self.register_buffer("action_pos", sincos_1d(horizon + 1, w), persistent=False)
        self.action_time = TimeEmbedding(w, time_scale)
        streams = 1
        if vision:
            streams = 2
            self.vision_in = nn.Sequential(
                nn.Linear(feature_dim, w), nn.SiLU(), nn.Linear(w, w), nn.SiLU(), nn.Linear(w, w)
            )
            self.vision_out = nn.Sequential(nn.Linear(w, w), nn.SiLU(), nn.Linear(w, feature_dim))
            self.register_buffer("vision_pos", sincos_2d(config.vision_tokens, w), persistent=False)
            self.vision_time = TimeEmbedding(w)
        self.transformer = MultiStreamTransformer(
            w, config.heads, streams, config.mmdit_blocks, config.stream_blocks
        )

    # -- network ---------------------------------------------------------------------------------
    def prefix_cache(self, prefix: tuple[torch.Tensor, torch.Tensor]) -> list:
        return self.transformer.prefix_cache(*prefix)

    def _state_tokens(self, state: torch.Tensor) -> torch.Tensor:
        token = self.state_token.expand(state.shape[0], -1, -1)
        return token + self.state_in(state)[:, None] if self.state_in is not None else token

    def time_embeddings(
        self, state: torch.Tensor, tau_a: torch.Tensor, tau_o: torch.Tensor | None = None
    ) -> list[torch.Tensor]:
        """Each stream's time embedding plus the condition, (..., B, width), for times (..., B): one step's,
        or a whole schedule's with a leading step axis."""
        condition = self.condition_in(state) if self.condition_in is not None else 0.0
        tembs = [self.action_time(tau_a.reshape(-1)).view(*tau_a.shape, -1) + condition]
        if tau_o is not None:
            tembs.append(self.vision_time(tau_o.reshape(-1)).view(*tau_o.shape, -1) + condition)
        return tembs

    def velocity(
        self,
        cache: list,
        state: torch.Tensor,
        actions: torch.Tensor,
        tau_a: torch.Tensor,
        vision: torch.Tensor | None = None,
        tau_o: torch.Tensor | None = None,
        mods: list | None = None,
        state_tokens: torch.Tensor | None = None,
    ):
        """Predicted velocities of the action chunk and, when given, of the future-vision tokens.
        ``mods`` / ``state_tokens``: this step's modulations and state token, when the sampler computed them
        for the whole schedule beforehand (then ``tau_a`` / ``tau_o`` are not looked at)."""
        if state_tokens is None:
            state_tokens = self._state_tokens(state)
        xs = [torch.cat([state_tokens, self.action_in(actions)], 1) + self.action_pos]
        if vision is not None:
            xs.append(self.vision_in(vision) + self.vision_pos)
        if mods is None:
            mods = self.transformer.modulations(self.time_embeddings(state, tau_a, tau_o))
        out = self.transformer(xs, mods, cache)
        v_action = self.action_out(out[0][:, 1:])
        return v_action, (self.vision_out(out[1]) if vision is not None else None)

    def schedule(self, state: torch.Tensor, tau_a: torch.Tensor, tau_o: torch.Tensor | None = None):
        """What every step of a sampling schedule needs from the times and the state, computed at once:
        times (steps, B) -> (per-step modulations, the state token). The reference sampler
        (``precompute_schedule = False``) computes them inside each step instead; tests compare the two."""
        mods = self.transformer.modulations(self.time_embeddings(state, tau_a, tau_o))
        steps = tau_a.shape[0]
        return [self.transformer.at_step(mods, i) for i in range(steps)], self._state_tokens(state)

    # -- training --------------------------------------------------------------------------------
    def sample_tau(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """tau = 0.999 * (1 - Beta(a, b)): with (1.5, 1) more samples near the noise end."""
        seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        s = np.random.default_rng(seed).beta(*self.config.tau_beta, size=n)
        return torch.as_tensor(0.999 * (1.0 - s), dtype=torch.float32)

    def draw_noise(self, n: int, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Every random draw of one training step for ``n`` samples (CPU tensors). A trainer draws them
        for the global batch from a seeded generator and gives each process its slice, so runs
        are reproducible and data-parallel runs match single-process ones."""
        noise = {
            "tau_a": self.sample_tau(n, generator),
            "eps": torch.randn(n, self.horizon, self.action_dim, generator=generator),
        }
        if self.vision:
            noise["tau_o"] = self.sample_tau(n, generator)
            noise["eps_o"] = torch.randn(
                n, self.config.vision_tokens, self.vision_out[-1].out_features, generator=generator
            )
        return noise

    def loss(
        self,
        prefix: tuple[torch.Tensor, torch.Tensor],
        batch: dict,
        noise: dict[str, torch.Tensor] | None = None,
    ) -> dict[str, torch.Tensor]:
        """batch: normalized ``action`` (B, H, A), ``state`` (B, S), ``action_mask`` (B, H); for the dual
        stream ``future_features`` (B, K, D) and ``future_valid`` (B,). Independent tau and noise per
        stream."""
        x = batch["action"]
        b = x.shape[0]
        noise = {k: v.to(x.device) for k, v in (noise or self.draw_noise(b)).items()}
        tau_a, eps = noise["tau_a"], noise["eps"]
        x_tau = tau_a[:, None, None] * x + (1 - tau_a[:, None, None]) * eps
        vision_target = vision_tau = tau_o = None
        if self.vision:
            y = batch["future_features"]
            tau_o, eps_o = noise["tau_o"], noise["eps_o"]
            vision_tau = tau_o[:, None, None] * y + (1 - tau_o[:, None, None]) * eps_o
            vision_target = y - eps_o
        v_action, v_vision = self.velocity(
            self.prefix_cache(prefix), batch["state"], x_tau, tau_a, vision_tau, tau_o
        )
        loss_action = masked_mse(v_action, x - eps, batch["action_mask"])
        out = {"loss_action": loss_action}
        loss = loss_action
        if self.vision:
            # samples whose future frame lies past the episode end contribute 0
            per_sample = ((v_vision - vision_target) ** 2).mean(dim=(1, 2))
            loss_vision = (per_sample * batch["future_valid"].float()).mean()
            out["loss_vision"] = loss_vision
            loss = loss + self.config.lambda_wm * loss_vision
        out["loss"] = loss
        return out

    # -- sampling --------------------------------------------------------------------------------
    @torch.no_grad()
    def sample(
        self,
        prefix: tuple[torch.Tensor, torch.Tensor] | None,
        state: torch.Tensor,
        action_steps: int | None = None,
        vision_steps: int | None = None,
        cache: list | None = None,
        generator: Generators = None,
        guide: torch.Tensor | None = None,
        guide_weights: torch.Tensor | None = None,
        noise_scale: float = 1.0,
    ) -> torch.Tensor:
        """Euler from noise (scaled by ``noise_scale``: a sampling temperature; below 1 trades the chunks'
        diversity for precision). The vision stream advances every global step, the action stream every
        q-th (N_o = q * N_A: asynchronous test-time scaling); vision_steps = 0 samples actions alone.

        ``guide`` (B, H, A) with ``guide_weights`` (H,) or (B, H) in [0, 1]: real-time chunking's frozen
        prefix, as soft-masked inpainting. After every action update the chunk is pulled towards the guide's
        noisy path ``tau * guide + (1 - tau) * eps0`` with those weights: weight 1 freezes a step (the actions
        executed while this chunk is computed), weights decaying over the rest of the overlap keep the new
        chunk continuous with the old one. This is the guidance-free variant of RTC (arXiv 2506.07339), which
        uses pseudo-inverse guidance with the same weights."""
        n_a = action_steps or self.config.action_steps
        n_o = self.config.vision_steps if vision_steps is None else vision_steps
        if not self.vision:
            n_o = 0
        if n_o and n_o % n_a:
            raise ValueError(f"vision_steps ({n_o}) must be a multiple of action_steps ({n_a})")
        cache = cache if cache is not None else self.prefix_cache(prefix)
        b, device = state.shape[0], state.device
        x = randn((b, self.horizon, self.action_dim), generator, device) * noise_scale
        y = (
            randn((b, self.config.vision_tokens, self.vision_out[-1].out_features), generator, device)
            * noise_scale
            if n_o
            else None
        )
        q = n_o // n_a if n_o else 1
        steps = max(n_a, n_o)
        # tau_a advances every q-th step, tau_o every step (the same float32 additions as the reference)
        taus_a = torch.zeros(steps, b, device=device)
        taus_o = torch.zeros(steps, b, device=device)
        for step in range(1, steps):
            taus_a[step] = taus_a[step - 1] + (1.0 / n_a if step % q == 0 else 0.0)
            taus_o[step] = taus_o[step - 1] + 1.0 / max(n_o, 1)
        planned = self.schedule(state, taus_a, taus_o if n_o else None) if self.precompute_schedule else None
        if guide is not None:
            w = guide_weights.to(device)
            eps0, w = x.clone(), (w[None, :, None] if w.ndim == 1 else w[:, :, None])
        for step in range(steps):
            per_step = {}
            if planned is not None:
                per_step = {"mods": planned[0][step], "state_tokens": planned[1]}
            v_action, v_vision = self.velocity(
                cache, state, x, taus_a[step], y, taus_o[step] if n_o else None, **per_step
            )
            if n_o:
                y = y + v_vision / n_o
            if (step + 1) % q == 0:
                x = x + v_action / n_a
                if guide is not None:
                    tau = taus_a[step] + 1.0 / n_a
                    target = tau[:, None, None] * guide + (1 - tau[:, None, None]) * eps0
                    x = w * target + (1 - w) * x
        return x


class DualStreamHead(FlowHead):
    """DUST's dual stream: action tokens and future-vision tokens in one joint-attention transformer,
    independent noise and time per stream, trained on the future frame's pooled encoder features as well."""

    needs_future_frames = True

    def __init__(self, config: HeadConfig, state_dim: int, action_dim: int, horizon: int, feature_dim: int):
        super().__init__(config, state_dim, action_dim, horizon, feature_dim, vision=True)
