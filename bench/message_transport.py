"""Publish-to-callback latency of the custom messages through real DDS between two processes.

Prints one JSON object: p50/p99 of VLFeatures 1500 x 2048 (float32 and float16) and ActionChunk latency
(wall clock, publisher stamp -> subscriber callback start), plus encode/decode (conversion) costs.
    scripts/in-env python bench/message_transport.py [--quick] [--out DIR]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import base_parser, emit, percentiles_ms, save_histogram  # noqa: E402

from insertion_vla_ros.testing.message_roundtrip import round_trip  # noqa: E402

KINDS = ["vl_features_f32", "vl_features_f16", "action_chunk"]


def main() -> int:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=None, help="messages per kind (default 100, quick 20)")
    args = parser.parse_args()
    count = args.count or (20 if args.quick else 100)
    period_s = 0.05
    results, encode_s = round_trip(KINDS, count, (1500, 2048), period_s=period_s, timeout_s=120.0)
    metrics: dict[str, float] = {}
    for kind in KINDS:
        result = results[kind]
        if result.received != count or result.bit_exact != count:
            raise SystemExit(
                f"{kind}: received {result.received}/{count}, "
                f"bit-exact {result.bit_exact}: {result.errors[:3]}"
            )
        metrics.update(percentiles_ms(result.latencies_s, kind))
        metrics.update(percentiles_ms(encode_s[kind], f"{kind}_encode"))
        metrics.update(percentiles_ms(result.decode_s, f"{kind}_decode"))
    emit(
        "message_transport",
        {"count": count, "vl_shape": [1500, 2048], "period_s": period_s, "kinds": KINDS},
        metrics,
        args.out,
    )
    if args.out is not None:
        _plot(results, args.out)
    return 0


def _plot(results, out: Path) -> None:
    series = {kind: [v * 1e3 for v in results[kind].latencies_s] for kind in KINDS}
    xlabel = "publish -> callback latency (ms)"
    save_histogram(out / "message_transport_latency.png", series, xlabel, "messages")


if __name__ == "__main__":
    sys.exit(main())
