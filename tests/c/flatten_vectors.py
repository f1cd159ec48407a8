#!/usr/bin/env python3
"""Flattens signing vector files (JSON) into the line format tests/c/test_signing.c reads.

Each field is `name HEX` (the bytes, hex-encoded, so no escaping is needed); pairs are
`q KEYHEX VALUEHEX` and `h NAMEHEX VALUEHEX`; a vector ends with `end`.
"""
import json
import sys


def hx(s):
    return (s if isinstance(s, bytes) else s.encode("utf-8")).hex()


def main(paths):
    count = 0
    for path in paths:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
        for v in doc["vectors"]:
            i, o = v["inputs"], v["outputs"]
            out = [("name", v["name"]), ("method", i["method"]), ("host", i["host"]), ("path", i["path"]),
                   ("body", bytes.fromhex(i["body_hex"]) if "body_hex" in i else i["body_utf8"]),
                   ("ak", i["ak"]), ("sk", i["sk"]), ("token", i.get("session_token") or ""),
                   ("region", i["region"]), ("service", i["service"]), ("xdate", i["x_date"]),
                   ("creq", o["canonical_request"]), ("sts", o["string_to_sign"]), ("auth", o["authorization"])]
            for name, value in out:
                print(name, hx(value))
            for k, val in i["query"]:
                print("q", hx(k), hx(val))
            for k, val in i["headers_before_signing"].items():
                print("h", hx(k), hx(val))
            print("end")
            count += 1
    print(f"flattened {count} vectors from {len(paths)} files", file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv[1:])
