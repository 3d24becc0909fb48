#!/usr/bin/env python3
"""Offline reference implementation of cohort's assignment function.

Weighted rendezvous hashing (SPEC "Assignment algorithm"). For cohort key k (bytes) in a
service with salt s, each variant i with weight w_i > 0 and name n_i scores

    seed_i  = xxh3_64(utf8(s) ++ 0x00 ++ utf8(n_i))
    h_i     = xxh3_64_with_seed(k, seed_i)
    u_i     = ((h_i >> 11) + 0.5) / 2^53          # in (0, 1]
    score_i = w_i / -ln(u_i)                      # IEEE binary64; u == 1.0 scores -inf

The highest score wins (ties: first in config order); weight-0 variants never win; if no
variant has a positive finite score, the first variant with weight > 0 wins.

    cohort_assign.py --salt api --variant stable=95 --variant canary=5 user-1 user-27
    cohort_assign.py --salt api --variant stable=95,canary=5 --hex-key 00ff --json
    cohort_assign.py --check tests/golden/vectors.tsv     # exit 0 if every row matches
    cohort_assign.py --generate > tests/golden/vectors.tsv

Text keys are reported before --hex-key keys. Exit status 2 if xxhash is missing.
"""
import argparse
import json
import math
import sys

try:
    import xxhash
except ImportError:
    print("cohort_assign.py needs the xxhash module: pip install xxhash", file=sys.stderr)
    sys.exit(2)

TWO_POW_53 = float(2**53)
COLUMNS = ["salt", "variants", "key_hex", "key_display", "winner", "u"]


def variant_seed(salt: str, name: str) -> int:
    return xxhash.xxh3_64_intdigest(salt.encode() + b"\0" + name.encode())


def unit(key: bytes, seed: int) -> float:
    # h >> 11 < 2^53 converts to float exactly; "+ 0.5" and "/ 2^53" round as in Rust.
    return ((xxhash.xxh3_64_intdigest(key, seed=seed) >> 11) + 0.5) / TWO_POW_53


def score(weight: float, u: float) -> float:
    # IEEE gives w / -0.0 == -inf; Python raises ZeroDivisionError instead.
    return -math.inf if u == 1.0 else weight / -math.log(u)


def parse_variants(text: str) -> list:
    """'stable=95,canary=5' -> [('stable', 95.0), ('canary', 5.0)]."""
    pairs = [item.partition("=") for item in text.split(",") if item]
    return [(name, float(weight)) for name, _, weight in pairs]


def evaluate(salt: str, variants: list, key: bytes):
    """(winner index or None, [(seed, u, score or None for weight 0)]) for one key."""
    seeds = [variant_seed(salt, name) for name, _ in variants]
    us = [unit(key, seed) for seed in seeds]
    scores = [score(w, u) if w > 0 else None for (_, w), u in zip(variants, us)]
    best, best_score = None, -math.inf
    for i, s in enumerate(scores):
        if s is not None and s > best_score:  # strict ">": ties to the first; -inf never wins
            best, best_score = i, s
    if best is None:
        best = next((i for i, (_, w) in enumerate(variants) if w > 0), None)
    return best, list(zip(seeds, us, scores))


def display(key: bytes) -> str:
    """The key as text when it is printable UTF-8, else '<empty>' or '<hex ...>'."""
    try:
        text = key.decode()
    except UnicodeDecodeError:
        text = ""
    return text if text.isprintable() and text else f"<hex {key.hex()}>" if key else "<empty>"


# The golden table: the spec's ten assignments, SERVICES x KEYS (+ LONG_KEYS where flagged),
# then for each service the first "user-N" key won by each variant that won no row yet.
SPEC_KEYS = ["user-1", "user-27", "user-154", "alice", "203.0.113.7"]
SERVICES = [  # (salt, variants, also the long keys)
    ("api", "stable=50,canary=50", True),
    ("api", "canary=5,stable=95", False),
    ("", "stable=90,canary=10", False),
    ("ünïcødé-sålt-服务", "blue=1,green=1,red=1", True),
    ("rollout-2024-q3-" * 20, "v1=70,v2=20,v3=5,v4=5", False),
    ("checkout", "a=1,b=2,c=3,d=4,e=5", True),
    ("billing", "off=0,on=1", False),
    ("search", "old=0,new=3,exp=0,ctl=1", False),
    ("frac", "x=0.5,y=0.25,z=0.25", False),
    ("heavy", "light=1,heavy=10000", False),
]
KEYS = [(b"", "<empty>")] + [(t.encode(), t) for t in [
    "a", "u-7", "user-1", "user-154", "alice", "192.0.2.1", "203.0.113.7", "::1",
    "2001:db8:85a3::8a2e:370:7334", "ünïcødé", "用户-42", "🦀🚀✨"]] + [
    (b"\0", "<NUL>"), (b"a\0b\0", "<'a' NUL 'b' NUL>"), (b"\xff\xfe", "<bytes ff fe>")]
LONG_KEYS = [(b"x" * 200, "<200 bytes of 'x'>"), (bytes(range(256)), "<bytes 00..ff>"),
             (b"b" * 1024, "<1024 bytes of 'b'>"), (b"a" * 4096, "<4096 bytes of 'a'>")]


def golden_rows() -> list:
    def row(salt, variants, key, shown):
        win, scored = evaluate(salt, parse_variants(variants), key)
        name = parse_variants(variants)[win][0]
        return [salt, variants, key.hex(), shown, name, ",".join(repr(u) for _, u, _ in scored)]

    rows = [row("api", v, k.encode(), k) for v in ["stable=95,canary=5", "stable=99,canary=1"]
            for k in SPEC_KEYS]
    for salt, variants, long in SERVICES:
        mine = [row(salt, variants, k, shown) for k, shown in KEYS + (LONG_KEYS if long else [])]
        for name, w in parse_variants(variants):
            n = 0
            while w > 0 and name not in {r[4] for r in mine}:
                candidate = row(salt, variants, f"user-{n}".encode(), f"user-{n}")
                mine += [candidate] if candidate[4] == name else []
                n += 1
        rows += mine
    assert all("\t" not in field and "\n" not in field for r in rows for field in r)
    return rows


def generate(out) -> int:
    out.write("# Golden vectors for cohort's assignment function (SPEC \"Assignment algorithm\").\n"
              "# Generated by: python3 scripts/cohort_assign.py --generate"
              " > tests/golden/vectors.tsv\n"
              "# Checked by: python3 scripts/cohort_assign.py --check tests/golden/vectors.tsv"
              " and cargo test --test golden\n"
              "# key_hex: the key bytes in lowercase hex; u: one per variant, in order, Python"
              " repr() (round-trips exactly).\n")
    out.writelines("\t".join(r) + "\n" for r in [COLUMNS] + golden_rows())
    return 0


def check(path: str) -> int:
    """Recompute every row of a golden table: 0 if all match exactly, else 1 and a diff."""
    with open(path, encoding="utf-8") as f:
        lines = [(n, l.rstrip("\n")) for n, l in enumerate(f, 1) if not l.startswith("#")]
    if not lines or lines[0][1].split("\t") != COLUMNS:
        print(f"{path}: the first non-# line must be the header {COLUMNS}")
        return 1
    bad = 0
    for n, line in lines[1:]:
        try:
            salt, variants, key_hex, shown, winner, table_us = line.split("\t")
            vs = parse_variants(variants)
            win, scored = evaluate(salt, vs, bytes.fromhex(key_hex))
            want = [float(u) for u in table_us.split(",")]
        except ValueError as e:
            bad += 1
            print(f"{path}:{n}: malformed row ({e}): {line!r}")
            continue
        got, name = [u for _, u, _ in scored], "-" if win is None else vs[win][0]
        if name != winner or want != got:  # exact float equality; the diff shows float.hex()
            bad += 1
            print(f"{path}:{n}: salt {salt!r}, {variants}, key {shown}\n"
                  f"-   table: winner {winner}, u {', '.join(u.hex() for u in want)}\n"
                  f"+ computed: winner {name}, u {', '.join(u.hex() for u in got)}")
    print(f"{path}: {len(lines) - 1 - bad} of {len(lines) - 1} rows match")
    return 1 if bad else 0


def to_json(variants: list, key: bytes, winner, scored: list) -> dict:
    """One key's result. u_repr round-trips exactly; score is null for weight 0 and -inf."""
    return {"key_hex": key.hex(), "key": display(key), "winner": winner, "variants": [
        {"name": name, "weight": w, "seed": f"0x{seed:016x}", "u": u, "u_repr": repr(u),
         "score": None if s is None or s == -math.inf else s}
        for (name, w), (seed, u, s) in zip(variants, scored)]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--salt", help="the service's salt (cohort defaults it to the service name)")
    p.add_argument("--variant", action="append", default=[], type=parse_variants,
                   help="NAME=WEIGHT[,NAME=WEIGHT...], repeatable, in config order")
    p.add_argument("--hex-key", action="append", default=[], type=bytes.fromhex,
                   help="a key as hex bytes (repeatable; reported after the text keys)")
    p.add_argument("--json", action="store_true", help="print a JSON array instead of TSV")
    p.add_argument("--check", metavar="TSV", help="recompute every row of a golden table")
    p.add_argument("--generate", action="store_true", help="print the golden table to stdout")
    p.add_argument("keys", nargs="*", type=str.encode, help="keys as UTF-8 text")
    a = p.parse_args()
    if a.check:
        return check(a.check)
    if a.generate:
        return generate(sys.stdout)
    variants = [v for group in a.variant for v in group]
    if a.salt is None or not variants:
        p.error("--salt and at least one --variant are required")
    out = []
    for key in a.keys + a.hex_key:
        win, scored = evaluate(a.salt, variants, key)
        out.append((key, None if win is None else variants[win][0], scored))
    if a.json:
        print(json.dumps([to_json(variants, *result) for result in out], indent=1))
        return 0
    print("\t".join(["key", "winner"] + [f"{c}_{n}" for n, _ in variants for c in ("u", "score")]))
    for key, winner, scored in out:
        cells = [x for _, u, s in scored for x in (repr(u), "-" if s is None else repr(s))]
        print("\t".join([display(key), winner or "-"] + cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
