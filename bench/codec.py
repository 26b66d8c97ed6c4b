"""Per-core codec speed: the fast path's extract() next to hl7apy and python-hl7, same corpus.

    python -m bench.codec [--messages 5000] [--hl7apy-messages 300] [--seed 1]

Prints one JSON object. Every figure is messages per second on one core, measured with
time.perf_counter in this process, best of --repeats runs (hl7apy runs once: it is slow).
The fast path does decode + validation + extraction + unescaping; hl7apy is its full parse;
python-hl7 is `hl7.parse` alone (no validation, extraction or unescaping), a generous baseline.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import hl7
import orjson
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message

from streams.hl7 import extract
from streams.hl7.synthetic import VERSIONS, mixed_corpus

# hl7apy cannot load 2.7.1, and all three parsers must see the same corpus.
HL7APY_VERSIONS = tuple(version for version in VERSIONS if version != "2.7.1")


def messages_per_second(
    parse: Callable[[bytes], object], corpus: list[bytes], repeats: int
) -> float:
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        for raw in corpus:
            parse(raw)
        best = min(best, time.perf_counter() - started)
    return len(corpus) / best


def parse_with_hl7apy(raw: bytes) -> object:
    return parse_message(
        raw.decode("utf-8"), validation_level=VALIDATION_LEVEL.TOLERANT, find_groups=False
    )


def parse_with_python_hl7(raw: bytes) -> object:
    return hl7.parse(raw.decode("utf-8"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--hl7apy-messages", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    corpus = mixed_corpus(args.seed, args.messages, versions=HL7APY_VERSIONS)
    fast_path = messages_per_second(extract, corpus, args.repeats)
    reference = messages_per_second(parse_with_hl7apy, corpus[: args.hl7apy_messages], 1)
    python_hl7 = messages_per_second(parse_with_python_hl7, corpus, args.repeats)
    segments = sum(raw.count(b"\r") for raw in corpus) / len(corpus)
    result = {
        "fast_path_msgs_per_s": round(fast_path),
        "hl7apy_msgs_per_s": round(reference),
        "python_hl7_msgs_per_s": round(python_hl7),
        "speedup_vs_hl7apy": round(fast_path / reference, 1),
        "corpus_messages": len(corpus),
        "hl7apy_messages": min(args.hl7apy_messages, len(corpus)),
        "mean_segments_per_message": round(segments, 2),
    }
    print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())


if __name__ == "__main__":
    main()
