/* The edge's UDP forwarding loop, compiled (issue #21 point 1).
 *
 * The reference is Python: nodes/edge/udp.py (the drain loop),
 * nodes/edge/forwarder.py (Forwarder.ingress), cluster/sip/callid.py
 * (extract_call_id), cluster/sharding/ring.py (Ring.owner) and
 * cluster/link/envelope.py (pack_array / pack_frame). This module does what
 * they do for the common datagram -- a request or response whose Call-ID is
 * found, routed by the ring or by the ``wk`` of its top Via -- and writes its
 * version-2 envelope straight into the owning worker's frame buffer, with no
 * Python object per datagram. Every other datagram (STUN, oversize, no or
 * folded Call-ID, a scanner's User-Agent, a sampled trace, a ``wk`` this
 * table does not know, a request while rate limiting is on) is handed to the
 * Python path through the ``fallback`` callable, in arrival order, so the
 * two paths' frames stay ordered per worker. tests/speedups compare both
 * paths' frames byte for byte.
 *
 * Every read of a datagram is bounded by its length; nothing here trusts a
 * byte of it.
 */
#define PY_SSIZE_T_CLEAN
#define _GNU_SOURCE
#include <Python.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include "blake2b.h"

#define RECV_SIZE 65536 /* as udp.py's recvfrom(65536) */
#define MAX_SLOTS 64

enum { ROUTE_FALLBACK = -1, ROUTE_KEEPALIVE = -2 };

typedef struct {
    char *data;
    Py_ssize_t len, cap, count;
} FrameBuf;

typedef struct {
    char *data;
    Py_ssize_t len;
} Span;

typedef struct {
    PyObject_HEAD
    int fd;
    Py_ssize_t max_message;
    /* The constant parts of an envelope, packed by msgpack in Python. */
    Span head, mid, tail;
    uint64_t *points;
    int32_t *owners; /* npoints + 1 entries: buffer index, -1 when Python routes */
    Py_ssize_t npoints;
    FrameBuf *bufs;
    Py_ssize_t nbufs;
    Span *names; /* worker ids a response's wk= may name */
    int32_t *name_bufs;
    Py_ssize_t nnames;
    Span *tokens; /* scanner tokens, lower case */
    Py_ssize_t ntokens;
    int requests;
    int tracing;
    uint64_t trace_bound;
    int configured;
    /* recvmmsg state, allocated once */
    unsigned slots;
    struct mmsghdr *msgs;
    struct iovec *iov;
    struct sockaddr_in *addrs;
    char *space;
} Drain;

/* -- byte searches, all bounded by ``end`` ------------------------------ */

static Py_ssize_t find(const char *d, Py_ssize_t start, Py_ssize_t end, const char *needle, Py_ssize_t n)
{
    if (start < 0 || end - start < n)
        return -1;
    const char *at = memmem(d + start, (size_t)(end - start), needle, (size_t)n);
    return at ? at - d : -1;
}

static inline int lower(int c) { return (c >= 'A' && c <= 'Z') ? c + 32 : c; }

/* d[at:at+n] equals ``word`` (lower case) ignoring ASCII case. */
static int iequal(const char *d, Py_ssize_t at, Py_ssize_t end, const char *word, Py_ssize_t n)
{
    if (end - at < n)
        return 0;
    for (Py_ssize_t i = 0; i < n; i++)
        if (lower((unsigned char)d[at + i]) != word[i])
            return 0;
    return 1;
}

static int is_ws(char c) { return c == ' ' || c == '\t'; }

/* Python's re: ``\r\n(?:word1|word2)[ \t]*:`` searched in d[0:end]; the
 * offset just past the colon, or -1. The alternatives start with different
 * letters, so at most one can match at a position. */
static Py_ssize_t find_field(const char *d, Py_ssize_t end, const char *long_name, Py_ssize_t long_len,
                             char short_name)
{
    Py_ssize_t at = 0;
    while ((at = find(d, at, end, "\r\n", 2)) >= 0) {
        Py_ssize_t p = at + 2;
        if (iequal(d, p, end, long_name, long_len))
            p += long_len;
        else if (p < end && lower((unsigned char)d[p]) == short_name)
            p += 1;
        else {
            at += 1;
            continue;
        }
        while (p < end && is_ws(d[p]))
            p++;
        if (p < end && d[p] == ':')
            return p + 1;
        at += 1;
    }
    return -1;
}

/* -- Call-ID: cluster/sip/callid.py, except that a folded value, which the
 * Python path unfolds, is left to it. 0 and the value's span, or -1. ------ */

static int call_id(const char *d, Py_ssize_t len, Span *out)
{
    Py_ssize_t base = 0;
    while (base < len && (d[base] == '\r' || d[base] == '\n'))
        base++; /* data.lstrip(b"\r\n") */
    d += base;
    len -= base;
    Py_ssize_t end = find(d, 0, len, "\r\n\r\n", 4);
    if (end < 0)
        end = len;
    Py_ssize_t start = find(d, 0, end, "\r\nCall-ID:", 10);
    Py_ssize_t stop;
    if (start >= 0) {
        start += 10;
        stop = find(d, start, len, "\r\n", 2);
        if (stop < 0)
            stop = end;
        int folded = stop + 2 < len && is_ws(d[stop + 2]);
        if (stop == end || !folded) {
            Py_ssize_t a = start, b = stop;
            while (a < b && is_ws(d[a]))
                a++;
            while (b > a && is_ws(d[b - 1]))
                b--;
            if (b > a) {
                out->data = (char *)d + a;
                out->len = b - a;
                return 0;
            }
        }
    }
    /* The slow path: any case, compact ``i``, blanks before the colon. */
    start = find_field(d, end, "call-id", 7, 'i');
    if (start < 0)
        return -1;
    stop = start;
    for (;;) {
        stop = find(d, stop, len, "\r\n", 2);
        if (stop < 0 || stop >= end) {
            stop = end;
            break;
        }
        if (stop + 2 < len && is_ws(d[stop + 2]))
            return -1; /* folded (RFC 3261 §7.3.1): the Python path unfolds it */
        break;
    }
    while (start < stop && is_ws(d[start]))
        start++;
    while (stop > start && is_ws(d[stop - 1]))
        stop--;
    if (stop <= start)
        return -1;
    if (find(d, start, stop, "\r\n", 2) >= 0)
        return -1;
    out->data = (char *)d + start;
    out->len = stop - start;
    return 0;
}

/* -- nodes/edge/forwarder.py response_shard: the ``wk`` of the top Via.
 * 1 and its span, 0 when there is none. --------------------------------- */

static int is_shard_char(char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' ||
           c == '_' || c == '-';
}

static int response_shard(const char *d, Py_ssize_t len, Span *out)
{
    Py_ssize_t start = find_field(d, len, "via", 3, 'v');
    if (start < 0)
        return 0;
    Py_ssize_t stop = start;
    while (stop < len && d[stop] != '\r' && d[stop] != '\n' && d[stop] != ',')
        stop++;
    for (Py_ssize_t at = start; at < stop; at++) {
        if (d[at] != ';')
            continue;
        Py_ssize_t p = at + 1;
        while (p < stop && is_ws(d[p]))
            p++;
        if (stop - p < 3 || memcmp(d + p, "wk=", 3) != 0)
            continue;
        p += 3;
        Py_ssize_t q = p;
        while (q < stop && is_shard_char(d[q]))
            q++;
        if (q > p) {
            out->data = (char *)d + p;
            out->len = q - p;
            return 1;
        }
    }
    return 0;
}

/* -- cluster/defence/scanner.py ScannerMatcher.matches ------------------- */

static int scanner(const Drain *self, const char *d, Py_ssize_t len)
{
    if (!self->ntokens)
        return 0;
    Py_ssize_t at = find(d, 0, len, "\nUser-Agent", 11);
    if (at < 0)
        at = find(d, 0, len, "\nuser-agent", 11);
    if (at < 0)
        return 0;
    Py_ssize_t start = at + 11;
    Py_ssize_t stop = find(d, start, len, "\n", 1);
    if (stop < 0)
        stop = len;
    Py_ssize_t colon = start;
    while (colon < stop && is_ws(d[colon]))
        colon++;
    if (colon >= stop || d[colon] != ':')
        return 0;
    int blocked = 0;
    for (Py_ssize_t t = 0; t < self->ntokens && !blocked; t++) {
        const Span *token = &self->tokens[t];
        for (Py_ssize_t i = start; i + token->len <= stop; i++) {
            if (iequal(d, i, stop, token->data, token->len)) {
                blocked = 1;
                break;
            }
        }
    }
    if (!blocked)
        return 0;
    Py_ssize_t end = find(d, 0, len, "\r\n\r\n", 4);
    return end < 0 || at < end;
}

/* -- msgpack, as msgpack-python's Packer(use_bin_type=True) writes it ---- */

static int reserve(FrameBuf *buf, Py_ssize_t more)
{
    if (buf->cap - buf->len >= more)
        return 0;
    Py_ssize_t cap = buf->cap ? buf->cap : 4096;
    while (cap - buf->len < more)
        cap *= 2;
    char *data = PyMem_Realloc(buf->data, (size_t)cap);
    if (!data) {
        PyErr_NoMemory();
        return -1;
    }
    buf->data = data;
    buf->cap = cap;
    return 0;
}

static void put(FrameBuf *buf, const void *src, Py_ssize_t n)
{
    memcpy(buf->data + buf->len, src, (size_t)n);
    buf->len += n;
}

static void put_be(FrameBuf *buf, uint64_t v, int bytes)
{
    for (int i = bytes - 1; i >= 0; i--)
        buf->data[buf->len++] = (char)(v >> (8 * i));
}

static void put_uint(FrameBuf *buf, uint64_t v)
{
    if (v < 128) {
        buf->data[buf->len++] = (char)v;
    } else if (v <= 0xff) {
        buf->data[buf->len++] = (char)0xcc;
        put_be(buf, v, 1);
    } else if (v <= 0xffff) {
        buf->data[buf->len++] = (char)0xcd;
        put_be(buf, v, 2);
    } else if (v <= 0xffffffffULL) {
        buf->data[buf->len++] = (char)0xce;
        put_be(buf, v, 4);
    } else {
        buf->data[buf->len++] = (char)0xcf;
        put_be(buf, v, 8);
    }
}

static void put_str(FrameBuf *buf, const char *s, Py_ssize_t n)
{
    if (n <= 31) {
        buf->data[buf->len++] = (char)(0xa0 | n);
    } else if (n <= 0xff) {
        buf->data[buf->len++] = (char)0xd9;
        put_be(buf, (uint64_t)n, 1);
    } else {
        buf->data[buf->len++] = (char)0xda;
        put_be(buf, (uint64_t)n, 2); /* callers pass hosts, at most 64 bytes */
    }
    put(buf, s, n);
}

static void put_bin(FrameBuf *buf, const char *s, Py_ssize_t n)
{
    if (n <= 0xff) {
        buf->data[buf->len++] = (char)0xc4;
        put_be(buf, (uint64_t)n, 1);
    } else if (n <= 0xffff) {
        buf->data[buf->len++] = (char)0xc5;
        put_be(buf, (uint64_t)n, 2);
    } else {
        buf->data[buf->len++] = (char)0xc6;
        put_be(buf, (uint64_t)n, 4);
    }
    put(buf, s, n);
}

/* pack_array(Envelope("in", node, "UDP", (host, port), local, data, None,
 * ts_ns, None, advertise, node, epoch, current)): 17 fields, an array16. */
static int append_envelope(Drain *self, FrameBuf *buf, const char *data, Py_ssize_t len, const char *host,
                           Py_ssize_t host_len, unsigned port, uint64_t ts_ns)
{
    Py_ssize_t need = 3 + self->head.len + 3 + host_len + 3 + self->mid.len + 5 + len + 1 + 9 +
                      self->tail.len;
    if (reserve(buf, need) < 0)
        return -1;
    static const char header[3] = {(char)0xdc, 0x00, 0x11};
    put(buf, header, 3);
    put(buf, self->head.data, self->head.len);
    put_str(buf, host, host_len);
    put_uint(buf, port);
    put(buf, self->mid.data, self->mid.len);
    put_bin(buf, data, len);
    buf->data[buf->len++] = (char)0xc0; /* conn: None for a datagram */
    put_uint(buf, ts_ns);
    put(buf, self->tail.data, self->tail.len);
    buf->count++;
    return 0;
}

/* -- routing: one datagram -------------------------------------------------- */

static int is_keepalive(const char *d, Py_ssize_t len)
{
    /* udp.py's _EMPTY: b"", b"\n", b"\r\n", b"\r\n\r\n" (RFC 5626 §4.4.1) */
    return len == 0 || (len == 1 && d[0] == '\n') || (len == 2 && memcmp(d, "\r\n", 2) == 0) ||
           (len == 4 && memcmp(d, "\r\n\r\n", 4) == 0);
}

static Py_ssize_t ring_owner(const Drain *self, uint64_t position)
{
    /* bisect_left over the sorted points; owners[npoints] is the wrap. */
    Py_ssize_t lo = 0, hi = self->npoints;
    while (lo < hi) {
        Py_ssize_t mid = lo + (hi - lo) / 2;
        if (self->points[mid] < position)
            lo = mid + 1;
        else
            hi = mid;
    }
    return self->owners[lo];
}

/* The frame buffer the datagram was appended to, ROUTE_KEEPALIVE, ROUTE_FALLBACK,
 * or -3 with an exception set. */
static Py_ssize_t route(Drain *self, const char *d, Py_ssize_t len, const char *host, Py_ssize_t host_len,
                        unsigned port, uint64_t ts_ns)
{
    if (is_keepalive(d, len))
        return ROUTE_KEEPALIVE;
    if (!self->configured || (unsigned char)d[0] < 0x02 || len > self->max_message)
        return ROUTE_FALLBACK; /* STUN (RFC 5389 §6: the first two bits are 0), 513 */
    int response = len >= 4 && memcmp(d, "SIP/", 4) == 0;
    if (!response && (!self->requests || scanner(self, d, len)))
        return ROUTE_FALLBACK;
    Span cid;
    if (call_id(d, len, &cid) < 0)
        return ROUTE_FALLBACK;
    uint8_t digest[16];
    if (self->tracing) {
        blake2b_digest(digest, 16, (const uint8_t *)cid.data, (size_t)cid.len);
        if (blake2b_be64(digest, 8) < self->trace_bound)
            return ROUTE_FALLBACK; /* a sampled call: Forwarder._forward_traced */
    }
    Py_ssize_t index = ROUTE_FALLBACK;
    Span shard;
    if (response && response_shard(d, len, &shard)) {
        /* DESIGN §4: a response goes to the worker holding its client
         * transaction; a name not in the table is the Python path's. */
        for (Py_ssize_t i = 0; i < self->nnames; i++)
            if (self->names[i].len == shard.len && memcmp(self->names[i].data, shard.data, (size_t)shard.len) == 0)
                index = self->name_bufs[i];
        if (index < 0)
            return ROUTE_FALLBACK;
    } else {
        if (!self->npoints)
            return ROUTE_FALLBACK; /* no ring: the Python path answers 503 */
        blake2b_digest(digest, 8, (const uint8_t *)cid.data, (size_t)cid.len);
        index = ring_owner(self, blake2b_be64(digest, 0));
        if (index < 0)
            return ROUTE_FALLBACK;
    }
    if (append_envelope(self, &self->bufs[index], d, len, host, host_len, port, ts_ns) < 0)
        return -3;
    return index;
}

/* -- the type --------------------------------------------------------------- */

static void free_config(Drain *self)
{
    PyMem_Free(self->head.data);
    PyMem_Free(self->points);
    PyMem_Free(self->owners);
    for (Py_ssize_t i = 0; i < self->nbufs; i++)
        PyMem_Free(self->bufs[i].data);
    PyMem_Free(self->bufs);
    for (Py_ssize_t i = 0; i < self->nnames; i++)
        PyMem_Free(self->names[i].data);
    PyMem_Free(self->names);
    PyMem_Free(self->name_bufs);
    for (Py_ssize_t i = 0; i < self->ntokens; i++)
        PyMem_Free(self->tokens[i].data);
    PyMem_Free(self->tokens);
    self->head.data = self->mid.data = self->tail.data = NULL;
    self->points = NULL;
    self->owners = NULL;
    self->bufs = NULL;
    self->names = NULL;
    self->name_bufs = NULL;
    self->tokens = NULL;
    self->npoints = self->nbufs = self->nnames = self->ntokens = 0;
    self->configured = 0;
}

static void Drain_dealloc(Drain *self)
{
    free_config(self);
    PyMem_Free(self->msgs);
    PyMem_Free(self->iov);
    PyMem_Free(self->addrs);
    PyMem_Free(self->space);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int Drain_init(Drain *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"fd", "max_message", "slots", NULL};
    int fd;
    Py_ssize_t max_message;
    unsigned slots = 32;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "in|I", kwlist, &fd, &max_message, &slots))
        return -1;
    if (slots < 1 || slots > MAX_SLOTS) {
        PyErr_Format(PyExc_ValueError, "slots must be 1..%d", MAX_SLOTS);
        return -1;
    }
    if (self->msgs) {
        PyErr_SetString(PyExc_RuntimeError, "Drain is initialised once");
        return -1;
    }
    self->fd = fd;
    self->max_message = max_message;
    self->slots = slots;
    self->msgs = PyMem_Calloc(slots, sizeof *self->msgs);
    self->iov = PyMem_Calloc(slots, sizeof *self->iov);
    self->addrs = PyMem_Calloc(slots, sizeof *self->addrs);
    self->space = PyMem_Malloc((size_t)slots * RECV_SIZE);
    if (!self->msgs || !self->iov || !self->addrs || !self->space) {
        PyErr_NoMemory();
        return -1;
    }
    return 0;
}

static int copy_span(PyObject *bytes, Span *out)
{
    char *data;
    Py_ssize_t len;
    if (PyBytes_AsStringAndSize(bytes, &data, &len) < 0)
        return -1;
    out->data = PyMem_Malloc(len ? (size_t)len : 1);
    if (!out->data) {
        PyErr_NoMemory();
        return -1;
    }
    memcpy(out->data, data, (size_t)len);
    out->len = len;
    return 0;
}

static Py_ssize_t pending_count(const Drain *self)
{
    Py_ssize_t n = 0;
    for (Py_ssize_t i = 0; i < self->nbufs; i++)
        n += self->bufs[i].count;
    return n;
}

/* configure(head, mid, tail, points, owners, buffers, names, name_buffers,
 *           requests, tokens, trace_bound) */
static PyObject *Drain_configure(Drain *self, PyObject *args)
{
    PyObject *head, *mid, *tail, *names, *name_bufs, *tokens, *bound;
    Py_buffer points, owners;
    Py_ssize_t nbufs;
    int requests;
    if (!PyArg_ParseTuple(args, "SSSy*y*nO!O!pO!O", &head, &mid, &tail, &points, &owners, &nbufs, &PyList_Type,
                          &names, &PyList_Type, &name_bufs, &requests, &PyList_Type, &tokens, &bound))
        return NULL;
    PyObject *result = NULL;
    if (pending_count(self)) {
        PyErr_SetString(PyExc_RuntimeError, "configure with frames pending: take them first");
        goto done;
    }
    Py_ssize_t npoints = points.len / (Py_ssize_t)sizeof(uint64_t);
    if (points.len % (Py_ssize_t)sizeof(uint64_t) || owners.len != (npoints ? npoints + 1 : 0) * (Py_ssize_t)sizeof(int32_t) ||
        nbufs < 0 || PyList_GET_SIZE(names) != PyList_GET_SIZE(name_bufs)) {
        PyErr_SetString(PyExc_ValueError, "inconsistent routing table");
        goto done;
    }
    for (Py_ssize_t i = 0; i < (npoints ? npoints + 1 : 0); i++) {
        int32_t owner = ((const int32_t *)owners.buf)[i];
        if (owner < -1 || owner >= nbufs) {
            PyErr_SetString(PyExc_ValueError, "owner index out of range");
            goto done;
        }
    }
    free_config(self);
    /* head, mid and tail share one allocation */
    Py_ssize_t lh = PyBytes_GET_SIZE(head), lm = PyBytes_GET_SIZE(mid), lt = PyBytes_GET_SIZE(tail);
    self->head.data = PyMem_Malloc((size_t)(lh + lm + lt + 1));
    self->points = PyMem_Malloc((size_t)points.len + 1);
    self->owners = PyMem_Malloc((size_t)owners.len + 1);
    self->bufs = PyMem_Calloc((size_t)nbufs + 1, sizeof(FrameBuf));
    self->names = PyMem_Calloc((size_t)PyList_GET_SIZE(names) + 1, sizeof(Span));
    self->name_bufs = PyMem_Calloc((size_t)PyList_GET_SIZE(names) + 1, sizeof(int32_t));
    self->tokens = PyMem_Calloc((size_t)PyList_GET_SIZE(tokens) + 1, sizeof(Span));
    if (!self->head.data || !self->points || !self->owners || !self->bufs || !self->names || !self->name_bufs ||
        !self->tokens) {
        PyErr_NoMemory();
        goto fail;
    }
    memcpy(self->head.data, PyBytes_AS_STRING(head), (size_t)lh);
    memcpy(self->head.data + lh, PyBytes_AS_STRING(mid), (size_t)lm);
    memcpy(self->head.data + lh + lm, PyBytes_AS_STRING(tail), (size_t)lt);
    self->head.len = lh;
    self->mid.data = self->head.data + lh;
    self->mid.len = lm;
    self->tail.data = self->head.data + lh + lm;
    self->tail.len = lt;
    memcpy(self->points, points.buf, (size_t)points.len);
    memcpy(self->owners, owners.buf, (size_t)owners.len);
    self->npoints = npoints;
    self->nbufs = nbufs;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(names); i++) {
        Py_ssize_t index = PyLong_AsSsize_t(PyList_GET_ITEM(name_bufs, i));
        if (index == -1 && PyErr_Occurred())
            goto fail;
        if (index < -1 || index >= nbufs) {
            PyErr_SetString(PyExc_ValueError, "worker buffer index out of range");
            goto fail;
        }
        if (copy_span(PyList_GET_ITEM(names, i), &self->names[i]) < 0)
            goto fail;
        self->name_bufs[i] = (int32_t)index;
        self->nnames = i + 1;
    }
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(tokens); i++) {
        if (copy_span(PyList_GET_ITEM(tokens, i), &self->tokens[i]) < 0)
            goto fail;
        self->ntokens = i + 1;
    }
    for (Py_ssize_t i = 0; i < self->ntokens; i++)
        for (Py_ssize_t j = 0; j < self->tokens[i].len; j++)
            self->tokens[i].data[j] = (char)lower((unsigned char)self->tokens[i].data[j]);
    self->requests = requests;
    self->tracing = bound != Py_None;
    self->trace_bound = 0;
    if (self->tracing) {
        self->trace_bound = PyLong_AsUnsignedLongLong(bound);
        if (PyErr_Occurred())
            goto fail; /* past 2**64 - 1: the caller samples every call in Python */
    }
    self->configured = 1;
    result = Py_None;
    Py_INCREF(result);
    goto done;
fail:
    free_config(self);
done:
    PyBuffer_Release(&points);
    PyBuffer_Release(&owners);
    return result;
}

static PyObject *Drain_route(Drain *self, PyObject *args)
{
    Py_buffer data;
    const char *host;
    Py_ssize_t host_len;
    unsigned int port;
    unsigned long long ts;
    if (!PyArg_ParseTuple(args, "y*s#IK", &data, &host, &host_len, &port, &ts))
        return NULL;
    Py_ssize_t index = ROUTE_FALLBACK;
    if (host_len <= 64 && port <= 65535)
        index = route(self, data.buf, data.len, host, host_len, port, ts);
    PyBuffer_Release(&data);
    return index == -3 ? NULL : PyLong_FromSsize_t(index);
}

static uint64_t wall_ns(void)
{
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now); /* time.time_ns() */
    return (uint64_t)now.tv_sec * 1000000000ULL + (uint64_t)now.tv_nsec;
}

/* drain(limit, fast, fallback) -> (seen, forwarded, keepalives, emptied, errors)
 *
 * Reads up to ``limit`` datagrams with recvmmsg. With ``fast`` each one is
 * routed here if it can be; the rest, and all of them without ``fast``, go
 * to fallback(data, host, port) in order. ``emptied``: the socket had no
 * more (the loop waits for readability again); ``errors``: ICMP errors
 * reported by the socket (udp_icmp_error); ``seen``: datagrams and errors read. */
static PyObject *Drain_drain(Drain *self, PyObject *args)
{
    Py_ssize_t limit;
    int fast;
    PyObject *fallback;
    if (!PyArg_ParseTuple(args, "npO", &limit, &fast, &fallback))
        return NULL;
    Py_ssize_t forwarded = 0, keepalives = 0, errors = 0, seen = 0;
    int emptied = 0;
    while (seen < limit) {
        unsigned want = self->slots;
        if ((Py_ssize_t)want > limit - seen)
            want = (unsigned)(limit - seen);
        for (unsigned i = 0; i < want; i++) {
            self->iov[i].iov_base = self->space + (size_t)i * RECV_SIZE;
            self->iov[i].iov_len = RECV_SIZE;
            memset(&self->msgs[i].msg_hdr, 0, sizeof self->msgs[i].msg_hdr);
            self->msgs[i].msg_hdr.msg_iov = &self->iov[i];
            self->msgs[i].msg_hdr.msg_iovlen = 1;
            self->msgs[i].msg_hdr.msg_name = &self->addrs[i];
            self->msgs[i].msg_hdr.msg_namelen = sizeof self->addrs[i];
        }
        int got = recvmmsg(self->fd, self->msgs, want, MSG_DONTWAIT, NULL);
        if (got < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                emptied = 1;
                break;
            }
            if (errno == EINTR) {
                if (PyErr_CheckSignals() < 0)
                    return NULL;
                continue;
            }
            if (errno == EBADF || errno == ENOTSOCK || errno == EINVAL || errno == EFAULT)
                return PyErr_SetFromErrno(PyExc_OSError);
            errors++; /* ICMP errors surface here on Linux: nothing to read */
            seen++;
            continue;
        }
        uint64_t ts = wall_ns();
        for (int i = 0; i < got; i++) {
            seen++;
            const char *d = self->iov[i].iov_base;
            Py_ssize_t len = (Py_ssize_t)self->msgs[i].msg_len;
            struct sockaddr_in *addr = &self->addrs[i];
            char host[INET_ADDRSTRLEN];
            if (addr->sin_family != AF_INET || !inet_ntop(AF_INET, &addr->sin_addr, host, sizeof host)) {
                PyErr_SetString(PyExc_OSError, "the compiled loop reads IPv4 sockets only");
                return NULL;
            }
            Py_ssize_t host_len = (Py_ssize_t)strlen(host);
            unsigned port = ntohs(addr->sin_port);
            Py_ssize_t index = fast ? route(self, d, len, host, host_len, port, ts) : ROUTE_FALLBACK;
            if (index >= 0) {
                forwarded++;
            } else if (index == ROUTE_KEEPALIVE) {
                keepalives++;
            } else if (index == ROUTE_FALLBACK) {
                PyObject *r = PyObject_CallFunction(fallback, "y#s#I", d, len, host, host_len, port);
                if (!r)
                    return NULL;
                Py_DECREF(r);
            } else {
                return NULL;
            }
        }
        if ((unsigned)got < want) {
            emptied = 1;
            break;
        }
    }
    return Py_BuildValue("nnnOn", seen, forwarded, keepalives, emptied ? Py_True : Py_False, errors);
}

static PyObject *Drain_append(Drain *self, PyObject *args)
{
    Py_ssize_t index;
    Py_buffer packed;
    if (!PyArg_ParseTuple(args, "ny*", &index, &packed))
        return NULL;
    PyObject *result = NULL;
    if (index < 0 || index >= self->nbufs) {
        PyErr_SetString(PyExc_IndexError, "no such frame buffer");
    } else if (reserve(&self->bufs[index], packed.len) == 0) {
        put(&self->bufs[index], packed.buf, packed.len);
        self->bufs[index].count++;
        result = Py_None;
        Py_INCREF(result);
    }
    PyBuffer_Release(&packed);
    return result;
}

/* take(index) -> (frame, count) or None: the buffer as one frame
 * (pack_frame: an array of the envelopes), emptied. */
static PyObject *Drain_take(Drain *self, PyObject *args)
{
    Py_ssize_t index;
    if (!PyArg_ParseTuple(args, "n", &index))
        return NULL;
    if (index < 0 || index >= self->nbufs) {
        PyErr_SetString(PyExc_IndexError, "no such frame buffer");
        return NULL;
    }
    FrameBuf *buf = &self->bufs[index];
    if (!buf->count)
        Py_RETURN_NONE;
    char header[5];
    Py_ssize_t n = buf->count, h;
    if (n <= 15) {
        header[0] = (char)(0x90 | n);
        h = 1;
    } else if (n <= 0xffff) {
        header[0] = (char)0xdc;
        header[1] = (char)(n >> 8);
        header[2] = (char)n;
        h = 3;
    } else {
        header[0] = (char)0xdd;
        for (int i = 0; i < 4; i++)
            header[1 + i] = (char)(n >> (24 - 8 * i));
        h = 5;
    }
    PyObject *frame = PyBytes_FromStringAndSize(NULL, h + buf->len);
    if (!frame)
        return NULL;
    memcpy(PyBytes_AS_STRING(frame), header, (size_t)h);
    memcpy(PyBytes_AS_STRING(frame) + h, buf->data, (size_t)buf->len);
    buf->len = 0;
    buf->count = 0;
    return Py_BuildValue("Nn", frame, n);
}

static PyObject *Drain_pending(Drain *self, PyObject *Py_UNUSED(ignored))
{
    return PyLong_FromSsize_t(pending_count(self));
}

static PyMethodDef Drain_methods[] = {
    {"configure", (PyCFunction)Drain_configure, METH_VARARGS, "Load the routing table (no frames pending)."},
    {"route", (PyCFunction)Drain_route, METH_VARARGS,
     "route(data, host, port, ts_ns) -> buffer index, -1 for the Python path, -2 for a keep-alive."},
    {"drain", (PyCFunction)Drain_drain, METH_VARARGS,
     "drain(limit, fast, fallback) -> (seen, forwarded, keepalives, emptied, errors)."},
    {"append", (PyCFunction)Drain_append, METH_VARARGS, "append(index, packed_envelope)."},
    {"take", (PyCFunction)Drain_take, METH_VARARGS, "take(index) -> (frame, count) or None."},
    {"pending", (PyCFunction)Drain_pending, METH_NOARGS, "Envelopes waiting in the frame buffers."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject DrainType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "cluster.speedups._edge.Drain",
    .tp_basicsize = sizeof(Drain),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A UDP socket's compiled drain with per-worker frame buffers.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Drain_init,
    .tp_dealloc = (destructor)Drain_dealloc,
    .tp_methods = Drain_methods,
};

/* -- module functions, for the tests' comparisons with the Python reference */

static PyObject *mod_call_id(PyObject *Py_UNUSED(module), PyObject *arg)
{
    Py_buffer data;
    if (PyObject_GetBuffer(arg, &data, PyBUF_SIMPLE) < 0)
        return NULL;
    Span value;
    PyObject *result = call_id(data.buf, data.len, &value) < 0 ? (Py_INCREF(Py_None), Py_None)
                                                                : PyBytes_FromStringAndSize(value.data, value.len);
    PyBuffer_Release(&data);
    return result;
}

static PyObject *mod_response_shard(PyObject *Py_UNUSED(module), PyObject *arg)
{
    Py_buffer data;
    if (PyObject_GetBuffer(arg, &data, PyBUF_SIMPLE) < 0)
        return NULL;
    Span value;
    PyObject *result = response_shard(data.buf, data.len, &value) ? PyBytes_FromStringAndSize(value.data, value.len)
                                                                  : (Py_INCREF(Py_None), Py_None);
    PyBuffer_Release(&data);
    return result;
}

static PyObject *mod_blake2b(PyObject *Py_UNUSED(module), PyObject *args)
{
    Py_buffer data;
    Py_ssize_t size;
    if (!PyArg_ParseTuple(args, "y*n", &data, &size))
        return NULL;
    PyObject *result = NULL;
    if (size < 1 || size > 64) {
        PyErr_SetString(PyExc_ValueError, "digest size must be 1..64");
    } else {
        uint8_t out[64];
        blake2b_digest(out, (size_t)size, data.buf, (size_t)data.len);
        result = PyBytes_FromStringAndSize((const char *)out, size);
    }
    PyBuffer_Release(&data);
    return result;
}

/* send_many(fd, items, start) -> (sent, failed, stop)
 *
 * The response path: each (data, (host, port)) of items[start:] written to
 * the socket with sendmmsg, SEND_SLOTS at a time, instead of one sendto
 * each. A datagram the kernel refuses (a full send buffer, an unreachable
 * network, port 0) counts in ``failed`` and the rest go on, as
 * UdpListener.send does one by one. ``stop`` is len(items), or the index of
 * the first item whose address is not an IPv4 literal and a port (a name,
 * IPv6, a port past 65535): the caller sends that one its own way and calls
 * again after it, so that the datagrams leave in order. */
#define SEND_SLOTS 64

static int send_address(PyObject *item, struct sockaddr_in *addr, struct iovec *iov)
{
    PyObject *data, *peer, *host, *port;
    if (!PyTuple_Check(item) || PyTuple_GET_SIZE(item) != 2 || !PyBytes_Check(data = PyTuple_GET_ITEM(item, 0)) ||
        !PyTuple_Check(peer = PyTuple_GET_ITEM(item, 1)) || PyTuple_GET_SIZE(peer) != 2 ||
        !PyUnicode_Check(host = PyTuple_GET_ITEM(peer, 0)) || !PyLong_CheckExact(port = PyTuple_GET_ITEM(peer, 1)))
        return 0;
    unsigned long number = PyLong_AsUnsignedLong(port);
    if (number == (unsigned long)-1 && PyErr_Occurred()) {
        PyErr_Clear();
        return 0;
    }
    const char *text = PyUnicode_AsUTF8(host);
    if (!text) {
        PyErr_Clear();
        return 0;
    }
    memset(addr, 0, sizeof *addr);
    addr->sin_family = AF_INET;
    if (number > 65535 || inet_pton(AF_INET, text, &addr->sin_addr) != 1)
        return 0;
    addr->sin_port = htons((uint16_t)number);
    iov->iov_base = PyBytes_AS_STRING(data);
    iov->iov_len = (size_t)PyBytes_GET_SIZE(data);
    return 1;
}

static PyObject *mod_send_many(PyObject *Py_UNUSED(module), PyObject *args)
{
    int fd;
    PyObject *items;
    Py_ssize_t at;
    if (!PyArg_ParseTuple(args, "iO!n", &fd, &PyList_Type, &items, &at))
        return NULL;
    struct mmsghdr msgs[SEND_SLOTS];
    struct iovec iov[SEND_SLOTS];
    struct sockaddr_in addrs[SEND_SLOTS];
    Py_ssize_t sent = 0, failed = 0, n = PyList_GET_SIZE(items);
    int stopped = 0;
    if (at < 0)
        at = 0;
    while (at < n && !stopped) {
        unsigned count = 0;
        for (; at < n && count < SEND_SLOTS; at++, count++) {
            if (!send_address(PyList_GET_ITEM(items, at), &addrs[count], &iov[count])) {
                stopped = 1;
                break;
            }
            memset(&msgs[count], 0, sizeof msgs[count]);
            msgs[count].msg_hdr.msg_name = &addrs[count];
            msgs[count].msg_hdr.msg_namelen = sizeof addrs[count];
            msgs[count].msg_hdr.msg_iov = &iov[count];
            msgs[count].msg_hdr.msg_iovlen = 1;
        }
        unsigned done = 0;
        while (done < count) {
            int r = sendmmsg(fd, msgs + done, count - done, MSG_DONTWAIT);
            if (r <= 0) {
                if (r < 0 && errno == EINTR) {
                    if (PyErr_CheckSignals() < 0)
                        return NULL;
                    continue;
                }
                failed++; /* the first one was refused: count it, go on past it */
                done++;
                continue;
            }
            sent += r;
            done += (unsigned)r;
        }
    }
    return Py_BuildValue("nnn", sent, failed, at);
}

static PyMethodDef module_methods[] = {
    {"call_id", mod_call_id, METH_O, "The Call-ID as the compiled path reads it; None: left to Python."},
    {"response_shard", mod_response_shard, METH_O, "The wk= of a response's top Via, or None."},
    {"send_many", mod_send_many, METH_VARARGS, "send_many(fd, [(data, (host, port))], start) -> (sent, failed, stop)."},
    {"blake2b", mod_blake2b, METH_VARARGS, "blake2b(data, size): hashlib.blake2b(data, digest_size=size)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef edge_module = {
    PyModuleDef_HEAD_INIT, "cluster.speedups._edge", "The edge's compiled UDP forwarding loop.", -1,
    module_methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__edge(void)
{
    if (PyType_Ready(&DrainType) < 0)
        return NULL;
    PyObject *module = PyModule_Create(&edge_module);
    if (!module)
        return NULL;
    Py_INCREF(&DrainType);
    if (PyModule_AddObject(module, "Drain", (PyObject *)&DrainType) < 0) {
        Py_DECREF(&DrainType);
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
