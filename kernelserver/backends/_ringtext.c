/* A worker's sys.stdout/sys.stderr whose write() copies text straight into the shared-memory ring.
 *
 * Optional: rings.py works without it (a write-through TextIOWrapper over the mmap's own write),
 * but that costs two C calls and a bytes object per print(), which made printing many short lines
 * slower than the old private block buffer. Here a str's UTF-8 bytes go with one memcpy to the
 * mapped page, under the GIL, so they are in shared memory (and survive os._exit, SIGSEGV and
 * SIGKILL) the moment write() returns.
 *
 * RingText subclasses io.TextIOWrapper, so it is a text file in every other respect (encoding,
 * buffer, fileno, flush, reconfigure...). Its buffer's write is this object's _write_bytes, so
 * the inherited paths (bytes via .buffer, text the fast path declines) land at the same position.
 * The fast path declines what it cannot copy as is: a str subclass, text that does not encode
 * (lone surrogates: the TextIOWrapper applies its error handler), and anything while the writer
 * has turned it off (back-pressure, in rings.py).
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

typedef struct {
    Py_buffer view;  /* the current half of the ring; view.obj NULL until _target() */
    Py_ssize_t pos;  /* bytes written into it */
    int fast;        /* off while the writer holds prints back (rings.py's back-pressure) */
    int eligible;    /* the wrapper's settings are what a raw UTF-8 copy gives (see settle) */
    int newline_ok;  /* newline is None, "" or "\n": no translation on write */
} RingState;

/* Strings longer than this (in characters) that are not ASCII are encoded into a temporary:
 * PyUnicode_AsUTF8AndSize would keep the UTF-8 copy with the str for its whole life. */
#define CACHE_UTF8_MAX 16384

static Py_ssize_t state_offset;  /* where RingState lies in an instance: after TextIOWrapper's */
static PyObject *base_write;     /* io.TextIOWrapper.write */
static destructor base_dealloc;
static initproc base_init;
static traverseproc base_traverse;
static PyObject *base_type_object;  /* io.TextIOWrapper */

static RingState *
state(PyObject *self)
{
    return (RingState *)((char *)self + state_offset);
}

static int
copy_in(RingState *st, const char *data, Py_ssize_t size)
{
    if (st->view.obj == NULL || size > st->view.len - st->pos) {
        PyErr_SetString(PyExc_ValueError, "data out of range");
        return -1;
    }
    memcpy((char *)st->view.buf + st->pos, data, (size_t)size);
    st->pos += size;
    return 0;
}

static PyObject *
ringtext_write(PyObject *self, PyObject *text)
{
    RingState *st = state(self);
    if (st->fast && st->eligible && st->view.obj != NULL && PyUnicode_CheckExact(text)) {
        const char *data;
        Py_ssize_t size;
        PyObject *encoded = NULL;
        if (PyUnicode_IS_ASCII(text)) {
            data = (const char *)PyUnicode_DATA(text);
            size = PyUnicode_GET_LENGTH(text);
        }
        else if (PyUnicode_GET_LENGTH(text) <= CACHE_UTF8_MAX) {
            data = PyUnicode_AsUTF8AndSize(text, &size);  /* cached in the str: small */
            if (data == NULL) {
                PyErr_Clear();  /* a lone surrogate: the error handler's business */
                goto slow;
            }
        }
        else {
            encoded = PyUnicode_AsUTF8String(text);
            if (encoded == NULL) {
                PyErr_Clear();
                goto slow;
            }
            data = PyBytes_AS_STRING(encoded);
            size = PyBytes_GET_SIZE(encoded);
        }
        int fits = size <= st->view.len - st->pos;
        if (fits) {
            memcpy((char *)st->view.buf + st->pos, data, (size_t)size);
            st->pos += size;
        }
        Py_XDECREF(encoded);
        if (fits) {
            return PyLong_FromSsize_t(PyUnicode_GET_LENGTH(text));
        }
    }
slow:
    return PyObject_CallFunctionObjArgs(base_write, self, text, NULL);
}

/* Whether the wrapper, as configured now, writes exactly a str's UTF-8 bytes at once: UTF-8,
 * write-through, not line-buffered (that flushes, i.e. marks, on each line), no newline
 * translation. Anything else takes TextIOWrapper's own path. */
static int
settle(PyObject *self)
{
    RingState *st = state(self);
    st->eligible = 0;
    PyObject *value = PyObject_GetAttrString(self, "write_through");
    int write_through = value ? PyObject_IsTrue(value) : -1;
    Py_XDECREF(value);
    value = PyObject_GetAttrString(self, "line_buffering");
    int line_buffering = value ? PyObject_IsTrue(value) : -1;
    Py_XDECREF(value);
    value = PyObject_GetAttrString(self, "encoding");
    int utf8 = 0;
    if (value != NULL && PyUnicode_Check(value)) {
        const char *name = PyUnicode_AsUTF8(value);
        utf8 = name != NULL && (strcmp(name, "utf-8") == 0 || strcmp(name, "utf8") == 0
                                || strcmp(name, "UTF-8") == 0);
    }
    Py_XDECREF(value);
    if (write_through < 0 || line_buffering < 0) {
        return -1;
    }
    st->eligible = write_through && !line_buffering && utf8 && st->newline_ok;
    return 0;
}

/* newline as given to __init__ or reconfigure: NULL (not given), None, or a str. */
static int
newline_is_plain(PyObject *newline)
{
    if (newline == NULL || newline == Py_None) {
        return 1;
    }
    if (!PyUnicode_Check(newline)) {
        return 0;
    }
    return PyUnicode_GET_LENGTH(newline) == 0
           || PyUnicode_CompareWithASCIIString(newline, "\n") == 0;
}

static PyObject *
ringtext_write_bytes(PyObject *self, PyObject *data)
{
    Py_buffer in;
    if (PyObject_GetBuffer(data, &in, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    int failed = copy_in(state(self), (const char *)in.buf, in.len);
    Py_ssize_t size = in.len;
    PyBuffer_Release(&in);
    if (failed) {
        return NULL;
    }
    return PyLong_FromSsize_t(size);
}

static PyObject *
ringtext_target(PyObject *self, PyObject *args)
{
    PyObject *mapping;
    Py_ssize_t pos;
    if (!PyArg_ParseTuple(args, "On:_target", &mapping, &pos)) {
        return NULL;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(mapping, &view, PyBUF_WRITABLE) < 0) {
        return NULL;
    }
    if (pos < 0 || pos > view.len) {
        PyBuffer_Release(&view);
        PyErr_SetString(PyExc_ValueError, "position out of range");
        return NULL;
    }
    RingState *st = state(self);
    Py_buffer old = st->view;
    Py_ssize_t end = st->pos;
    /* Under the GIL, with no call out: no write lands between the end read and the switch. */
    st->view = view;
    st->pos = pos;
    if (old.obj != NULL) {
        PyBuffer_Release(&old);
    }
    return PyLong_FromSsize_t(end);
}

static PyObject *
ringtext_tell(PyObject *self, PyObject *Py_UNUSED(ignored))
{
    return PyLong_FromSsize_t(state(self)->pos);
}

static PyObject *
ringtext_set_fast(PyObject *self, PyObject *flag)
{
    int on = PyObject_IsTrue(flag);
    if (on < 0) {
        return NULL;
    }
    state(self)->fast = on;
    Py_RETURN_NONE;
}

static int
ringtext_init(PyObject *self, PyObject *args, PyObject *kwargs)
{
    /* The target is kept: a second __init__ (code that re-wraps sys.stdout) still prints into
     * the ring. A new object's state is zeros (the allocator's). */
    RingState *st = state(self);
    PyObject *newline = NULL;
    if (PyTuple_GET_SIZE(args) > 3) {
        newline = PyTuple_GET_ITEM(args, 3);
    }
    else if (kwargs != NULL) {
        newline = PyDict_GetItemString(kwargs, "newline");  /* borrowed */
    }
    st->newline_ok = newline_is_plain(newline);
    st->fast = 1;
    st->eligible = 0;
    if (base_init(self, args, kwargs) < 0) {
        return -1;
    }
    return settle(self);
}

static PyObject *
ringtext_reconfigure(PyObject *self, PyObject *args, PyObject *kwargs)
{
    PyObject *reconfigure = PyObject_GetAttrString(base_type_object, "reconfigure");
    if (reconfigure == NULL) {
        return NULL;
    }
    PyObject *head = PyTuple_Pack(1, self);
    PyObject *full = head ? PySequence_Concat(head, args) : NULL;  /* (self, *args) */
    Py_XDECREF(head);
    PyObject *result = NULL;
    if (full != NULL) {
        result = PyObject_Call(reconfigure, full, kwargs);
    }
    Py_XDECREF(full);
    Py_DECREF(reconfigure);
    if (result == NULL) {
        return NULL;
    }
    if (kwargs != NULL && PyDict_GetItemString(kwargs, "newline") != NULL) {
        state(self)->newline_ok = newline_is_plain(PyDict_GetItemString(kwargs, "newline"));
    }
    if (settle(self) < 0) {
        Py_DECREF(result);
        return NULL;
    }
    return result;
}

static PyObject *
ringtext_detach(PyObject *self, PyObject *Py_UNUSED(ignored))
{
    state(self)->eligible = 0;  /* no buffer any more: TextIOWrapper's write says so */
    PyObject *detach = PyObject_GetAttrString(base_type_object, "detach");
    if (detach == NULL) {
        return NULL;
    }
    PyObject *result = PyObject_CallOneArg(detach, self);
    Py_DECREF(detach);
    return result;
}

static int
ringtext_traverse(PyObject *self, visitproc visit, void *arg)
{
#if PY_VERSION_HEX < 0x030C0000
    /* Until 3.12 the base's traverse does not visit the (heap) type of the instance. */
    Py_VISIT(Py_TYPE(self));
#endif
    return base_traverse(self, visit, arg);
}

static void
ringtext_dealloc(PyObject *self)
{
    PyTypeObject *type = Py_TYPE(self);
    /* close() (a flush) first, while the ring is still there; a finalizer that keeps the
     * object alive keeps its view and its type too. */
    if (PyObject_CallFinalizerFromDealloc(self) < 0) {
        return;
    }
    RingState *st = state(self);
    Py_buffer view = st->view;
    st->view.obj = NULL;
    base_dealloc(self);
    if (view.obj != NULL) {
        PyBuffer_Release(&view);
    }
#if PY_VERSION_HEX < 0x030C0000
    /* Until 3.12 TextIOWrapper is a static type whose dealloc leaves the instance's reference
     * to its (heap) type alone; from 3.12 it is a heap type and drops it itself. */
    Py_DECREF(type);
#else
    (void)type;
#endif
}

static PyMethodDef ringtext_methods[] = {
    {"write", ringtext_write, METH_O, "Write text; it is in shared memory when this returns."},
    {"_write_bytes", ringtext_write_bytes, METH_O, "Write bytes at the current position."},
    {"_target", ringtext_target, METH_VARARGS, "Write into this mapping from this position on; the old one's end."},
    {"_tell", ringtext_tell, METH_NOARGS, "Bytes written into the current mapping."},
    {"_set_fast", ringtext_set_fast, METH_O, "Turn the direct copy on or off."},
    {"reconfigure", (PyCFunction)(void (*)(void))ringtext_reconfigure,
     METH_VARARGS | METH_KEYWORDS, "TextIOWrapper.reconfigure; the direct copy follows it."},
    {"detach", ringtext_detach, METH_NOARGS, "TextIOWrapper.detach."},
    {NULL, NULL, 0, NULL},
};

static PyObject *
make_type(PyObject *module)
{
    PyObject *io = PyImport_ImportModule("io");
    if (io == NULL) {
        return NULL;
    }
    PyObject *base = PyObject_GetAttrString(io, "TextIOWrapper");
    Py_DECREF(io);
    if (base == NULL) {
        return NULL;
    }
    base_write = PyObject_GetAttrString(base, "write");
    if (base_write == NULL) {
        Py_DECREF(base);
        return NULL;
    }
    PyTypeObject *base_type = (PyTypeObject *)base;
    base_dealloc = base_type->tp_dealloc;
    base_init = base_type->tp_init;
    base_traverse = base_type->tp_traverse;
    Py_XDECREF(base_type_object);
    base_type_object = Py_NewRef(base);
    Py_ssize_t align = (Py_ssize_t)_Alignof(RingState);
    state_offset = (base_type->tp_basicsize + align - 1) / align * align;
    PyType_Slot slots[] = {
        {Py_tp_methods, ringtext_methods},
        {Py_tp_init, ringtext_init},
        {Py_tp_dealloc, ringtext_dealloc},
        /* The mapping held in the view refers to nothing back: no cycle runs through it. */
        {Py_tp_traverse, ringtext_traverse},
        {Py_tp_clear, (void *)base_type->tp_clear},
        {Py_tp_doc, "A TextIOWrapper whose write() copies text into the shared-memory ring."},
        {0, NULL},
    };
    PyType_Spec spec = {
        .name = "kernelserver.backends._ringtext.RingText",
        .basicsize = (int)(state_offset + (Py_ssize_t)sizeof(RingState)),
        .itemsize = 0,
        .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
        .slots = slots,
    };
    PyObject *type = PyType_FromModuleAndSpec(module, &spec, base);
    Py_DECREF(base);
    return type;
}

static int
ringtext_exec(PyObject *module)
{
    PyObject *type = make_type(module);
    if (type == NULL) {
        return -1;
    }
    if (PyModule_AddObject(module, "RingText", type) < 0) {
        Py_DECREF(type);
        return -1;
    }
    return 0;
}

static PyModuleDef_Slot ringtext_slots[] = {
    {Py_mod_exec, ringtext_exec},
#if PY_VERSION_HEX >= 0x030C0000
    /* Its state (the base type's functions) is process-wide: one interpreter only. */
    {Py_mod_multiple_interpreters, Py_MOD_MULTIPLE_INTERPRETERS_NOT_SUPPORTED},
#endif
    {0, NULL},
};

static struct PyModuleDef ringtext_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "kernelserver.backends._ringtext",
    .m_doc = "sys.stdout/sys.stderr of a worker, writing into the shared-memory ring (rings.py).",
    .m_size = 0,
    .m_slots = ringtext_slots,
};

PyMODINIT_FUNC
PyInit__ringtext(void)
{
    return PyModuleDef_Init(&ringtext_module);
}
