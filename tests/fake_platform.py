"""A fake host platform's identity provider: it holds signing keys (RSA and EC), serves the public ones as a
JWKS document from a real HTTP server on 127.0.0.1, and signs access tokens the way the platform would."""
from __future__ import annotations

import json
import time
from http.server import BaseHTTPRequestHandler

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from local_server import LocalServer

ISSUER = "https://platform.example"
AUDIENCE = "perfmenu"
JWKS_PATH = "/.well-known/jwks.json"


def new_key(kind: str = "RSA"):
    if kind == "EC":
        return ec.generate_private_key(ec.SECP256R1())
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def public_pem(private_key) -> str:
    return private_key.public_key().public_bytes(serialization.Encoding.PEM,
                                                 serialization.PublicFormat.SubjectPublicKeyInfo).decode()


class FakePlatform(LocalServer):
    def __init__(self):
        self.keys: dict[str, object] = {}  # kid -> private key
        self.published: list[str] = []
        self.fetches = 0
        self.down = False
        self.hang_seconds = 0.0  # > 0: the JWKS answer comes this late (a hanging key server)
        super().__init__(self._handler())
        self.start()

    @property
    def jwks_url(self) -> str:
        return self.base_url + JWKS_PATH

    def add_key(self, kid: str, kind: str = "RSA", publish: bool = True) -> str:
        self.keys[kid] = new_key(kind)
        if publish:
            self.published.append(kid)
        return kid

    def jwks(self) -> dict:
        out = []
        for kid in self.published:
            key = self.keys[kid]
            if isinstance(key, rsa.RSAPrivateKey):
                jwk = jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key(), as_dict=True) | {"alg": "RS256"}
            else:
                jwk = jwt.algorithms.ECAlgorithm.to_jwk(key.public_key(), as_dict=True) | {"alg": "ES256"}
            out.append(jwk | {"kid": kid, "use": "sig"})
        return {"keys": out}

    def token(self, sub, role, kid: str, *, iss=ISSUER, aud=AUDIENCE, expires_in=300, alg=None, key=None,
              **claims) -> str:
        """An access token as the platform signs it (`key` signs instead of kid's own key: a forgery)."""
        private = key or self.keys[kid]
        alg = alg or ("ES256" if isinstance(private, ec.EllipticCurvePrivateKey) else "RS256")
        payload = {"iss": iss, "aud": aud, "exp": int(time.time()) + expires_in, "iat": int(time.time()),
                   "sub": sub, "role": role, **claims}
        return jwt.encode({k: v for k, v in payload.items() if v is not None}, private, algorithm=alg,
                          headers={"kid": kid})

    def _handler(self):
        platform = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                platform.fetches += 1
                if platform.hang_seconds:
                    time.sleep(platform.hang_seconds)
                if platform.down or self.path != JWKS_PATH:
                    self.send_response(503 if platform.down else 404)
                    self.end_headers()
                    return
                body = json.dumps(platform.jwks()).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_args):
                pass

        return Handler
