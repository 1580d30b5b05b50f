"""LeRobot's ACT chunk latency at batch 1, inside LeRobot's own venv (benchmarks/peer_latency.py starts it).

    python _lerobot_act_latency.py IMAGE_SIZE STATE_DIM ACTION_DIM REPEATS THREADS

ACT is LeRobot 0.6.1's default configuration (ResNet-18, dim 512, 4 encoder + 1 decoder layers, chunk 100),
built with random weights: the ImageNet backbone download is off here, and weights do not change latency.
Prints one JSON object.
"""

import json
import logging
import os
import sys
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
logging.disable(logging.WARNING)

import numpy as np  # noqa: E402
import torch  # noqa: E402


def main(image_size: int, state_dim: int, action_dim: int, repeats: int, threads: int) -> dict:
    import lerobot
    from lerobot.configs.types import FeatureType, PolicyFeature
    from lerobot.policies.act.configuration_act import ACTConfig
    from lerobot.policies.act.modeling_act import ACTPolicy

    torch.set_num_threads(threads)
    config = ACTConfig(
        input_features={
            "observation.images.top": PolicyFeature(
                type=FeatureType.VISUAL, shape=(3, image_size, image_size)
            ),
            "observation.state": PolicyFeature(type=FeatureType.STATE, shape=(state_dim,)),
        },
        output_features={"action": PolicyFeature(type=FeatureType.ACTION, shape=(action_dim,))},
        pretrained_backbone_weights=None,
        device="cpu",
    )
    torch.manual_seed(0)
    policy = ACTPolicy(config).eval()
    batch = {
        "observation.images.top": torch.rand(1, 3, image_size, image_size),
        "observation.state": torch.randn(1, state_dim),
    }
    times = []
    with torch.inference_mode():
        for i in range(repeats + 3):  # 3 warm-up chunks
            t0 = time.perf_counter()
            chunk = policy.predict_action_chunk(batch)
            if i >= 3:
                times.append((time.perf_counter() - t0) * 1000)
    return {
        "policy": "LeRobot ACT (default config)",
        "lerobot": lerobot.__version__,
        "torch": torch.__version__,
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),  # under an ISA cap, the capped one
        "params_m": round(sum(p.numel() for p in policy.parameters()) / 1e6, 2),
        "chunk_shape": list(chunk.shape),
        "median_ms": round(float(np.median(times)), 1),
        "p95_ms": round(float(np.percentile(times, 95)), 1),
    }


if __name__ == "__main__":
    print(json.dumps(main(*(int(a) for a in sys.argv[1:6]))))
