"""A stand-in external identity provider: ES256 or RSA keys made with
`cryptography`, tokens signed with PyJWT, its JWKS a file that
`python3 -m http.server` serves.

    python3 external_idp.py keygen DIR KID [ES256|RS256|RS256-1024]
                                                    adds a key to DIR/jwks.json
    python3 external_idp.py sign DIR KID CLAIMS     prints a token signed by it
    python3 external_idp.py forge DIR KID CLAIMS    prints one forged token per line:
        alg none; HS256 keyed with the public JWKS; tampered payload;
        truncated; oversized; a duplicated iss member
"""

import base64
import hashlib
import hmac
import json
import os
import sys

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

command, directory, kid = sys.argv[1], sys.argv[2], sys.argv[3]
pem = os.path.join(directory, f"{kid}.pem")


def algorithm():
    """RS256 for an RSA key, ES256 for an EC key."""
    with open(pem, "rb") as f:
        key = serialization.load_pem_private_key(f.read(), None)
    return "RS256" if isinstance(key, rsa.RSAPrivateKey) else "ES256"


if command == "keygen":
    kind = sys.argv[4] if len(sys.argv) > 4 else "ES256"
    if kind.startswith("RS256"):
        bits = int(kind.partition("-")[2] or 2048)
        key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
        jwk = json.loads(RSAAlgorithm.to_jwk(key.public_key()))
    else:
        key = ec.generate_private_key(ec.SECP256R1())
        jwk = json.loads(ECAlgorithm.to_jwk(key.public_key()))
    with open(pem, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    jwk.update(kid=kid, alg=kind.partition("-")[0], use="sig")
    path = os.path.join(directory, "jwks.json")
    keys = json.load(open(path))["keys"] if os.path.exists(path) else []
    with open(path + ".tmp", "w") as f:
        json.dump({"keys": keys + [jwk]}, f)
    os.replace(path + ".tmp", path)
elif command == "sign":
    with open(pem, "rb") as f:
        print(jwt.encode(json.loads(sys.argv[4]), f.read(), algorithm=algorithm(), headers={"kid": kid}))
elif command == "forge":
    claims = json.loads(sys.argv[4])
    with open(pem, "rb") as f:
        private = f.read()
    good = jwt.encode(claims, private, algorithm="ES256", headers={"kid": kid})
    head, body, signature = good.split(".")
    b64 = lambda raw: base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
    with open(os.path.join(directory, "jwks.json"), "rb") as f:
        public_jwks = f.read()
    hs_head = b64(json.dumps({"alg": "HS256", "kid": kid, "typ": "JWT"}).encode())
    hs_input = f"{hs_head}.{body}".encode()
    hs256 = f"{hs_head}.{body}." + b64(hmac.new(public_jwks, hs_input, hashlib.sha256).digest())
    none = b64(json.dumps({"alg": "none", "kid": kid}).encode()) + f".{body}."
    tampered_claims = dict(claims, realm_access={"roles": ["Owner"]})
    tampered = f"{head}.{b64(json.dumps(tampered_claims).encode())}.{signature}"
    oversized = jwt.encode(dict(claims, pad="x" * 10_000), private, algorithm="ES256", headers={"kid": kid})
    duplicated_body = json.dumps(claims)[:-1] + ', "iss": "https://elsewhere.example"}'
    dup_input = f"{head}.{b64(duplicated_body.encode())}"
    from cryptography.hazmat.primitives import hashes, serialization as ser
    from cryptography.hazmat.primitives.asymmetric import ec as ec2
    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
    key = ser.load_pem_private_key(private, None)
    r, s_ = decode_dss_signature(key.sign(dup_input.encode(), ec2.ECDSA(hashes.SHA256())))
    duplicated = dup_input + "." + b64(r.to_bytes(32, "big") + s_.to_bytes(32, "big"))
    for token in [none, hs256, tampered, good[:-10], oversized, duplicated]:
        print(token)
else:
    sys.exit(f"unknown command {command}")
