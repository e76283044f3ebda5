"""The one compiled part, optional: kernelserver/backends/_ringtext.c (see rings.py).

Everything else is in pyproject.toml. Where no C compiler is found the build goes on without it
and printing takes the pure-Python path.
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("kernelserver.backends._ringtext",
                             ["kernelserver/backends/_ringtext.c"], optional=True)])
