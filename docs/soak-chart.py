#!/usr/bin/env python3
"""Draws a soak run's samples (huren-bench --soak … --soak-csv FILE) as one PNG:
memory (and a bench-started PostgreSQL server's), open descriptors, store size on disk and
each call's p99 latency over time.

    python3 docs/soak-chart.py docs/soak-postgres.csv docs/soak-postgres.png

Needs matplotlib (pip install matplotlib)."""

import csv
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main(src: str, dst: str) -> None:
    with open(src, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        sys.exit(f"{src}: no samples")
    minutes = [int(r["seconds"]) / 60 for r in rows]

    def col(name):
        return [float(r[name]) for r in rows]

    fig, axes = plt.subplots(4, 1, figsize=(10, 10), sharex=True)
    memory = [("rss_mb", "hub and clients (resident)")]
    # Runs on a PostgreSQL cluster the bench started also sample the server's memory.
    if "db_server_mb" in rows[0] and any(float(r["db_server_mb"] or 0) > 0 for r in rows):
        memory.append(("db_server_mb", "PostgreSQL server (summed PSS)"))
    panels = [
        ("memory (MB)", memory),
        ("open file descriptors", [("open_fds", "process")]),
        ("store on disk (MB)", [("disk_mb", "sled folder or PostgreSQL database")]),
        ("p99 latency per 10 s (ms)", [("publish_p99_ms", "publish"), ("query_p99_ms", "FindPrior")]),
    ]
    for ax, (title, series) in zip(axes, panels):
        for name, label in series:
            ax.plot(minutes, col(name), label=label, linewidth=1)
        ax.set_ylabel(title)
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
        ax.legend(loc="upper left", fontsize="small")
    axes[-1].set_xlabel("minutes")
    publishes = sum(int(r["publishes"]) for r in rows)
    queries = sum(int(r["queries"]) for r in rows)
    errors = sum(int(r["errors"]) for r in rows)
    fig.suptitle(
        f"huren-bench --soak: {publishes:,} publishes and {queries:,} FindPrior in "
        f"{minutes[-1]:.0f} min, {errors} errors"
    )
    fig.tight_layout()
    fig.savefig(dst, dpi=90)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
