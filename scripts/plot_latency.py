"""Draws the benchmark's latency-load curve: p50 and p99 against load, end to end through the
processor beside the broker's own echo round trip (the floor), and the processor's own view
(command record timestamp to reply acknowledged).

Usage: plot_latency.py BENCH_JSON OUT_PNG
"""
import json
import math
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main(src: str, out: str) -> None:
    with open(src) as f:
        figures = json.load(f)
    points = figures["latency_curve"]["points"]
    drain = figures["throughput_per_s"]
    x = [p["achieved_rate_per_s"] for p in points]

    def series(kind: str, q: str) -> list:
        return [p[kind][q] if p[kind][q] is not None and math.isfinite(p[kind][q]) else float("nan") for p in points]

    fig, ax = plt.subplots(figsize=(8, 5), dpi=120)
    styles = [
        ("end_to_end", "processor, end to end", "tab:blue"),
        ("inside", "inside the processor", "tab:green"),
        ("floor", "floor: broker echo, no database", "tab:gray"),
    ]
    for kind, label, color in styles:
        ax.plot(x, series(kind, "p50_ms"), marker="o", color=color, label=f"{label}, p50")
        ax.plot(x, series(kind, "p99_ms"), marker="s", linestyle="--", color=color, label=f"{label}, p99")
    ax.axhline(50, color="tab:red", linewidth=0.8, linestyle=":", label="50 ms")
    for p in points:
        ax.annotate(f"{p['load'] * 100:.0f}%", (p["achieved_rate_per_s"], 0),
                    xycoords=("data", "axes fraction"), textcoords="offset points", xytext=(0, 4),
                    ha="center", fontsize=8, color="dimgray")
    ax.set_xlabel(f"load, commands/s (percentages: of the drain rate, {drain:,.0f}/s)")
    ax.set_ylabel("latency, ms (log scale)")
    ax.set_yscale("log")
    ax.set_title("event-updater: latency against load")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
