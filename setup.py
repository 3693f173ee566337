"""The one compiled part: helios.ingest._flatjson (ingest's NDJSON fast path, in C).

Optional: if it cannot be built (no C compiler), the install goes on and ingest reads every body
with pyarrow.json, as helios/ingest/flat.py says. Everything else is in pyproject.toml.
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("helios.ingest._flatjson", ["helios/ingest/_flatjson.c"], optional=True,
                             extra_compile_args=["-O2", "-std=c11", "-Wall", "-Wextra", "-D_GNU_SOURCE"])])
