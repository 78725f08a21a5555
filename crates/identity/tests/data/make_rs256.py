"""Writes rs256.json: RS256 fixtures made by an independent implementation
(PyJWT and `cryptography`), so Bulkhead's RSA verification is checked
against tokens it did not sign itself. The private keys are thrown away.

    python3 make_rs256.py > rs256.json
"""

import json

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm


def public_jwk(key, kid):
    jwk = json.loads(RSAAlgorithm.to_jwk(key.public_key()))
    jwk.update(kid=kid, alg="RS256", use="sig")
    return jwk


key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
short = rsa.generate_private_key(public_exponent=65537, key_size=1024)
claims = {
    "iss": "https://idp.example/",
    "aud": "api",
    "sub": "alice",
    "roles": ["admin"],
    "iat": 1800000000,
    "exp": 4102444800,
}
print(json.dumps({
    "jwk": public_jwk(key, "rsa-1"),
    "token": jwt.encode(claims, key, algorithm="RS256", headers={"kid": "rsa-1"}),
    "short_jwk": public_jwk(short, "rsa-short"),
    "short_token": jwt.encode(claims, short, algorithm="RS256", headers={"kid": "rsa-short"}),
}, indent=2))
