"""Break the code on purpose, once per claim, and check that the test named for that claim fails.

Each mutation replaces one exact snippet of a source file, runs the tests that guard it, and restores the
file (also on Ctrl-C). A mutation whose tests still pass is a test that cannot see what its name says.

    python tools/mutations.py            # every mutation; prints a markdown table, exits 1 if one survives
    python tools/mutations.py cache seed  # only those (by id)
"""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Mutation:
    id: str
    what: str  # the deliberate breakage, in words
    path: str
    old: str
    new: str
    tests: tuple[str, ...]


MUTATIONS = [
    Mutation(
        "cache",
        "the flow head samples with a corrupted prefix KV cache (keys zeroed)",
        "vla/models/heads/flow.py",
        "        cache = cache if cache is not None else self.prefix_cache(prefix)\n",
        "        cache = cache if cache is not None else self.prefix_cache(prefix)\n"
        "        cache = [c if c is None else (c[0] * 0, *c[1:]) for c in cache]\n",
        ("tests/test_models.py::test_cached_prefix_matches_recomputed",),
    ),
    Mutation(
        "weights",
        "load_policy skips the backbone's weights",
        "vla/models/checkpoint.py",
        "        result = policy.load_state_dict(state, strict=False)\n",
        "        result = policy.load_state_dict(\n"
        "            {k: v for k, v in state.items() if not k.startswith('backbone.')}, strict=False\n"
        "        )\n"
        "        result.missing_keys.clear()\n",
        ("tests/test_models.py::test_checkpoint_round_trip_is_exact",),
    ),
    Mutation(
        "padding",
        "the text encoder attends to its batch's padding tokens (attention mask dropped)",
        "vla/models/backbone.py",
        "        out = self.model(**enc, output_hidden_states=self.layer != -1)\n",
        "        out = self.model(input_ids=enc['input_ids'], output_hidden_states=self.layer != -1)\n",
        ("tests/test_serve_protocol.py::test_batched_prediction_with_per_sample_generators_matches_single",),
    ),
    Mutation(
        "episode-seed",
        "eval seeds chunk noise by env slot, not episode seed (results would depend on num_envs)",
        "vla/eval/evaluate.py",
        "                        steppers[i].restart(seeds[i], keep_seed=False)\n",
        "                        steppers[i].restart(i, keep_seed=False)\n",
        ("tests/test_eval.py::test_random_tiny_policy_end_to_end_and_repeatable",),
    ),
    Mutation(
        "swap",
        "instruction_swap records the swapped instruction but gives the policy the original",
        "vla/eval/evaluate.py",
        '                        o["instruction"] = swapped[i]\n',
        "                        pass\n",
        ("tests/test_eval.py::test_instruction_swap_gives_another_target_and_judges_the_original",),
    ),
    Mutation(
        "rtc-guide",
        "eval's RTC executor's guide never reaches the policy",
        "vla/eval/evaluate.py",
        "            guide=None if g is None else g[None],\n",
        "            guide=None,\n",
        ("tests/test_eval.py::test_rtc_eval_guides_each_new_chunk_with_the_old_plan",),
    ),
    Mutation(
        "ema-resume",
        "resume restores the raw weights, optimizer and RNG but not the EMA",
        "vla/train/checkpointing.py",
        '        ema.load_state_dict(state["ema"])\n',
        "        pass\n",
        ("tests/test_train.py::test_sigkill_then_resume_reproduces_the_uninterrupted_run",),
    ),
    Mutation(
        "ema-export",
        "checkpoints export the raw weights instead of the EMA weights",
        "vla/train/checkpointing.py",
        "    with ema_weights(policy, ema):\n",
        "    with ema_weights(policy, None):\n",
        ("tests/test_train.py::test_checkpoints_export_ema_weights_keep_the_best_and_prune",),
    ),
    Mutation(
        "keep-last",
        "pruning keeps one step directory too many",
        "vla/train/checkpointing.py",
        "    for old in steps[:-keep_last] if keep_last > 0 else []:\n",
        "    for old in steps[: -keep_last - 1] if keep_last > 0 else []:\n",
        ("tests/test_train.py::test_checkpoints_export_ema_weights_keep_the_best_and_prune",),
    ),
    Mutation(
        "grad-accum",
        "grad_accum is ignored (one micro-batch per step)",
        "vla/train/loop.py",
        "        for micro in range(t.grad_accum):\n",
        "        for micro in range(1):\n",
        ("tests/test_train.py::test_grad_accum_takes_micro_batches_and_grad_clip_bounds_the_step",),
    ),
    Mutation(
        "grad-clip",
        "grad_clip is ignored",
        "vla/train/loop.py",
        "        if t.grad_clip > 0:\n",
        "        if False:\n",
        ("tests/test_train.py::test_grad_accum_takes_micro_batches_and_grad_clip_bounds_the_step",),
    ),
    Mutation(
        "saved-config",
        "the run directory's config.yaml is the default config, not the run's",
        "vla/train/loop.py",
        '        (out / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.structured(cfg)))\n',
        '        (out / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.structured(type(cfg)())))\n',
        ("tests/test_train.py::test_few_steps_give_a_loadable_checkpoint",),
    ),
    Mutation(
        "batch-images",
        "batch mates' images are stacked in reverse order (a mix-up between requests)",
        "vla/data/observation.py",
        "for o in observations]) for c in cameras},\n",
        "for o in observations[::-1]]) for c in cameras},\n",
        ("tests/test_serve.py::test_batching_serves_8_concurrent_clients_correctly",),
    ),
    Mutation(
        "padding-served",
        "the text encoder attends to its batch's padding tokens, seen through the server's batches",
        "vla/models/backbone.py",
        "        out = self.model(**enc, output_hidden_states=self.layer != -1)\n",
        "        out = self.model(input_ids=enc['input_ids'], output_hidden_states=self.layer != -1)\n",
        ("tests/test_serve.py::test_batching_serves_8_concurrent_clients_correctly",),
    ),
    Mutation(
        "batch-rerun",
        "a failed batch fails every request in it",
        "vla/serve/batcher.py",
        "            except Exception:\n",
        "            except ZeroDivisionError:\n",
        ("tests/test_serve_protocol.py::test_a_failed_batch_is_rerun_request_by_request",),
    ),
    Mutation(
        "noise-label",
        "collect records the noisy executed action instead of the expert's clean label",
        "envs/collect.py",
        "        recorder.add(obs, label, training_targets() if training_targets else None)\n"
        "        obs, _, terminated, truncated, info = env.step("
        'add_noise(label, _WORKER["noise_std"], rng, low, high))\n',
        '        label = add_noise(label, _WORKER["noise_std"], rng, low, high)\n'
        "        recorder.add(obs, label, training_targets() if training_targets else None)\n"
        "        obs, _, terminated, truncated, info = env.step(label)\n",
        ("tests/test_collect.py::test_noise_std_executes_noisy_actions_and_records_the_clean_ones",),
    ),
    Mutation(
        "partial-files",
        "reopening a dataset leaves zarr's interrupted-write temp files behind",
        "vla/data/writer.py",
        '            for leftover in Path(self.url).rglob("*.partial"):\n',
        '            for leftover in Path(self.url).rglob("*.never"):\n',
        ("tests/test_crash_safety.py::test_sigkill_mid_episode_keeps_committed_episodes",),
    ),
    Mutation(
        "libero-keymap",
        "the openpi_libero keymap feeds the wrist image to the agentview camera and vice versa",
        "configs/keymap/openpi_libero.yaml",
        "  observation/image: images.agentview\n  observation/wrist_image: images.robot0_eye_in_hand\n",
        "  observation/image: images.robot0_eye_in_hand\n  observation/wrist_image: images.agentview\n",
        ("tests/test_serve.py::test_keymap_openpi_libero_serves_openpis_libero_client_keys",),
    ),
    Mutation(
        "ready-early",
        "the server says it is ready (healthz 200, handshakes accepted) before its warm-up",
        "vla/serve/server.py",
        '        self.ready, self.not_ready = False, "warming up"',
        '        self.ready, self.not_ready = True, "warming up"',
        ("tests/test_serve.py::test_healthz_is_503_while_warming_up_and_handshakes_wait",),
    ),
    Mutation(
        "quantile",
        "the quantile normalizer maps [q01, q99] onto [0, 1] instead of [-1, 1]",
        "vla/data/normalizer.py",
        '        center, scale = (stats["q99"] + stats["q01"]) / 2, (stats["q99"] - stats["q01"]) / 2\n',
        '        center, scale = stats["q01"], stats["q99"] - stats["q01"]\n',
        ("tests/test_stats_normalizer.py::test_normalizer_modes_round_trip_and_constant_dims",),
    ),
    Mutation(
        "in-memory-auto",
        "in_memory=auto refuses a dataset of exactly max_memory_gb",
        "vla/data/window.py",
        "        return nbytes <= cfg.max_memory_gb * 2**30\n",
        "        return nbytes < cfg.max_memory_gb * 2**30\n",
        ("tests/test_window.py::test_in_memory_auto_loads_what_fits_and_reads_zarr_otherwise",),
    ),
    Mutation(
        "zip-source",
        "Diffusion Policy .zip sources are opened as directories",
        "vla/data/convert/diffusion_policy.py",
        '    if str(src).endswith(".zip"):\n',
        '    if str(src).endswith(".never"):\n',
        ("tests/test_convert.py::test_diffusion_policy_zarr_zip_through_the_cli_with_from_and_overwrite",),
    ),
    Mutation(
        "vlm-frozen",
        "the VLM backbone is silently frozen (only the head trains)",
        "vla/models/vlm.py",
        "        self.model = apply_finetune(model, config.finetune, config.lora_rank, self.lora_targets)\n",
        "        self.model = apply_finetune(model, 'frozen', config.lora_rank, self.lora_targets)\n",
        ("tests/test_models.py::test_vlm_backbone_policy_trains_and_checkpoints",),
    ),
    Mutation(
        "lora-grad",
        "LoRA's B matrices are left out of training (A alone cannot move the output: B starts at zero)",
        "vla/models/finetune.py",
        '            param.requires_grad_("lora_" in name)\n',
        '            param.requires_grad_("lora_A" in name)\n',
        ("tests/test_models.py::test_pretrained_cpu_encoders_frozen_and_lora",),
    ),
    Mutation(
        "inf-state",
        "the server refuses NaN states but lets inf through",
        "vla/serve/observation.py",
        "        if not np.isfinite(state).all():\n",
        "        if np.isnan(state).any():\n",
        ("tests/test_serve.py::test_fuzzed_requests_get_errors_while_another_client_is_served",),
    ),
    Mutation(
        "seed-range",
        "the server takes any non-negative int as a seed (2**64 - 1 included)",
        "vla/serve/observation.py",
        "not 0 <= seed < 2**63:",
        "not 0 <= seed:",
        ("tests/test_serve.py::test_fuzzed_requests_get_errors_while_another_client_is_served",),
    ),
    Mutation(
        "batch-metric",
        "the batch-size histogram is never observed",
        "vla/serve/server.py",
        "        self.metrics.batch_size.observe(size)\n",
        "        pass\n",
        ("tests/test_serve.py::test_batching_serves_8_concurrent_clients_correctly",),
    ),
    Mutation(
        "stats-subset",
        "stats leave out the last frame",
        "vla/data/stats.py",
        "        x = store.load(key).astype(np.float64)\n",
        "        x = store.load(key).astype(np.float64)[:-1]\n",
        ("tests/test_convert.py::test_robomimic_round_trip",),
    ),
    Mutation(
        "api-key-env",
        "VLA_API_KEY is not read (configs/serve.yaml)",
        "configs/serve.yaml",
        "api_key: ${oc.env:VLA_API_KEY,null}",
        "api_key: null",
        ("tests/test_cli.py::test_config_errors_and_cfg_printing",),
    ),
    Mutation(
        "overwrite",
        "--overwrite is ignored",
        "vla/cli.py",
        '    options: dict = {"overwrite": args.overwrite}\n',
        '    options: dict = {"overwrite": False}\n',
        ("tests/test_convert.py::test_diffusion_policy_zarr_zip_through_the_cli_with_from_and_overwrite",),
    ),
    Mutation(
        "no-images",
        "validate --no-images still scans every image",
        "vla/cli.py",
        "    report = validate(args.path, check_images=not args.no_images)\n",
        "    report = validate(args.path, check_images=True)\n",
        ("tests/test_validate.py::test_validate_cli_json_and_no_images",),
    ),
    Mutation(
        "oracle-count",
        "push_oracle counts every episode as a success",
        "benchmarks/push_oracle.py",
        "        successes += success\n",
        "        successes += 1\n",
        ("tests/test_benchmarks.py::test_push_oracle_counts_no_success_for_a_regressor_that_never_moves",),
    ),
    Mutation(
        "ray-noise",
        "Ray shards sample at the default temperature, not the configured noise_scale",
        "vla/eval/evaluate.py",
        '    cfg = EvalConfig(**{**cfg_dict, "num_envs": 1, "vectorization": "sync", "backend": "vector"})\n',
        '    cfg = EvalConfig(**{**cfg_dict, "num_envs": 1, "vectorization": "sync", "backend": "vector", '
        '"noise_scale": 1.0})\n',
        ("tests/test_eval.py::test_ray_backend_agrees_with_vector_envs",),
    ),
    Mutation(
        "best-resume",
        "resume forgets the best validation loss so far",
        "vla/train/checkpointing.py",
        '    return state["step"], state["best_val"]\n',
        '    return state["step"], float("inf")\n',
        ("tests/test_train.py::test_best_holds_the_lowest_validation_loss_across_a_crash_and_resume",),
    ),
    Mutation(
        "best-latest",
        "best/ is overwritten at every validation (the latest, not the best)",
        "vla/train/loop.py",
        '        is_best = row.get("val_loss", math.inf) < best_val\n',
        '        is_best = "val_loss" in row\n',
        ("tests/test_train.py::test_best_holds_the_lowest_validation_loss_across_a_crash_and_resume",),
    ),
    Mutation(
        "memo-stale",
        "loading new weights keeps the instruction memo's outputs of the old ones",
        "vla/models/backbone.py",
        "        self.register_load_state_dict_pre_hook(_forget_before_loading)\n",
        "",
        (
            "tests/test_models.py::test_instruction_memo_acts_like_the_text_encoder_and_runs_it_once_per_instruction",
        ),
    ),
    Mutation(
        "memo-padding",
        "the instruction memo stores padded states (a batch mate's padding leaks into the lookup)",
        "vla/models/backbone.py",
        "                    value = self.text([text], device)[0][0]\n",
        "                    value = self.text([text, 'x ' * 20], device)[0][0]\n",
        (
            "tests/test_models.py::test_instruction_memo_acts_like_the_text_encoder_and_runs_it_once_per_instruction",
        ),
    ),
    Mutation(
        "lerobot-tasks",
        "LeRobot export writes tasks.parquet as a plain table (LeRobot then gives task indices, not strings)",
        "vla/data/convert/lerobot.py",
        '    pd.DataFrame({"task_index": range(len(tasks))}, index=pd.Index(tasks, name="task"))'
        ".to_parquet(path)\n",
        '    pd.DataFrame({"task_index": range(len(tasks)), "task": tasks}).to_parquet(path)\n',
        ("tests/test_convert.py::test_lerobot_export_writes_what_lerobot_writes",),
    ),
    Mutation(
        "camera-size",
        "the writer checks every camera against the first camera's size",
        "vla/data/writer.py",
        "        for cam, (h, w) in meta.image_sizes.items():\n            frames",
        "        for cam, (h, w) in ((c, meta.image_sizes[meta.cameras[0]]) for c in meta.cameras):\n"
        "            frames",
        ("tests/test_store.py::test_cameras_of_different_sizes_round_trip_and_are_checked_each",),
    ),
    Mutation(
        "contradiction",
        "attrs that contradict the arrays' image sizes are let through",
        "vla/data/store.py",
        "        if clash and check:\n",
        "        if clash and check and False:\n",
        ("tests/test_store.py::test_attrs_that_contradict_the_arrays_name_both",),
    ),
    Mutation(
        "frame-reader",
        "the chunk-file reader returns a chunk's frames in reverse order",
        "vla/data/frame_reader.py",
        "                out[rows] = block.reshape(self.chunk_frames, *self.frame_shape)[within]\n",
        "                out[rows] = block.reshape(self.chunk_frames, *self.frame_shape)[within[::-1]]\n",
        ("tests/test_window.py::test_frame_reader_reads_what_zarr_reads",),
    ),
    Mutation(
        "batch-frames",
        "a batch read from disk gives each window its frames in reverse time order",
        "vla/data/window.py",
        "            return batch[cam][np.searchsorted(frames, idx)]\n",
        "            return batch[cam][np.searchsorted(frames, idx)[::-1]]\n",
        ("tests/test_window.py::test_batches_read_from_disk_equal_batches_from_memory",),
    ),
    Mutation(
        "codec-quality",
        "the image codec ignores its quality setting (always 100)",
        "vla/data/codecs.py",
        "    coded = [bytes(encode(np.ascontiguousarray(frame), level=quality)) for frame in frames]\n",
        "    coded = [bytes(encode(np.ascontiguousarray(frame), level=100)) for frame in frames]\n",
        ("tests/test_codecs.py::test_each_codec_stores_frames_smaller_and_close",),
    ),
    Mutation(
        "bn-fold",
        "BatchNorm folding leaves out the projection convolutions' BatchNorms (dropped, not folded)",
        "vla/models/backbone.py",
        '        pairs += [(block, "_depthwise_conv", "_bn1"), (block, "_project_conv", "_bn2")]\n',
        '        pairs += [(block, "_depthwise_conv", "_bn1")]\n        block._bn2 = nn.Identity()\n',
        ("tests/test_models.py::test_folded_batchnorm_acts_like_the_reference_encoder",),
    ),
    Mutation(
        "schedule-step",
        "the precomputed sampling schedule gives every denoising step the first step's modulations",
        "vla/models/heads/flow.py",
        "        return [self.transformer.at_step(mods, i) for i in range(steps)], self._state_tokens(",
        "        return [self.transformer.at_step(mods, 0) for i in range(steps)], self._state_tokens(",
        ("tests/test_models.py::test_precomputed_schedule_samples_like_the_reference",),
    ),
    Mutation(
        "vlm-layers",
        "the VLM prefix stops at its layer, whose output transformers then reports after the final norm",
        "vla/models/vlm.py",
        "        config.num_hidden_layers = layer + 1\n",
        "        config.num_hidden_layers = layer\n",
        ("tests/test_models.py::test_vlm_prefix_runs_only_the_layers_it_reads",),
    ),
    Mutation(
        "act-threads",
        "act_threads auto never restores the process's thread count after a chunk",
        "vla/hardware.py",
        "    finally:\n        torch.set_num_threads(previous)\n",
        "    finally:\n        pass\n",
        (
            "tests/test_models.py::"
            "test_act_threads_auto_acts_on_one_thread_at_batch_one_under_passive_waiting",
        ),
    ),
    Mutation(
        "hold-zero",
        "an absolute-position robot holds at zero (the issue's SO-101 jump), not at its measured position",
        "packages/vla-client/vla_client/safety.py",
        '        if self.kind.mode == "absolute":\n            return "measured"\n',
        '        if self.kind.mode == "absolute":\n            return "zero"\n',
        (
            "tests/test_safety.py::test_an_absolute_robot_holds_where_it_is_not_at_zero",
            "tests/test_safety.py::test_a_driver_exception_or_a_killed_server_ends_in_a_hold",
        ),
    ),
    Mutation(
        "step-limit",
        "the per-step limit is measured against the last command instead of the measured position",
        "packages/vla-client/vla_client/safety.py",
        "                    measured = self.measured(state)\n                    if measured is not None:\n",
        "                    measured = last\n                    if measured is not None:\n",
        ("tests/test_safety.py::test_step_limit_position_limits_and_refusals",),
    ),
    Mutation(
        "nan-chunk",
        "the client accepts a chunk holding NaN",
        "packages/vla-client/vla_client/client.py",
        "        if not np.isfinite(chunk).all():\n",
        "        if False:\n",
        ("tests/test_safety.py::test_faulty_chunks_never_reach_the_robot_and_jumps_are_limited",),
    ),
    Mutation(
        "signal-hold",
        "a signal stops the loop without the final hold",
        "packages/vla-client/vla_client/loop.py",
        '            hold = self.safety.hold(self._measured(), self._last, "stop")\n',
        "            hold = None\n",
        ("tests/test_safety.py::test_a_signal_to_vla_robot_holds_then_stops",),
    ),
    Mutation(
        "pack-in-background",
        "the observation is serialized on the network thread, after the driver may have reused its buffers",
        "packages/vla-client/vla_client/loop.py",
        "self.pool.submit(self.client.send, prepared, timeout)",
        "self.pool.submit(self.client.infer, obs, request.seed, request.rtc, timeout)",
        ("tests/test_control_timing.py::test_the_request_holds_the_image_as_observed_not_the_reused_buffer",),
    ),
    Mutation(
        "late-tick",
        "a tick late by less than a period is followed at once by the next one (no re-anchoring)",
        "packages/vla-client/vla_client/loop.py",
        "            if lateness > 0.1 * self.period:\n",
        "            if lateness > self.period:\n",
        ("tests/test_control_timing.py::test_a_late_tick_does_not_bring_the_next_one_forward",),
    ),
]


def run(mutation: Mutation) -> tuple[bool, float, str]:
    """Apply, test, restore. Returns (caught, seconds, the first failing test)."""
    path = ROOT / mutation.path
    source = path.read_text()
    if source.count(mutation.old) != 1:
        raise SystemExit(f"{mutation.id}: the snippet to replace occurs {source.count(mutation.old)} times")
    t0 = time.perf_counter()
    try:
        path.write_text(source.replace(mutation.old, mutation.new))
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-x", "-rf", "-p", "no:cacheprovider", *mutation.tests],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=900,
        )
    except subprocess.TimeoutExpired:
        return False, time.perf_counter() - t0, "(timed out)"
    finally:
        path.write_text(source)
    failed = next((line.split()[1] for line in proc.stdout.splitlines() if line.startswith("FAILED ")), "")
    return proc.returncode == 1 and bool(failed), time.perf_counter() - t0, failed


def main(ids: list[str]) -> int:
    chosen = [m for m in MUTATIONS if not ids or m.id in ids]
    print("| mutation | what was broken | failing test | caught |\n| --- | --- | --- | --- |")
    survivors = []
    for mutation in chosen:
        caught, seconds, failed = run(mutation)
        print(
            f"| {mutation.id} | {mutation.what} | `{failed or mutation.tests[0]}` | "
            f"{'yes' if caught else '**NO**'} ({seconds:.0f} s) |",
            flush=True,
        )
        if not caught:
            survivors.append(mutation.id)
    if survivors:
        print(f"survived (tests that cannot see the breakage): {survivors}", file=sys.stderr)
    return 1 if survivors else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
