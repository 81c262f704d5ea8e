"""Draws the benchmark's latency-load curve: p50, p99 and p99.9 against load (10% to 90% of the
drain rate), end to end through the processor beside the broker's own echo round trip (the
floor), the processor's own view (command record timestamp to reply acknowledged), and the
targets over the floor (p50 + 5 ms, p99 + 10 ms, up to 50% load) as shaded bands.

Usage: plot_latency.py BENCH_JSON OUT_PNG
"""
import json
import math
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

# The targets over the floor, in ms, and the highest load they hold for.
OVER_FLOOR_P50_MS = 5.0
OVER_FLOOR_P99_MS = 10.0
OVER_FLOOR_UP_TO = 0.5
P99_AT_50PCT_MS = 25.0


def value(x):
    return x if x is not None and math.isfinite(x) else float("nan")


def main(src: str, out: str) -> None:
    with open(src) as f:
        figures = json.load(f)
    curve = figures.get("latency_curve")
    if not curve or not curve.get("points"):
        print(f"{src}: no latency curve measured (phase 'curve' not run); {out} left as it was")
        return
    points = curve["points"]
    base = curve.get("base_rate_per_s") or figures.get("throughput_per_s")
    x = [p["achieved_rate_per_s"] for p in points]

    def series(kind: str, q: str) -> list:
        return [value(p[kind].get(q)) for p in points]

    fig, ax = plt.subplots(figsize=(12, 5.5), dpi=120)
    styles = [
        ("end_to_end", "processor, end to end", "tab:blue"),
        ("inside", "inside the processor", "tab:green"),
        ("floor", "floor: broker echo, no database", "tab:gray"),
    ]
    for kind, label, color in styles:
        ax.plot(x, series(kind, "p50_ms"), marker="o", color=color, label=f"{label}, p50")
        ax.plot(x, series(kind, "p99_ms"), marker="s", linestyle="--", color=color, label=f"{label}, p99")
        if kind != "inside":
            ax.plot(x, series(kind, "p99_9_ms"), marker="^", linestyle=":", color=color,
                    label=f"{label}, p99.9")

    # The targets: up to 50% load, end to end within floor p50 + 5 ms and floor p99 + 10 ms.
    low = [i for i, p in enumerate(points) if p["load"] <= OVER_FLOOR_UP_TO + 1e-9]
    if low:
        lx = [x[i] for i in low]
        f50 = [series("floor", "p50_ms")[i] for i in low]
        f99 = [series("floor", "p99_ms")[i] for i in low]
        ax.fill_between(lx, f50, [v + OVER_FLOOR_P50_MS for v in f50], color="tab:olive", alpha=0.18,
                        label=f"target: p50 within floor + {OVER_FLOOR_P50_MS:.0f} ms (to 50%)")
        ax.fill_between(lx, f99, [v + OVER_FLOOR_P99_MS for v in f99], color="tab:orange", alpha=0.15,
                        label=f"target: p99 within floor + {OVER_FLOOR_P99_MS:.0f} ms (to 50%)")
    half = [p for p in points if abs(p["load"] - 0.5) < 1e-9]
    if half:
        ax.plot([half[0]["achieved_rate_per_s"]], [P99_AT_50PCT_MS], marker="_", markersize=24,
                color="tab:red", linestyle="none", label=f"target: p99 < {P99_AT_50PCT_MS:.0f} ms at 50%")
    for p in points:
        ax.annotate(f"{p['load'] * 100:.0f}%", (p["achieved_rate_per_s"], 0),
                    xycoords=("data", "axes fraction"), textcoords="offset points", xytext=(0, 4),
                    ha="center", fontsize=8, color="dimgray")
    rate = f"{base:,.0f}/s" if base else "not measured"
    ax.set_xlabel(f"load, commands/s (percentages: of the drain rate, {rate})")
    ax.set_ylabel("latency, ms (log scale)")
    ax.set_yscale("log")
    ax.set_title("event-updater: latency against load, beside the broker's own round trip")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    fig.tight_layout()
    fig.savefig(out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
