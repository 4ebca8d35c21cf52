"""The operations both processes run, each in one place: settlement, the Queue ON escrow, the performance
queue's Redis store, verdicts, the settlement hand-off's signal, toy activations and the Lovense API client.

The web and the Celery tasks are thin callers of these. They take a session, a Redis client or the process's
Runtime as arguments and never reach for Flask or Celery (docs/architecture.md, "Layers")."""
