"""Production password hashing: argon2id with argon2-cffi's recommended parameters. The tests swap in cheap ones
(tests/conftest.py), so this asks a fresh interpreter, as a production process would import the module."""
import json
import os
import subprocess
import sys

import argon2

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

PROBE = ("import json, models.users as u; h = u._hasher;"
         "user = u.User(username='u', role='fan'); user.set_password('a-long-password');"
         "print(json.dumps([h.time_cost, h.memory_cost, h.parallelism, h.type.name, user.password_hash,"
         " user.check_password('a-long-password'), user.check_password('wrong')]))")


def test_passwords_are_hashed_with_argon2s_recommended_parameters():
    out = subprocess.run([sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True, text=True, timeout=60)
    time_cost, memory_cost, parallelism, kind, hashed, right, wrong = json.loads(out.stdout)
    assert (time_cost, memory_cost, parallelism, kind) == (
        argon2.DEFAULT_TIME_COST, argon2.DEFAULT_MEMORY_COST, argon2.DEFAULT_PARALLELISM, "ID")
    assert hashed.startswith(f"$argon2id$v=19$m={argon2.DEFAULT_MEMORY_COST},t={argon2.DEFAULT_TIME_COST}")
    assert right and not wrong
