"""Signs the test tokens of tests/auth.rs with PyJWT, an implementation that is not ours.

Reads one JSON request per line on stdin and prints one line for each:
  {"alg": "RS256", "key": "PRIVATE.pem", "claims": {...}, "kid": "optional"}  -> the token
  {"jwks": [["kid", "PUBLIC.pem"], ...]}                                         -> a JWK Set
"""
import json
import sys

import jwt
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm


def jwk(kid, path):
    with open(path, "rb") as f:
        public = load_pem_public_key(f.read())
    for algorithm in (RSAAlgorithm, ECAlgorithm, OKPAlgorithm):
        try:
            key = json.loads(algorithm.to_jwk(public))
            break
        except Exception:
            continue
    key["kid"] = kid
    return key


for line in sys.stdin:
    request = json.loads(line)
    if "jwks" in request:
        print(json.dumps({"keys": [jwk(kid, path) for kid, path in request["jwks"]]}))
        continue
    with open(request["key"], "rb") as f:
        key = f.read()
    if request["alg"].startswith("HS"):
        key = key.rstrip()
    headers = {"kid": request["kid"]} if "kid" in request else None
    print(jwt.encode(request["claims"], key, algorithm=request["alg"], headers=headers), flush=True)
