"""Process plumbing both the web and the worker use: the Redis client, JSON logs, Prometheus metrics."""
