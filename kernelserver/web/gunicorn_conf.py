"""gunicorn settings for running wsgi:app yourself, as `serve` runs it (see wsgi.py for the line).

The same options as `kernelserver serve` (one worker of the hardened gthread class, no silence
timeout, the exit hook that stops every namespace), bound to KERNELSERVER_HOST and
KERNELSERVER_PORT; gunicorn's own command-line options (--bind, --certfile, ...) still override.
"""

from __future__ import annotations

from ..config import load_config
from .serving import close_service, gunicorn_options

# Read in gunicorn's master; the worker's create_app() reads the same KERNELSERVER_* variables.
_options = gunicorn_options(load_config(), None, None)

bind = [_options["bind"]]
workers = _options["workers"]
worker_class = _options["worker_class"]
threads = _options["threads"]
timeout = _options["timeout"]
graceful_timeout = _options["graceful_timeout"]
keepalive = _options["keepalive"]
accesslog = _options["accesslog"]
errorlog = _options["errorlog"]
loglevel = _options["loglevel"]
proc_name = _options["proc_name"]
worker_exit = close_service
