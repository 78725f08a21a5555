"""An independent verifier of Bulkhead audit exports, written from
docs/audit.md alone: it holds every line to canonical JSON (it parses the
line, refusing repeated members, fractions and integers beyond 2^53 - 1,
and requires that re-encoding it gives the line back), recomputes each
hash, follows the chain, checks every checkpoint's Ed25519 signature with
`cryptography`, and requires one export checkpoint, last, and a final
newline. With --previous (an earlier export of the same stream) or
--checkpoint SEQ:HEAD (its export checkpoint's seq and head), it also
proves that this export extends that one: the same hash at that seq.

    python3 verify_audit.py EXPORT [PINNED_PUBLIC_KEY] [--previous OLD | --checkpoint SEQ:HEAD]

Prints "ok <events> <last seq>" (and " extends <seq>") and exits 0, or
prints the first problem and exits 1.
"""

import argparse
import base64
import hashlib
import json
import re
import sys

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

MAX_INTEGER = 2**53 - 1
ZERO = "0" * 64
HEX64 = re.compile(r"[0-9a-f]{64}\Z")
TIME = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{6}Z\Z")


class Broken(Exception):
    def __init__(self, number, message):
        super().__init__(f"line {number}: {message}")


def canonical(value):
    """RFC 8785 for the values Bulkhead writes: members sorted by UTF-16
    code units, no whitespace, only the escapes JSON requires."""
    if isinstance(value, dict):
        members = sorted(value.items(), key=lambda member: member[0].encode("utf-16-be"))
        return "{" + ",".join(canonical(k) + ":" + canonical(v) for k, v in members) + "}"
    if isinstance(value, list):
        return "[" + ",".join(canonical(v) for v in value) + "]"
    return json.dumps(value, ensure_ascii=False)


def members_once(pairs):
    value = {}
    for name, member in pairs:
        if name in value:
            raise ValueError(f"member {name!r} repeated")
        value[name] = member
    return value


def no_fraction(text):
    raise ValueError(f"a number with a fraction or an exponent ({text}): integers only")


def safe_integer(text):
    number = int(text)
    if abs(number) > MAX_INTEGER:
        raise ValueError(f"an integer beyond 2^53 - 1 ({text})")
    return number


def no_constant(text):
    raise ValueError(f"{text} is not JSON")


def parse(number, text):
    """A line's object, which must be canonical JSON."""
    try:
        value = json.loads(text, object_pairs_hook=members_once, parse_float=no_fraction,
                           parse_int=safe_integer, parse_constant=no_constant)
    except ValueError as e:
        raise Broken(number, f"the line is not canonical JSON: {e}")
    if not isinstance(value, dict):
        raise Broken(number, "the line is not a JSON object")
    if canonical(value) != text:
        raise Broken(number, "the line is not canonical: re-encoding its values gives other bytes "
                             "(members out of order, whitespace, or another spelling)")
    return value


def is_integer(value):
    return type(value) is int


def is_string(value):
    return isinstance(value, str)


def require(number, line, shape):
    """`line` has exactly the members of `shape` (name: test)."""
    if set(line) != set(shape):
        missing = sorted(set(shape) - set(line))
        extra = sorted(set(line) - set(shape))
        raise Broken(number, f"the line is not canonical: members missing {missing}, extra {extra}")
    for name, test in shape.items():
        if not test(line[name]):
            raise Broken(number, f"the line is not canonical: {name} has the wrong type or form")


def is_time(value):
    return is_string(value) and TIME.match(value) is not None


def is_hash(value):
    return is_string(value) and HEX64.match(value) is not None


KEY = {"alg": lambda v: v == "EdDSA", "created_at": is_time, "key_id": is_string,
       "public_key": is_string, "stream": is_string}
HEADER = {"exported_at": is_time, "format": is_string, "keys": lambda v: isinstance(v, list),
          "stream": is_string, "tenant": lambda v: v is None or is_string(v),
          "type": lambda v: v == "header"}
EVENT = {"action": is_string,
         "actor": lambda v: isinstance(v, dict) and set(v) == {"id", "kind"}
         and all(is_string(x) for x in v.values()),
         "details": lambda v: isinstance(v, dict), "hash": is_hash, "outcome": is_string,
         "prev_hash": is_hash, "request_id": lambda v: v is None or is_string(v),
         "resource": is_string, "seq": lambda v: is_integer(v) and v >= 1, "stream": is_string,
         "time": is_time, "type": lambda v: v == "event"}
CHECKPOINT = {"head": is_hash, "key_id": is_string,
              "kind": lambda v: v in ("periodic", "truncation", "export"),
              "seq": lambda v: is_integer(v) and v >= 0, "signature": is_string,
              "stream": is_string, "time": is_time, "type": lambda v: v == "checkpoint"}


def b64url(text):
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def decode(number, text, what):
    try:
        return b64url(text)
    except ValueError:
        raise Broken(number, f"{what} is not base64url")


def verify(path, pinned, earlier):
    """(stream, events, last seq, head) of a sound export; `earlier` is
    (stream or None, seq, head) of an export this one must extend."""
    with open(path, "rb") as f:
        data = f.read()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise Broken(data[:e.start].count(b"\n") + 1, "not UTF-8 text")
    if not text:
        raise Broken(1, "empty file: not an export")
    lines = text.split("\n")
    terminated = lines[-1] == ""
    if terminated:
        lines.pop()
    header = parse(1, lines[0])
    require(1, header, HEADER)
    if header["format"] != "bulkhead-audit/2":
        raise Broken(1, "not a bulkhead-audit/2 export")
    stream = header["stream"]
    if earlier and earlier[0] is not None and earlier[0] != stream:
        raise Broken(1, f"an export of {stream}, the earlier one of {earlier[0]}: not the same stream")
    keys = {}
    for key in header["keys"]:
        if not isinstance(key, dict):
            raise Broken(1, "a key is not an object")
        require(1, key, KEY)
        public = decode(1, key["public_key"], "a public key")
        kid = hashlib.sha256(b"bulkhead-audit-key\x00" + stream.encode() + b"\x00" + public).hexdigest()[:16]
        if key["stream"] != stream or key["key_id"] != kid or len(public) != 32:
            raise Broken(1, f"key {key['key_id']} is not bound to {stream}")
        keys[kid] = public
    chain = None  # (seq, hash hex)
    start = 1  # the seq of the first event: one past the anchor, or 1
    anchor_line = None
    events = 0
    closed = None  # the line of the export checkpoint
    found = False  # the earlier export's head, found at its seq

    def reached(number, seq, head):
        nonlocal found
        if earlier and earlier[1] == seq:
            if earlier[2] != head:
                raise Broken(number, f"history was rewritten: at seq {seq} the earlier export has "
                                     f"head {earlier[2]}, this one {head}")
            found = True

    for number, text_line in enumerate(lines[1:], start=2):
        if closed is not None:
            raise Broken(number, f"lines after the export checkpoint (line {closed}): an export "
                                 "ends with its one export checkpoint")
        line = parse(number, text_line)
        kind = line.get("type")
        if kind == "event":
            require(number, line, EVENT)
            if line["stream"] != stream:
                raise Broken(number, "another stream's line: exports were spliced")
            hashed = {name: v for name, v in line.items() if name not in ("hash", "type")}
            stated = line["hash"]
            if hashlib.sha256(canonical(hashed).encode()).hexdigest() != stated:
                raise Broken(number, "hash mismatch")
            seq = line["seq"]
            if chain is None:
                if seq != 1 or line["prev_hash"] != ZERO:
                    raise Broken(number, "chain starts without an anchor")
            elif seq != chain[0] + 1 or line["prev_hash"] != chain[1]:
                raise Broken(number, "broken link")
            reached(number, seq, stated)
            chain = (seq, stated)
            events += 1
        elif kind == "checkpoint":
            shape = dict(CHECKPOINT)
            if line.get("kind") == "export":
                shape["from"] = lambda v: is_integer(v) and v >= 1
            require(number, line, shape)
            if line["stream"] != stream:
                raise Broken(number, "another stream's line: exports were spliced")
            signed = {name: v for name, v in line.items() if name not in ("signature", "type")}
            signature = decode(number, line["signature"], "the signature")
            public = keys.get(line["key_id"])
            if public is None or (pinned is not None and public != pinned):
                raise Broken(number, "unknown or unpinned key")
            try:
                Ed25519PublicKey.from_public_bytes(public).verify(signature, canonical(signed).encode())
            except (InvalidSignature, ValueError):
                raise Broken(number, "bad signature")
            seq, head = line["seq"], line["head"]
            if chain is None and events == 0 and line["kind"] != "export":
                chain = (seq, head)
                start = seq + 1
                anchor_line = number
                reached(number, seq, head)
            elif chain is None and line["kind"] == "export" and seq == 0 and head == ZERO:
                pass
            elif chain is None or (seq, head) != chain:
                raise Broken(number, "checkpoint does not match the chain")
            if line["kind"] == "export":
                if line["from"] != start:
                    raise Broken(number, "the export does not start where its export checkpoint says")
                closed = number
        else:
            raise Broken(number, f"unknown line type {kind!r}")
    if closed is None:
        raise Broken(len(lines), "no closing export checkpoint")
    if not terminated:
        raise Broken(len(lines), "the last line does not end with a newline")
    last, head = chain if chain else (0, ZERO)
    if earlier:
        _, seq, earlier_head = earlier
        if seq > last:
            raise Broken(closed, f"the new export ends at seq {last}, before the earlier export's "
                                 f"seq {seq}: history was cut")
        if not found and seq == 0 and earlier_head != ZERO:
            raise Broken(closed, f"history was rewritten: at seq 0 the earlier export has head "
                                 f"{earlier_head}, this one {ZERO}")
        if not found and seq > 0:
            raise Broken(anchor_line or closed,
                         f"cannot prove that this export extends the earlier one: it starts at seq "
                         f"{start}, after the earlier export's seq {seq}; export without --since")
    return stream, events, last, head


def main():
    arguments = argparse.ArgumentParser(description="Verify a Bulkhead audit export.")
    arguments.add_argument("export")
    arguments.add_argument("pinned", nargs="?", help="the stream's public key (base64url)")
    earlier_end = arguments.add_mutually_exclusive_group()
    earlier_end.add_argument("--previous", help="an earlier export of the same stream")
    earlier_end.add_argument("--checkpoint", help="SEQ:HEAD of an earlier export's export checkpoint")
    args = arguments.parse_args()
    pinned = b64url(args.pinned) if args.pinned else None
    earlier = None
    if args.previous:
        try:
            stream, _, seq, head = verify(args.previous, pinned, None)
        except Broken as e:
            print(f"the earlier export: {e}")
            sys.exit(1)
        earlier = (stream, seq, head)
    elif args.checkpoint:
        seq, _, head = args.checkpoint.partition(":")
        if not seq.isdigit() or HEX64.match(head) is None or (int(seq) == 0 and head != ZERO):
            print(f"{args.checkpoint!r} is not SEQ:HEAD")
            sys.exit(2)
        earlier = (None, int(seq), head)
    try:
        _, events, last, _ = verify(args.export, pinned, earlier)
    except Broken as e:
        print(e)
        sys.exit(1)
    extends = f" extends {earlier[1]}" if earlier else ""
    print(f"ok {events} {last}{extends}")


main()
