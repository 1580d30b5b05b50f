"""`vla <verb>`: parse arguments and delegate. No logic lives here."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from pathlib import Path

from vla import __version__

HYDRA_VERBS = {
    "collect": "collect demonstrations with a scripted expert into a Zarr dataset",
    "train": "train a policy on a Zarr dataset (hydra + accelerate)",
    "eval": "evaluate a checkpoint (or a served policy: url=) in simulation and write a report",
    "serve": "serve a checkpoint over websocket (openpi-compatible) with /healthz /metadata /metrics",
    "robot": "drive a simulated robot through a running `vla serve` at a fixed control rate",
}

OVERRIDES_HELP = (
    "hydra overrides composed from configs/<verb>.yaml, e.g. `data.path=data/x.zarr out=runs/x`; "
    "`--cfg` prints the composed config"
)


def _hydra_verb(verb: str, args: argparse.Namespace) -> int:
    from omegaconf import OmegaConf

    from vla.config import compose

    cfg = compose(verb, args.overrides)
    if args.cfg:
        print(OmegaConf.to_yaml(cfg), end="")
        return 0
    return {"collect": _collect, "train": _train, "eval": _eval, "serve": _serve, "robot": _robot}[verb](
        cfg, args
    )


def _collect(cfg, args: argparse.Namespace) -> int:
    from envs.collect import CollectConfig, collect
    from vla.config import to_object

    summary = collect(to_object(cfg, CollectConfig))
    summary.pop("config", None)
    print(json.dumps(summary, indent=2))
    return 0


def _train(cfg, args: argparse.Namespace) -> int:
    from vla.config import to_object
    from vla.train import TrainConfig, train

    checkpoint = train(to_object(cfg, TrainConfig))
    print(f"checkpoint: {checkpoint}")
    return 0


def _eval(cfg, args: argparse.Namespace) -> int:
    from vla.config import to_object
    from vla.eval import EvalConfig, evaluate

    report = evaluate(to_object(cfg, EvalConfig))
    print(f"report: {report['out']}/eval.md   videos: {report['out']}/videos/")
    return 0


def _serve(cfg, args: argparse.Namespace) -> int:
    from vla.config import to_object
    from vla.serve import ServeConfig, serve

    serve(to_object(cfg, ServeConfig))
    return 0


def _robot(cfg, args: argparse.Namespace) -> int:
    from vla.config import to_object
    from vla.serve.config import RobotConfig
    from vla.serve.control_loop import run_robot

    summary = run_robot(to_object(cfg, RobotConfig))
    print(json.dumps(summary, indent=2))
    stopped = summary["stopped_by"]
    if stopped in ("SIGINT", "SIGTERM"):
        print(f"vla robot: stopped by {stopped}: the robot held, then stopped", file=sys.stderr)
        return 128 + int(getattr(signal, stopped))
    return 0 if summary["episodes"] else 1


def _list_envs(args: argparse.Namespace) -> int:
    import envs

    for name in envs.list():
        print(f"{name:32s} {envs.spec(name).description}")
    return 0


def _data_info(args: argparse.Namespace) -> int:
    from vla.data import TrajectoryStore, validate
    from vla.data.display import print_info, print_validation
    from vla.data.store import dataset_exists

    if not dataset_exists(args.path):
        TrajectoryStore(args.path)  # raises the error that names the path
    # the checks of `validate` but the blank-frame scan first: a damaged dataset is reported, not summarized
    report = validate(args.path, check_images=False, decode_images=True)
    if not report.ok:
        if args.json:
            print(json.dumps(report.to_dict(), indent=2))
        else:
            print_validation(report)
            print(f"{args.path} is not a valid dataset: `vla data validate {args.path}` for the full check")
        return 1
    summary = TrajectoryStore(args.path).summary()
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print_info(summary)
    return 0


def _data_validate(args: argparse.Namespace) -> int:
    from vla.data import validate
    from vla.data.display import print_validation

    report = validate(args.path, check_images=not args.no_images)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print_validation(report)
    return 0 if report.ok else 1


def _data_stats(args: argparse.Namespace) -> int:
    from vla.data import ensure_stats
    from vla.data.display import print_stats

    stats = ensure_stats(args.path, recompute=args.recompute)
    if args.json:
        print(json.dumps({k: {n: v.tolist() for n, v in d.items()} for k, d in stats.items()}, indent=2))
    else:
        print_stats(stats)
    return 0


def _data_convert(args: argparse.Namespace) -> int:
    from vla.data.convert import ConversionError, convert

    options: dict = {"overwrite": args.overwrite}
    if args.instruction:
        options["instruction"] = args.instruction
    if args.fps:
        options["fps"] = args.fps
    if args.state_keys:
        options["state_keys"] = args.state_keys.split(",")
    if args.key_map:
        options["key_map"] = dict(item.split("=", 1) for item in args.key_map.split(","))
    if args.image_codec:
        options["image_codec"] = (
            dict(item.split("=", 1) for item in args.image_codec.split(","))
            if "=" in args.image_codec
            else args.image_codec
        )
    if args.to == "lerobot":
        unused = [
            flag
            for flag, value in (
                ("--state-keys", args.state_keys),
                ("--key-map", args.key_map),
                ("--image-codec", args.image_codec),
            )
            if value
        ]
        if unused:
            raise ConversionError(
                f"{' and '.join(unused)} apply to reading other formats, not to --to lerobot"
            )
        options = {
            "overwrite": args.overwrite,
            "video_codec": None if args.video_codec == "none" else args.video_codec,
            "instruction": args.instruction,
            "fps": args.fps,
        }
    summary = convert(args.src, args.dst, from_format=args.from_format, to_format=args.to, **options)
    print(json.dumps(summary, indent=2))
    return 0


def _data_merge(args: argparse.Namespace) -> int:
    from vla.data.merge import merge

    print(json.dumps(merge(args.sources, args.out, overwrite=args.overwrite), indent=2))
    return 0


def _benchmarks_dir() -> Path:
    for base in (Path.cwd(), Path(__file__).resolve().parent.parent):
        if (base / "benchmarks").is_dir():
            return base / "benchmarks"
    raise FileNotFoundError(
        "`vla bench` runs the scripts in a checkout's benchmarks/, which the wheel does not ship: "
        "run it from the root of a git clone of vla"
    )


def _bench(args: argparse.Namespace) -> int:
    import runpy

    directory = _benchmarks_dir()
    available = sorted(p.stem for p in directory.glob("*.py") if not p.stem.startswith("_"))
    if args.list or not args.name:
        print("\n".join(available))
        return 0
    if args.name not in available:
        print(f"error: unknown benchmark {args.name!r}; available: {', '.join(available)}", file=sys.stderr)
        return 2
    sys.argv = [str(directory / f"{args.name}.py"), *args.overrides]
    runpy.run_path(sys.argv[0], run_name="__main__")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vla",
        description="Vision-language-action policies: collect -> data -> train -> eval / serve.",
    )
    parser.add_argument("--version", action="version", version=f"vla {__version__}")
    verbs = parser.add_subparsers(dest="verb", metavar="<verb>", required=True)

    for verb, help_text in HYDRA_VERBS.items():
        p = verbs.add_parser(verb, help=help_text, description=help_text)
        p.add_argument("overrides", nargs="*", help=OVERRIDES_HELP)
        p.add_argument("--cfg", action="store_true", help="print the composed config and exit")
        p.set_defaults(func=lambda a, v=verb: _hydra_verb(v, a))
        if verb == "collect":
            p.add_argument(
                "--list-envs", action="store_true", help="list the registered environments and exit"
            )

    data = verbs.add_parser(
        "data",
        help="inspect, validate and compute stats of Zarr datasets",
        description="Inspect, validate and compute stats of vla Zarr datasets.",
    )
    data_verbs = data.add_subparsers(dest="data_verb", metavar="<command>", required=True)
    p = data_verbs.add_parser("info", help="summary: episodes, frames, cameras, dims, tasks, size")
    p.add_argument("path", help="dataset URL (path, file://, memory://, s3://)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=_data_info)
    p = data_verbs.add_parser(
        "validate", help="check schema, episode boundaries, dtypes, NaN/inf, images; exit 1 on errors"
    )
    p.add_argument("path")
    p.add_argument("--json", action="store_true")
    p.add_argument("--no-images", action="store_true", help="skip the blank-frame scan over all images")
    p.set_defaults(func=_data_validate)
    p = data_verbs.add_parser(
        "stats", help="compute (once) and show normalization stats; stored in the dataset"
    )
    p.add_argument("path")
    p.add_argument("--recompute", action="store_true", help="recompute even if stored stats are up to date")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_data_stats)

    p = data_verbs.add_parser(
        "convert",
        help="convert robomimic / LeRobot v3 / Diffusion Policy data to vla Zarr, or vla to LeRobot",
        description="Convert a dataset; the source format is detected unless --from is given. "
        "Ends with a validation pass; a failed conversion leaves nothing at DST.",
    )
    p.add_argument("src")
    p.add_argument("dst")
    p.add_argument("--from", dest="from_format", choices=["robomimic", "lerobot", "diffusion_policy", "vla"])
    p.add_argument("--to", default="vla", choices=["vla", "lerobot"])
    p.add_argument("--instruction", help="instruction for every episode (default: from the source's task)")
    p.add_argument(
        "--fps", type=float, help="control rate, where the source does not say (robomimic, diffusion_policy)"
    )
    p.add_argument("--state-keys", help="robomimic: comma-separated obs keys concatenated into state")
    p.add_argument(
        "--key-map", help="diffusion_policy: src=dst pairs, e.g. img=images/top,state=state,action=action"
    )
    p.add_argument(
        "--image-codec",
        help="how the vla dataset stores camera frames: none (raw, lossless; default), jpeg, jpegxl, avif "
        "or webp, with an optional :QUALITY (e.g. jpeg:90), or per camera: front=jpeg:90,wrist=none",
    )
    p.add_argument(
        "--video-codec",
        default="libsvtav1",
        help="--to lerobot: libsvtav1 | libx264 | libx264rgb (lossless) | none (inline PNG)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace DST if it exists")
    p.set_defaults(func=_data_convert)
    p = data_verbs.add_parser(
        "merge",
        help="merge datasets (same cameras and dims) into one, e.g. for multi-task training",
        description="Copy every episode of SRC... into a new dataset OUT; validated, with stats.",
    )
    p.add_argument("sources", nargs="+", metavar="SRC")
    p.add_argument("--out", required=True, help="the merged dataset")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    p.set_defaults(func=_data_merge)

    p = verbs.add_parser(
        "bench",
        help="run a benchmark from benchmarks/ (prints JSON)",
        description="Run benchmarks/<name>.py with key=value overrides; prints JSON.",
    )
    p.add_argument("name", nargs="?", help="benchmark name (see --list)")
    p.add_argument("overrides", nargs="*", help="key=value overrides of the benchmark's config")
    p.add_argument("--list", action="store_true", help="list available benchmarks")
    p.set_defaults(func=_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    from vla.config import ConfigError
    from vla.data.schema import SchemaError

    args = build_parser().parse_args(argv)
    # the library's own INFO lines (e.g. which dtype the vision encoder runs in, and why); others' stay quiet
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("vla").setLevel(logging.INFO)
    if getattr(args, "list_envs", False):
        return _list_envs(args)
    try:
        return args.func(args)
    except (
        ConfigError,
        SchemaError,
        OSError,
        KeyError,
        ValueError,
        TypeError,
        ImportError,
        RuntimeError,
    ) as e:  # noqa: B014
        if os.environ.get("VLA_DEBUG"):
            raise
        print(f"error: {e}", file=sys.stderr)
        print("(set VLA_DEBUG=1 for the traceback)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
