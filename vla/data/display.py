"""Human-readable output of `vla data info | validate | stats` (rich tables)."""

from __future__ import annotations

from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from .validate import ValidationReport


def _fmt_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024
    return str(n)


def print_info(summary: dict[str, Any], console: Console | None = None) -> None:
    console = console or Console()
    t = Table(title=f"dataset {summary['url']}", show_header=False)
    t.add_column(style="bold")
    t.add_column()
    a = summary["action_space"]
    el = summary["episode_length"]
    rows = [
        ("format", summary["format"]),
        (
            "episodes / frames",
            f"{summary['episodes']} / {summary['frames']} ({summary['duration_s']} s at {summary['fps']:g} "
            "fps)",
        ),
        ("episode length", f"min {el['min']}  mean {el['mean']}  max {el['max']}"),
        ("success rate", "-" if summary["success_rate"] is None else f"{summary['success_rate']:.1%}"),
        ("robot / env", f"{summary['robot']} / {summary['env'] or '-'}"),
        (
            "cameras",
            ", ".join(
                f"{cam} {h}x{w} {summary['image_storage'][cam]}"
                for cam, (h, w) in summary["image_size"].items()
            ),
        ),
        ("state dim", str(summary["state_dim"])),
        (
            "action",
            f"dim {a['dim']} ({a['kind']}), low {np.round(a['low'], 3).tolist()}, high "
            f"{np.round(a['high'], 3).tolist()}",
        ),
        (
            "tasks",
            ", ".join(f"{k or '-'} ({v})" for k, v in list(summary["tasks"].items())[:8])
            + (" ..." if len(summary["tasks"]) > 8 else ""),
        ),
        ("unique instructions", str(summary["unique_instructions"])),
        (
            "size on disk",
            f"{_fmt_bytes(summary['bytes_stored'])} (compression {summary['compression_ratio']}x)",
        ),
        ("stats", summary["stats"] or "not computed (`vla data stats PATH`)"),
        ("created with", summary["created_with"] or "-"),
    ]
    if summary["partial_tail"]:
        rows.append(("partial tail", f"[yellow]{summary['partial_tail']} (ignored)[/yellow]"))
    for k, v in rows:
        t.add_row(k, v)
    console.print(t)


def print_validation(report: ValidationReport, console: Console | None = None) -> None:
    console = console or Console()
    for f in report.findings:
        color = "red" if f.severity == "error" else "yellow"
        console.print(f"[{color}]{f.severity.upper()}[/{color}] {f.where}: {f.message}", highlight=False)
    verdict = "[green]OK[/green]" if report.ok else "[red]INVALID[/red]"
    console.print(
        f"{verdict} {report.url}: {report.episodes} episodes, {report.frames} frames, "
        f"{len(report.errors)} error(s), {len(report.warnings)} warning(s)",
        highlight=False,
    )
    if report.image_storage:
        storage = ", ".join(f"{cam} {how}" for cam, how in report.image_storage.items())
        console.print(f"images stored as: {storage}", highlight=False)


def print_stats(stats: dict[str, dict[str, np.ndarray]], console: Console | None = None) -> None:
    console = console or Console()
    for key, values in stats.items():
        t = Table(title=key)
        t.add_column("dim", justify="right")
        names = list(values)
        for name in names:
            t.add_column(name, justify="right")
        for d in range(len(values[names[0]])):
            t.add_row(str(d), *(f"{values[n][d]:.4g}" for n in names))
        console.print(t)
