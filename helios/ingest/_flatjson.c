/* helios.ingest._flatjson: NDJSON lines of flat objects straight into Arrow buffers.
 *
 * The hot path of ingest (helios/ingest/flat.py wraps it). pyarrow.json spends ~1.9 us of CPU a
 * row on the bench's Loghub records, as much as DuckDB's whole load; this reads the common shape
 * -- one object a line, every value a string, number, true/false or null -- in a tenth of that,
 * without the GIL.
 *
 * It reads only what it is sure of and gives up on anything else (returns None): the caller then
 * reads the bytes with pyarrow.json as before, so it never has to be right about a case it
 * declines. For what it accepts, its table equals pyarrow.json.read_json's with the same explicit
 * schema and unexpected fields an error (tests/test_flatjson.py compares them on Loghub lines and
 * on random and hostile ones). It gives up on: a line that is not one object followed by blanks
 * (an empty line, two objects, an object across lines), a key with an escape or not in the
 * schema, a key twice in a line, a nested value, a value whose kind is not its field's, an
 * integer outside int64 or with a fraction or exponent in an int64 field, a number of more than
 * 64 characters, with an exponent past 300 or out of double's range, an escape of a lone surrogate, a control character
 * inside a string, invalid JSON anywhere, and more than MAX_FIELDS fields.
 *
 * Safety: every read is bounds-checked against the end of the input; output buffers grow with
 * overflow checks; string offsets are int32, and inputs of 2 GiB or more are declined. The input
 * is held as a buffer view while the GIL is released. UTF-8 is not validated here: the caller
 * checks the bytes first (records._read_span decodes them).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <float.h>
#include <locale.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif

#define MAX_FIELDS 64
#define MAX_NUMBER 64
#define MAX_EXPONENT 300 /* a larger exponent, even of zero, is left to pyarrow (RapidJSON's rules) */

enum { K_INT = 'i', K_DOUBLE = 'd', K_STRING = 's', K_BOOL = 'b', K_NULL = 'n' };

typedef struct {
    char *p;
    size_t len, cap;
} Buf;

typedef struct {
    const char *name;
    Py_ssize_t name_len;
    char kind;
    uint8_t *valid;   /* validity bitmap, (rows + 7) / 8 bytes */
    uint8_t *values;  /* int64/double: 8 bytes a row; bool: a bitmap */
    int32_t *offsets; /* strings: rows + 1 */
    Buf data;         /* strings' bytes */
    Py_ssize_t nulls;
    Py_ssize_t seen;  /* the last row (1-based) that set it: a key twice in a line is declined */
    int text;         /* a string column: a string field, or any field when read as text */
} Field;

static locale_t c_locale;

static int grow(Buf *b, size_t more) {
    if (b->cap - b->len >= more) return 0;
    size_t cap = b->cap ? b->cap : 4096;
    while (cap - b->len < more) {
        if (cap > SIZE_MAX / 2) return -1;
        cap *= 2;
    }
    char *p = realloc(b->p, cap);
    if (p == NULL) return -1;
    b->p = p;
    b->cap = cap;
    return 0;
}

static inline const char *blanks(const char *p, const char *end) {
    while (p < end && (*p == ' ' || *p == '\t' || *p == '\r')) p++;
    return p;
}

static inline int hex4(const char *p, const char *end, unsigned *out) {
    if (end - p < 4) return -1;
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        char c = p[i];
        v <<= 4;
        if (c >= '0' && c <= '9') v |= (unsigned)(c - '0');
        else if (c >= 'a' && c <= 'f') v |= (unsigned)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F') v |= (unsigned)(c - 'A' + 10);
        else return -1;
    }
    *out = v;
    return 0;
}

#ifdef __SSE2__
/* A bit for each of the 16 bytes of v that is a quote, a backslash or a control character (below
 * 0x20, compared unsigned: a byte of 0x80 or more, as in UTF-8, is plain). */
static inline unsigned special16(__m128i v) {
    __m128i s = _mm_or_si128(_mm_cmpeq_epi8(v, _mm_set1_epi8('"')), _mm_cmpeq_epi8(v, _mm_set1_epi8('\\')));
    s = _mm_or_si128(s, _mm_cmpeq_epi8(_mm_min_epu8(v, _mm_set1_epi8(0x1F)), v));
    return (unsigned)_mm_movemask_epi8(s);
}
#endif

/* The end of the run of bytes from p that are neither a quote, a backslash nor a control
 * character: 16 bytes at a time (SSE2, every x86-64) or eight (SWAR: a byte of 0x80 or more, as
 * in UTF-8, is plain) while none of them is one, then byte by byte. */
static inline const char *plain_run(const char *p, const char *end) {
#ifdef __SSE2__
    while (end - p >= 16) {
        unsigned special = special16(_mm_loadu_si128((const __m128i *)p));
        if (special) return p + __builtin_ctz(special);
        p += 16;
    }
#endif
    const uint64_t ones = 0x0101010101010101ULL, highs = 0x8080808080808080ULL;
    while (end - p >= 8) {
        uint64_t v;
        memcpy(&v, p, 8);
        uint64_t quote = v ^ (ones * '"'), backslash = v ^ (ones * '\\');
        uint64_t special = ((quote - ones) & ~quote) | ((backslash - ones) & ~backslash) | ((v - ones * 0x20) & ~v);
        if (special & highs) break;
        p += 8;
    }
    while (p < end && *p != '"' && *p != '\\' && (unsigned char)*p >= 0x20) p++;
    return p;
}

/* Room for n more bytes at o, the end of what out holds so far (o moves with the buffer). */
#define ROOM(n)                                                \
    do {                                                       \
        if ((size_t)(out->p + out->cap - o) < (size_t)(n)) {   \
            out->len = (size_t)(o - out->p);                   \
            if (grow(out, (n)) < 0) return NULL;               \
            o = out->p + out->len;                             \
        }                                                      \
    } while (0)

/* A string's content after its opening quote, unescaped onto out; the position after its closing
 * quote, or NULL to decline. A run is copied 16 bytes at a time as it is scanned (the bytes
 * stored past the string's end are within the room made and overwritten by what follows). */
static const char *string_into(const char *p, const char *end, Buf *out) {
    if (grow(out, 16) < 0) return NULL; /* out->p is not NULL below */
    char *o = out->p + out->len;
    for (;;) {
#ifdef __SSE2__
        while (end - p >= 16) {
            ROOM(16);
            __m128i v = _mm_loadu_si128((const __m128i *)p);
            _mm_storeu_si128((__m128i *)o, v);
            unsigned special = special16(v);
            if (special) {
                unsigned k = (unsigned)__builtin_ctz(special);
                p += k;
                o += k;
                break;
            }
            p += 16;
            o += 16;
        }
#endif
        const char *run = p;
        p = plain_run(p, end);
        if (p > run) {
            ROOM(p - run);
            memcpy(o, run, (size_t)(p - run));
            o += p - run;
        }
        if (p >= end || (unsigned char)*p < 0x20) return NULL;
        if (*p == '"') {
            out->len = (size_t)(o - out->p);
            return p + 1;
        }
        /* an escape: at most four bytes */
        if (end - p < 2) return NULL;
        ROOM(4);
        char c = p[1];
        char one;
        p += 2;
        switch (c) {
        case '"': one = '"'; break;
        case '\\': one = '\\'; break;
        case '/': one = '/'; break;
        case 'b': one = '\b'; break;
        case 'f': one = '\f'; break;
        case 'n': one = '\n'; break;
        case 'r': one = '\r'; break;
        case 't': one = '\t'; break;
        case 'u': {
            unsigned cp;
            if (hex4(p, end, &cp) < 0) return NULL;
            p += 4;
            if (cp >= 0xDC00 && cp <= 0xDFFF) return NULL; /* a lone low surrogate */
            if (cp >= 0xD800 && cp <= 0xDBFF) {
                unsigned low;
                if (end - p < 6 || p[0] != '\\' || p[1] != 'u' || hex4(p + 2, end, &low) < 0) return NULL;
                if (low < 0xDC00 || low > 0xDFFF) return NULL;
                p += 6;
                cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
            }
            if (cp < 0x80) {
                *o++ = (char)cp;
            } else if (cp < 0x800) {
                *o++ = (char)(0xC0 | (cp >> 6));
                *o++ = (char)(0x80 | (cp & 0x3F));
            } else if (cp < 0x10000) {
                *o++ = (char)(0xE0 | (cp >> 12));
                *o++ = (char)(0x80 | ((cp >> 6) & 0x3F));
                *o++ = (char)(0x80 | (cp & 0x3F));
            } else {
                *o++ = (char)(0xF0 | (cp >> 18));
                *o++ = (char)(0x80 | ((cp >> 12) & 0x3F));
                *o++ = (char)(0x80 | ((cp >> 6) & 0x3F));
                *o++ = (char)(0x80 | (cp & 0x3F));
            }
            continue;
        }
        default: return NULL;
        }
        *o++ = one;
    }
}

/* A JSON number at p (the grammar checked); its end, whether it is an integer, or NULL. */
static const char *number_end(const char *p, const char *end, int *integer) {
    const char *q = p;
    *integer = 1;
    if (q < end && *q == '-') q++;
    if (q >= end) return NULL;
    if (*q == '0') q++;
    else if (*q >= '1' && *q <= '9') while (q < end && *q >= '0' && *q <= '9') q++;
    else return NULL;
    if (q < end && *q == '.') {
        *integer = 0;
        q++;
        if (q >= end || *q < '0' || *q > '9') return NULL;
        while (q < end && *q >= '0' && *q <= '9') q++;
    }
    if (q < end && (*q == 'e' || *q == 'E')) {
        *integer = 0;
        q++;
        if (q < end && (*q == '+' || *q == '-')) q++;
        if (q >= end || *q < '0' || *q > '9') return NULL;
        int exponent = 0;
        while (q < end && *q >= '0' && *q <= '9') {
            exponent = exponent * 10 + (*q - '0');
            if (exponent > MAX_EXPONENT) return NULL; /* pyarrow refuses some (0e309): left to it */
            q++;
        }
    }
    return q;
}

static int parse_int64(const char *p, const char *q, int64_t *out) {
    int negative = *p == '-';
    if (negative) p++;
    uint64_t v = 0;
    uint64_t bound = negative ? (uint64_t)INT64_MAX + 1 : (uint64_t)INT64_MAX;
    /* No leading zeros (number_end): more than 19 digits is past int64; 18 stay below 10^18, and
     * a 19th below 10^19 < 2^64, checked against the bound once. */
    if (q - p > 19) return -1;
    const char *first = q - p > 18 ? p + 18 : q;
    for (; p < first; p++) v = v * 10 + (uint64_t)(*p - '0');
    if (p < q) {
        v = v * 10 + (uint64_t)(*p - '0');
        if (v > bound) return -1;
    }
    *out = negative ? (int64_t)(0 - v) : (int64_t)v;
    return 0;
}

/* The powers of ten a double holds exactly. */
static const double EXACT_POW10[23] = {1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11,
                                       1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22};

/* Clinger's fast path, for the number text [p, q) that number_end accepted: its value is M x 10^E
 * with the integer M below 2^53 and |E| at most 22, so M and 10^|E| are exact doubles and one
 * IEEE multiplication or division rounds the result once, to nearest: the double strtod gives.
 * -1 for any other number (strtod reads it). strtod took a tenth of the reader's time on the
 * bench's rows, which mostly hold such numbers (0.125, 3.5). Needs double arithmetic in double
 * precision (SSE2, not x87's extended registers): else always -1. */
static int fast_double(const char *p, const char *q, double *out) {
#if FLT_EVAL_METHOD == 0
    int negative = *p == '-';
    if (negative) p++;
    uint64_t m = 0;
    int digits = 0, exp10 = 0;
    for (; p < q && *p >= '0' && *p <= '9'; p++) {
        if ((m != 0 || *p != '0') && ++digits > 19) return -1; /* leading zeros are not counted */
        m = m * 10 + (uint64_t)(*p - '0');
    }
    if (p < q && *p == '.') {
        for (p++; p < q && *p >= '0' && *p <= '9'; p++) {
            if ((m != 0 || *p != '0') && ++digits > 19) return -1;
            m = m * 10 + (uint64_t)(*p - '0');
            exp10--;
        }
    }
    if (p < q) { /* an exponent: number_end bounded it by MAX_EXPONENT */
        p++;
        int exponent_negative = p < q && *p == '-';
        if (p < q && (*p == '-' || *p == '+')) p++;
        int e = 0;
        for (; p < q; p++) e = e * 10 + (*p - '0');
        exp10 += exponent_negative ? -e : e;
    }
    if (m > ((uint64_t)1 << 53) || exp10 < -22 || exp10 > 22) return -1;
    double v = (double)m;
    v = exp10 < 0 ? v / EXACT_POW10[-exp10] : v * EXACT_POW10[exp10];
    *out = negative ? -v : v;
    return 0;
#else
    (void)p; (void)q; (void)out;
    return -1;
#endif
}

static int parse_double(const char *p, const char *q, double *out) {
    if (fast_double(p, q, out) == 0) return 0;
    char text[MAX_NUMBER + 1];
    size_t n = (size_t)(q - p);
    if (n > MAX_NUMBER) return -1;
    memcpy(text, p, n);
    text[n] = 0;
    char *stop;
    errno = 0;
    double v = strtod_l(text, &stop, c_locale);
    if (stop != text + n || errno == ERANGE) return -1;
    *out = v;
    return 0;
}

/* The text a number [p, q) is stored as (helios.ingest.normalise: the per-line path's), onto out:
 * an integer's own digits ("-0" is "0"), within int64; a number with a fraction or an exponent as
 * Arrow writes its double: the shortest digits that read back, fixed notation for exponents from
 * -6 to 9 (0.000001, 1234567890), else d.ddde+x (1e+10, 1.5e-7). Shortest digits are known without
 * computing the double when the text has at most 15 significant digits (trailing zeros aside):
 * every such decimal reads back from its double (DBL_DIG), so they are its digits. -1 to decline:
 * more digits, an integer past int64, an exponent outside +-300 (the caller's pyarrow path). */
static int number_text(const char *p, const char *q, int integer, Buf *out) {
    if (q - p > MAX_NUMBER) return -1;
    if (integer) {
        int64_t v;
        if (parse_int64(p, q, &v) < 0) return -1;
        if (v == 0) p = q - 1; /* "-0" */
        if (grow(out, (size_t)(q - p)) < 0) return -1;
        memcpy(out->p + out->len, p, (size_t)(q - p));
        out->len += (size_t)(q - p);
        return 0;
    }
    int negative = *p == '-';
    if (negative) p++;
    char digits[MAX_NUMBER];
    int count = 0, point = 0; /* the value is 0.digits x 10^point */
    for (; p < q && *p >= '0' && *p <= '9'; p++) {
        if (count == 0 && *p == '0') continue;
        digits[count++] = *p;
        point++;
    }
    if (p < q && *p == '.') {
        for (p++; p < q && *p >= '0' && *p <= '9'; p++) {
            if (count == 0 && *p == '0') {
                point--;
                continue;
            }
            digits[count++] = *p;
        }
    }
    if (p < q) { /* an exponent, at most MAX_EXPONENT (number_end) */
        p++;
        int exponent_negative = *p == '-';
        if (*p == '-' || *p == '+') p++;
        int e = 0;
        for (; p < q; p++) e = e * 10 + (*p - '0');
        point += exponent_negative ? -e : e;
    }
    while (count > 0 && digits[count - 1] == '0') count--;
    if (grow(out, 32) < 0) return -1;
    char *o = out->p + out->len;
    char *start = o;
    if (negative) *o++ = '-';
    if (count == 0) {
        *o++ = '0';
    } else {
        int exponent = point - 1;
        if (count > 15 || exponent < -300 || exponent > 300) return -1;
        if (exponent >= -6 && exponent < 10) {
            if (point <= 0) {
                *o++ = '0';
                *o++ = '.';
                for (int i = 0; i < -point; i++) *o++ = '0';
                memcpy(o, digits, (size_t)count);
                o += count;
            } else if (point >= count) {
                memcpy(o, digits, (size_t)count);
                o += count;
                for (int i = count; i < point; i++) *o++ = '0';
            } else {
                memcpy(o, digits, (size_t)point);
                o += point;
                *o++ = '.';
                memcpy(o, digits + point, (size_t)(count - point));
                o += count - point;
            }
        } else {
            *o++ = digits[0];
            if (count > 1) {
                *o++ = '.';
                memcpy(o, digits + 1, (size_t)(count - 1));
                o += count - 1;
            }
            *o++ = 'e';
            *o++ = exponent < 0 ? '-' : '+';
            int magnitude = exponent < 0 ? -exponent : exponent;
            if (magnitude >= 100) *o++ = (char)('0' + magnitude / 100);
            if (magnitude >= 10) *o++ = (char)('0' + magnitude / 10 % 10);
            *o++ = (char)('0' + magnitude % 10);
        }
    }
    out->len += (size_t)(o - start);
    return 0;
}

static inline int literal(const char *p, const char *end, const char *word, size_t n) {
    return (size_t)(end - p) >= n && memcmp(p, word, n) == 0;
}

/* One value at p into field f of row `row`; its end, or NULL to decline. */
static const char *value_into(const char *p, const char *end, Field *f, Py_ssize_t row) {
    if (p >= end) return NULL;
    char c = *p;
    if (c == 'n') {
        if (!literal(p, end, "null", 4)) return NULL;
        return p + 4; /* left unset: null */
    }
    switch (f->kind) {
    case K_STRING: {
        if (c != '"') return NULL;
        const char *q = string_into(p + 1, end, &f->data);
        if (q == NULL || f->data.len > INT32_MAX) return NULL;
        f->offsets[row + 1] = (int32_t)f->data.len;
        f->valid[row >> 3] |= (uint8_t)(1u << (row & 7));
        return q;
    }
    case K_INT:
    case K_DOUBLE: {
        int integer;
        const char *q = number_end(p, end, &integer);
        if (q == NULL) return NULL;
        if (f->text) {
            if ((f->kind == K_INT && !integer) || number_text(p, q, integer, &f->data) < 0 ||
                f->data.len > INT32_MAX)
                return NULL;
            f->offsets[row + 1] = (int32_t)f->data.len;
        } else if (f->kind == K_INT) {
            int64_t v;
            if (!integer || parse_int64(p, q, &v) < 0) return NULL;
            memcpy(f->values + 8 * row, &v, 8);
        } else {
            double v;
            if (parse_double(p, q, &v) < 0) return NULL;
            memcpy(f->values + 8 * row, &v, 8);
        }
        f->valid[row >> 3] |= (uint8_t)(1u << (row & 7));
        return q;
    }
    case K_BOOL: {
        size_t n = literal(p, end, "true", 4) ? 4 : literal(p, end, "false", 5) ? 5 : 0;
        if (n == 0) return NULL;
        if (f->text) { /* Arrow's text of a bool is its literal */
            if (grow(&f->data, n) < 0 || f->data.len + n > INT32_MAX) return NULL;
            memcpy(f->data.p + f->data.len, p, n);
            f->data.len += n;
            f->offsets[row + 1] = (int32_t)f->data.len;
        } else if (n == 4) {
            f->values[row >> 3] |= (uint8_t)(1u << (row & 7));
        }
        f->valid[row >> 3] |= (uint8_t)(1u << (row & 7));
        return p + n;
    }
    default:
        return NULL; /* a null-typed field holds only nulls */
    }
}

/* What a line's object calls for each of its keys, with p at the key's value: the end of the
 * value, or NULL to decline. */
typedef const char *(*Pair)(void *ctx, const char *key, Py_ssize_t key_len, const char *p, const char *end);

/* One line at p: blanks, one object (its keys without escapes, each value given to `pair`), blanks,
 * then a newline or the end. The position after the line, or NULL to decline. */
static const char *object_line(const char *p, const char *end, Pair pair, void *ctx) {
    p = blanks(p, end);
    if (p >= end || *p != '{') return NULL;
    p = blanks(p + 1, end);
    if (p < end && *p == '}') {
        p++;
    } else {
        for (;;) {
            if (p >= end || *p != '"') return NULL;
            const char *key = ++p;
            p = plain_run(p, end);
            if (p >= end || *p != '"') return NULL;
            Py_ssize_t key_len = p - key;
            p = blanks(p + 1, end);
            if (p >= end || *p != ':') return NULL;
            p = pair(ctx, key, key_len, blanks(p + 1, end), end);
            if (p == NULL) return NULL;
            p = blanks(p, end);
            if (p < end && *p == ',') {
                p = blanks(p + 1, end);
                continue;
            }
            if (p < end && *p == '}') {
                p++;
                break;
            }
            return NULL;
        }
    }
    p = blanks(p, end);
    if (p < end) {
        if (*p != '\n') return NULL;
        p++;
    }
    return p;
}

typedef struct {
    Field *fields;
    int nfields;
    int last; /* the field of the line's last key; nfields at the start of a line */
    /* Where the key after field i (after the start of a line: i = nfields) is looked for first:
     * where it was last time. Lines of one shipper put their keys in one order; the schema's
     * order (a sample's order of first appearance) misses where a line lacks a field. */
    int next[MAX_FIELDS + 1];
    Py_ssize_t row;
    Py_ssize_t rows; /* what the arrays hold: the lines counted before the GIL was released */
} Reading;

static inline int same_key(const char *a, const char *b, Py_ssize_t n) {
    for (Py_ssize_t i = 0; i < n; i++)
        if (a[i] != b[i]) return 0;
    return 1;
}

static const char *read_pair(void *ctx, const char *key, Py_ssize_t key_len, const char *p, const char *end) {
    Reading *r = ctx;
    int at = -1, hint = r->next[r->last];
    for (int i = 0; i < r->nfields; i++) {
        int j = hint + i < r->nfields ? hint + i : hint + i - r->nfields;
        if (r->fields[j].name_len == key_len && same_key(r->fields[j].name, key, key_len)) {
            at = j;
            break;
        }
    }
    if (at < 0 || r->fields[at].seen == r->row + 1) return NULL; /* unknown, or twice in the line */
    Field *f = &r->fields[at];
    f->seen = r->row + 1;
    r->next[r->last] = at;
    r->last = at;
    return value_into(p, end, f, r->row);
}

/* The whole input; the number of rows, or -1 to decline. `rows`: the most the arrays hold. The
 * input was counted before the GIL was released, and another thread may write into a bytearray
 * meanwhile (not resize it: it is exported), so more rows than counted are declined, never written. */
static Py_ssize_t parse(const char *p, const char *end, Field *fields, int nfields, Py_ssize_t rows) {
    Reading r = {.fields = fields, .nfields = nfields, .row = 0, .rows = rows};
    for (int i = 0; i <= nfields; i++) r.next[i] = i < nfields - 1 ? i + 1 : 0; /* the start: field 0 */
    while (p < end) {
        if (r.row >= r.rows) return -1;
        r.last = nfields;
        p = object_line(p, end, read_pair, &r);
        if (p == NULL) return -1;
        Py_ssize_t row = r.row;
        for (int i = 0; i < nfields; i++) {
            Field *f = &fields[i];
            if (!(f->valid[row >> 3] & (1u << (row & 7)))) f->nulls++;
            if (f->text) f->offsets[row + 1] = (int32_t)f->data.len;
        }
        r.row++;
    }
    return r.row;
}

static void release(Field *fields, int nfields) {
    for (int i = 0; i < nfields; i++) {
        free(fields[i].valid);
        free(fields[i].values);
        free(fields[i].offsets);
        free(fields[i].data.p);
    }
}

static PyObject *bytes_of(const void *p, size_t n) {
    return PyBytes_FromStringAndSize(n ? (const char *)p : "", (Py_ssize_t)n);
}

/* read(data, names, kinds) -> (rows, [(nulls, validity, values, offsets, data), ...]) or None.
 * names: a tuple of bytes (the schema's field names, in its order); kinds: bytes, one of "idsbn"
 * a field (int64, double, string, bool, null), or of "IDB": an int64, double or bool field read
 * as a string column, each value the text number_text gives (or true / false). */
static PyObject *flat_read(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer input;
    PyObject *names;
    const char *kinds;
    Py_ssize_t nkinds;
    if (!PyArg_ParseTuple(args, "y*O!y#", &input, &PyTuple_Type, &names, &kinds, &nkinds)) return NULL;
    Py_ssize_t nfields = PyTuple_GET_SIZE(names);
    if (nfields != nkinds || nfields == 0 || nfields > MAX_FIELDS || input.len >= INT32_MAX) {
        PyBuffer_Release(&input);
        Py_RETURN_NONE;
    }
    const char *data = input.buf;
    Py_ssize_t lines = 1;
    for (const char *q = data; (q = memchr(q, '\n', (size_t)(data + input.len - q))) != NULL; q++) lines++;
    size_t bitmap = (size_t)(lines + 7) / 8;
    Field fields[MAX_FIELDS];
    memset(fields, 0, sizeof fields);
    int failed = 0;
    for (Py_ssize_t i = 0; i < nfields; i++) {
        PyObject *name = PyTuple_GET_ITEM(names, i);
        char kind = kinds[i];
        if (!PyBytes_Check(name) || strchr("idsbnIDB", kind) == NULL || kind == 0) {
            failed = 1;
            break;
        }
        Field *f = &fields[i];
        f->name = PyBytes_AS_STRING(name);
        f->name_len = PyBytes_GET_SIZE(name);
        f->text = kind == K_STRING || (kind >= 'A' && kind <= 'Z');
        f->kind = kind = (char)(kind | 0x20); /* lower case */
        f->valid = calloc(bitmap, 1);
        if (f->valid == NULL) failed = 2;
        if (!f->text && (kind == K_INT || kind == K_DOUBLE)) f->values = calloc((size_t)lines, 8);
        if (!f->text && kind == K_BOOL) f->values = calloc(bitmap, 1);
        if (!f->text && (kind == K_INT || kind == K_DOUBLE || kind == K_BOOL) && f->values == NULL) failed = 2;
        if (f->text && (f->offsets = calloc((size_t)lines + 1, 4)) == NULL) failed = 2;
        if (failed) break;
    }
    Py_ssize_t rows = -1;
    if (!failed) {
        Py_BEGIN_ALLOW_THREADS
        rows = parse(data, data + input.len, fields, (int)nfields, lines);
        Py_END_ALLOW_THREADS
    }
    PyBuffer_Release(&input);
    PyObject *result = NULL;
    if (failed == 2) {
        PyErr_NoMemory();
    } else if (failed || rows <= 0) { /* nothing read: pyarrow refuses an empty span */
        result = Py_NewRef(Py_None);
    } else {
        PyObject *columns = PyList_New(nfields);
        for (Py_ssize_t i = 0; columns != NULL && i < nfields; i++) {
            Field *f = &fields[i];
            size_t rbitmap = (size_t)(rows + 7) / 8;
            PyObject *item = Py_BuildValue(
                "(nNNNN)", f->nulls, bytes_of(f->valid, rbitmap),
                f->values == NULL ? bytes_of(NULL, 0)
                    : bytes_of(f->values, f->kind == K_BOOL ? rbitmap : (size_t)rows * 8),
                bytes_of(f->offsets, f->offsets ? ((size_t)rows + 1) * 4 : 0),
                bytes_of(f->data.p, f->data.len));
            if (item == NULL) {
                Py_CLEAR(columns);
                break;
            }
            PyList_SET_ITEM(columns, i, item);
        }
        if (columns != NULL) result = Py_BuildValue("(nN)", rows, columns);
    }
    release(fields, (int)nfields);
    return result;
}

/* -- infer: the schema pyarrow.json would infer for a sample of flat lines ---------------------- */

enum { M_NULL = 1, M_BOOL = 2, M_INT = 4, M_DOUBLE = 8, M_STRING = 16 };

typedef struct {
    const char *name;
    Py_ssize_t name_len;
    int mask;             /* the M_ kinds its values had */
    Py_ssize_t last_line; /* the last line (1-based) that held it: a key twice in a line declines */
} Seen;

/* One value's kind (an M_ bit) at p; its end, or NULL to decline. scratch takes string bytes. */
static const char *kind_of(const char *p, const char *end, int *kind, Buf *scratch) {
    if (p >= end) return NULL;
    if (*p == '"') {
        scratch->len = 0;
        *kind = M_STRING;
        return string_into(p + 1, end, scratch);
    }
    if (literal(p, end, "null", 4)) { *kind = M_NULL; return p + 4; }
    if (literal(p, end, "true", 4)) { *kind = M_BOOL; return p + 4; }
    if (literal(p, end, "false", 5)) { *kind = M_BOOL; return p + 5; }
    int integer;
    const char *q = number_end(p, end, &integer);
    if (q == NULL) return NULL;
    int64_t i;
    double d;
    if (integer && parse_int64(p, q, &i) < 0) return NULL; /* past int64: pyarrow's to judge */
    if (!integer && parse_double(p, q, &d) < 0) return NULL;
    *kind = integer ? M_INT : M_DOUBLE;
    return q;
}

typedef struct {
    Seen *seen;
    int nseen;
    Py_ssize_t line;
    Buf *scratch;
} Inferring;

static const char *infer_pair(void *ctx, const char *key, Py_ssize_t key_len, const char *p, const char *end) {
    Inferring *r = ctx;
    int kind;
    p = kind_of(p, end, &kind, r->scratch);
    if (p == NULL) return NULL;
    int at = -1;
    for (int i = 0; i < r->nseen; i++) {
        if (r->seen[i].name_len == key_len && memcmp(r->seen[i].name, key, (size_t)key_len) == 0) {
            at = i;
            break;
        }
    }
    if (at < 0) {
        if (r->nseen == MAX_FIELDS) return NULL;
        at = r->nseen++;
        r->seen[at] = (Seen){key, key_len, 0, 0};
    }
    if (r->seen[at].last_line == r->line) return NULL; /* twice in the line */
    r->seen[at].last_line = r->line;
    r->seen[at].mask |= kind;
    return p;
}

/* The keys of the lines and the kinds each held, in order of first appearance; -1 to decline. */
static int infer_lines(const char *p, const char *end, Seen *seen, int *nseen, Buf *scratch) {
    Inferring r = {seen, 0, 0, scratch};
    while (p < end) {
        r.line++;
        p = object_line(p, end, infer_pair, &r);
        if (p == NULL) return -1;
    }
    *nseen = r.nseen;
    return r.line > 0 ? 0 : -1;
}

/* infer(data) -> [(name, kind), ...] or None: the fields of lines of flat objects and the type
 * pyarrow.json infers for each ("i" int64, "d" double, "s" string, "b" bool, "n" null), in order
 * of first appearance. Declines (None) where pyarrow might infer otherwise or where flat_read
 * would decline: a key with values of two kinds (other than integers beside floats, or nulls),
 * an integer past int64, more than MAX_FIELDS keys, and every shape flat_read declines. A string
 * is a string here, where pyarrow may infer a timestamp from it (the caller keeps _time's text
 * for pyarrow: it declines a sample whose "_time" is a string). */
static PyObject *flat_infer(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer input;
    if (!PyArg_ParseTuple(args, "y*", &input)) return NULL;
    Seen seen[MAX_FIELDS];
    int nseen = 0;
    Buf scratch = {NULL, 0, 0};
    int status = -1;
    if (input.len < INT32_MAX) {
        Py_BEGIN_ALLOW_THREADS
        status = infer_lines(input.buf, (const char *)input.buf + input.len, seen, &nseen, &scratch);
        Py_END_ALLOW_THREADS
    }
    free(scratch.p);
    PyObject *result = NULL;
    if (status == 0) {
        result = PyList_New(0);
        for (int i = 0; result != NULL && i < nseen; i++) {
            int mask = seen[i].mask & ~M_NULL;
            const char *kind = mask == 0 ? "n" : mask == M_BOOL ? "b" : mask == M_INT ? "i"
                : (mask & ~M_INT) == M_DOUBLE ? "d" : mask == M_STRING ? "s" : NULL;
            if (kind == NULL) {
                Py_CLEAR(result);
                result = Py_NewRef(Py_None);
                break;
            }
            PyObject *item = Py_BuildValue("(y#s)", seen[i].name, seen[i].name_len, kind);
            if (item == NULL || PyList_Append(result, item) < 0) {
                Py_XDECREF(item);
                Py_CLEAR(result);
                break;
            }
            Py_DECREF(item);
        }
    } else {
        result = Py_NewRef(Py_None);
    }
    PyBuffer_Release(&input);
    return result;
}

/* Whether n bytes at p are well-formed UTF-8 exactly as Python's strict decoder takes it (Unicode
 * Table 3-7: no overlong forms, no surrogates, nothing past U+10FFFF, no cut sequence). ASCII is
 * checked 32, then eight bytes at a time. */
static int utf8_ok(const unsigned char *p, size_t n) {
    const unsigned char *end = p + n;
    while (p < end) {
        while (end - p >= 32) {
            uint64_t w[4];
            memcpy(w, p, 32);
            if ((w[0] | w[1] | w[2] | w[3]) & 0x8080808080808080ULL) break;
            p += 32;
        }
        while (end - p >= 8) {
            uint64_t word;
            memcpy(&word, p, 8);
            if (word & 0x8080808080808080ULL) break;
            p += 8;
        }
        if (p == end) break;
        unsigned c = *p;
        if (c < 0x80) {
            p++;
            continue;
        }
        size_t need;
        unsigned lo = 0x80, hi = 0xBF; /* the range of the byte after the lead */
        if (c >= 0xC2 && c <= 0xDF) need = 1;
        else if (c >= 0xE0 && c <= 0xEF) {
            need = 2;
            if (c == 0xE0) lo = 0xA0;
            else if (c == 0xED) hi = 0x9F;
        } else if (c >= 0xF0 && c <= 0xF4) {
            need = 3;
            if (c == 0xF0) lo = 0x90;
            else if (c == 0xF4) hi = 0x8F;
        } else return 0;
        if ((size_t)(end - p) <= need) return 0;
        if (p[1] < lo || p[1] > hi) return 0;
        for (size_t i = 2; i <= need; i++)
            if (p[i] < 0x80 || p[i] > 0xBF) return 0;
        p += need + 1;
    }
    return 1;
}

/* utf8(data) -> bool: whether data decodes as UTF-8 (what bytes.decode("utf-8") accepts), without
 * making the string. */
static PyObject *flat_utf8(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer input;
    if (!PyArg_ParseTuple(args, "y*", &input)) return NULL;
    int ok;
    Py_BEGIN_ALLOW_THREADS
    ok = utf8_ok(input.buf, (size_t)input.len);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&input);
    return PyBool_FromLong(ok);
}

static PyMethodDef methods[] = {
    {"read", flat_read, METH_VARARGS, "NDJSON of flat objects as Arrow buffers, or None."},
    {"infer", flat_infer, METH_VARARGS, "The fields and inferred types of flat NDJSON lines, or None."},
    {"utf8", flat_utf8, METH_VARARGS, "Whether the bytes decode as UTF-8 (strictly, as bytes.decode)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_flatjson", NULL, -1, methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__flatjson(void) {
    c_locale = newlocale(LC_ALL_MASK, "C", (locale_t)0);
    if (c_locale == (locale_t)0) return PyErr_NoMemory();
    return PyModule_Create(&module);
}
