/* The worker's parser, compiled where its profile spends the most in one
 * function: the header section's lines to Header objects and the values
 * grouped by field key (issue #21 point 2; ops/bench/worker.py --profile).
 *
 * The reference is cluster/sip/parser.py's _header_fields, which stays the
 * specification: this does the same steps in the same order, with the same
 * Python collaborators (the name cache, header_key, the continuation rule,
 * ParseError), which cluster/sip/parser.py hands over once through setup().
 * tests/speedups/test_sip_fields.py compares both on generated and fuzzed
 * header sections; tests/sip runs on both (the pure-Python second run).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

static PyObject *known;          /* dict: header name -> key (parser's _KEY_CACHE) */
static PyObject *single;         /* frozenset of keys allowed once */
static PyObject *header_type;    /* cluster.sip.message.Header */
static PyObject *header_key;     /* cluster.sip.headers.header_key */
static PyObject *continue_field; /* cluster.sip.parser._continue_field */
static PyObject *parse_error;    /* cluster.sip.errors.ParseError */
static PyObject *s_key, *s_name, *s_value, *s_raw;

static int is_blank(Py_UCS4 c) { return c == ' ' || c == '\t'; }

/* str.strip(" \t") / str.rstrip(" \t") of text[start:stop] */
static PyObject *stripped(PyObject *text, Py_ssize_t start, Py_ssize_t stop, int left)
{
    int kind = PyUnicode_KIND(text);
    const void *data = PyUnicode_DATA(text);
    while (left && start < stop && is_blank(PyUnicode_READ(kind, data, start)))
        start++;
    while (stop > start && is_blank(PyUnicode_READ(kind, data, stop - 1)))
        stop--;
    return PyUnicode_Substring(text, start, stop);
}

static PyObject *setup(PyObject *Py_UNUSED(module), PyObject *args)
{
    PyObject *k, *s, *h, *hk, *cf, *pe;
    if (!PyArg_ParseTuple(args, "O!O!O!OOO", &PyDict_Type, &k, &PyFrozenSet_Type, &s, &PyType_Type, &h, &hk, &cf,
                          &pe))
        return NULL;
    Py_INCREF(k);
    Py_XSETREF(known, k);
    Py_INCREF(s);
    Py_XSETREF(single, s);
    Py_INCREF(h);
    Py_XSETREF(header_type, h);
    Py_INCREF(hk);
    Py_XSETREF(header_key, hk);
    Py_INCREF(cf);
    Py_XSETREF(continue_field, cf);
    Py_INCREF(pe);
    Py_XSETREF(parse_error, pe);
    Py_RETURN_NONE;
}

static int add_field(PyObject *headers, PyObject *groups, PyObject *key, PyObject *name, PyObject *value,
                     PyObject *line)
{
    PyTypeObject *type = (PyTypeObject *)header_type;
    PyObject *h = type->tp_alloc(type, 0); /* Header.__init__ by hand, as the reference does */
    if (!h)
        return -1;
    if (PyObject_SetAttr(h, s_key, key) < 0 || PyObject_SetAttr(h, s_name, name) < 0 ||
        PyObject_SetAttr(h, s_value, value) < 0 || PyObject_SetAttr(h, s_raw, line) < 0 ||
        PyList_Append(headers, h) < 0) {
        Py_DECREF(h);
        return -1;
    }
    Py_DECREF(h);
    PyObject *group = PyDict_GetItemWithError(groups, key);
    if (!group) {
        if (PyErr_Occurred())
            return -1;
        PyObject *fresh = PyList_New(1);
        if (!fresh)
            return -1;
        Py_INCREF(value);
        PyList_SET_ITEM(fresh, 0, value);
        int r = PyDict_SetItem(groups, key, fresh);
        Py_DECREF(fresh);
        return r;
    }
    int once = PySet_Contains(single, key);
    if (once < 0)
        return -1;
    if (once) {
        /* RFC 4475 §3.1.2.16 multi01, §3.3.2 mcl01. */
        PyErr_Format(parse_error, "more than one %U header field", name);
        return -1;
    }
    return PyList_Append(group, value);
}

/* header_fields(lines) -> (headers, groups); lines[0], the start line, is skipped. */
static PyObject *header_fields(PyObject *Py_UNUSED(module), PyObject *lines)
{
    if (!known) {
        PyErr_SetString(PyExc_RuntimeError, "cluster.speedups._sip.setup() was not called");
        return NULL;
    }
    if (!PyList_Check(lines)) {
        PyErr_SetString(PyExc_TypeError, "lines must be a list");
        return NULL;
    }
    PyObject *headers = PyList_New(0), *groups = PyDict_New();
    if (!headers || !groups)
        goto fail;
    for (Py_ssize_t i = 1; i < PyList_GET_SIZE(lines); i++) {
        PyObject *line = PyList_GET_ITEM(lines, i);
        if (!PyUnicode_Check(line)) {
            PyErr_SetString(PyExc_TypeError, "lines must be str");
            goto fail;
        }
        Py_ssize_t length = PyUnicode_GET_LENGTH(line);
        Py_ssize_t colon = PyUnicode_FindChar(line, ':', 0, length, 1);
        if (colon == -2)
            goto fail;
        int sep = colon >= 0;
        PyObject *name = PyUnicode_Substring(line, 0, sep ? colon : length);
        if (!name)
            goto fail;
        PyObject *key = PyDict_GetItemWithError(known, name); /* borrowed */
        if (!key && PyErr_Occurred()) {
            Py_DECREF(name);
            goto fail;
        }
        Py_XINCREF(key);
        if (!key || !sep) {
            /* Cached names are tokens, so a continuation line (which starts
             * with whitespace) always lands here. */
            if (length && is_blank(PyUnicode_READ_CHAR(line, 0))) {
                Py_DECREF(name);
                Py_XDECREF(key);
                PyObject *r = PyObject_CallFunctionObjArgs(continue_field, headers, groups, line, NULL);
                if (!r)
                    goto fail;
                Py_DECREF(r);
                continue;
            }
            if (!sep) {
                Py_DECREF(name);
                Py_XDECREF(key);
                PyErr_SetString(parse_error, "header line without a colon");
                goto fail;
            }
            PyObject *bare = stripped(name, 0, PyUnicode_GET_LENGTH(name), 0);
            Py_DECREF(name);
            if (!bare)
                goto fail;
            name = bare;
            key = PyObject_CallOneArg(header_key, name);
            if (!key) {
                Py_DECREF(name);
                goto fail;
            }
        }
        PyObject *value = stripped(line, colon + 1, length, 1);
        int r = value ? add_field(headers, groups, key, name, value, line) : -1;
        Py_XDECREF(value);
        Py_DECREF(key);
        Py_DECREF(name);
        if (r < 0)
            goto fail;
    }
    return Py_BuildValue("NN", headers, groups);
fail:
    Py_XDECREF(headers);
    Py_XDECREF(groups);
    return NULL;
}

static PyMethodDef methods[] = {
    {"setup", setup, METH_VARARGS,
     "setup(known, single, Header, header_key, continue_field, ParseError): the parser's collaborators."},
    {"header_fields", header_fields, METH_O, "parser._header_fields, compiled."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef sip_module = {
    PyModuleDef_HEAD_INIT, "cluster.speedups._sip", "The worker's parser hot spots, compiled.", -1, methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__sip(void)
{
    s_key = PyUnicode_InternFromString("key");
    s_name = PyUnicode_InternFromString("name");
    s_value = PyUnicode_InternFromString("value");
    s_raw = PyUnicode_InternFromString("raw");
    if (!s_key || !s_name || !s_value || !s_raw)
        return NULL;
    return PyModule_Create(&sip_module);
}
