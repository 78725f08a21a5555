"""Verifies a Bulkhead token the way any relying party would: PyJWT's
PyJWKClient fetches the realm's JWKS, picks the key by the token's kid, and
jwt.decode checks signature, issuer and times.

    python3 verify_with_pyjwt.py ISSUER TOKEN [KEYS_ISSUER]

KEYS_ISSUER, when given, is the realm whose JWKS to take the key from (to
check the issuer apart from the key); ISSUER is still the issuer required.

Prints the verified claims as JSON; exits 1 with the error otherwise.
"""

import json
import sys

import jwt
from jwt import PyJWKClient

issuer, token = sys.argv[1], sys.argv[2]
keys_issuer = sys.argv[3] if len(sys.argv) > 3 else issuer
try:
    jwks = PyJWKClient(f"{keys_issuer}/jwks.json", cache_keys=False)
    key = jwks.get_signing_key_from_jwt(token)
    claims = jwt.decode(
        token,
        key,
        algorithms=["EdDSA", "ES256"],
        issuer=issuer,
        options={"require": ["exp", "iat", "nbf", "iss", "sub"], "verify_aud": False},
    )
except Exception as error:  # noqa: BLE001 - the test reads the message
    print(f"{type(error).__name__}: {error}", file=sys.stderr)
    sys.exit(1)
print(json.dumps(claims))
