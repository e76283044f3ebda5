"""The one compiled part, optional: kernelserver/backends/_ringtext.c (see rings.py).

Everything else is in pyproject.toml. Where no C compiler is found the build goes on without it
and printing takes the pure-Python path. Not on a free-threaded build: the writer's copy into the
ring relies on the GIL to be whole (the worker refuses it there too). .ci/run builds and tests it
on every CPython that requires-python claims.
"""

import sysconfig

from setuptools import Extension, setup

free_threaded = bool(sysconfig.get_config_var("Py_GIL_DISABLED"))
setup(ext_modules=[] if free_threaded else [
    Extension("kernelserver.backends._ringtext", ["kernelserver/backends/_ringtext.c"], optional=True)])
