/*
 * stratacache._cpolicies: the default policy (W-TinyLFU) and LRU, compiled.
 *
 * What this mirrors. policies/wtinylfu.py (with its frequency sketch, policies/sketch.py)
 * and policies/lru.py, line for line. Those modules hold the algorithms and their
 * rationale; read them first. This file adds no idea of its own: it is the same state
 * machine with the interpreter's cost removed (about 0.65 us per hit and 2 us per insert
 * in Python, a few tens of nanoseconds here), because an L1 store's every write and every
 * batch of hits goes through the policy. policies/__init__.py hands these classes out
 * from make_policy() when this module is built and STRATACACHE_PURE_PYTHON is not set.
 *
 * Why the decisions are identical, not merely similar. The victims a policy returns, in
 * their order, the admissions and the window's walk are functions of the event sequence,
 * of hash(key) and of the random stream, and this file reproduces each of them exactly:
 *
 *   - Hashes are PyObject_Hash, i.e. hash(key), computed once per call and kept in the
 *     key's node (Python recomputes hash(key) for each sketch access; for any key whose
 *     hash is a function of its value that is the same number).
 *   - The sketch's arithmetic is Python's, done in uint64_t: the Python code masks every
 *     product to 64 bits, and the low 64 bits of a product or xor depend only on the low
 *     64 bits of the operands (Python's infinite two's complement for a negative hash
 *     agrees with the C cast). Indexes, the doorkeeper's period numbers, the halving
 *     and the wrap after 255 periods follow sketch.py statement by statement.
 *   - Segments are doubly linked lists in the insertion order an OrderedDict keeps:
 *     `d[k] = v` for a new key appends, `move_to_end` moves to the tail,
 *     `popitem(last=False)` takes the head. Every loop pops in the same order.
 *   - Float arithmetic happens where Python does it, in the same order and with the same
 *     conversions: int * float converts the int to a double first, int / int of values
 *     below 2**53 is the correctly rounded double quotient, int() truncates toward zero,
 *     round() rounds half to even.
 *   - The hash-flooding jitter draws from random.Random(seed) exactly when the Python code
 *     does (a warm candidate losing its duel, rare: none on a 600k-request Zipf trace).
 *     Rather than call back into Python in the middle of an eviction, the generator is
 *     reproduced here: Random(seed).getstate() gives the Mersenne Twister's 624 words at
 *     construction, and getrandbits(7) is the top 7 bits of the next tempered 32-bit
 *     output, as in CPython's _randommodule.c. clear() keeps the stream, as in Python.
 *
 * Differences, on purpose and outside the protocol: weights must be ints (Python would
 * also take floats) and not negative; the capacity must be at most 2**61 (make_policy
 * falls back to the Python class above that); a call with an invalid weight may raise
 * before, rather than after, the events Python would have recorded first. Even the key
 * objects agree: where Python re-inserts an entry under the requested (equal) key object,
 * on a promotion to protected, so does this code, so victims are the very same objects.
 * tests/unit/test_cpolicies.py replays random and adversarial traces through both
 * implementations and compares every return value and, periodically, every list and
 * every sketch counter.
 *
 * Speed, measured (2-core shared VM, OLTP at 1% of its keys): W-TinyLFU replays about 11M
 * requests/s against 0.31M for the Python class (16M and 0.49M before the adaptive aging
 * added a second sketch); on a 10k-entry L1 a batch of hits costs
 * tens of nanoseconds per key and an insert with its duel about 100 ns, most of it memory
 * traffic (a table probe, the sketch's counters and doorkeeper bytes).
 *
 * Data structures. One open-addressing table (linear probing, backward-shift deletion, a
 * Fibonacci multiply of the hash for the home slot, each slot keeping its node's hash so
 * that probes touch no node) maps every key the policy remembers to its node, at most half
 * full; a node lives in exactly one list: window, probation, protected,
 * or (keys that recently left, remembered without values by the "shadow" adaptation)
 * window shadow or main shadow. A key cannot be resident and shadowed at once (an insert
 * consults and drops the shadow entry first), so one lookup answers "resident?", "where?"
 * and "recently evicted, through which side?".
 *
 * GIL and thread safety. Every method runs with the GIL held and, for keys whose equality
 * is computed in C (exact str, int, float, bytes), never runs Python code, so each call is
 * atomic with respect to other threads, as OrderedDict-based Python policies are per
 * operation. The only Python code a call can run is a key's __hash__ and a non-int
 * weight's __index__ (both before any state is touched), a released key's __del__ (after
 * the state is complete, see below) and __eq__ during a lookup: the table has a version
 * counter, bumped by every
 * insertion, deletion and resize, and a lookup whose comparison changed it starts over
 * (the same defence dict uses). The adaptive aging's disputes (a second table and list, in
 * their own Core) are looked up by key too, but only where the policy's state is complete:
 * a hit or an insert settles its key after its own moves (Python settles at the increment;
 * nothing those moves do depends on the outcome), and an eviction notes its disagreements
 * and enters them once its loop is over, in the order Python enters them, which makes the
 * same disputes. Nothing else is looked up by key: evictions, moves and
 * removals of known nodes compare pointers only. Keys dropped in the middle of an
 * operation (shadow entries trimmed, a re-requested key's shadow entry) are not released
 * there, since releasing the last reference can run a __del__ that re-enters the policy:
 * they are parked and released when the operation's state is complete. The store calls
 * policies under its own lock anyway; this only keeps a misbehaving key from corrupting
 * memory. Policies hold keys, so both types support the cyclic GC.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#ifndef STRATACACHE_SOURCE_SHA
#define STRATACACHE_SOURCE_SHA "unknown"
#endif
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* ============================================================ constants (as in Python) */

#define MIX 0xBF58476D1CE4E5B9ULL
#define GOLDEN 0x9E3779B97F4A7C15ULL
#define MAX_COUNT 15
#define LAST_PERIOD 255
#define SKETCH_DEPTH 4

#define PERCENT_WINDOW 0.01
#define PERCENT_MAIN_PROTECTED 0.80
#define STEP_PERCENT 0.0625
#define STEP_DECAY 0.98
#define RESTART_THRESHOLD 0.05
#define CLIMB_SAMPLE_FACTOR 10
#define SHADOW_PERCENT 0.05
#define SHADOW_MIN_ENTRIES 2
#define SHADOW_STEP_DIVISOR 128
#define SKETCH_SAMPLE_FACTOR 20
#define HASHDOS_THRESHOLD 6
#define DISPUTES_DIVISOR 4
#define DISPUTES_MINIMUM 16
#define TRUST_KEEP (1.0 - 1.0 / 256.0)
#define INITIAL_SKETCH_ENTRIES (1LL << 16)

/* Above this capacity the sums of weights could overflow 64 bits. */
#define MAX_CAPACITY (1LL << 61)

/* ============================================================ argument helpers */

/* Positional-or-keyword arguments of a METH_FASTCALL | METH_KEYWORDS method. */
static int
parse_args(const char *fname, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames,
           const char *const *names, Py_ssize_t nnames, Py_ssize_t nrequired, PyObject **out)
{
    Py_ssize_t i, j;
    for (i = 0; i < nnames; i++)
        out[i] = NULL;
    if (nargs > nnames) {
        PyErr_Format(PyExc_TypeError, "%s() takes at most %zd arguments (%zd given)", fname,
                     nnames, nargs);
        return -1;
    }
    for (i = 0; i < nargs; i++)
        out[i] = args[i];
    if (kwnames != NULL) {
        Py_ssize_t nkw = PyTuple_GET_SIZE(kwnames);
        for (i = 0; i < nkw; i++) {
            PyObject *name = PyTuple_GET_ITEM(kwnames, i);
            for (j = 0; j < nnames; j++) {
                if (PyUnicode_CompareWithASCIIString(name, names[j]) == 0)
                    break;
            }
            if (j == nnames) {
                PyErr_Format(PyExc_TypeError, "%s() got an unexpected keyword argument '%U'",
                             fname, name);
                return -1;
            }
            if (out[j] != NULL) {
                PyErr_Format(PyExc_TypeError, "%s() got multiple values for argument '%s'",
                             fname, names[j]);
                return -1;
            }
            out[j] = args[nargs + i];
        }
    }
    for (i = 0; i < nrequired; i++) {
        if (out[i] == NULL) {
            PyErr_Format(PyExc_TypeError, "%s() missing required argument '%s'", fname,
                         names[i]);
            return -1;
        }
    }
    return 0;
}

/* A weight: an int, not negative. Values too large for 64 bits saturate (they are only
 * ever compared with the capacity, and lose). */
static int
as_weight(PyObject *obj, long long *out)
{
    int overflow = 0;
    long long value;
    if (PyLong_CheckExact(obj)) {
        value = PyLong_AsLongLongAndOverflow(obj, &overflow);
    }
    else {
        PyObject *index = PyNumber_Index(obj);
        if (index == NULL)
            return -1;
        value = PyLong_AsLongLongAndOverflow(index, &overflow);
        Py_DECREF(index);
    }
    if (value == -1 && PyErr_Occurred())
        return -1;
    if (overflow > 0) {
        *out = LLONG_MAX;
        return 0;
    }
    if (overflow < 0 || value < 0) {
        PyErr_Format(PyExc_ValueError, "weight must be a non-negative int, got %R", obj);
        return -1;
    }
    *out = value;
    return 0;
}

/* A type's __name__ (tp_name after its last dot). */
static const char *
short_type_name(PyTypeObject *type)
{
    const char *dot = strrchr(type->tp_name, '.');
    return dot ? dot + 1 : type->tp_name;
}

/* A getset's closure naming the field its getter reads: one getter then serves every
 * attribute of that kind, in every type here. */
#define FIELD(type, field) ((void *)offsetof(type, field))

static PyObject *
get_long_long(PyObject *self, void *field)
{
    return PyLong_FromLongLong(*(long long *)((char *)self + (size_t)field));
}

/* A reference field that may be NULL, read as None. */
static PyObject *
get_object_or_none(PyObject *self, void *field)
{
    PyObject *value = *(PyObject **)((char *)self + (size_t)field);
    return Py_NewRef(value != NULL ? value : Py_None);
}

/* The capacity check of PolicyBase.__init__, then our own upper bound. */
static int
as_capacity(PyTypeObject *type, PyObject *obj, long long *out)
{
    int overflow = 0;
    long long value = 0;
    if (PyLong_Check(obj) && !PyBool_Check(obj)) {
        value = PyLong_AsLongLongAndOverflow(obj, &overflow);
        if (value == -1 && PyErr_Occurred())
            return -1;
    }
    if (!PyLong_Check(obj) || PyBool_Check(obj) || overflow < 0 || (!overflow && value < 1)) {
        PyErr_Format(PyExc_ValueError, "%s: capacity must be a positive int, got %R",
                     short_type_name(type), obj);
        return -1;
    }
    if (overflow > 0 || value > MAX_CAPACITY) {
        PyErr_Format(PyExc_OverflowError,
                     "%s: the compiled policy takes capacities up to 2**61, got %R",
                     short_type_name(type), obj);
        return -1;
    }
    *out = value;
    return 0;
}

/* Python's round() of a float: half to even. */
static double
round_half_even(double x)
{
    double rounded = round(x);
    if (fabs(x - rounded) == 0.5)
        rounded = 2.0 * round(x / 2.0);
    return rounded;
}

/* Python's floor division for a non-negative dividend and a positive divisor. */
static inline long long
floor_div(long long a, long long b)
{
    long long q = a / b;
    if ((a % b != 0) && ((a < 0) != (b < 0)))
        q -= 1;
    return q;
}

static inline uint64_t
ceil_pow2(uint64_t n)
{
    if (n <= 1)
        return 1;
    return 1ULL << (64 - __builtin_clzll(n - 1));
}

static inline int
log2_exact(uint64_t n)
{
    return 63 - __builtin_clzll(n);
}

/* hash(key). A str caches its hash in the object: read it directly, as dict does. */
static inline Py_hash_t
key_hash(PyObject *key)
{
    if (PyUnicode_CheckExact(key)) {
        Py_hash_t hash = ((PyASCIIObject *)key)->hash;
        if (hash != -1)
            return hash;
    }
    return PyObject_Hash(key);
}

/* ============================================================ the frequency sketch */

typedef struct {
    PyObject_HEAD
    long long capacity;
    long long counters_per_entry;
    long long sample_factor;
    int use_doorkeeper;
    int conservative;
    uint64_t seed;
    uint8_t *table;
    uint64_t width;
    uint64_t mask;
    int shift;
    uint8_t *doorkeeper;
    uint64_t dk_slots;
    uint64_t dk_mask;
    int dk_shift;
    long long size;
    int period;
    long long sample_size;
} Sketch;

static PyTypeObject SketchType;

static inline uint64_t
sketch_mix(const Sketch *s, Py_hash_t hash)
{
    return (((uint64_t)hash) ^ s->seed) * MIX;
}

/* FrequencySketch.ensure_capacity. Allocates before changing anything. */
static int
sketch_ensure_capacity(Sketch *s, long long capacity)
{
    if (capacity <= s->capacity)
        return 0;
    long long counters, sample_size, twice;
    if (__builtin_mul_overflow(capacity, s->counters_per_entry, &counters) ||
        __builtin_mul_overflow(s->sample_factor, capacity, &sample_size) ||
        __builtin_mul_overflow(sample_size, 2LL, &twice) || counters / SKETCH_DEPTH > (1LL << 56) ||
        twice > (1LL << 56)) {
        PyErr_SetString(PyExc_OverflowError, "FrequencySketch: capacity too large");
        return -1;
    }
    uint64_t width = ceil_pow2((uint64_t)(counters / SKETCH_DEPTH));
    if (width < 16)
        width = 16;
    uint64_t slots = 1;
    if (s->use_doorkeeper)
        slots = ceil_pow2((uint64_t)(twice > 64 ? twice : 64));
    uint8_t *table = PyMem_Calloc((size_t)width, SKETCH_DEPTH);
    uint8_t *dk = PyMem_Calloc((size_t)slots, 1);
    if (table == NULL || dk == NULL) {
        PyMem_Free(table);
        PyMem_Free(dk);
        PyErr_NoMemory();
        return -1;
    }
    PyMem_Free(s->table);
    PyMem_Free(s->doorkeeper);
    s->capacity = capacity;
    s->width = width;
    s->mask = width - 1;
    s->shift = 64 - log2_exact(width);
    s->table = table;
    s->sample_size = sample_size;
    s->doorkeeper = dk;
    s->dk_slots = slots;
    s->dk_mask = slots - 1;
    s->dk_shift = 64 - log2_exact(slots);
    s->size = 0;
    s->period = 1;
    return 0;
}

static void
sketch_clear(Sketch *s)
{
    memset(s->table, 0, (size_t)(s->width * SKETCH_DEPTH));
    memset(s->doorkeeper, 0, (size_t)s->dk_slots);
    s->size = 0;
    s->period = 1;
}

static int
sketch_frequency(const Sketch *s, uint64_t h)
{
    const uint8_t *table = s->table;
    uint64_t mask = s->mask, width = s->width;
    uint64_t index = h >> s->shift;
    uint64_t step = ((h >> 20) & mask) | 1;
    int count = table[index];
    index = (index + step) & mask;
    int value = table[width + index];
    if (value < count)
        count = value;
    index = (index + step) & mask;
    value = table[2 * width + index];
    if (value < count)
        count = value;
    index = (index + step) & mask;
    value = table[3 * width + index];
    if (value < count)
        count = value;
    if (s->use_doorkeeper) {
        const uint8_t *dk = s->doorkeeper;
        int lowest = s->period - 1;
        if (lowest == 0)
            lowest = 1;
        if (dk[(h >> 5) & s->dk_mask] >= lowest && dk[h >> s->dk_shift] >= lowest)
            count += 1;
    }
    return count;
}

static void
sketch_reset(Sketch *s)
{
    uint64_t n = s->width * SKETCH_DEPTH, i;
    uint8_t *table = s->table;
    /* Counters are at most 15, so halving eight at a time cannot borrow across bytes once
     * each byte's low bit is masked off after the shift. */
    for (i = 0; i + 8 <= n; i += 8) {
        uint64_t word;
        memcpy(&word, table + i, 8);
        word = (word >> 1) & 0x7F7F7F7F7F7F7F7FULL;
        memcpy(table + i, &word, 8);
    }
    for (; i < n; i++)
        table[i] >>= 1;
    s->size /= 2;
    if (!s->use_doorkeeper)
        return;
    if (s->period < LAST_PERIOD) {
        s->period += 1;
        return;
    }
    uint8_t *dk = s->doorkeeper;
    for (i = 0; i < s->dk_slots; i++)
        dk[i] = dk[i] == LAST_PERIOD ? 1 : 0;
    s->period = 2;
}

static void
sketch_increment(Sketch *s, uint64_t h)
{
    s->size += 1;
    if (s->use_doorkeeper) {
        uint8_t *dk = s->doorkeeper;
        uint8_t period = (uint8_t)s->period;
        uint64_t first = (h >> 5) & s->dk_mask;
        uint64_t second = h >> s->dk_shift;
        if (dk[first] != period || dk[second] != period) {
            dk[first] = period;
            dk[second] = period;
            if (s->size >= s->sample_size)
                sketch_reset(s);
            return;
        }
    }
    uint8_t *table = s->table;
    uint64_t mask = s->mask, width = s->width;
    uint64_t i0 = h >> s->shift;
    uint64_t step = ((h >> 20) & mask) | 1;
    uint64_t i1 = (i0 + step) & mask;
    uint64_t i2 = (i1 + step) & mask;
    uint64_t i3 = 3 * width + ((i2 + step) & mask);
    i1 += width;
    i2 += 2 * width;
    uint8_t c0 = table[i0], c1 = table[i1], c2 = table[i2], c3 = table[i3];
    if (s->conservative) {
        uint8_t low = c0;
        if (c1 < low)
            low = c1;
        if (c2 < low)
            low = c2;
        if (c3 < low)
            low = c3;
        if (low < MAX_COUNT) {
            low += 1;
            if (c0 < low)
                table[i0] = low;
            if (c1 < low)
                table[i1] = low;
            if (c2 < low)
                table[i2] = low;
            if (c3 < low)
                table[i3] = low;
        }
    }
    else {
        if (c0 < MAX_COUNT)
            table[i0] = c0 + 1;
        if (c1 < MAX_COUNT)
            table[i1] = c1 + 1;
        if (c2 < MAX_COUNT)
            table[i2] = c2 + 1;
        if (c3 < MAX_COUNT)
            table[i3] = c3 + 1;
    }
    if (s->size >= s->sample_size)
        sketch_reset(s);
}

/* A new sketch object; the C policy owns one and hands it out as `policy.sketch`. */
static Sketch *
sketch_create(long long capacity, long long counters_per_entry, long long sample_factor,
              int doorkeeper, int conservative, uint64_t seed_mod64)
{
    if (capacity < 1) {
        PyErr_Format(PyExc_ValueError, "FrequencySketch: capacity must be >= 1, got %lld",
                     capacity);
        return NULL;
    }
    if (counters_per_entry < 1 || sample_factor < 1) {
        PyErr_SetString(PyExc_ValueError,
                        "FrequencySketch: counters_per_entry and sample_factor must be >= 1");
        return NULL;
    }
    Sketch *s = PyObject_New(Sketch, &SketchType);
    if (s == NULL)
        return NULL;
    s->capacity = 0;
    s->counters_per_entry = counters_per_entry;
    s->sample_factor = sample_factor;
    s->use_doorkeeper = doorkeeper;
    s->conservative = conservative;
    s->seed = seed_mod64 * GOLDEN + GOLDEN;
    s->table = NULL;
    s->doorkeeper = NULL;
    s->width = s->mask = s->dk_slots = s->dk_mask = 0;
    s->shift = s->dk_shift = 0;
    s->size = 0;
    s->period = 1;
    s->sample_size = 0;
    if (sketch_ensure_capacity(s, capacity) < 0) {
        Py_DECREF(s);
        return NULL;
    }
    return s;
}

static int
as_long_long_index(PyObject *obj, long long *out)
{
    PyObject *index = PyNumber_Index(obj);
    if (index == NULL)
        return -1;
    long long value = PyLong_AsLongLong(index);
    Py_DECREF(index);
    if (value == -1 && PyErr_Occurred())
        return -1;
    *out = value;
    return 0;
}

static int
as_seed(PyObject *obj, uint64_t *out)
{
    unsigned long long value = PyLong_AsUnsignedLongLongMask(obj);
    if (value == (unsigned long long)-1 && PyErr_Occurred())
        return -1;
    *out = (uint64_t)value;
    return 0;
}

/* A sketch's two switches (doorkeeper, conservative update) as C ints: -1 with the error
 * set when either object's truth cannot be told. */
static int
as_switches(PyObject *doorkeeper, PyObject *conservative, int *dk, int *cons)
{
    *dk = PyObject_IsTrue(doorkeeper);
    if (*dk < 0)
        return -1;
    *cons = PyObject_IsTrue(conservative);
    return *cons < 0 ? -1 : 0;
}

static PyObject *
Sketch_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"capacity", "counters_per_entry", "sample_factor", "doorkeeper",
                             "conservative", "seed", NULL};
    PyObject *capacity_obj, *cpe_obj = NULL, *sf_obj = NULL, *dk_obj = Py_True,
                            *cons_obj = Py_True, *seed_obj = NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O|$OOOOO:FrequencySketch", kwlist,
                                     &capacity_obj, &cpe_obj, &sf_obj, &dk_obj, &cons_obj,
                                     &seed_obj))
        return NULL;
    long long capacity, cpe = 16, sf = 10;
    uint64_t seed = 0;
    if (as_long_long_index(capacity_obj, &capacity) < 0)
        return NULL;
    if (cpe_obj != NULL && as_long_long_index(cpe_obj, &cpe) < 0)
        return NULL;
    if (sf_obj != NULL && as_long_long_index(sf_obj, &sf) < 0)
        return NULL;
    if (seed_obj != NULL && as_seed(seed_obj, &seed) < 0)
        return NULL;
    int dk, cons;
    if (as_switches(dk_obj, cons_obj, &dk, &cons) < 0)
        return NULL;
    (void)type;
    return (PyObject *)sketch_create(capacity, cpe, sf, dk, cons, seed);
}

static void
Sketch_dealloc(Sketch *s)
{
    PyMem_Free(s->table);
    PyMem_Free(s->doorkeeper);
    Py_TYPE(s)->tp_free((PyObject *)s);
}

static PyObject *
Sketch_frequency(Sketch *s, PyObject *key)
{
    Py_hash_t hash = key_hash(key);
    if (hash == -1)
        return NULL;
    return PyLong_FromLong(sketch_frequency(s, sketch_mix(s, hash)));
}

static PyObject *
Sketch_increment(Sketch *s, PyObject *key)
{
    Py_hash_t hash = key_hash(key);
    if (hash == -1)
        return NULL;
    sketch_increment(s, sketch_mix(s, hash));
    Py_RETURN_NONE;
}

static PyObject *
Sketch_ensure_capacity(Sketch *s, PyObject *arg)
{
    int overflow = 0;
    PyObject *index = PyNumber_Index(arg);
    if (index == NULL)
        return NULL;
    long long capacity = PyLong_AsLongLongAndOverflow(index, &overflow);
    Py_DECREF(index);
    if (capacity == -1 && PyErr_Occurred())
        return NULL;
    if (overflow < 0)
        Py_RETURN_NONE;
    if (overflow > 0) {
        PyErr_SetString(PyExc_OverflowError, "FrequencySketch: capacity too large");
        return NULL;
    }
    if (sketch_ensure_capacity(s, capacity) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *
Sketch_clear(Sketch *s, PyObject *Py_UNUSED(ignored))
{
    sketch_clear(s);
    Py_RETURN_NONE;
}

static PyObject *
Sketch_get_table(Sketch *s, void *Py_UNUSED(closure))
{
    return PyBytes_FromStringAndSize((const char *)s->table,
                                     (Py_ssize_t)(s->width * SKETCH_DEPTH));
}

static PyMethodDef Sketch_methods[] = {
    {"frequency", (PyCFunction)Sketch_frequency, METH_O,
     "The estimated number of recent requests for key (0 to MAX_COUNT + 1)."},
    {"increment", (PyCFunction)Sketch_increment, METH_O, "Record one request for key."},
    {"ensure_capacity", (PyCFunction)Sketch_ensure_capacity, METH_O,
     "Resize for a cache of capacity entries if that is more than the current sizing."},
    {"clear", (PyCFunction)Sketch_clear, METH_NOARGS, "Forget every count."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Sketch_getset[] = {
    {"capacity", get_long_long, NULL, "Entries the table is sized for.",
     FIELD(Sketch, capacity)},
    {"sample_size", get_long_long, NULL, "Increments between halvings.",
     FIELD(Sketch, sample_size)},
    {"_table", (getter)Sketch_get_table, NULL, "A copy of the counters (for tests).", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject SketchType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "stratacache._cpolicies.FrequencySketch",
    .tp_doc = "policies.sketch.FrequencySketch, compiled (same counts for the same keys).",
    .tp_basicsize = sizeof(Sketch),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = Sketch_new,
    .tp_dealloc = (destructor)Sketch_dealloc,
    .tp_methods = Sketch_methods,
    .tp_getset = Sketch_getset,
};

/* ============================================================ nodes, lists, the table */

enum {
    SEG_WINDOW = 0,
    SEG_PROBATION = 1,
    SEG_PROTECTED = 2,
    SEG_WSHADOW = 3,
    SEG_MSHADOW = 4,
    SEG_COUNT = 5,
};
/* LRU uses one list, SEG_WINDOW. A node with seg < SEG_WSHADOW is resident. */

typedef struct Node {
    struct Node *prev;
    struct Node *next;
    PyObject *key; /* a strong reference */
    Py_hash_t hash;
    long long weight;
    int seg;
} Node;

/* Lists are circular with a sentinel: head.next is the oldest (LRU) node, head.prev the
 * newest; the order is an OrderedDict's. */
static inline void
list_init(Node *head)
{
    head->next = head->prev = head;
    head->key = NULL;
}

static inline int
list_empty(const Node *head)
{
    return head->next == head;
}

static inline void
node_unlink(Node *n)
{
    n->prev->next = n->next;
    n->next->prev = n->prev;
}

static inline void
list_append(Node *head, Node *n)
{
    n->prev = head->prev;
    n->next = head;
    head->prev->next = n;
    head->prev = n;
}

static inline void
list_move_to_end(Node *head, Node *n)
{
    if (head->prev != n) {
        node_unlink(n);
        list_append(head, n);
    }
}

/* A slot keeps the node's hash beside the pointer: probing compares hashes and computes
 * home slots without touching the nodes (a cache miss each). */
typedef struct {
    Py_hash_t hash;
    Node *node; /* NULL: empty */
} Slot;

typedef struct {
    Slot *slots;
    uint64_t mask;
    int shift;
    Py_ssize_t used;
    uint64_t version;
} Table;

#define TABLE_MIN_SIZE 16

static inline uint64_t
table_home(const Table *t, Py_hash_t hash)
{
    return ((uint64_t)hash * GOLDEN) >> t->shift;
}

static int
table_init(Table *t, uint64_t size)
{
    Slot *slots = PyMem_Calloc((size_t)size, sizeof(Slot));
    if (slots == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    t->slots = slots;
    t->mask = size - 1;
    t->shift = 64 - log2_exact(size);
    t->used = 0;
    t->version++;
    return 0;
}

static int
table_resize(Table *t, uint64_t size)
{
    Slot *old = t->slots;
    uint64_t old_size = t->mask + 1, i;
    Py_ssize_t used = t->used;
    if (table_init(t, size) < 0) /* leaves the table as it was */
        return -1;
    t->used = used;
    Slot *slots = t->slots;
    for (i = 0; i < old_size; i++) {
        if (old[i].node != NULL) {
            uint64_t j = table_home(t, old[i].hash);
            while (slots[j].node != NULL)
                j = (j + 1) & t->mask;
            slots[j] = old[i];
        }
    }
    PyMem_Free(old);
    t->version++;
    return 0;
}

/* Make room for `extra` more nodes, so that the insertions that follow cannot fail.
 * The load stays at most one half. */
static int
table_reserve(Table *t, Py_ssize_t extra)
{
    uint64_t size = t->mask + 1;
    if ((uint64_t)(t->used + extra) * 2 <= size)
        return 0;
    while ((uint64_t)(t->used + extra) * 2 > size)
        size *= 2;
    return table_resize(t, size);
}

/* Insert a node whose key is known to be absent (call table_reserve first). */
static void
table_insert_new(Table *t, Node *n)
{
    uint64_t i = table_home(t, n->hash);
    while (t->slots[i].node != NULL)
        i = (i + 1) & t->mask;
    t->slots[i].hash = n->hash;
    t->slots[i].node = n;
    t->used++;
    t->version++;
}

/* Unlink a node from the table by identity (no key comparison), shifting later members of
 * its probe run back so that no tombstone is needed. */
static void
table_remove(Table *t, Node *n)
{
    uint64_t mask = t->mask;
    uint64_t i = table_home(t, n->hash);
    Slot *slots = t->slots;
    while (slots[i].node != n)
        i = (i + 1) & mask;
    uint64_t j = i;
    for (;;) {
        j = (j + 1) & mask;
        if (slots[j].node == NULL)
            break;
        uint64_t k = table_home(t, slots[j].hash);
        /* The entry at j may move back to i unless its home lies cyclically in (i, j]. */
        if (((j - k) & mask) >= ((j - i) & mask)) {
            slots[i] = slots[j];
            i = j;
        }
    }
    slots[i].node = NULL;
    t->used--;
    t->version++;
}

/* Equality of two keys with the same hash, as dict decides it. Builtin scalars compare in
 * C; anything else may run Python code. */
static inline int
compare_runs_no_python(PyObject *a)
{
    return PyUnicode_CheckExact(a) || PyLong_CheckExact(a) || PyBytes_CheckExact(a) ||
           PyFloat_CheckExact(a);
}

/* 1 and *found set if `key` is in the table, 0 if not, -1 on error. */
static int
table_find(Table *t, PyObject *key, Py_hash_t hash, Node **found)
{
restart:;
    uint64_t mask = t->mask;
    uint64_t i = table_home(t, hash);
    for (;;) {
        Slot *slot = &t->slots[i];
        Node *n = slot->node;
        if (n == NULL)
            return 0;
        if (slot->hash == hash) {
            PyObject *stored = n->key;
            int eq;
            if (stored == key) {
                eq = 1;
            }
            else if (compare_runs_no_python(stored) && compare_runs_no_python(key)) {
                eq = PyObject_RichCompareBool(stored, key, Py_EQ);
                if (eq < 0)
                    return -1;
            }
            else {
                uint64_t version = t->version;
                Py_INCREF(stored);
                eq = PyObject_RichCompareBool(stored, key, Py_EQ);
                Py_DECREF(stored);
                if (eq < 0)
                    return -1;
                if (version != t->version)
                    goto restart; /* the table changed under the comparison */
            }
            if (eq) {
                *found = n;
                return 1;
            }
        }
        i = (i + 1) & mask;
    }
}

static Node *
node_new(PyObject *key, Py_hash_t hash, long long weight, int seg)
{
    Node *n = PyMem_Malloc(sizeof(Node));
    if (n == NULL) {
        PyErr_NoMemory();
        return NULL;
    }
    Py_INCREF(key);
    n->key = key;
    n->hash = hash;
    n->weight = weight;
    n->seg = seg;
    return n;
}

/* ============================================================ the shared core */

/* State both policies share: the table, the lists, and the keys waiting to be released. */
typedef struct {
    Table table;
    Node heads[SEG_COUNT];
    Py_ssize_t resident; /* len(where) */
    PyObject **dead;     /* keys dropped mid-operation, released at its end */
    Py_ssize_t ndead;
    Py_ssize_t dead_capacity;
} Core;

static int
core_init(Core *c)
{
    int s;
    memset(&c->table, 0, sizeof(Table));
    if (table_init(&c->table, TABLE_MIN_SIZE) < 0)
        return -1;
    for (s = 0; s < SEG_COUNT; s++)
        list_init(&c->heads[s]);
    c->resident = 0;
    c->dead = NULL;
    c->ndead = c->dead_capacity = 0;
    return 0;
}

/* Park a reference to release at the end of the operation. */
static void
core_bury(Core *c, PyObject *key)
{
    if (c->ndead == c->dead_capacity) {
        Py_ssize_t capacity = c->dead_capacity ? 2 * c->dead_capacity : 16;
        PyObject **grown = PyMem_Realloc(c->dead, (size_t)capacity * sizeof(PyObject *));
        if (grown == NULL) {
            /* Out of memory: release now (only a key with a re-entrant __del__ cares). */
            Py_DECREF(key);
            return;
        }
        c->dead = grown;
        c->dead_capacity = capacity;
    }
    c->dead[c->ndead++] = key;
}

/* Release parked keys. Re-entrant: each is taken off the array before it is released. */
static void
core_release(Core *c)
{
    while (c->ndead > 0) {
        PyObject *key = c->dead[--c->ndead];
        Py_DECREF(key);
    }
}

/* Drop a node: out of its list and the table, its key parked, its memory freed. */
static void
core_free_node(Core *c, Node *n)
{
    node_unlink(n);
    table_remove(&c->table, n);
    core_bury(c, n->key);
    PyMem_Free(n);
}

/* Forget every node. The core is empty and consistent before any key is released (a
 * key's __del__ may call back into the policy). */
static void
core_empty(Core *c)
{
    Table *t = &c->table;
    uint64_t size = t->mask + 1, i;
    int s;
    for (i = 0; i < size; i++) {
        Node *n = t->slots[i].node;
        if (n != NULL) {
            t->slots[i].node = NULL;
            core_bury(c, n->key);
            PyMem_Free(n);
        }
    }
    t->used = 0;
    t->version++;
    for (s = 0; s < SEG_COUNT; s++)
        list_init(&c->heads[s]);
    c->resident = 0;
    if (size > TABLE_MIN_SIZE && table_resize(t, TABLE_MIN_SIZE) < 0)
        PyErr_Clear(); /* keeping the larger (empty) table is fine */
    core_release(c);
    if (c->ndead == 0 && c->dead_capacity > 1024) {
        PyMem_Free(c->dead);
        c->dead = NULL;
        c->dead_capacity = 0;
    }
}

static int
core_traverse(Core *c, visitproc visit, void *arg)
{
    Py_ssize_t k;
    if (c->table.slots != NULL) {
        uint64_t size = c->table.mask + 1, i;
        for (i = 0; i < size; i++) {
            Node *n = c->table.slots[i].node;
            if (n != NULL)
                Py_VISIT(n->key);
        }
    }
    for (k = 0; k < c->ndead; k++)
        Py_VISIT(c->dead[k]);
    return 0;
}

static void
core_dealloc(Core *c)
{
    if (c->table.slots != NULL) {
        core_empty(c);
        PyMem_Free(c->table.slots);
        c->table.slots = NULL;
    }
    core_release(c);
    PyMem_Free(c->dead);
    c->dead = NULL;
    c->dead_capacity = 0;
}

/* ============================================================ the victims list */

/* Victims are collected in a list; if an append fails (out of memory) the algorithm still
 * runs to a consistent state and the call raises at the end. */
typedef struct {
    PyObject *list;
    int failed;
} Victims;

static inline void
victims_add(Victims *v, PyObject *key)
{
    if (v->list == NULL) {
        /* Most inserts evict exactly one key: a list of one, allocated at its size. */
        v->list = PyList_New(1);
        if (v->list == NULL) {
            v->failed = 1;
            return;
        }
        Py_INCREF(key);
        PyList_SET_ITEM(v->list, 0, key);
        return;
    }
    if (PyList_Append(v->list, key) < 0)
        v->failed = 1;
}

static PyObject *
victims_finish(Victims *v)
{
    if (v->failed) {
        Py_XDECREF(v->list);
        if (!PyErr_Occurred())
            PyErr_NoMemory();
        return NULL;
    }
    if (v->list == NULL)
        return PyList_New(0);
    return v->list;
}

/* ============================================================ the binding layer */

/* Both policy objects begin with this head, so that the binding layer below reads the
 * table and the totals of either through a Policy pointer. */
#define POLICY_HEAD                                                                               \
    PyObject_HEAD                                                                                 \
    Core core;                                                                                    \
    long long capacity;                                                                           \
    long long weight; /* of the resident keys */

typedef struct {
    POLICY_HEAD
} Policy;

/* What a policy type plugs into the shared methods. A node the hooks receive is resident
 * (seg < SEG_WSHADOW) unless said otherwise. */
typedef struct {
    /* A hit on a resident node; `key` and `hash` are the requested key's. */
    void (*hit)(Policy *self, Node *n, PyObject *key, Py_hash_t hash);
    /* A key that is not resident arrives; `shadow` is its non-resident node or NULL.
     * Returns the victims. */
    PyObject *(*insert)(Policy *self, PyObject *key, Py_hash_t hash, Node *shadow,
                        long long weight);
    /* A resident node's weight is set (on_update, or on_insert of a resident key).
     * Returns the victims. */
    PyObject *(*update)(Policy *self, Node *n, PyObject *key, long long weight);
    /* The store removed a resident node: its weight leaves the type's totals (the head's
     * weight included) before the node is freed. */
    void (*drop)(Policy *self, Node *n);
    /* The type's own state, handled before the core's (NULL: none). The state a clear()
     * resets; the references a traverse visits (stop on nonzero), a tp_clear drops and a
     * dealloc frees. */
    void (*reset)(Policy *self);
    int (*traverse)(Policy *self, visitproc visit, void *arg);
    void (*gc_clear)(Policy *self);
    void (*release)(Policy *self);
    /* LRU has always converted on_update's weight before the lookup, so a bad weight
     * raises even for a key not resident; W-TinyLFU converts an exact int only for a
     * resident key (Python ignores the weight of a key not resident). Kept per type so
     * that neither type's errors change. */
    int update_converts_weight_first;
} PolicyOps;

/* The shared methods below are written once and take the type's PolicyOps; each type
 * stamps out its entry points with POLICY_ENTRY_POINTS, which fixes its ops as a constant.
 * Forced inlining is what makes the constant reach the hooks: the compiler then calls
 * them directly (and may inline them), with no indirect call per key or per call. */
#define ALWAYS_INLINE inline __attribute__((always_inline))

static const char *const insert_names[] = {"key", "weight", "cost"};
static const char *const update_names[] = {"key", "weight"};

enum { KEY_ABSENT = 0, KEY_SHADOWED = 1, KEY_RESIDENT = 2 };

/* What the policy knows of a key: `where` is KEY_RESIDENT or KEY_SHADOWED (a W-TinyLFU key
 * that recently left) with `node` set, KEY_ABSENT, or -1 on error; `hash` is set unless
 * hashing failed. */
typedef struct {
    int where;
    Py_hash_t hash;
    Node *node;
} Found;

static ALWAYS_INLINE Found
policy_lookup(Policy *self, PyObject *key)
{
    Found f = {-1, key_hash(key), NULL};
    if (f.hash == -1)
        return f;
    f.where = table_find(&self->core.table, key, f.hash, &f.node);
    if (f.where > 0)
        f.where = f.node->seg < SEG_WSHADOW ? KEY_RESIDENT : KEY_SHADOWED;
    return f;
}

/* 0 if handled (hit or ignored), -1 on error. */
static ALWAYS_INLINE int
policy_hit(Policy *self, PyObject *key, const PolicyOps *ops)
{
    Found f = policy_lookup(self, key);
    if (f.where == KEY_RESIDENT)
        ops->hit(self, f.node, key, f.hash);
    return f.where < 0 ? -1 : 0;
}

static ALWAYS_INLINE PyObject *
policy_on_hit(Policy *self, PyObject *key, const PolicyOps *ops)
{
    if (policy_hit(self, key, ops) < 0)
        return NULL;
    Py_RETURN_NONE;
}

/* policy_hit, for a key reference the caller hands over. */
static ALWAYS_INLINE int
policy_hit_owned(Policy *self, PyObject *key, const PolicyOps *ops)
{
    int rc = policy_hit(self, key, ops);
    Py_DECREF(key);
    return rc;
}

static ALWAYS_INLINE PyObject *
policy_on_hits(Policy *self, PyObject *keys, const PolicyOps *ops)
{
    if (PyList_CheckExact(keys) || PyTuple_CheckExact(keys)) {
        /* Indexed, which is faster than iterating; the size is read again each time: a
         * key's __eq__ could change the list. */
        Py_INCREF(keys);
        for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(keys); i++) {
            PyObject *key = Py_NewRef(PySequence_Fast_GET_ITEM(keys, i));
            if (policy_hit_owned(self, key, ops) < 0) {
                Py_DECREF(keys);
                return NULL;
            }
        }
        Py_DECREF(keys);
        Py_RETURN_NONE;
    }
    PyObject *iterator = PyObject_GetIter(keys);
    if (iterator == NULL)
        return NULL;
    PyObject *key;
    while ((key = PyIter_Next(iterator)) != NULL) {
        if (policy_hit_owned(self, key, ops) < 0) {
            Py_DECREF(iterator);
            return NULL;
        }
    }
    Py_DECREF(iterator);
    if (PyErr_Occurred())
        return NULL;
    Py_RETURN_NONE;
}

/* on_insert, and access: on_insert turned into a hit when the key is resident. A hit
 * ignores the weight, so access converts an exact int only for a key it inserts. Any other
 * weight is converted before the lookup, since __index__ may run Python code. */
static ALWAYS_INLINE PyObject *
policy_insert(Policy *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames,
              const PolicyOps *ops, int access)
{
    PyObject *argv[3];
    long long weight = 1;
    if (kwnames == NULL && nargs >= 1 && nargs <= 3) {
        argv[0] = args[0];
        argv[1] = nargs > 1 ? args[1] : NULL;
    }
    else if (parse_args(access ? "access" : "on_insert", args, nargs, kwnames, insert_names,
                        3, 1, argv) < 0)
        return NULL;
    PyObject *key = argv[0], *weight_obj = argv[1];
    if (weight_obj != NULL && (!access || !PyLong_CheckExact(weight_obj))) {
        if (as_weight(weight_obj, &weight) < 0)
            return NULL;
        weight_obj = NULL;
    }
    Found f = policy_lookup(self, key);
    if (f.where < 0)
        return NULL;
    if (f.where == KEY_RESIDENT) {
        if (!access)
            return ops->update(self, f.node, key, weight); /* not new: a weight change */
        ops->hit(self, f.node, key, f.hash);
        Py_RETURN_TRUE;
    }
    if (weight_obj != NULL && as_weight(weight_obj, &weight) < 0)
        return NULL;
    Node *shadow = f.where == KEY_SHADOWED ? f.node : NULL;
    PyObject *victims = ops->insert(self, key, f.hash, shadow, weight);
    if (!access || victims == NULL)
        return victims;
    Py_DECREF(victims);
    Py_RETURN_FALSE;
}

static ALWAYS_INLINE PyObject *
policy_on_update(Policy *self, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames,
                 const PolicyOps *ops)
{
    PyObject *argv[2];
    long long weight;
    if (kwnames == NULL && nargs == 2) {
        argv[0] = args[0];
        argv[1] = args[1];
    }
    else if (parse_args("on_update", args, nargs, kwnames, update_names, 2, 2, argv) < 0)
        return NULL;
    PyObject *key = argv[0];
    int converted = 0;
    if (ops->update_converts_weight_first || !PyLong_CheckExact(argv[1])) {
        /* __index__ may run Python code: convert before the lookup, not after. */
        if (as_weight(argv[1], &weight) < 0)
            return NULL;
        converted = 1;
    }
    Found f = policy_lookup(self, key);
    if (f.where < 0)
        return NULL;
    if (f.where != KEY_RESIDENT)
        return PyList_New(0);
    if (!converted && as_weight(argv[1], &weight) < 0)
        return NULL;
    return ops->update(self, f.node, key, weight);
}

static ALWAYS_INLINE PyObject *
policy_on_remove(Policy *self, PyObject *key, const PolicyOps *ops)
{
    Found f = policy_lookup(self, key);
    if (f.where < 0)
        return NULL;
    if (f.where == KEY_RESIDENT) {
        self->core.resident--;
        ops->drop(self, f.node);
        core_free_node(&self->core, f.node);
        core_release(&self->core);
    }
    Py_RETURN_NONE;
}

static ALWAYS_INLINE PyObject *
policy_clear(Policy *self, const PolicyOps *ops)
{
    if (ops->reset != NULL)
        ops->reset(self);
    self->weight = 0;
    core_empty(&self->core);
    Py_RETURN_NONE;
}

static ALWAYS_INLINE int
policy_traverse(Policy *self, visitproc visit, void *arg, const PolicyOps *ops)
{
    if (ops->traverse != NULL) {
        int rc = ops->traverse(self, visit, arg);
        if (rc != 0)
            return rc;
    }
    return core_traverse(&self->core, visit, arg);
}

static ALWAYS_INLINE int
policy_tp_clear(Policy *self, const PolicyOps *ops)
{
    if (ops->gc_clear != NULL)
        ops->gc_clear(self);
    if (self->core.table.slots != NULL) {
        self->weight = 0;
        core_empty(&self->core);
        core_release(&self->core); /* keys parked while the type's part was released */
    }
    return 0;
}

static ALWAYS_INLINE void
policy_dealloc(Policy *self, const PolicyOps *ops)
{
    PyTypeObject *type = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    if (ops->release != NULL)
        ops->release(self);
    core_dealloc(&self->core);
    type->tp_free((PyObject *)self);
}

/* A type's PolicyOps (the designated initializers that follow T) and its entry points:
 * the methods above with those ops fixed. */
#define POLICY_ENTRY_POINTS(T, ...)                                                               \
    static const PolicyOps T##_ops = {__VA_ARGS__};                                               \
    static PyObject *T##_on_hit(PyObject *self, PyObject *key)                                    \
    {                                                                                             \
        return policy_on_hit((Policy *)self, key, &T##_ops);                                      \
    }                                                                                             \
    static PyObject *T##_on_hits(PyObject *self, PyObject *keys)                                  \
    {                                                                                             \
        return policy_on_hits((Policy *)self, keys, &T##_ops);                                    \
    }                                                                                             \
    static PyObject *T##_on_insert(PyObject *self, PyObject *const *args, Py_ssize_t nargs,       \
                                   PyObject *kwnames)                                             \
    {                                                                                             \
        return policy_insert((Policy *)self, args, nargs, kwnames, &T##_ops, 0);                  \
    }                                                                                             \
    static PyObject *T##_access(PyObject *self, PyObject *const *args, Py_ssize_t nargs,          \
                                PyObject *kwnames)                                                \
    {                                                                                             \
        return policy_insert((Policy *)self, args, nargs, kwnames, &T##_ops, 1);                  \
    }                                                                                             \
    static PyObject *T##_on_update(PyObject *self, PyObject *const *args, Py_ssize_t nargs,       \
                                   PyObject *kwnames)                                             \
    {                                                                                             \
        return policy_on_update((Policy *)self, args, nargs, kwnames, &T##_ops);                  \
    }                                                                                             \
    static PyObject *T##_on_remove(PyObject *self, PyObject *key)                                 \
    {                                                                                             \
        return policy_on_remove((Policy *)self, key, &T##_ops);                                   \
    }                                                                                             \
    static PyObject *T##_clear(PyObject *self, PyObject *Py_UNUSED(ignored))                      \
    {                                                                                             \
        return policy_clear((Policy *)self, &T##_ops);                                            \
    }                                                                                             \
    static int T##_traverse(PyObject *self, visitproc visit, void *arg)                           \
    {                                                                                             \
        return policy_traverse((Policy *)self, visit, arg, &T##_ops);                             \
    }                                                                                             \
    static int T##_tp_clear(PyObject *self)                                                       \
    {                                                                                             \
        return policy_tp_clear((Policy *)self, &T##_ops);                                         \
    }                                                                                             \
    static void T##_dealloc(PyObject *self)                                                       \
    {                                                                                             \
        policy_dealloc((Policy *)self, &T##_ops);                                                 \
    }

/* The entries of a type's method table that POLICY_ENTRY_POINTS(T, ...) provides. */
#define POLICY_METHODS(T)                                                                         \
    {"on_hit", T##_on_hit, METH_O, "One hit; a key not resident is ignored."},                    \
    {"on_hits", T##_on_hits, METH_O, "A batch of hits, oldest first."},                           \
    {"on_insert", (PyCFunction)(void (*)(void))T##_on_insert, METH_FASTCALL | METH_KEYWORDS,      \
     "on_insert(key, weight=1, cost=1.0): a new key; returns the keys to evict."},                \
    {"on_update", (PyCFunction)(void (*)(void))T##_on_update, METH_FASTCALL | METH_KEYWORDS,      \
     "on_update(key, weight): a resident key's weight changed; returns victims."},                \
    {"on_remove", T##_on_remove, METH_O, "The store dropped a key."},                             \
    {"access", (PyCFunction)(void (*)(void))T##_access, METH_FASTCALL | METH_KEYWORDS,            \
     "access(key, weight=1, cost=1.0): on_hit if resident (True), else on_insert (False)."},      \
    {"clear", T##_clear, METH_NOARGS, "Forget every key."}

/* What needs no hooks: the same function serves both types. */

static Py_ssize_t
policy_len(PyObject *self)
{
    return ((Policy *)self)->core.resident;
}

static int
policy_contains(PyObject *self, PyObject *key)
{
    int where = policy_lookup((Policy *)self, key).where;
    return where < 0 ? -1 : where == KEY_RESIDENT;
}

static PyObject *
policy_repr(PyObject *self)
{
    Policy *p = (Policy *)self;
    return PyUnicode_FromFormat("%s(capacity=%lld, weight=%lld, entries=%zd)",
                                short_type_name(Py_TYPE(self)), p->capacity, p->weight,
                                p->core.resident);
}

#define POLICY_GETSET                                                                             \
    {"capacity", get_long_long, NULL, "The bound, in weight units.", FIELD(Policy, capacity)},    \
    {"weight", get_long_long, NULL, "Total weight of the resident keys.", FIELD(Policy, weight)}

static PySequenceMethods policy_as_sequence = {
    .sq_length = policy_len,
    .sq_contains = policy_contains,
};

/* The type object T##Type, from POLICY_ENTRY_POINTS(T, ...) and the type's own T##_new,
 * T##_methods and T##_getset. */
#define POLICY_TYPE(T, name, doc)                                                                 \
    static PyTypeObject T##Type = {                                                               \
        PyVarObject_HEAD_INIT(NULL, 0).tp_name = "stratacache._cpolicies." name,                  \
        .tp_doc = doc,                                                                            \
        .tp_basicsize = sizeof(T),                                                                \
        .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,                                      \
        .tp_new = T##_new,                                                                        \
        .tp_dealloc = T##_dealloc,                                                                \
        .tp_traverse = T##_traverse,                                                              \
        .tp_clear = T##_tp_clear,                                                                 \
        .tp_repr = policy_repr,                                                                   \
        .tp_methods = T##_methods,                                                                \
        .tp_getset = T##_getset,                                                                  \
        .tp_as_sequence = &policy_as_sequence,                                                    \
    }

/* A new object of `type`, its core ready; NULL on error. */
static Policy *
policy_alloc(PyTypeObject *type, long long capacity)
{
    Policy *self = (Policy *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    /* tp_alloc zeroes the object: after a failure dealloc finds nothing to free. */
    if (core_init(&self->core) < 0) {
        Py_DECREF(self);
        return NULL;
    }
    self->capacity = capacity;
    return self;
}

/* ============================================================ W-TinyLFU */

enum { ADAPT_SHADOW = 0, ADAPT_CLIMB = 1, ADAPT_FIXED = 2 };

/* Adaptive aging's disputes live in a second Core: one list (heads[DISPUTE_LIST]) holding
 * each dispute as two adjacent nodes, its candidate then its victim, oldest dispute first;
 * the candidate node's weight says whether the long memory favoured the candidate. */
enum { DISPUTE_LIST = 0, DISPUTE_CANDIDATE = 0, DISPUTE_VICTIM = 1 };

/* A duel the two sketches decide differently, noted during an eviction and entered as a
 * dispute once the eviction is over (entering it runs key comparisons). */
typedef struct {
    PyObject *candidate;
    Py_hash_t candidate_hash;
    PyObject *victim;
    Py_hash_t victim_hash;
    int long_favours_candidate;
} Disagreement;

#define MT_N 624
#define MT_M 397

typedef struct {
    POLICY_HEAD
    int adaptation;
    double window_percent;
    Sketch *sketch;
    Sketch *short_sketch; /* NULL when aging is fixed */
    Core disputes;
    double trust;
    int short_memory;
    Disagreement *noted; /* during one eviction */
    Py_ssize_t nnoted;
    Py_ssize_t noted_capacity;
    long long window_weight;
    long long protected_weight;
    long long window_max;
    long long protected_max;
    long long window_shadow_weight;
    long long main_shadow_weight;
    long long shadow_floor; /* int(SHADOW_PERCENT * capacity) */
    long long boundary_total; /* window_max + protected_max after a reset */
    double carry;
    int warm;
    long long hits;
    long long misses;
    double previous_hit_rate;
    double step;
    /* random.Random(seed)'s Mersenne Twister */
    uint32_t mt[MT_N];
    int mti;
} WTinyLFU;

#define W_WINDOW(self) (&(self)->core.heads[SEG_WINDOW])
#define W_PROBATION(self) (&(self)->core.heads[SEG_PROBATION])
#define W_PROTECTED(self) (&(self)->core.heads[SEG_PROTECTED])
#define W_WSHADOW(self) (&(self)->core.heads[SEG_WSHADOW])
#define W_MSHADOW(self) (&(self)->core.heads[SEG_MSHADOW])

/* The next 32-bit output of MT19937, tempered, as CPython's genrand_uint32. */
static uint32_t
mt_next(WTinyLFU *self)
{
    uint32_t *mt = self->mt;
    uint32_t y;
    if (self->mti >= MT_N) {
        int k;
        for (k = 0; k < MT_N; k++) {
            y = (mt[k] & 0x80000000U) | (mt[(k + 1) % MT_N] & 0x7fffffffU);
            mt[k] = mt[(k + MT_M) % MT_N] ^ (y >> 1) ^ ((y & 1U) ? 0x9908b0dfU : 0U);
        }
        self->mti = 0;
    }
    y = mt[self->mti++];
    y ^= (y >> 11);
    y ^= (y << 7) & 0x9d2c5680U;
    y ^= (y << 15) & 0xefc60000U;
    y ^= (y >> 18);
    return y;
}

static void
w_reset_state(WTinyLFU *self)
{
    long long capacity = self->capacity;
    self->weight = 0;
    self->window_weight = 0;
    self->protected_weight = 0;
    long long window = (long long)round_half_even((double)capacity * self->window_percent);
    if (window < 1)
        window = 1;
    if (window > capacity)
        window = capacity;
    self->window_max = window;
    self->protected_max =
        (long long)(PERCENT_MAIN_PROTECTED * (double)(capacity - self->window_max));
    self->boundary_total = self->window_max + self->protected_max;
    self->window_shadow_weight = 0;
    self->main_shadow_weight = 0;
    self->carry = 0.0;
    self->warm = 0;
    self->hits = 0;
    self->misses = 0;
    self->previous_hit_rate = 0.0;
    self->step = -STEP_PERCENT * (double)capacity;
    self->trust = 0.0;
    self->short_memory = 0;
}

/* -- segments ------------------------------------------------------------------- */

/* Move the oldest nodes of segment `from` to probation until its weight is back within
 * `max`: protected overflowing after a promotion, the window after an insert. */
static void
w_spill_to_probation(WTinyLFU *self, Node *from, long long *weight, long long max)
{
    Node *probation = W_PROBATION(self);
    while (*weight > max && !list_empty(from)) {
        Node *n = from->next;
        node_unlink(n);
        list_append(probation, n);
        n->seg = SEG_PROBATION;
        *weight -= n->weight;
    }
}

static void
w_demote_protected(WTinyLFU *self)
{
    w_spill_to_probation(self, W_PROTECTED(self), &self->protected_weight, self->protected_max);
}

static void
w_drain_window(WTinyLFU *self)
{
    w_spill_to_probation(self, W_WINDOW(self), &self->window_weight, self->window_max);
}

/* -- adaptation: Caffeine's hill climber -------------------------------------------- */

static void w_increase_window(WTinyLFU *self, long long amount);
static void w_decrease_window(WTinyLFU *self, long long amount);

static void
w_apply_carry(WTinyLFU *self)
{
    /* int(carry), subtracted back as Python does (float - int converts the int exactly).
     * A whole beyond +-2**62 moves the boundary as far as it can go either way, so it is
     * clamped for the conversion. */
    double whole_f = trunc(self->carry);
    if (whole_f != 0.0) {
        self->carry -= whole_f;
        long long whole = whole_f >= 0x1p62    ? (1LL << 62)
                          : whole_f <= -0x1p62 ? -(1LL << 62)
                                               : (long long)whole_f;
        if (whole > 0)
            w_increase_window(self, whole);
        else
            w_decrease_window(self, -whole);
    }
}

static void
w_climb(WTinyLFU *self)
{
    double hit_rate = (double)self->hits / (double)(self->hits + self->misses);
    self->hits = self->misses = 0;
    double change = hit_rate - self->previous_hit_rate;
    self->previous_hit_rate = hit_rate;
    double amount = change >= 0 ? self->step : -self->step;
    if (fabs(change) >= RESTART_THRESHOLD)
        self->step = STEP_PERCENT * (double)self->capacity * (amount >= 0 ? 1.0 : -1.0);
    else
        self->step = STEP_DECAY * amount;
    self->carry += amount;
    w_apply_carry(self);
}

static inline void
w_sample(WTinyLFU *self, int hit)
{
    if (!self->warm) {
        if (self->weight < self->capacity / 2)
            return;
        self->warm = 1;
    }
    if (hit)
        self->hits += 1;
    else
        self->misses += 1;
    if (self->hits + self->misses >= CLIMB_SAMPLE_FACTOR * self->sketch->capacity)
        w_climb(self);
}

/* -- moving the boundary ------------------------------------------------------------- */

/* protected's bound follows the window's: what the window takes comes from protected until
 * protected is gone, then from probation (WTinyLFUPolicy._set_window_maximum). */
static inline void
w_set_window_max(WTinyLFU *self, long long window_max)
{
    self->window_max = window_max;
    long long protected_max = self->boundary_total - window_max;
    self->protected_max = protected_max > 0 ? protected_max : 0;
}

static void
w_increase_window(WTinyLFU *self, long long amount)
{
    long long room = self->capacity - 1 - self->window_max;
    long long quota = amount < room ? amount : room;
    if (quota <= 0)
        return;
    w_set_window_max(self, self->window_max + quota);
    w_demote_protected(self);
    Node *window = W_WINDOW(self), *probation = W_PROBATION(self),
         *protected = W_PROTECTED(self);
    for (;;) {
        Node *n;
        if (!list_empty(probation) && probation->next->weight <= quota)
            n = probation->next;
        else if (!list_empty(protected) && protected->next->weight <= quota)
            n = protected->next;
        else
            break;
        node_unlink(n);
        quota -= n->weight;
        if (n->seg == SEG_PROTECTED)
            self->protected_weight -= n->weight;
        list_append(window, n);
        n->seg = SEG_WINDOW;
        self->window_weight += n->weight;
    }
    w_set_window_max(self, self->window_max - quota);
}

static void
w_decrease_window(WTinyLFU *self, long long amount)
{
    long long quota = amount < self->window_max - 1 ? amount : self->window_max - 1;
    if (quota <= 0)
        return;
    w_set_window_max(self, self->window_max - quota);
    Node *window = W_WINDOW(self), *probation = W_PROBATION(self);
    while (!list_empty(window)) {
        Node *n = window->next;
        if (n->weight > quota)
            break;
        node_unlink(n);
        quota -= n->weight;
        list_append(probation, n);
        n->seg = SEG_PROBATION;
        self->window_weight -= n->weight;
    }
    w_set_window_max(self, self->window_max + quota);
}

/* -- adaptation: shadow lists --------------------------------------------------------- */

/* `n` just left the cache (already out of its list, still in the table): remember it, then
 * trim the shadow it joined. */
static void
w_remember(WTinyLFU *self, Node *n, int from_window)
{
    Node *shadow;
    long long *shadow_weight;
    if (from_window) {
        shadow = W_WSHADOW(self);
        shadow_weight = &self->window_shadow_weight;
        n->seg = SEG_WSHADOW;
    }
    else {
        shadow = W_MSHADOW(self);
        shadow_weight = &self->main_shadow_weight;
        n->seg = SEG_MSHADOW;
    }
    list_append(shadow, n);
    *shadow_weight += n->weight;
    long long average =
        self->core.resident ? floor_div(self->weight, self->core.resident) : n->weight;
    long long limit = self->shadow_floor;
    if (SHADOW_MIN_ENTRIES * average > limit)
        limit = SHADOW_MIN_ENTRIES * average;
    while (*shadow_weight > limit) {
        Node *oldest = shadow->next;
        *shadow_weight -= oldest->weight;
        core_free_node(&self->core, oldest);
    }
}

/* A key leaves for good: remembered in a shadow when shadowing, else freed. The caller
 * has already unlinked it from its list and reported it as a victim. */
static void
w_forget(WTinyLFU *self, Node *n, int from_window)
{
    if (self->adaptation == ADAPT_SHADOW) {
        w_remember(self, n, from_window);
    }
    else {
        table_remove(&self->core.table, n);
        core_bury(&self->core, n->key);
        PyMem_Free(n);
    }
}

/* A miss on a shadowed key (its node, about to be freed by the caller): move the boundary
 * toward the side that would have kept it. */
static void
w_consult_shadows(WTinyLFU *self, Node *remembered, long long weight)
{
    double ratio;
    /* The step: a fraction of the smaller side, in average entries, at least one
     * (WTinyLFUPolicy._step_scale). Computed before the shadow weights change, as in Python. */
    long long average =
        self->core.resident ? floor_div(self->weight, self->core.resident) : weight;
    if (average < 1)
        average = 1; /* zero-weight entries */
    long long main_max = self->capacity - self->window_max;
    long long smaller = self->window_max < main_max ? self->window_max : main_max;
    double scale = (double)smaller / ((double)SHADOW_STEP_DIVISOR * (double)average);
    if (!(scale > 1.0))
        scale = 1.0;
    if (remembered->seg == SEG_WSHADOW) {
        self->window_shadow_weight -= remembered->weight;
        long long other = self->main_shadow_weight, this = self->window_shadow_weight;
        ratio = (other > this && this > 0) ? (double)other / (double)this : 1.0;
        self->carry += (double)weight * ratio * scale;
    }
    else {
        self->main_shadow_weight -= remembered->weight;
        long long other = self->window_shadow_weight, this = self->main_shadow_weight;
        ratio = (other > this && this > 0) ? (double)other / (double)this : 1.0;
        self->carry -= (double)weight * ratio * scale;
    }
    core_free_node(&self->core, remembered);
    w_apply_carry(self);
}

/* -- eviction --------------------------------------------------------------------------- */

static inline Node *
w_first_pool(WTinyLFU *self)
{
    if (!list_empty(W_PROBATION(self)))
        return W_PROBATION(self);
    if (!list_empty(W_PROTECTED(self)))
        return W_PROTECTED(self);
    if (!list_empty(W_WINDOW(self)))
        return W_WINDOW(self);
    return NULL;
}

/* A resident node leaves its pool: account for it (WTinyLFUPolicy._drop). */
static inline void
w_drop(WTinyLFU *self, Node *n)
{
    self->weight -= n->weight;
    if (n->seg == SEG_PROTECTED)
        self->protected_weight -= n->weight;
    else if (n->seg == SEG_WINDOW)
        self->window_weight -= n->weight;
}

/* -- adaptive aging (policies/wtinylfu.py, "adaptive aging") -------------------------------- */

/* Count a request in the sketch, and in the short-memory one when aging adapts. Both are
 * created with the same seed, so one mixed hash serves both. */
static inline void
w_count(WTinyLFU *self, Py_hash_t hash)
{
    uint64_t mixed = sketch_mix(self->sketch, hash);
    sketch_increment(self->sketch, mixed);
    if (self->short_sketch != NULL)
        sketch_increment(self->short_sketch, mixed);
}

/* Drop one node of a dispute; its key is parked in the policy's core and released with the
 * operation's other keys. */
static void
dispute_free_node(WTinyLFU *self, Node *d)
{
    node_unlink(d);
    table_remove(&self->disputes.table, d);
    core_bury(&self->core, d->key);
    PyMem_Free(d);
}

/* A requested key that is part of a dispute settles it: the sketch that wanted it kept was
 * right. Call with the policy's state complete: the lookup may run a key's __eq__. A lookup
 * error is cleared and the dispute left open (only a key whose __eq__ raises gets there). */
static void
w_settle(WTinyLFU *self, PyObject *key, Py_hash_t hash)
{
    if (self->disputes.table.used == 0)
        return;
    Node *d;
    int found = table_find(&self->disputes.table, key, hash, &d);
    if (found <= 0) {
        if (found < 0)
            PyErr_Clear();
        return;
    }
    int is_candidate = d->seg == DISPUTE_CANDIDATE;
    Node *candidate = is_candidate ? d : d->prev;
    Node *victim = candidate->next;
    int long_was_right = is_candidate == (int)candidate->weight;
    self->trust = self->trust * TRUST_KEEP + (long_was_right ? 1.0 : -1.0);
    self->short_memory = self->trust < 0.0;
    dispute_free_node(self, candidate);
    dispute_free_node(self, victim);
}

/* Note a duel the two sketches decide differently (entered after the eviction). On a memory
 * error the disagreement is not noted. */
static void
w_note(WTinyLFU *self, Node *candidate, Node *victim, int long_favours_candidate)
{
    if (self->nnoted == self->noted_capacity) {
        Py_ssize_t capacity = self->noted_capacity ? 2 * self->noted_capacity : 8;
        Disagreement *grown =
            PyMem_Realloc(self->noted, (size_t)capacity * sizeof(Disagreement));
        if (grown == NULL)
            return;
        self->noted = grown;
        self->noted_capacity = capacity;
    }
    Disagreement *n = &self->noted[self->nnoted++];
    n->candidate = Py_NewRef(candidate->key);
    n->candidate_hash = candidate->hash;
    n->victim = Py_NewRef(victim->key);
    n->victim_hash = victim->hash;
    n->long_favours_candidate = long_favours_candidate;
}

/* Enter one disagreement as a dispute, as _dispute does: not if either key is already in
 * one; then the oldest disputes beyond the bound are forgotten. */
static void
w_enter_dispute(WTinyLFU *self, Disagreement *n)
{
    Core *disputes = &self->disputes;
    Node *found;
    int c = table_find(&disputes->table, n->candidate, n->candidate_hash, &found);
    int v = c == 0 ? table_find(&disputes->table, n->victim, n->victim_hash, &found) : 0;
    if (c != 0 || v != 0) {
        if (c < 0 || v < 0)
            PyErr_Clear();
        return;
    }
    long long limit = self->sketch->capacity / DISPUTES_DIVISOR;
    if (limit < DISPUTES_MINIMUM)
        limit = DISPUTES_MINIMUM;
    Node *candidate, *victim;
    if ((long long)(disputes->table.used / 2) >= limit) {
        /* Full: Python adds the new dispute, then forgets the oldest; here the oldest's
         * two nodes are taken over for the new one, which ends the same and allocates
         * nothing (a full list is the usual state). */
        candidate = disputes->heads[DISPUTE_LIST].next;
        victim = candidate->next;
        node_unlink(candidate);
        node_unlink(victim);
        table_remove(&disputes->table, candidate);
        table_remove(&disputes->table, victim);
        core_bury(&self->core, candidate->key);
        core_bury(&self->core, victim->key);
        candidate->key = Py_NewRef(n->candidate);
        candidate->hash = n->candidate_hash;
        candidate->weight = n->long_favours_candidate;
        victim->key = Py_NewRef(n->victim);
        victim->hash = n->victim_hash;
    }
    else {
        if (table_reserve(&disputes->table, 2) < 0) {
            PyErr_Clear();
            return;
        }
        candidate = node_new(n->candidate, n->candidate_hash, n->long_favours_candidate,
                             DISPUTE_CANDIDATE);
        victim = candidate == NULL ? NULL
                                   : node_new(n->victim, n->victim_hash, 0, DISPUTE_VICTIM);
        if (victim == NULL) {
            if (candidate != NULL) {
                core_bury(&self->core, candidate->key);
                PyMem_Free(candidate);
            }
            PyErr_Clear();
            return;
        }
    }
    table_insert_new(&disputes->table, candidate);
    table_insert_new(&disputes->table, victim);
    list_append(&disputes->heads[DISPUTE_LIST], candidate);
    list_append(&disputes->heads[DISPUTE_LIST], victim);
    /* The bound may have dropped below the count only if the sketch shrank, which it never
     * does; the loop keeps the invariant whatever happens. */
    while ((long long)(disputes->table.used / 2) > limit) {
        Node *oldest = disputes->heads[DISPUTE_LIST].next;
        Node *partner = oldest->next;
        dispute_free_node(self, oldest);
        dispute_free_node(self, partner);
    }
}

/* Enter the disagreements noted during an eviction, in order. The noted array is taken
 * first, so a key comparison that re-enters the policy starts a fresh one. */
static void
w_enter_noted(WTinyLFU *self)
{
    Disagreement *noted = self->noted;
    Py_ssize_t count = self->nnoted, i;
    if (count == 0)
        return;
    self->noted = NULL;
    self->nnoted = self->noted_capacity = 0;
    for (i = 0; i < count; i++) {
        w_enter_dispute(self, &noted[i]);
        core_bury(&self->core, noted[i].candidate);
        core_bury(&self->core, noted[i].victim);
    }
    PyMem_Free(noted);
}

/* Evict `victim`: out of its list and of the policy, its key handed to the store, and
 * remembered as a shadow of the segment it left. */
static void
w_evict_node(WTinyLFU *self, Victims *victims, Node *victim)
{
    int from_window = victim->seg == SEG_WINDOW;
    node_unlink(victim);
    self->core.resident--;
    w_drop(self, victim);
    victims_add(victims, victim->key);
    w_forget(self, victim, from_window);
}

static void
w_evict(WTinyLFU *self, Victims *victims)
{
    Sketch *sketch = self->sketch, *short_sketch = self->short_sketch;
    long long capacity = self->capacity;
    Node *window = W_WINDOW(self), *probation = W_PROBATION(self);
    while (self->weight > capacity) {
        if (!(self->window_weight > self->window_max && !list_empty(window))) {
            /* No candidate: plain LRU eviction, main first, then the window. */
            Node *pool = w_first_pool(self);
            if (pool == NULL)
                break; /* cannot happen: the weight is the residents' sum */
            Node *victim = pool->next;
            w_evict_node(self, victims, victim);
            continue;
        }
        Node *candidate = window->next;
        node_unlink(candidate);
        self->window_weight -= candidate->weight;
        self->core.resident--;
        /* One mixed hash per key serves both sketches (same seed, see w_count). */
        uint64_t candidate_mixed = sketch_mix(sketch, candidate->hash);
        int long_candidate = sketch_frequency(sketch, candidate_mixed);
        int short_candidate =
            short_sketch != NULL ? sketch_frequency(short_sketch, candidate_mixed) : 0;
        int admitted = 1;
        /* A heavy candidate may have to displace several victims; it must beat each. */
        while (self->weight > capacity) {
            Node *pool = w_first_pool(self);
            if (pool == NULL) {
                admitted = 0;
                break;
            }
            Node *victim = pool->next;
            int candidate_freq = long_candidate;
            uint64_t victim_mixed = sketch_mix(sketch, victim->hash);
            int victim_freq = sketch_frequency(sketch, victim_mixed);
            if (short_sketch != NULL) {
                int short_victim = sketch_frequency(short_sketch, victim_mixed);
                int long_admits = candidate_freq > victim_freq;
                if (long_admits != (short_candidate > short_victim))
                    w_note(self, candidate, victim, long_admits);
                if (self->short_memory) {
                    candidate_freq = short_candidate;
                    victim_freq = short_victim;
                }
            }
            if (candidate_freq <= victim_freq &&
                !(candidate_freq >= HASHDOS_THRESHOLD && (mt_next(self) >> 25) == 0)) {
                admitted = 0;
                break;
            }
            w_evict_node(self, victims, victim);
        }
        if (admitted) {
            list_append(probation, candidate);
            candidate->seg = SEG_PROBATION;
            self->core.resident++;
        }
        else {
            self->weight -= candidate->weight;
            victims_add(victims, candidate->key);
            w_forget(self, candidate, 1);
        }
    }
    w_enter_noted(self);
}

/* -- the events -------------------------------------------------------------------------- */

static void
w_promote(WTinyLFU *self, Node *n, PyObject *key)
{
    /* Python pops the entry and re-inserts it under the requested key object, so from now
     * on that (equal) object is the one stored, and later returned as a victim. */
    if (n->key != key) {
        core_bury(&self->core, n->key);
        Py_INCREF(key);
        n->key = key;
    }
    if (n->weight > self->protected_max) {
        list_move_to_end(W_PROBATION(self), n); /* too heavy for protected */
    }
    else {
        node_unlink(n);
        list_append(W_PROTECTED(self), n);
        n->seg = SEG_PROTECTED;
        self->protected_weight += n->weight;
        if (self->protected_weight > self->protected_max)
            w_demote_protected(self);
    }
    if (self->adaptation == ADAPT_CLIMB)
        w_sample(self, 1);
}

/* A hit on a resident node; `key` and `hash` are the requested key's. */
static inline void
w_hit_node(Policy *policy, Node *n, PyObject *key, Py_hash_t hash)
{
    WTinyLFU *self = (WTinyLFU *)policy;
    w_count(self, hash);
    if (n->seg == SEG_PROTECTED || n->seg == SEG_WINDOW) {
        list_move_to_end(&self->core.heads[n->seg], n);
        if (self->adaptation == ADAPT_CLIMB)
            w_sample(self, 1);
    }
    else {
        w_promote(self, n, key);
    }
    /* Python settles at the increment; the moves above do not depend on the outcome, and
     * settling last keeps the state complete while a key's __eq__ may run. */
    if (self->disputes.table.used != 0)
        w_settle(self, key, hash);
    core_release(&self->core);
}

/* on_insert for a key that is not resident (`existing` is its shadow node or NULL). */
static PyObject *
w_insert(Policy *policy, PyObject *key, Py_hash_t hash, Node *existing, long long weight)
{
    WTinyLFU *self = (WTinyLFU *)policy;
    Core *core = &self->core;
    Sketch *sketch = self->sketch;
    Node *n = NULL;
    if (weight <= self->capacity) {
        /* Everything that can fail happens before the first change. */
        if (table_reserve(&core->table, 1) < 0)
            return NULL;
        n = node_new(key, hash, weight, SEG_WINDOW);
        if (n == NULL)
            return NULL;
    }
    w_count(self, hash);
    if (existing != NULL)
        w_consult_shadows(self, existing, weight); /* only shadowing fills the shadows */
    if (n == NULL) {
        w_settle(self, key, hash);
        core_release(core);
        return Py_BuildValue("[O]", key);
    }
    table_insert_new(&core->table, n);
    list_append(W_WINDOW(self), n);
    core->resident++;
    self->window_weight += weight;
    self->weight += weight;
    /* Python settles at the increment, before the duels (whose sketch it may switch); here
     * after the insertion, so that the state is complete while a key's __eq__ may run. */
    w_settle(self, key, hash);
    Victims victims = {NULL, 0};
    if (self->weight > self->capacity)
        w_evict(self, &victims);
    if (self->window_weight > self->window_max)
        w_drain_window(self);
    int resized = 0;
    if (core->resident > sketch->capacity) {
        resized = sketch_ensure_capacity(sketch, 2 * (long long)core->resident);
        if (resized == 0 && self->short_sketch != NULL)
            resized = sketch_ensure_capacity(self->short_sketch, 2 * (long long)core->resident);
    }
    if (self->adaptation == ADAPT_CLIMB)
        w_sample(self, 0);
    core_release(core);
    if (resized < 0) {
        Py_XDECREF(victims.list);
        return NULL;
    }
    return victims_finish(&victims);
}

/* on_update of a resident node. */
static PyObject *
w_update_node(Policy *policy, Node *n, PyObject *key, long long weight)
{
    WTinyLFU *self = (WTinyLFU *)policy;
    if (weight > self->capacity) {
        node_unlink(n);
        self->core.resident--;
        w_drop(self, n);
        table_remove(&self->core.table, n);
        core_bury(&self->core, n->key);
        PyMem_Free(n);
        core_release(&self->core);
        return Py_BuildValue("[O]", key);
    }
    long long delta = weight - n->weight;
    n->weight = weight;
    self->weight += delta;
    if (n->seg == SEG_WINDOW) {
        self->window_weight += delta;
    }
    else if (n->seg == SEG_PROTECTED) {
        self->protected_weight += delta;
        w_demote_protected(self);
    }
    Victims victims = {NULL, 0};
    if (self->weight > self->capacity)
        w_evict(self, &victims);
    if (self->window_weight > self->window_max)
        w_drain_window(self);
    core_release(&self->core);
    return victims_finish(&victims);
}

static void
w_drop_removed(Policy *policy, Node *n)
{
    w_drop((WTinyLFU *)policy, n);
}

/* The disputes first: releasing their keys may run a __del__ that calls back into the
 * policy, which must find a consistent state (the core is emptied after this). */
static void
w_reset(Policy *policy)
{
    WTinyLFU *self = (WTinyLFU *)policy;
    core_empty(&self->disputes);
    sketch_clear(self->sketch);
    if (self->short_sketch != NULL)
        sketch_clear(self->short_sketch);
    w_reset_state(self);
}

static int
w_traverse(Policy *policy, visitproc visit, void *arg)
{
    WTinyLFU *self = (WTinyLFU *)policy;
    Py_ssize_t i;
    for (i = 0; i < self->nnoted; i++) {
        Py_VISIT(self->noted[i].candidate);
        Py_VISIT(self->noted[i].victim);
    }
    return core_traverse(&self->disputes, visit, arg);
}

static void
w_gc_clear(Policy *policy)
{
    WTinyLFU *self = (WTinyLFU *)policy;
    if (self->disputes.table.slots != NULL)
        core_empty(&self->disputes);
}

static void
w_release(Policy *policy)
{
    WTinyLFU *self = (WTinyLFU *)policy;
    core_dealloc(&self->disputes);
    Py_CLEAR(self->sketch);
    Py_CLEAR(self->short_sketch);
    PyMem_Free(self->noted); /* empty outside an eviction */
}

POLICY_ENTRY_POINTS(WTinyLFU, .hit = w_hit_node, .insert = w_insert, .update = w_update_node,
                    .drop = w_drop_removed, .reset = w_reset, .traverse = w_traverse,
                    .gc_clear = w_gc_clear, .release = w_release)

static PyObject *
WTinyLFU_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"capacity",   "seed",         "adaptation", "window_percent",
                             "sample_factor", "doorkeeper", "conservative", "aging",
                             "sketch_entries", NULL};
    PyObject *capacity_obj, *seed_obj = NULL, *adaptation_obj = NULL, *window_obj = NULL,
                            *sf_obj = NULL, *dk_obj = Py_True, *cons_obj = Py_True,
                            *aging_obj = NULL, *sketch_obj = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O|$OOOOOOOO:WTinyLFUPolicy", kwlist,
                                     &capacity_obj, &seed_obj, &adaptation_obj, &window_obj,
                                     &sf_obj, &dk_obj, &cons_obj, &aging_obj, &sketch_obj))
        return NULL;
    long long capacity;
    if (as_capacity(type, capacity_obj, &capacity) < 0)
        return NULL;
    /* The sketch is first sized for this many entries and grows with the resident count. */
    long long sketch_entries =
        capacity < INITIAL_SKETCH_ENTRIES ? capacity : INITIAL_SKETCH_ENTRIES;
    if (sketch_obj != Py_None) {
        sketch_entries = PyLong_AsLongLong(sketch_obj);
        if (sketch_entries == -1 && PyErr_Occurred())
            return NULL;
        if (sketch_entries < 1) {
            PyErr_Format(PyExc_ValueError,
                         "WTinyLFUPolicy: sketch_entries must be a positive int, got %R",
                         sketch_obj);
            return NULL;
        }
    }
    int adaptation = ADAPT_SHADOW;
    if (adaptation_obj != NULL) {
        if (PyUnicode_Check(adaptation_obj) &&
            PyUnicode_CompareWithASCIIString(adaptation_obj, "shadow") == 0)
            adaptation = ADAPT_SHADOW;
        else if (PyUnicode_Check(adaptation_obj) &&
                 PyUnicode_CompareWithASCIIString(adaptation_obj, "climb") == 0)
            adaptation = ADAPT_CLIMB;
        else if (PyUnicode_Check(adaptation_obj) &&
                 PyUnicode_CompareWithASCIIString(adaptation_obj, "fixed") == 0)
            adaptation = ADAPT_FIXED;
        else {
            PyErr_Format(PyExc_ValueError,
                         "WTinyLFUPolicy: adaptation must be 'shadow', 'climb' or 'fixed', "
                         "got %R",
                         adaptation_obj);
            return NULL;
        }
    }
    int adaptive_aging = 1;
    if (aging_obj != NULL) {
        if (PyUnicode_Check(aging_obj) &&
            PyUnicode_CompareWithASCIIString(aging_obj, "adaptive") == 0)
            adaptive_aging = 1;
        else if (PyUnicode_Check(aging_obj) &&
                 PyUnicode_CompareWithASCIIString(aging_obj, "fixed") == 0)
            adaptive_aging = 0;
        else {
            PyErr_Format(PyExc_ValueError,
                         "WTinyLFUPolicy: aging must be 'adaptive' or 'fixed', got %R",
                         aging_obj);
            return NULL;
        }
    }
    double window_percent = PERCENT_WINDOW;
    if (window_obj != NULL) {
        window_percent = PyFloat_AsDouble(window_obj);
        if (window_percent == -1.0 && PyErr_Occurred())
            return NULL;
        if (!(0.0 <= window_percent && window_percent < 1.0)) {
            PyErr_Format(PyExc_ValueError,
                         "WTinyLFUPolicy: window_percent must be in [0, 1), got %R",
                         window_obj);
            return NULL;
        }
    }
    long long sample_factor = SKETCH_SAMPLE_FACTOR;
    if (sf_obj != NULL && as_long_long_index(sf_obj, &sample_factor) < 0)
        return NULL;
    int doorkeeper, conservative;
    if (as_switches(dk_obj, cons_obj, &doorkeeper, &conservative) < 0)
        return NULL;
    uint64_t seed = 0;
    if (seed_obj != NULL && as_seed(seed_obj, &seed) < 0)
        return NULL;

    /* random.Random(seed)'s state, to reproduce its getrandbits(7) draws. */
    uint32_t mt[MT_N];
    int mti;
    {
        PyObject *random = PyImport_ImportModule("random");
        if (random == NULL)
            return NULL;
        PyObject *rng = seed_obj != NULL
                            ? PyObject_CallMethod(random, "Random", "O", seed_obj)
                            : PyObject_CallMethod(random, "Random", "i", 0);
        Py_DECREF(random);
        if (rng == NULL)
            return NULL;
        PyObject *state = PyObject_CallMethod(rng, "getstate", NULL);
        Py_DECREF(rng);
        if (state == NULL)
            return NULL;
        PyObject *words = PyTuple_Check(state) && PyTuple_GET_SIZE(state) >= 2
                              ? PyTuple_GET_ITEM(state, 1)
                              : NULL;
        if (words == NULL || !PyTuple_Check(words) || PyTuple_GET_SIZE(words) != MT_N + 1) {
            Py_DECREF(state);
            PyErr_SetString(PyExc_RuntimeError, "unexpected random.Random state layout");
            return NULL;
        }
        int i;
        for (i = 0; i < MT_N; i++) {
            unsigned long word = PyLong_AsUnsignedLong(PyTuple_GET_ITEM(words, i));
            if (word == (unsigned long)-1 && PyErr_Occurred()) {
                Py_DECREF(state);
                return NULL;
            }
            mt[i] = (uint32_t)word;
        }
        mti = (int)PyLong_AsLong(PyTuple_GET_ITEM(words, MT_N));
        Py_DECREF(state);
        if (mti == -1 && PyErr_Occurred())
            return NULL;
    }

    Sketch *sketch =
        sketch_create(sketch_entries, 16, sample_factor, doorkeeper, conservative, seed);
    if (sketch == NULL)
        return NULL;
    Sketch *short_sketch = NULL;
    if (adaptive_aging) {
        short_sketch = sketch_create(sketch_entries, 16,
                                     sample_factor / 2 > 1 ? sample_factor / 2 : 1,
                                     doorkeeper, conservative, seed);
        if (short_sketch == NULL) {
            Py_DECREF(sketch);
            return NULL;
        }
    }
    WTinyLFU *self = (WTinyLFU *)policy_alloc(type, capacity);
    if (self == NULL || core_init(&self->disputes) < 0) {
        Py_DECREF(sketch);
        Py_XDECREF(short_sketch);
        Py_XDECREF(self);
        return NULL;
    }
    self->sketch = sketch;
    self->short_sketch = short_sketch;
    self->adaptation = adaptation;
    self->window_percent = window_percent;
    self->shadow_floor = (long long)(SHADOW_PERCENT * (double)capacity);
    memcpy(self->mt, mt, sizeof(mt));
    self->mti = mti;
    w_reset_state(self);
    return (PyObject *)self;
}

static PyObject *
WTinyLFU_get_uses_short_memory(WTinyLFU *self, void *Py_UNUSED(c))
{
    return PyBool_FromLong(self->short_memory);
}

static PyObject *
WTinyLFU_get_pending_disputes(WTinyLFU *self, void *Py_UNUSED(c))
{
    return PyLong_FromSsize_t(self->disputes.table.used / 2);
}

/* The segments' keys, oldest first (for tests and debugging). */
static PyObject *
segment_keys(Node *head)
{
    PyObject *list = PyList_New(0);
    if (list == NULL)
        return NULL;
    for (Node *n = head->next; n != head; n = n->next) {
        if (PyList_Append(list, n->key) < 0) {
            Py_DECREF(list);
            return NULL;
        }
    }
    return list;
}

static PyObject *
WTinyLFU_segments(WTinyLFU *self, PyObject *Py_UNUSED(ignored))
{
    PyObject *result = PyDict_New();
    static const char *names[SEG_COUNT] = {"window", "probation", "protected",
                                           "window_shadow", "main_shadow"};
    int s;
    if (result == NULL)
        return NULL;
    for (s = 0; s < SEG_COUNT; s++) {
        PyObject *keys = segment_keys(&self->core.heads[s]);
        if (keys == NULL || PyDict_SetItemString(result, names[s], keys) < 0) {
            Py_XDECREF(keys);
            Py_DECREF(result);
            return NULL;
        }
        Py_DECREF(keys);
    }
    return result;
}

static PyMethodDef WTinyLFU_methods[] = {
    POLICY_METHODS(WTinyLFU),
    {"_segments", (PyCFunction)WTinyLFU_segments, METH_NOARGS,
     "Each list's keys, oldest first (tests)."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef WTinyLFU_getset[] = {
    POLICY_GETSET,
    {"window_maximum", get_long_long, NULL, "The current bound of the LRU window.",
     FIELD(WTinyLFU, window_max)},
    {"protected_maximum", get_long_long, NULL, "The current bound of the protected segment.",
     FIELD(WTinyLFU, protected_max)},
    {"sketch", get_object_or_none, NULL, "The sketch with the long memory.",
     FIELD(WTinyLFU, sketch)},
    {"short_sketch", get_object_or_none, NULL,
     "The sketch that ages twice as fast, or None when aging is fixed.",
     FIELD(WTinyLFU, short_sketch)},
    {"uses_short_memory", (getter)WTinyLFU_get_uses_short_memory, NULL,
     "Whether the duels currently trust the short memory.", NULL},
    {"pending_disputes", (getter)WTinyLFU_get_pending_disputes, NULL,
     "Duels the two sketches decided differently, not settled yet.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

POLICY_TYPE(WTinyLFU, "WTinyLFUPolicy",
            "policies.wtinylfu.WTinyLFUPolicy, compiled: the same decisions, faster.");

/* ============================================================ LRU */
/* LRU keeps nothing beyond the shared head: its one list is core.heads[SEG_WINDOW]. */
typedef Policy LRU;

#define L_ORDER(self) (&(self)->core.heads[SEG_WINDOW])

static void
l_evict(LRU *self, Victims *victims)
{
    Node *order = L_ORDER(self);
    while (self->weight > self->capacity) {
        Node *victim = order->next;
        self->weight -= victim->weight;
        self->core.resident--;
        victims_add(victims, victim->key);
        core_free_node(&self->core, victim);
    }
}

static PyObject *
l_update_node(LRU *self, Node *n, PyObject *key, long long weight)
{
    if (weight > self->capacity) {
        self->weight -= n->weight;
        self->core.resident--;
        core_free_node(&self->core, n);
        core_release(&self->core);
        return Py_BuildValue("[O]", key);
    }
    long long old = n->weight;
    n->weight = weight;
    list_move_to_end(L_ORDER(self), n);
    self->weight += weight - old;
    Victims victims = {NULL, 0};
    l_evict(self, &victims);
    core_release(&self->core);
    return victims_finish(&victims);
}

/* LRU remembers no key that left, so there is never a shadow node. */
static PyObject *
l_insert(LRU *self, PyObject *key, Py_hash_t hash, Node *Py_UNUSED(shadow), long long weight)
{
    if (weight > self->capacity)
        return Py_BuildValue("[O]", key);
    if (table_reserve(&self->core.table, 1) < 0)
        return NULL;
    Node *n = node_new(key, hash, weight, SEG_WINDOW);
    if (n == NULL)
        return NULL;
    table_insert_new(&self->core.table, n);
    list_append(L_ORDER(self), n);
    self->core.resident++;
    self->weight += weight;
    Victims victims = {NULL, 0};
    l_evict(self, &victims);
    core_release(&self->core);
    return victims_finish(&victims);
}

static inline void
l_hit_node(LRU *self, Node *n, PyObject *Py_UNUSED(key), Py_hash_t Py_UNUSED(hash))
{
    list_move_to_end(L_ORDER(self), n);
}

static void
l_drop(LRU *self, Node *n)
{
    self->weight -= n->weight;
}

POLICY_ENTRY_POINTS(LRU, .hit = l_hit_node, .insert = l_insert, .update = l_update_node,
                    .drop = l_drop, .update_converts_weight_first = 1)

static PyObject *
LRU_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"capacity", NULL};
    PyObject *capacity_obj;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O:LRUPolicy", kwlist, &capacity_obj))
        return NULL;
    long long capacity;
    if (as_capacity(type, capacity_obj, &capacity) < 0)
        return NULL;
    return (PyObject *)policy_alloc(type, capacity);
}

static PyObject *
LRU_order(PyObject *self, PyObject *Py_UNUSED(ignored))
{
    return segment_keys(L_ORDER((LRU *)self));
}

static PyMethodDef LRU_methods[] = {
    POLICY_METHODS(LRU),
    {"_order", LRU_order, METH_NOARGS, "The keys, oldest first (tests)."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef LRU_getset[] = {
    POLICY_GETSET,
    {NULL, NULL, NULL, NULL, NULL},
};

POLICY_TYPE(LRU, "LRUPolicy", "policies.lru.LRUPolicy, compiled: the same decisions, faster.");

/* ============================================================ the module */

static int
set_class_attribute(PyTypeObject *type, const char *name, PyObject *value)
{
    if (value == NULL)
        return -1;
    int rc = PyDict_SetItemString(type->tp_dict, name, value);
    Py_DECREF(value);
    PyType_Modified(type);
    return rc;
}

static int
cpolicies_exec(PyObject *module)
{
    if (PyType_Ready(&SketchType) < 0 || PyType_Ready(&WTinyLFUType) < 0 ||
        PyType_Ready(&LRUType) < 0)
        return -1;
    if (set_class_attribute(&WTinyLFUType, "name", PyUnicode_FromString("wtinylfu")) < 0 ||
        set_class_attribute(&LRUType, "name", PyUnicode_FromString("lru")) < 0 ||
        set_class_attribute(&SketchType, "DEPTH", PyLong_FromLong(SKETCH_DEPTH)) < 0)
        return -1;
    if (PyModule_AddObjectRef(module, "FrequencySketch", (PyObject *)&SketchType) < 0 ||
        PyModule_AddObjectRef(module, "WTinyLFUPolicy", (PyObject *)&WTinyLFUType) < 0 ||
        PyModule_AddObjectRef(module, "LRUPolicy", (PyObject *)&LRUType) < 0 ||
        PyModule_AddStringConstant(module, "__source_sha__", STRATACACHE_SOURCE_SHA) < 0)
        return -1;
    return 0;
}

static PyModuleDef_Slot cpolicies_slots[] = {
    {Py_mod_exec, cpolicies_exec},
    {0, NULL},
};

static struct PyModuleDef cpolicies_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "stratacache._cpolicies",
    .m_doc = "W-TinyLFU (with its frequency sketch) and LRU, compiled; see policies/.",
    .m_size = 0,
    .m_slots = cpolicies_slots,
};

PyMODINIT_FUNC
PyInit__cpolicies(void)
{
    return PyModuleDef_Init(&cpolicies_module);
}
