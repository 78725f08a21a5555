"""A stand-in external identity provider: ES256 keys made with
`cryptography`, tokens signed with PyJWT, its JWKS a file that
`python3 -m http.server` serves.

    python3 external_idp.py keygen DIR KID          adds a key to DIR/jwks.json
    python3 external_idp.py sign DIR KID CLAIMS     prints a token signed by it
"""

import json
import os
import sys

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

command, directory, kid = sys.argv[1], sys.argv[2], sys.argv[3]
pem = os.path.join(directory, f"{kid}.pem")
if command == "keygen":
    key = ec.generate_private_key(ec.SECP256R1())
    with open(pem, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    jwk = json.loads(ECAlgorithm.to_jwk(key.public_key()))
    jwk.update(kid=kid, alg="ES256", use="sig")
    path = os.path.join(directory, "jwks.json")
    keys = json.load(open(path))["keys"] if os.path.exists(path) else []
    with open(path + ".tmp", "w") as f:
        json.dump({"keys": keys + [jwk]}, f)
    os.replace(path + ".tmp", path)
elif command == "sign":
    with open(pem, "rb") as f:
        print(jwt.encode(json.loads(sys.argv[4]), f.read(), algorithm="ES256", headers={"kid": kid}))
else:
    sys.exit(f"unknown command {command}")
