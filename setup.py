"""The compiled parts, in C: helios.ingest._flatjson (ingest's NDJSON fast path) and
helios.storage._crc32c (the WAL frames' checksum).

Both optional: if they cannot be built (no C compiler), the install goes on; ingest then reads
every body with pyarrow.json (helios/ingest/flat.py) and the WAL checksums its frames with
zlib.crc32 (helios/storage/crc32c.py). Everything else is in pyproject.toml.
"""

from setuptools import Extension, setup

FLAGS = ["-O2", "-std=c11", "-Wall", "-Wextra", "-D_GNU_SOURCE"]

setup(ext_modules=[Extension("helios.ingest._flatjson", ["helios/ingest/_flatjson.c"], optional=True,
                             extra_compile_args=FLAGS),
                   Extension("helios.storage._crc32c", ["helios/storage/_crc32c.c"], optional=True,
                             extra_compile_args=FLAGS)])
