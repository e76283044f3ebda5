"""WSGI entry point for running gunicorn yourself:

    gunicorn -c python:kernelserver.web.gunicorn_conf wsgi:app

The config module binds KERNELSERVER_HOST:KERNELSERVER_PORT (127.0.0.1:5000 by default) and uses
kernelserver's own worker class, one worker with KERNELSERVER_THREADS threads. Settings come from
KERNELSERVER_* environment variables. Namespaces live in one process, so a second worker process
(-w 2) is refused at start (it cannot take the data-dir lock) and prints no token.
"""

from kernelserver import create_app

app = create_app()
