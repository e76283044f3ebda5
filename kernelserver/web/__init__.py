"""The HTTP and WebSocket front ends: the only package that imports Flask or gunicorn."""
