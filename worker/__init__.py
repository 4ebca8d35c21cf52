"""Celery app, settlement and beat tasks, the Redis queue, the Lovense client."""
