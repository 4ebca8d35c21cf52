"""Fast unit tests of the pure rules: no PostgreSQL, no Redis server, no Celery worker (`make test` runs them
first, on their own). The integration harness's autouse fixture, which empties the test database and Redis,
is replaced here by one that does nothing."""
import pytest


@pytest.fixture(autouse=True)
def clean_state():
    yield
