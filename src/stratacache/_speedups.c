/*
 * stratacache._speedups: the L1 hit path and the L1-only write path in C.
 *
 * Optional. When this module does not build (no compiler) or STRATACACHE_PURE_PYTHON=1 is
 * set, tiers/memory.py uses its pure-Python closures, which do exactly the same thing; the
 * test suite runs both and compares them. Nothing here decides anything the Python code
 * does not: these are the two closures of MemoryTier.make_reader and make_writer, with the
 * interpreter's per-call overhead removed.
 *
 * Counters()
 *     The counters of one level (hits, misses, writes, evictions, errors, corrupt,
 *     too_large, unencodable) as plain C fields. metrics.LevelStats subclasses it, so the
 *     C paths below and the Python code count into the very same object.
 *
 * Reader(data, clock, buffer, limit, drain, slow, missing, counters, negative=None,
 *        lock=None, on_hits=None)
 *     reader(key, default=missing): an entry (value, expires_at) found in `data` whose
 *     expiry is later than clock() is a hit, counted in `counters`: the key is appended to
 *     `buffer` (drain() is called when it reaches `limit`) and the value returned.
 *     Anything else (absent, expired, unhashable key) is slow(key, default). Given the
 *     tier's `negative` dict (a cache whose only source is L1), a non-empty str key found
 *     in neither dict is answered here too: a miss, counted, returning default. Given
 *     the tier's Lock and the policy's on_hits, a full buffer is drained here in C.
 *
 * Lock()
 *     A mutex with threading.Lock's acquire/release/context-manager interface, which the
 *     Writer takes without going through Python method calls.
 *
 * Writer(data, negative, lock, buffer, drain, on_insert, on_update, clock, level_ttl,
 *        fallback, counters)
 *     writer(key, value, ttl=None) stores (value, expiry) under `lock` (a Lock of this
 *     module, taken without Python calls), replaying
 *     buffered hits first and applying the policy's victims. Unusual calls (a key that is
 *     not a non-empty str, a ttl that is not a positive int or float, keywords) go to
 *     `fallback`, the Python closure, which raises the right error or handles them.
 *     Writes and evictions are counted in `counters`.
 *
 * Clock: when the injected clock is time.monotonic itself, both read CLOCK_MONOTONIC
 * directly and convert it exactly as CPython does, instead of calling the function; the
 * reader first tries the cheaper CLOCK_MONOTONIC_COARSE (see reader_vectorcall).
 *
 * Thread safety: the reader takes no lock (one dict lookup and one list append are atomic
 * under the GIL; the entry is held by a new reference while the clock is read). The writer
 * holds the tier's lock across the whole update, as the Python closure does, because the
 * policy it calls may be Python code.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#ifndef STRATACACHE_SOURCE_SHA
#define STRATACACHE_SOURCE_SHA "unknown"
#endif
#include <math.h>
#include <stddef.h>
#include <structmember.h>

/* ------------------------------------------------------------------------ helpers */

static int
as_double(PyObject *obj, double *out)
{
    if (PyFloat_CheckExact(obj)) {
        *out = PyFloat_AS_DOUBLE(obj);
        return 0;
    }
    double d = PyFloat_AsDouble(obj);
    if (d == -1.0 && PyErr_Occurred())
        return -1;
    *out = d;
    return 0;
}

#if defined(__linux__)
#include <time.h>
#define HAVE_FAST_MONOTONIC 1
/* time.monotonic() on Linux: CLOCK_MONOTONIC in nanoseconds, then seconds as CPython's
 * _PyTime_AsSecondsDouble computes them (same branches, same rounding). */
static int
fast_monotonic(double *out)
{
    struct timespec ts;
    if (clock_gettime(CLOCK_MONOTONIC, &ts) != 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    long long ns = (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
    volatile double d;
    if (ns % 1000000000LL == 0)
        d = (double)(ns / 1000000000LL);
    else {
        d = (double)ns;
        d /= 1e9;
    }
    *out = d;
    return 0;
}
#else
#define HAVE_FAST_MONOTONIC 0
#endif

static PyObject *time_monotonic = NULL; /* time.monotonic, to recognise it */

static int
is_time_monotonic(PyObject *clock)
{
    return HAVE_FAST_MONOTONIC && time_monotonic != NULL && clock == time_monotonic;
}

static int
call_clock(PyObject *clock, double *out)
{
    PyObject *now = PyObject_CallNoArgs(clock);
    if (now == NULL)
        return -1;
    int rc = as_double(now, out);
    Py_DECREF(now);
    return rc;
}

static int
read_clock(PyObject *clock, int fast, double *out)
{
#if HAVE_FAST_MONOTONIC
    if (fast)
        return fast_monotonic(out);
#endif
    return call_clock(clock, out);
}

/* ------------------------------------------------------------------------ Lock */

typedef struct {
    PyObject_HEAD
    PyThread_type_lock lock;
    int held;
} Lock;

static void
lock_take(Lock *self)
{
    if (!PyThread_acquire_lock(self->lock, NOWAIT_LOCK)) {
        Py_BEGIN_ALLOW_THREADS
        PyThread_acquire_lock(self->lock, WAIT_LOCK);
        Py_END_ALLOW_THREADS
    }
    self->held = 1;
}

static int
lock_give(Lock *self)
{
    if (!self->held) {
        PyErr_SetString(PyExc_RuntimeError, "release unlocked lock");
        return -1;
    }
    self->held = 0;
    PyThread_release_lock(self->lock);
    return 0;
}

static PyObject *
lock_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    if (PyTuple_GET_SIZE(args) != 0 || (kwds != NULL && PyDict_GET_SIZE(kwds) != 0)) {
        PyErr_SetString(PyExc_TypeError, "Lock() takes no arguments");
        return NULL;
    }
    Lock *self = (Lock *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    self->lock = PyThread_allocate_lock();
    if (self->lock == NULL) {
        Py_DECREF(self);
        PyErr_SetString(PyExc_MemoryError, "cannot allocate a lock");
        return NULL;
    }
    self->held = 0;
    return (PyObject *)self;
}

static void
lock_dealloc(Lock *self)
{
    if (self->lock != NULL) {
        if (self->held)
            PyThread_release_lock(self->lock);
        PyThread_free_lock(self->lock);
    }
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
lock_acquire(Lock *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"blocking", "timeout", NULL};
    int blocking = 1;
    double timeout = -1;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|pd", kwlist, &blocking, &timeout))
        return NULL;
    if (timeout != -1) {
        PyErr_SetString(PyExc_ValueError, "this lock supports no timeout");
        return NULL;
    }
    if (!blocking) {
        if (!PyThread_acquire_lock(self->lock, NOWAIT_LOCK))
            Py_RETURN_FALSE;
        self->held = 1;
        Py_RETURN_TRUE;
    }
    lock_take(self);
    Py_RETURN_TRUE;
}

static PyObject *
lock_release(Lock *self, PyObject *Py_UNUSED(ignored))
{
    if (lock_give(self) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *
lock_enter(Lock *self, PyObject *Py_UNUSED(ignored))
{
    lock_take(self);
    Py_RETURN_TRUE;
}

static PyObject *
lock_exit(Lock *self, PyObject *args)
{
    if (lock_give(self) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *
lock_locked(Lock *self, PyObject *Py_UNUSED(ignored))
{
    return PyBool_FromLong(self->held);
}

static PyMethodDef lock_methods[] = {
    {"acquire", (PyCFunction)(void (*)(void))lock_acquire, METH_VARARGS | METH_KEYWORDS, NULL},
    {"release", (PyCFunction)lock_release, METH_NOARGS, NULL},
    {"locked", (PyCFunction)lock_locked, METH_NOARGS, NULL},
    {"__enter__", (PyCFunction)lock_enter, METH_NOARGS, NULL},
    {"__exit__", (PyCFunction)lock_exit, METH_VARARGS, NULL},
    {NULL},
};

static PyTypeObject LockType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "stratacache._speedups.Lock",
    .tp_basicsize = sizeof(Lock),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A mutex like threading.Lock that the C Writer can take directly.",
    .tp_new = lock_new,
    .tp_dealloc = (destructor)lock_dealloc,
    .tp_methods = lock_methods,
};

/* ------------------------------------------------------------------------ Counters */

typedef struct {
    PyObject_HEAD
    Py_ssize_t hits;
    Py_ssize_t misses;
    Py_ssize_t writes;
    Py_ssize_t evictions;
    Py_ssize_t errors;
    Py_ssize_t corrupt;
    Py_ssize_t too_large;
    Py_ssize_t unencodable;
} Counters;

#define COUNTER(name, doc) {#name, T_PYSSIZET, offsetof(Counters, name), 0, doc}
static PyMemberDef counters_members[] = {
    COUNTER(hits, "keys found"),
    COUNTER(misses, "keys not found"),
    COUNTER(writes, "entries stored"),
    COUNTER(evictions, "entries the policy evicted"),
    COUNTER(errors, "transient failures: the level was skipped"),
    COUNTER(corrupt, "payloads rejected as corrupt, foreign or forged"),
    COUNTER(too_large, "values not stored for exceeding the level's maximum"),
    COUNTER(unencodable, "values the level's serializer could not encode"),
    {NULL},
};
#undef COUNTER

static PyTypeObject CountersType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "stratacache._speedups.Counters",
    .tp_basicsize = sizeof(Counters),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE,
    .tp_doc = "One level's counters, shared by the C paths and Python code.",
    .tp_new = PyType_GenericNew,
    .tp_members = counters_members,
};

static Counters *
as_counters(PyObject *obj)
{
    if (!PyObject_TypeCheck(obj, &CountersType)) {
        PyErr_SetString(PyExc_TypeError, "counters must be a stratacache._speedups.Counters");
        return NULL;
    }
    return (Counters *)obj;
}

/* ------------------------------------------------------------------------ Reader */

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    PyObject *data;
    PyObject *clock;
    PyObject *buffer;
    Py_ssize_t limit;
    PyObject *drain;
    PyObject *slow;
    PyObject *missing;
    PyObject *negative; /* NULL unless plain misses are answered here */
    Counters *counters;
    Lock *c_lock;      /* the tier's lock when it is ours, NULL otherwise */
    PyObject *on_hits; /* the policy's on_hits, called directly with c_lock */
    int fast_clock;
} Reader;

/* The read buffer is full: replay it to the policy. The same as the tier's
 * drain_from_reader (see tiers/memory.py), without a Python call when the lock is ours:
 * drain if the lock is free, else leave it to the writer holding it, unless the buffer
 * has grown far past its size. */
static int
reader_drain(Reader *self)
{
    Lock *lock = self->c_lock;
    if (lock == NULL) {
        PyObject *r = PyObject_CallNoArgs(self->drain);
        if (r == NULL)
            return -1;
        Py_DECREF(r);
        return 0;
    }
    if (PyThread_acquire_lock(lock->lock, NOWAIT_LOCK))
        lock->held = 1;
    else if (PyList_GET_SIZE(self->buffer) < 16 * self->limit)
        return 0;
    else
        lock_take(lock);
    int rc = 0;
    Py_ssize_t n = PyList_GET_SIZE(self->buffer);
    if (n > 0) {
        /* Only the keys copied are cut: other threads may append meanwhile. */
        PyObject *batch = PyList_GetSlice(self->buffer, 0, n);
        if (batch == NULL || PyList_SetSlice(self->buffer, 0, n, NULL) < 0)
            rc = -1;
        else {
            PyObject *r = PyObject_CallOneArg(self->on_hits, batch);
            if (r == NULL)
                rc = -1;
            else
                Py_DECREF(r);
        }
        Py_XDECREF(batch);
    }
    lock->held = 0;
    PyThread_release_lock(lock->lock);
    return rc;
}

static PyObject *
reader_slow(Reader *self, PyObject *key, PyObject *dflt)
{
    PyObject *args[2] = {key, dflt};
    return PyObject_Vectorcall(self->slow, args, 2, NULL);
}

static PyObject *
reader_vectorcall(Reader *self, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    PyObject *key = nargs >= 1 ? args[0] : NULL;
    PyObject *dflt = nargs >= 2 ? args[1] : NULL;
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;

    if (nargs > 2) {
        PyErr_Format(PyExc_TypeError, "get() takes at most 2 arguments (%zd given)", nargs);
        return NULL;
    }
    /* Keywords, as the Python closure accepts them: get(key=..., default=...). */
    for (Py_ssize_t i = 0; i < nkw; i++) {
        PyObject *name = PyTuple_GET_ITEM(kwnames, i);
        PyObject **slot = NULL;
        if (PyUnicode_Check(name)) {
            if (PyUnicode_CompareWithASCIIString(name, "key") == 0)
                slot = &key;
            else if (PyUnicode_CompareWithASCIIString(name, "default") == 0)
                slot = &dflt;
        }
        if (slot == NULL) {
            PyErr_Format(PyExc_TypeError, "get() got an unexpected keyword argument %R", name);
            return NULL;
        }
        if (*slot != NULL) {
            PyErr_Format(PyExc_TypeError, "get() got multiple values for argument %R", name);
            return NULL;
        }
        *slot = args[nargs + i];
    }
    if (key == NULL) {
        PyErr_SetString(PyExc_TypeError, "get() missing required argument: 'key'");
        return NULL;
    }
    if (dflt == NULL)
        dflt = self->missing;

    PyObject *entry = PyDict_GetItemWithError(self->data, key); /* borrowed */
    if (entry == NULL) {
        if (PyErr_Occurred()) {
            if (!PyErr_ExceptionMatches(PyExc_TypeError))
                return NULL;
            PyErr_Clear(); /* unhashable: the slow path names the problem */
        }
        else if (self->negative != NULL && PyUnicode_CheckExact(key) &&
                 PyUnicode_GET_LENGTH(key) > 0) {
            /* L1 is the only source: absent from both dicts is a plain miss. */
            int remembered = PyDict_Contains(self->negative, key);
            if (remembered < 0)
                return NULL;
            if (!remembered) {
                self->counters->misses++;
                return Py_NewRef(dflt);
            }
        }
        return reader_slow(self, key, dflt);
    }
    if (!PyTuple_CheckExact(entry) || PyTuple_GET_SIZE(entry) < 2)
        return reader_slow(self, key, dflt);
    Py_INCREF(entry); /* the clock may run Python code that changes the dict */
    double now, expires;
    if (as_double(PyTuple_GET_ITEM(entry, 1), &expires) < 0) {
        Py_DECREF(entry);
        return NULL;
    }
    int alive = 0;
#if HAVE_FAST_MONOTONIC
    /* CLOCK_MONOTONIC_COARSE costs a few ns where CLOCK_MONOTONIC costs ~20, is never
     * ahead of it and lags it by at most one tick (a few ms): an expiry more than a second
     * past the coarse time is certainly later than the precise time. Only an entry that
     * close to its expiry pays for the precise read, so every answer is the same. */
    if (self->fast_clock) {
        struct timespec ts;
        if (clock_gettime(CLOCK_MONOTONIC_COARSE, &ts) == 0 &&
            expires > (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec + 1.0)
            alive = 1;
    }
#endif
    if (!alive) {
        if (read_clock(self->clock, self->fast_clock, &now) < 0) {
            Py_DECREF(entry);
            return NULL;
        }
        alive = expires > now;
    }
    if (alive) {
        PyObject *value = PyTuple_GET_ITEM(entry, 0);
        Py_INCREF(value);
        Py_DECREF(entry);
        self->counters->hits++;
        if (PyList_Append(self->buffer, key) < 0) {
            Py_DECREF(value);
            return NULL;
        }
        if (PyList_GET_SIZE(self->buffer) >= self->limit && reader_drain(self) < 0) {
            Py_DECREF(value);
            return NULL;
        }
        return value;
    }
    Py_DECREF(entry);
    return reader_slow(self, key, dflt);
}

static int
reader_init(Reader *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"data",     "clock",    "buffer", "limit",   "drain",
                             "slow",     "missing",  "counters", "negative", "lock",
                             "on_hits",  NULL};
    PyObject *data, *clock, *buffer, *drain, *slow, *missing, *counters, *negative = Py_None,
        *lock = Py_None, *on_hits = Py_None;
    Py_ssize_t limit;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!OO!nOOOO|OOO", kwlist, &PyDict_Type, &data,
                                     &clock, &PyList_Type, &buffer, &limit, &drain, &slow,
                                     &missing, &counters, &negative, &lock, &on_hits))
        return -1;
    if (as_counters(counters) == NULL)
        return -1;
    if (negative != Py_None && !PyDict_Check(negative)) {
        PyErr_SetString(PyExc_TypeError, "negative must be a dict or None");
        return -1;
    }
    if (limit < 1) {
        PyErr_SetString(PyExc_ValueError, "limit must be >= 1");
        return -1;
    }
    Py_XSETREF(self->data, Py_NewRef(data));
    Py_XSETREF(self->clock, Py_NewRef(clock));
    Py_XSETREF(self->buffer, Py_NewRef(buffer));
    Py_XSETREF(self->drain, Py_NewRef(drain));
    Py_XSETREF(self->slow, Py_NewRef(slow));
    Py_XSETREF(self->missing, Py_NewRef(missing));
    Py_XSETREF(self->negative, negative == Py_None ? NULL : Py_NewRef(negative));
    Py_XSETREF(self->counters, (Counters *)Py_NewRef(counters));
    int ours = PyObject_TypeCheck(lock, &LockType) && on_hits != Py_None;
    Py_XSETREF(self->c_lock, ours ? (Lock *)Py_NewRef(lock) : NULL);
    Py_XSETREF(self->on_hits, ours ? Py_NewRef(on_hits) : NULL);
    self->limit = limit;
    self->fast_clock = is_time_monotonic(clock);
    self->vectorcall = (vectorcallfunc)reader_vectorcall;
    return 0;
}

static int
reader_traverse(Reader *self, visitproc visit, void *arg)
{
    Py_VISIT(self->data);
    Py_VISIT(self->clock);
    Py_VISIT(self->buffer);
    Py_VISIT(self->drain);
    Py_VISIT(self->slow);
    Py_VISIT(self->missing);
    Py_VISIT(self->negative);
    Py_VISIT(self->counters);
    Py_VISIT(self->c_lock);
    Py_VISIT(self->on_hits);
    return 0;
}

static int
reader_clear(Reader *self)
{
    Py_CLEAR(self->data);
    Py_CLEAR(self->clock);
    Py_CLEAR(self->buffer);
    Py_CLEAR(self->drain);
    Py_CLEAR(self->slow);
    Py_CLEAR(self->missing);
    Py_CLEAR(self->negative);
    Py_CLEAR(self->counters);
    Py_CLEAR(self->c_lock);
    Py_CLEAR(self->on_hits);
    return 0;
}

static void
reader_dealloc(Reader *self)
{
    PyObject_GC_UnTrack(self);
    reader_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyTypeObject ReaderType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "stratacache._speedups.Reader",
    .tp_basicsize = sizeof(Reader),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_doc = "An L1 get(key, default=MISSING): hits in C, everything else to slow().",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)reader_init,
    .tp_dealloc = (destructor)reader_dealloc,
    .tp_traverse = (traverseproc)reader_traverse,
    .tp_clear = (inquiry)reader_clear,
    .tp_call = PyVectorcall_Call,
    .tp_vectorcall_offset = offsetof(Reader, vectorcall),
};

/* ------------------------------------------------------------------------ Writer */

typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    PyObject *data;
    PyObject *negative;
    PyObject *buffer;
    PyObject *drain;
    PyObject *on_insert;
    PyObject *on_update;
    PyObject *clock;
    PyObject *fallback;
    PyObject *one;
    Counters *counters;
    Lock *lock;       /* the tier's lock, taken without Python calls */
    int fast_clock;
    double level_ttl; /* < 0: the level has no ttl of its own */
} Writer;

/* Remove `key` from `dict`; 1 if it was there, 0 if not, -1 on error. */
static int
discard(PyObject *dict, PyObject *key)
{
    if (PyDict_DelItem(dict, key) == 0)
        return 1;
    if (PyErr_ExceptionMatches(PyExc_KeyError)) {
        PyErr_Clear();
        return 0;
    }
    return -1;
}

/* The part that runs under the lock. Returns 0, or -1 with an exception set. */
static int
writer_store(Writer *self, PyObject *key, PyObject *entry)
{
    if (PyList_GET_SIZE(self->buffer) > 0) {
        PyObject *r = PyObject_CallNoArgs(self->drain);
        if (r == NULL)
            return -1;
        Py_DECREF(r);
    }
    int resident = PyDict_Contains(self->data, key);
    if (resident == 0)
        resident = PyDict_Contains(self->negative, key);
    if (resident < 0)
        return -1;
    PyObject *call_args[2] = {key, self->one};
    PyObject *victims = PyObject_Vectorcall(resident ? self->on_update : self->on_insert,
                                            call_args, 2, NULL);
    if (victims == NULL)
        return -1;
    int rc = 0;
    if (resident) {
        int remembered = PyDict_Contains(self->negative, key);
        if (remembered < 0 || (remembered && PyDict_DelItem(self->negative, key) < 0))
            rc = -1;
    }
    if (rc == 0 && PyDict_SetItem(self->data, key, entry) < 0)
        rc = -1;
    if (rc == 0) {
        PyObject *seq = PySequence_Fast(victims, "a policy must return a list of victims");
        if (seq == NULL)
            rc = -1;
        else {
            Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
            PyObject **items = PySequence_Fast_ITEMS(seq);
            for (Py_ssize_t i = 0; i < n && rc == 0; i++) {
                PyObject *victim = items[i];
                int gone = discard(self->data, victim);
                if (gone == 0)
                    gone = discard(self->negative, victim);
                if (gone < 0) {
                    rc = -1;
                    break;
                }
                int same = PyObject_RichCompareBool(victim, key, Py_EQ);
                if (same < 0)
                    rc = -1;
                else if (!same)
                    self->counters->evictions++;
            }
            Py_DECREF(seq);
        }
    }
    Py_DECREF(victims);
    return rc;
}

static PyObject *
writer_vectorcall(Writer *self, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if (kwnames != NULL || nargs < 2 || nargs > 3)
        return PyObject_Vectorcall(self->fallback, args, nargsf, kwnames);
    PyObject *key = args[0], *value = args[1];
    PyObject *ttl = nargs == 3 ? args[2] : Py_None;
    if (!PyUnicode_CheckExact(key) || PyUnicode_GET_LENGTH(key) == 0)
        return PyObject_Vectorcall(self->fallback, args, nargsf, kwnames);

    double lifetime = self->level_ttl;
    if (ttl != Py_None) {
        double asked;
        if (PyFloat_CheckExact(ttl))
            asked = PyFloat_AS_DOUBLE(ttl);
        else if (PyLong_CheckExact(ttl)) {
            asked = PyLong_AsDouble(ttl);
            if (asked == -1.0 && PyErr_Occurred()) {
                PyErr_Clear();
                return PyObject_Vectorcall(self->fallback, args, nargsf, kwnames);
            }
        }
        else
            return PyObject_Vectorcall(self->fallback, args, nargsf, kwnames);
        if (!(asked > 0))
            return PyObject_Vectorcall(self->fallback, args, nargsf, kwnames);
        if (lifetime < 0 || asked < lifetime)
            lifetime = asked;
    }
    double expires = INFINITY;
    if (lifetime >= 0) {
        double now;
        if (read_clock(self->clock, self->fast_clock, &now) < 0)
            return NULL;
        expires = now + lifetime;
    }
    PyObject *expiry = PyFloat_FromDouble(expires);
    if (expiry == NULL)
        return NULL;
    PyObject *entry = PyTuple_Pack(2, value, expiry);
    Py_DECREF(expiry);
    if (entry == NULL)
        return NULL;

    lock_take(self->lock);
    int stored = writer_store(self, key, entry);
    Py_DECREF(entry);
    self->lock->held = 0;
    PyThread_release_lock(self->lock->lock);
    if (stored < 0)
        return NULL;
    self->counters->writes++;
    Py_RETURN_NONE;
}

static int
writer_init(Writer *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"data",      "negative", "lock",     "buffer",
                             "drain",     "on_insert", "on_update", "clock",
                             "level_ttl", "fallback", "counters",  NULL};
    PyObject *data, *negative, *lock, *buffer, *drain, *on_insert, *on_update, *clock, *ttl,
        *fallback, *counters;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!O!O!O!OOOOOOO", kwlist, &PyDict_Type, &data,
                                     &PyDict_Type, &negative, &LockType, &lock, &PyList_Type,
                                     &buffer, &drain, &on_insert, &on_update, &clock, &ttl,
                                     &fallback, &counters))
        return -1;
    if (as_counters(counters) == NULL)
        return -1;
    double level_ttl = -1.0;
    if (ttl != Py_None) {
        if (as_double(ttl, &level_ttl) < 0)
            return -1;
        if (!(level_ttl > 0)) {
            PyErr_SetString(PyExc_ValueError, "level_ttl must be > 0 or None");
            return -1;
        }
    }
    Py_XSETREF(self->data, Py_NewRef(data));
    Py_XSETREF(self->negative, Py_NewRef(negative));
    Py_XSETREF(self->buffer, Py_NewRef(buffer));
    Py_XSETREF(self->drain, Py_NewRef(drain));
    Py_XSETREF(self->on_insert, Py_NewRef(on_insert));
    Py_XSETREF(self->on_update, Py_NewRef(on_update));
    Py_XSETREF(self->clock, Py_NewRef(clock));
    Py_XSETREF(self->fallback, Py_NewRef(fallback));
    Py_XSETREF(self->counters, (Counters *)Py_NewRef(counters));
    Py_XSETREF(self->lock, (Lock *)Py_NewRef(lock));
    self->fast_clock = is_time_monotonic(clock);
    Py_XSETREF(self->one, PyLong_FromLong(1));
    if (self->one == NULL)
        return -1;
    self->level_ttl = level_ttl;
    self->vectorcall = (vectorcallfunc)writer_vectorcall;
    return 0;
}

static int
writer_traverse(Writer *self, visitproc visit, void *arg)
{
    Py_VISIT(self->data);
    Py_VISIT(self->negative);
    Py_VISIT(self->buffer);
    Py_VISIT(self->drain);
    Py_VISIT(self->on_insert);
    Py_VISIT(self->on_update);
    Py_VISIT(self->clock);
    Py_VISIT(self->fallback);
    Py_VISIT(self->counters);
    Py_VISIT(self->lock);
    return 0;
}

static int
writer_clear(Writer *self)
{
    Py_CLEAR(self->data);
    Py_CLEAR(self->negative);
    Py_CLEAR(self->buffer);
    Py_CLEAR(self->drain);
    Py_CLEAR(self->on_insert);
    Py_CLEAR(self->on_update);
    Py_CLEAR(self->clock);
    Py_CLEAR(self->fallback);
    Py_CLEAR(self->one);
    Py_CLEAR(self->counters);
    Py_CLEAR(self->lock);
    return 0;
}

static void
writer_dealloc(Writer *self)
{
    PyObject_GC_UnTrack(self);
    writer_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyTypeObject WriterType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "stratacache._speedups.Writer",
    .tp_basicsize = sizeof(Writer),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_doc = "An L1-only put(key, value, ttl=None); unusual calls go to the Python fallback.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)writer_init,
    .tp_dealloc = (destructor)writer_dealloc,
    .tp_traverse = (traverseproc)writer_traverse,
    .tp_clear = (inquiry)writer_clear,
    .tp_call = PyVectorcall_Call,
    .tp_vectorcall_offset = offsetof(Writer, vectorcall),
};

/* ------------------------------------------------------------------------ module */

static struct PyModuleDef speedups_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "stratacache._speedups",
    .m_doc = "Optional C versions of the L1 tier's hit and write paths.",
    .m_size = -1,
};

PyMODINIT_FUNC
PyInit__speedups(void)
{
    if (PyType_Ready(&ReaderType) < 0 || PyType_Ready(&WriterType) < 0 ||
        PyType_Ready(&LockType) < 0 || PyType_Ready(&CountersType) < 0)
        return NULL;
    PyObject *time_module = PyImport_ImportModule("time");
    if (time_module == NULL)
        return NULL;
    time_monotonic = PyObject_GetAttrString(time_module, "monotonic");
    Py_DECREF(time_module);
    if (time_monotonic == NULL)
        return NULL;
    PyObject *m = PyModule_Create(&speedups_module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddObjectRef(m, "Reader", (PyObject *)&ReaderType) < 0 ||
        PyModule_AddObjectRef(m, "Writer", (PyObject *)&WriterType) < 0 ||
        PyModule_AddObjectRef(m, "Lock", (PyObject *)&LockType) < 0 ||
        PyModule_AddObjectRef(m, "Counters", (PyObject *)&CountersType) < 0 ||
        PyModule_AddStringConstant(m, "__source_sha__", STRATACACHE_SOURCE_SHA) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
