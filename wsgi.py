"""WSGI entry point for running gunicorn yourself: `gunicorn -w 1 -k gthread --threads 64 wsgi:app`.

Settings come from KERNELSERVER_* environment variables. Namespaces live in one process, so a
second worker process is refused at start (it cannot take the data-dir lock).
"""

from kernelserver import create_app

app = create_app()
