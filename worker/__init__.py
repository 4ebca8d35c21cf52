"""The Celery side: the app (celery_app.py, entry point main.py), the tasks (tasks.py), and the web's one door
in (handoff.py). The rules the tasks run live in models/services."""
