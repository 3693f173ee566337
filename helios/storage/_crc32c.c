/* CRC-32C (Castagnoli), the checksum of the write-ahead log's frames (helios/storage/crc32c.py).
 *
 * crc32c(data, value=0) -> int continues a checksum as zlib.crc32 does (value is the checksum of
 * what came before), with the CPU's crc32 instruction where it has one (SSE4.2, x86-64: about
 * 8 GB/s here against zlib.crc32's 2) and tables otherwise (slicing by 8). The GIL is released
 * for large buffers. table(data, value=0) always takes the tables, so tests compare the two.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define POLY 0x82F63B78u  /* Castagnoli, reflected */
#define NOGIL_BYTES 65536 /* below this, releasing the GIL costs more than it gives */

static uint32_t tables[8][256];
static int hardware;

static void make_tables(void) {
    for (uint32_t n = 0; n < 256; n++) {
        uint32_t c = n;
        for (int k = 0; k < 8; k++) c = (c & 1) ? (c >> 1) ^ POLY : c >> 1;
        tables[0][n] = c;
    }
    for (uint32_t n = 0; n < 256; n++)
        for (int t = 1; t < 8; t++) tables[t][n] = (tables[t - 1][n] >> 8) ^ tables[0][tables[t - 1][n] & 0xff];
}

/* crc is the running register (already inverted). */
static uint32_t by_table(uint32_t crc, const uint8_t *p, size_t n) {
    while (n >= 8) {
        uint32_t lo, hi;
        memcpy(&lo, p, 4);
        memcpy(&hi, p + 4, 4);
        lo ^= crc; /* little-endian: the first four bytes are the low word */
        crc = tables[7][lo & 0xff] ^ tables[6][(lo >> 8) & 0xff] ^ tables[5][(lo >> 16) & 0xff] ^
              tables[4][lo >> 24] ^ tables[3][hi & 0xff] ^ tables[2][(hi >> 8) & 0xff] ^
              tables[1][(hi >> 16) & 0xff] ^ tables[0][hi >> 24];
        p += 8;
        n -= 8;
    }
    while (n--) crc = (crc >> 8) ^ tables[0][(crc ^ *p++) & 0xff];
    return crc;
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define HAVE_SSE42 1
__attribute__((target("sse4.2"))) static uint32_t by_instruction(uint32_t crc, const uint8_t *p, size_t n) {
    uint64_t c = crc;
    while (n >= 8) {
        uint64_t word;
        memcpy(&word, p, 8);
        c = __builtin_ia32_crc32di(c, word);
        p += 8;
        n -= 8;
    }
    uint32_t small = (uint32_t)c;
    while (n--) small = __builtin_ia32_crc32qi(small, *p++);
    return small;
}
#endif

static uint32_t checksum(uint32_t value, const uint8_t *p, size_t n, int use_hardware) {
    uint32_t crc = ~value;
#ifdef HAVE_SSE42
    if (use_hardware) return ~by_instruction(crc, p, n);
#else
    (void)use_hardware;
#endif
    return ~by_table(crc, p, n);
}

static PyObject *run(PyObject *args, PyObject *kwargs, int use_hardware) {
    static char *keywords[] = {"data", "value", NULL};
    Py_buffer view;
    unsigned long value = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "y*|k", keywords, &view, &value)) return NULL;
    if (value > 0xFFFFFFFFul) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_OverflowError, "value must be an unsigned 32-bit checksum");
        return NULL;
    }
    uint32_t crc;
    if (view.len >= NOGIL_BYTES) {
        Py_BEGIN_ALLOW_THREADS
        crc = checksum((uint32_t)value, view.buf, (size_t)view.len, use_hardware);
        Py_END_ALLOW_THREADS
    } else {
        crc = checksum((uint32_t)value, view.buf, (size_t)view.len, use_hardware);
    }
    PyBuffer_Release(&view);
    return PyLong_FromUnsignedLong(crc);
}

static PyObject *crc32c(PyObject *self, PyObject *args, PyObject *kwargs) {
    (void)self;
    return run(args, kwargs, hardware);
}

static PyObject *table(PyObject *self, PyObject *args, PyObject *kwargs) {
    (void)self;
    return run(args, kwargs, 0);
}

static PyMethodDef methods[] = {
    {"crc32c", (PyCFunction)(void (*)(void))crc32c, METH_VARARGS | METH_KEYWORDS,
     "crc32c(data, value=0) -> int: CRC-32C of data, continuing the checksum value."},
    {"table", (PyCFunction)(void (*)(void))table, METH_VARARGS | METH_KEYWORDS,
     "table(data, value=0) -> int: crc32c without the crc32 instruction (for tests)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_crc32c", NULL, -1, methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__crc32c(void) {
    make_tables();
#ifdef HAVE_SSE42
    __builtin_cpu_init();
    hardware = __builtin_cpu_supports("sse4.2");
#endif
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    if (PyModule_AddIntConstant(m, "HARDWARE", hardware) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
