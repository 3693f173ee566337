"""Random mutated bodies through helios.ingest._flatjson, each answer checked against pyarrow.

``python tests/flatjson_fuzz.py SEED COUNT [EXTENSION]``: EXTENSION is a build of _flatjson.c
to use instead of the installed one (tests/test_flatjson.py builds one with AddressSanitizer and
UndefinedBehaviorSanitizer and runs this under them). Prints how many bodies each function
accepted; any disagreement or memory error ends it with a traceback or a sanitizer report.
"""

from __future__ import annotations

import importlib.util
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pyarrow as pa  # noqa: E402

from helios.ingest import flat  # noqa: E402

BASE = [b'{"a":1,"b":2.5,"c":"x\\u00e9\\ud83d\\ude00","d":true,"e":null}', b'{"c":"\\"\\\\\\n","b":-1e5}', b"{}",
        b'{"a":-9223372036854775808, "d" : false}',
        # longer than the reader's first 4 KiB of room: its buffers grow inside a string
        b'{"c":"' + b"x" * 5000 + b'"}', b'{"c":"' + b"ab\\ncd\\u00e9\\\\" * 500 + b'","a":7}']
ATOMS = [b'"', b"\\", b"{", b"}", b"[", b",", b":", b"\n", b" ", b"\x00", b"-", b".", b"e", b"0", b"9", b"\\u",
         b"\\ud8", b"null", b"tru", b"\xc3\xa9", b"\xff", b'"a":', b'"f":1']
SCHEMA = pa.schema([("a", pa.int64()), ("b", pa.float64()), ("c", pa.string()), ("d", pa.bool_()), ("e", pa.null())])


def main() -> None:
    seed, count = int(sys.argv[1]), int(sys.argv[2])
    if len(sys.argv) > 3:
        spec = importlib.util.spec_from_file_location("_flatjson", sys.argv[3])
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        flat._flatjson = module
    import test_flatjson as oracle  # after the swap: its checks call flat's functions

    rng = random.Random(seed)
    read = text = inferred = 0
    for _ in range(count):
        data = b"\n".join(rng.choice(BASE) for _ in range(rng.randint(1, 6)))
        for _ in range(rng.randint(0, 4)):
            at = rng.randint(0, len(data))
            op = rng.random()
            if op < 0.4:
                data = data[:at] + rng.choice(ATOMS) + data[at:]
            elif op < 0.7:
                data = data[:at] + data[at + rng.randint(1, 4):]
            else:
                data = data[:at]
        flat.read_flat(data, SCHEMA)  # never offered invalid UTF-8 in use, but must not fail on it
        flat.read_flat(data, SCHEMA, text=True)
        flat.infer_schema(data)
        try:
            valid = data.decode("utf-8") is not None
        except UnicodeDecodeError:
            valid = False
        assert flat.is_utf8(data) == valid, data
        read += oracle.agrees(data, SCHEMA) is not None
        text += oracle.agrees_as_text(data, SCHEMA) is not None
        inferred += oracle.infers_as_pyarrow(data) is not None
    print(f"read {read} as text {text} inferred {inferred} of {count}")


if __name__ == "__main__":
    main()
