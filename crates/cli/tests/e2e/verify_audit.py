"""An independent verifier of Bulkhead audit exports, written from
docs/audit.md alone: it re-encodes every line canonically (it does not
trust the line's own bytes), recomputes each hash, follows the chain and
checks every checkpoint's Ed25519 signature with `cryptography`.

    python3 verify_audit.py EXPORT [PINNED_PUBLIC_KEY]

Prints "ok <events> <last seq>" and exits 0, or prints the first problem
and exits 1.
"""

import base64
import hashlib
import json
import sys

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey


def canonical(value):
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def b64url(text):
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def fail(number, message):
    print(f"line {number}: {message}")
    sys.exit(1)


def main():
    path = sys.argv[1]
    pinned = b64url(sys.argv[2]) if len(sys.argv) > 2 else None
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    header = json.loads(lines[0])
    if header.get("type") != "header" or header.get("format") != "bulkhead-audit/2":
        fail(1, "not a bulkhead-audit/2 export")
    stream = header["stream"]
    keys = {}
    for key in header["keys"]:
        public = b64url(key["public_key"])
        kid = hashlib.sha256(b"bulkhead-audit-key\x00" + stream.encode() + b"\x00" + public).hexdigest()[:16]
        if key["stream"] != stream or key["key_id"] != kid or key["alg"] != "EdDSA":
            fail(1, f"key {key['key_id']} is not bound to {stream}")
        keys[kid] = public
    chain = None  # (seq, hash hex)
    start = 1  # the seq of the first event: one past the anchor, or 1
    events = 0
    closed = False
    for number, text in enumerate(lines[1:], start=2):
        line = json.loads(text)
        closed = False
        if line.get("stream") != stream:
            fail(number, "another stream's line")
        kind = line.pop("type", None)
        if kind == "event":
            stated = line.pop("hash")
            if hashlib.sha256(canonical(line).encode()).hexdigest() != stated:
                fail(number, "hash mismatch")
            if chain is None:
                if line["seq"] != 1 or line["prev_hash"] != "0" * 64:
                    fail(number, "chain starts without an anchor")
            elif line["seq"] != chain[0] + 1 or line["prev_hash"] != chain[1]:
                fail(number, "broken link")
            chain = (line["seq"], stated)
            events += 1
        elif kind == "checkpoint":
            signature = b64url(line.pop("signature"))
            public = keys.get(line["key_id"])
            if public is None or (pinned is not None and public != pinned):
                fail(number, "unknown or unpinned key")
            try:
                Ed25519PublicKey.from_public_bytes(public).verify(signature, canonical(line).encode())
            except InvalidSignature:
                fail(number, "bad signature")
            if ("from" in line) != (line["kind"] == "export"):
                fail(number, "from belongs on export checkpoints, and only there")
            if chain is None and events == 0 and line["kind"] != "export":
                chain = (line["seq"], line["head"])
                start = line["seq"] + 1
            elif chain is None and line["kind"] == "export" and line["seq"] == 0 \
                    and line["head"] == "0" * 64:
                pass
            elif chain is None or (line["seq"], line["head"]) != chain:
                fail(number, "checkpoint does not match the chain")
            if line["kind"] == "export" and line["from"] != start:
                fail(number, "the export does not start where its export checkpoint says")
            closed = line["kind"] == "export"
        else:
            fail(number, f"unknown line type {kind!r}")
    if not closed:
        fail(len(lines), "no closing export checkpoint")
    print(f"ok {events} {chain[0] if chain else 0}")


main()
