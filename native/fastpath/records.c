/*
 * dra_driver.nvml._records: the hot part of turning a filled fp_inventory_t
 * into Python records, written against the CPython API.
 *
 * Why C: a running driver re-reads the inventory and almost always finds it
 * unchanged, and a cold inventory builds a few hundred small objects. In
 * Python, recognising an unchanged GPU meant slicing its bytes into three
 * bytes objects and comparing them (about 1 us a GPU), and building a GPU's
 * records cost a few us more, far above the NVML calls themselves on a
 * small node. Here:
 *
 *   diff(inventory, previous) compares the meaningful bytes of the inventory
 *     head and of every GPU with a private copy of the last converted
 *     inventory (memcmp, no objects), updates the copy, and answers which
 *     parts changed: the warm path costs one call and no allocation.
 *   same(current, previous, n) does the same for a health sample's bytes.
 *   gpu(inventory, i, built) builds GPU i's GpuRecord, MigRecords and
 *     MigProfiles straight from the struct, for the common case of a GPU that
 *     read cleanly; it answers None for anything that produces a DeviceError
 *     (a failed call, a failed MIG device, an unknown profile id, an odd
 *     profile name), which the Python converter in cffi_backend handles, so
 *     every error rule stays in one place.
 *
 * The struct layout comes from fastpath.h, the same header fastpath.c fills
 * it by; cffi_backend checks at import that its own view agrees.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <string.h>

#include <nvml.h>

#include "fastpath.h"

#define MIB (1024ULL * 1024ULL)

/* The record classes and field names, handed over once by configure(). */
static PyObject *GpuRecord_t, *MigRecord_t, *MigProfile_t;
static PyObject *gpu_fields; /* tuple of 13 interned str, GpuRecord's field order */
static PyObject *no_args;    /* () for object.__new__ */
#define GPU_FIELD_COUNT 13
#define F_MIGS 11
#define F_PROFILES 12

static PyObject *records_configure(PyObject *self, PyObject *args)
{
    PyObject *gpu_t, *mig_t, *profile_t, *fields;

    if (!PyArg_ParseTuple(args, "O!O!O!O!", &PyType_Type, &gpu_t, &PyType_Type, &mig_t,
                          &PyType_Type, &profile_t, &PyTuple_Type, &fields))
        return NULL;
    if (PyTuple_GET_SIZE(fields) != GPU_FIELD_COUNT) {
        PyErr_Format(PyExc_ImportError, "GpuRecord has %zd fields, the builder knows %d",
                     PyTuple_GET_SIZE(fields), GPU_FIELD_COUNT);
        return NULL;
    }
    if (!PyType_IsSubtype((PyTypeObject *)mig_t, &PyTuple_Type)
        || !PyType_IsSubtype((PyTypeObject *)profile_t, &PyTuple_Type)) {
        PyErr_SetString(PyExc_TypeError, "MigRecord and MigProfile must be tuple types");
        return NULL;
    }
    for (Py_ssize_t i = 0; i < GPU_FIELD_COUNT; i++) {
        PyObject *name = PyTuple_GET_ITEM(fields, i);
        if (!PyUnicode_Check(name)) {
            PyErr_SetString(PyExc_TypeError, "field names must be str");
            return NULL;
        }
        Py_INCREF(name);
        PyUnicode_InternInPlace(&name);
        Py_DECREF(name);
    }
    Py_XSETREF(GpuRecord_t, Py_NewRef(gpu_t));
    Py_XSETREF(MigRecord_t, Py_NewRef(mig_t));
    Py_XSETREF(MigProfile_t, Py_NewRef(profile_t));
    Py_XSETREF(gpu_fields, Py_NewRef(fields));
    if (!no_args && !(no_args = PyTuple_New(0)))
        return NULL;
    Py_RETURN_NONE;
}

/* ---- change detection ---------------------------------------------------- */

/* The head fields that decide the snapshot outside the GPUs. */
#define HEAD_END offsetof(fp_inventory_t, gpus)

/* Fill spans[] with GPU g's meaningful byte ranges (see cffi_backend: up to
   profiles[], the profiles filled, max_mig_rc to the last MIG filled). */
static int gpu_spans(const fp_gpu_t *g, size_t spans[3][2])
{
    unsigned int pc = g->profile_count, mc = g->mig_count;

    if (pc > FP_MAX_PROFILES || mc > FP_MAX_MIGS)
        return -1;
    spans[0][0] = 0;
    spans[0][1] = offsetof(fp_gpu_t, profiles);
    spans[1][0] = offsetof(fp_gpu_t, profiles);
    spans[1][1] = offsetof(fp_gpu_t, profiles) + pc * sizeof(fp_profile_t);
    spans[2][0] = offsetof(fp_gpu_t, max_mig_rc);
    spans[2][1] = offsetof(fp_gpu_t, migs) + mc * sizeof(fp_mig_t);
    return 0;
}

static int same_gpu(const fp_gpu_t *a, const fp_gpu_t *b)
{
    size_t spans[3][2];

    if (a->profile_count != b->profile_count || a->mig_count != b->mig_count)
        return 0;
    if (gpu_spans(a, spans) != 0)
        return 0;
    for (int k = 0; k < 3; k++)
        if (memcmp((const char *)a + spans[k][0], (const char *)b + spans[k][0],
                   spans[k][1] - spans[k][0]) != 0)
            return 0;
    return 1;
}

static void copy_gpu(fp_gpu_t *dst, const fp_gpu_t *src)
{
    size_t spans[3][2];

    if (gpu_spans(src, spans) != 0) {
        memset(dst, 0xff, sizeof(*dst)); /* never equal to a sane GPU */
        return;
    }
    for (int k = 0; k < 3; k++)
        memcpy((char *)dst + spans[k][0], (const char *)src + spans[k][0],
               spans[k][1] - spans[k][0]);
}

static int get_inventory(PyObject *obj, Py_buffer *view, int writable)
{
    if (PyObject_GetBuffer(obj, view, writable ? PyBUF_WRITABLE : PyBUF_SIMPLE) != 0)
        return -1;
    if ((size_t)view->len < sizeof(fp_inventory_t)) {
        PyBuffer_Release(view);
        PyErr_Format(PyExc_ValueError, "buffer of %zd bytes is no fp_inventory_t (%zu)",
                     view->len, sizeof(fp_inventory_t));
        return -1;
    }
    return 0;
}

/*
 * diff(inventory, previous) -> int
 *
 * previous: a writable buffer of sizeof(fp_inventory_t) holding the last
 * converted inventory (zeros: none yet), brought up to date here. The answer
 * is 0 when nothing changed, else a bit mask: bit i for GPU position i, bit
 * FP_MAX_GPUS for the head (versions, counts: everything outside the GPUs).
 */
static PyObject *records_diff(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    Py_buffer cur, prev;
    unsigned long long mask = 0;
    int head = 0;

    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "diff(inventory, previous)");
        return NULL;
    }
    if (get_inventory(args[0], &cur, 0) != 0)
        return NULL;
    if (get_inventory(args[1], &prev, 1) != 0) {
        PyBuffer_Release(&cur);
        return NULL;
    }
    {
        const fp_inventory_t *a = cur.buf;
        fp_inventory_t *b = prev.buf;
        unsigned int n = a->gpu_count < FP_MAX_GPUS ? a->gpu_count : FP_MAX_GPUS;

        if (memcmp(a, b, HEAD_END) != 0) {
            head = 1;
            memcpy(b, a, HEAD_END);
        }
        for (unsigned int i = 0; i < n; i++) {
            if (!same_gpu(&a->gpus[i], &b->gpus[i])) {
                mask |= 1ULL << i;
                copy_gpu(&b->gpus[i], &a->gpus[i]);
            }
        }
    }
    PyBuffer_Release(&prev);
    PyBuffer_Release(&cur);
    if (!mask && !head)
        return PyLong_FromLong(0);
    {
        PyObject *bits = PyLong_FromUnsignedLongLong(mask), *out;
        if (!head || !bits)
            return bits;
        /* head bit: mask | 1 << FP_MAX_GPUS (beyond 64 bits, so in Python ints) */
        PyObject *one = PyLong_FromLong(1), *shift = PyLong_FromLong(FP_MAX_GPUS), *hb;
        hb = (one && shift) ? PyNumber_Lshift(one, shift) : NULL;
        out = hb ? PyNumber_Or(bits, hb) : NULL;
        Py_XDECREF(one);
        Py_XDECREF(shift);
        Py_XDECREF(hb);
        Py_DECREF(bits);
        return out;
    }
}

/*
 * same(current, previous, n) -> bool
 *
 * Whether the first n bytes of current equal those of previous (a writable
 * buffer), which is brought up to date when they do not: the health sample's
 * "nothing changed" test, without a bytes object per GPU.
 */
static PyObject *records_same(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    Py_buffer cur, prev;
    Py_ssize_t n;
    int equal;

    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "same(current, previous, n)");
        return NULL;
    }
    n = PyLong_AsSsize_t(args[2]);
    if (n == -1 && PyErr_Occurred())
        return NULL;
    if (PyObject_GetBuffer(args[0], &cur, PyBUF_SIMPLE) != 0)
        return NULL;
    if (PyObject_GetBuffer(args[1], &prev, PyBUF_WRITABLE) != 0) {
        PyBuffer_Release(&cur);
        return NULL;
    }
    if (n < 0 || n > cur.len || n > prev.len) {
        PyBuffer_Release(&prev);
        PyBuffer_Release(&cur);
        PyErr_SetString(PyExc_ValueError, "n exceeds a buffer");
        return NULL;
    }
    equal = memcmp(cur.buf, prev.buf, (size_t)n) == 0;
    if (!equal)
        memcpy(prev.buf, cur.buf, (size_t)n);
    PyBuffer_Release(&prev);
    PyBuffer_Release(&cur);
    return PyBool_FromLong(equal);
}

/* ---- record building ----------------------------------------------------- */

static PyObject *pascal_str(const char *p)
{
    return PyUnicode_DecodeUTF8(p + 1, (unsigned char)p[0], "replace");
}

static PyObject *pair_of(PyObject *a, PyObject *b)
{
    PyObject *t = (a && b) ? PyTuple_New(2) : NULL;

    if (!t) {
        Py_XDECREF(a);
        Py_XDECREF(b);
        return NULL;
    }
    PyTuple_SET_ITEM(t, 0, a);
    PyTuple_SET_ITEM(t, 1, b);
    return t;
}

static PyObject *uint_pair(unsigned int a, unsigned int b)
{
    return pair_of(PyLong_FromUnsignedLong(a), PyLong_FromUnsignedLong(b));
}

static PyObject *int_pair(int a, int b)
{
    return pair_of(PyLong_FromLong(a), PyLong_FromLong(b));
}

static int unsupported(int rc)
{
    return rc == NVML_ERROR_NOT_SUPPORTED || rc == NVML_ERROR_FUNCTION_NOT_FOUND;
}

/* A tuple-subclass instance (NamedTuple) from n new references (stolen). */
static PyObject *named_tuple(PyObject *type, Py_ssize_t n, PyObject **items)
{
    PyTypeObject *tp = (PyTypeObject *)type;
    PyObject *t = tp->tp_alloc(tp, n);
    Py_ssize_t k;

    for (k = 0; k < n; k++)
        if (!items[k])
            break;
    if (!t || k < n) {
        for (k = 0; k < n; k++)
            Py_XDECREF(items[k]);
        Py_XDECREF(t);
        return NULL;
    }
    for (k = 0; k < n; k++)
        PyTuple_SET_ITEM(t, k, items[k]);
    return t;
}

/* Profile name as _common.profile_name(): strip, drop a "MIG " prefix, strip.
   NULL without an exception when the name holds a byte Python's str.strip()
   might judge differently (not printable ASCII): the caller falls back. */
static PyObject *profile_name(const char *p)
{
    const unsigned char *s = (const unsigned char *)p + 1;
    size_t n = (unsigned char)p[0], a = 0, b;

    for (size_t k = 0; k < n; k++)
        if (s[k] < 0x20 || s[k] > 0x7e)
            return NULL;
    b = n;
    while (a < b && s[a] == ' ')
        a++;
    while (b > a && s[b - 1] == ' ')
        b--;
    if (b - a >= 4 && memcmp(s + a, "MIG ", 4) == 0) {
        a += 4;
        while (a < b && s[a] == ' ')
            a++;
    }
    return PyUnicode_DecodeASCII((const char *)s + a, (Py_ssize_t)(b - a), "strict");
}

static PyObject *profile_record(const fp_profile_t *pr, int *odd)
{
    unsigned int n = pr->placements_rc == NVML_SUCCESS ? pr->placement_count : 0;
    PyObject *placements, *name, *items[11];

    if (n > FP_MAX_PLACEMENTS)
        n = FP_MAX_PLACEMENTS;
    name = profile_name(pr->name);
    if (!name) {
        if (!PyErr_Occurred())
            *odd = 1;
        return NULL;
    }
    placements = PyTuple_New(n);
    if (!placements) {
        Py_DECREF(name);
        return NULL;
    }
    for (unsigned int k = 0; k < n; k++) {
        PyObject *pair = uint_pair(pr->placements[k].start, pr->placements[k].size);
        if (!pair) {
            Py_DECREF(placements);
            Py_DECREF(name);
            return NULL;
        }
        PyTuple_SET_ITEM(placements, k, pair);
    }
    items[0] = PyLong_FromUnsignedLong(pr->id);
    items[1] = name;
    items[2] = PyLong_FromUnsignedLong(pr->slice_count);
    items[3] = PyLong_FromUnsignedLongLong(pr->memory_mb * MIB);
    items[4] = PyLong_FromUnsignedLong(pr->multiprocessors);
    items[5] = PyLong_FromUnsignedLong(pr->copy_engines);
    items[6] = PyLong_FromUnsignedLong(pr->decoders);
    items[7] = PyLong_FromUnsignedLong(pr->encoders);
    items[8] = PyLong_FromUnsignedLong(pr->jpeg_engines);
    items[9] = PyLong_FromUnsignedLong(pr->ofa_engines);
    items[10] = placements;
    return named_tuple(MigProfile_t, 11, items);
}

static PyObject *mig_record(const fp_mig_t *m, PyObject *profile)
{
    PyObject *items[15];

    items[0] = PyLong_FromUnsignedLong(m->slot);
    items[1] = pascal_str(m->uuid);
    items[2] = PyLong_FromUnsignedLong(m->gpu_instance_id);
    items[3] = PyLong_FromUnsignedLong(m->compute_instance_id);
    items[4] = PyLong_FromUnsignedLong(m->gi_profile_id);
    items[5] = Py_NewRef(profile);
    items[6] = PyLong_FromUnsignedLong(m->placement_start);
    items[7] = PyLong_FromUnsignedLong(m->placement_size);
    items[8] = PyLong_FromUnsignedLong(m->multiprocessors);
    items[9] = PyLong_FromUnsignedLong(m->copy_engines);
    items[10] = PyLong_FromUnsignedLong(m->decoders);
    items[11] = PyLong_FromUnsignedLong(m->encoders);
    items[12] = PyLong_FromUnsignedLong(m->jpeg_engines);
    items[13] = PyLong_FromUnsignedLong(m->ofa_engines);
    items[14] = PyLong_FromUnsignedLongLong(m->memory_mb * MIB);
    return named_tuple(MigRecord_t, 15, items);
}

/* An optional int field: the value on SUCCESS, None when unsupported, and
   NULL (fallback) for any other code. */
static PyObject *optional_uint(int rc, unsigned long long value, int *odd)
{
    if (rc == NVML_SUCCESS)
        return PyLong_FromUnsignedLongLong(value);
    if (unsupported(rc))
        Py_RETURN_NONE;
    *odd = 1;
    return NULL;
}

/* The profiles of GPU i: shared with an earlier GPU of the same model when
   its profile bytes are equal and it built a record; else built. */
static PyObject *gpu_profiles(const fp_inventory_t *inv, unsigned int i, PyObject *built,
                              int *odd)
{
    const fp_gpu_t *g = &inv->gpus[i];
    size_t bytes = g->profile_count * sizeof(fp_profile_t);
    Py_ssize_t have = PyList_GET_SIZE(built);
    PyObject *out;

    if (g->profile_count == 0)
        return PyTuple_New(0);
    for (unsigned int j = 0; j < i && (Py_ssize_t)j < have; j++) {
        const fp_gpu_t *h = &inv->gpus[j];
        PyObject *rec = PyList_GET_ITEM(built, j);
        if (h->profile_count == g->profile_count && Py_IS_TYPE(rec, (PyTypeObject *)GpuRecord_t)
            && memcmp(h->profiles, g->profiles, bytes) == 0) {
            out = PyObject_GetAttr(rec, PyTuple_GET_ITEM(gpu_fields, F_PROFILES));
            if (out && PyTuple_Check(out) && PyTuple_GET_SIZE(out) == g->profile_count)
                return out;
            Py_XDECREF(out);
            PyErr_Clear();
        }
    }
    out = PyTuple_New(g->profile_count);
    if (!out)
        return NULL;
    for (unsigned int p = 0; p < g->profile_count; p++) {
        PyObject *rec = profile_record(&g->profiles[p], odd);
        if (!rec) {
            Py_DECREF(out);
            return NULL;
        }
        PyTuple_SET_ITEM(out, p, rec);
    }
    return out;
}

/* The MIG records of GPU g (profiles built: names by id from them). */
static PyObject *gpu_migs(const fp_gpu_t *g, PyObject *profiles, int *odd)
{
    PyObject *out;

    if (g->max_mig_rc != NVML_SUCCESS || g->mig_failed || g->max_mig_count > FP_MAX_MIGS
        || g->mig_count > FP_MAX_MIGS) {
        *odd = 1; /* errors to report: the Python converter's job */
        return NULL;
    }
    out = PyTuple_New(g->mig_count);
    if (!out)
        return NULL;
    for (unsigned int k = 0; k < g->mig_count; k++) {
        const fp_mig_t *m = &g->migs[k];
        PyObject *name = NULL, *rec;
        /* the first profile with the id names it, as _common.profile_by_id */
        for (unsigned int p = 0; p < g->profile_count; p++) {
            if (g->profiles[p].id == m->gi_profile_id) {
                name = PyTuple_GET_ITEM(PyTuple_GET_ITEM(profiles, p), 1);
                break;
            }
        }
        if (!name) {
            *odd = 1;
            Py_DECREF(out);
            return NULL;
        }
        rec = mig_record(m, name);
        if (!rec) {
            Py_DECREF(out);
            return NULL;
        }
        PyTuple_SET_ITEM(out, k, rec);
    }
    return out;
}

static PyObject *gpu_record(const fp_inventory_t *inv, unsigned int i, PyObject *built)
{
    const fp_gpu_t *g = &inv->gpus[i];
    PyObject *v[GPU_FIELD_COUNT] = {0};
    PyObject *obj = NULL;
    int odd = 0, k;

    if (g->stop_rc != NVML_SUCCESS)
        Py_RETURN_NONE;
    v[0] = PyLong_FromUnsignedLong(g->index);
    v[1] = PyLong_FromUnsignedLong(g->minor);
    v[2] = pascal_str(g->uuid);
    if (g->name_rc == NVML_SUCCESS)
        v[3] = pascal_str(g->name);
    else if (unsupported(g->name_rc))
        v[3] = PyUnicode_New(0, 0);
    else
        odd = 1;
    if (!odd)
        v[4] = optional_uint(g->brand_rc, g->brand, &odd);
    if (!odd)
        v[5] = optional_uint(g->arch_rc, g->architecture, &odd);
    if (!odd) {
        if (g->cc_rc == NVML_SUCCESS)
            v[6] = int_pair(g->cc_major, g->cc_minor);
        else if (unsupported(g->cc_rc))
            v[6] = Py_NewRef(Py_None);
        else
            odd = 1;
    }
    if (!odd)
        v[7] = optional_uint(g->memory_rc, g->memory_total, &odd);
    if (!odd) {
        if (g->pci_rc == NVML_SUCCESS)
            v[8] = pascal_str(g->bus_id);
        else if (unsupported(g->pci_rc))
            v[8] = PyUnicode_New(0, 0);
        else
            odd = 1;
    }
    if (!odd) {
        if (g->mig_mode_rc == NVML_SUCCESS) {
            v[9] = PyLong_FromUnsignedLong(g->mig_current);
            v[10] = PyLong_FromUnsignedLong(g->mig_pending);
        } else if (unsupported(g->mig_mode_rc)) {
            v[9] = Py_NewRef(Py_None);
            v[10] = Py_NewRef(Py_None);
        } else {
            odd = 1;
        }
    }
    if (!odd && !PyErr_Occurred())
        v[12] = gpu_profiles(inv, i, built, &odd);
    if (!odd && !PyErr_Occurred()) {
        if (g->mig_mode_rc == NVML_SUCCESS && g->mig_current == NVML_DEVICE_MIG_ENABLE)
            v[11] = gpu_migs(g, v[12], &odd);
        else
            v[11] = PyTuple_New(0);
    }
    if (odd || PyErr_Occurred())
        goto out;
    for (k = 0; k < GPU_FIELD_COUNT; k++)
        if (!v[k])
            goto out;
    /* object.__new__(GpuRecord), then object.__setattr__ for each field, as
       the frozen dataclass's __init__ does; from C it stores into the
       instance's shared-key inline values, with no dict built at all. */
    obj = PyBaseObject_Type.tp_new((PyTypeObject *)GpuRecord_t, no_args, NULL);
    if (!obj)
        goto out;
    for (k = 0; k < GPU_FIELD_COUNT; k++) {
        if (PyObject_GenericSetAttr(obj, PyTuple_GET_ITEM(gpu_fields, k), v[k]) != 0) {
            Py_CLEAR(obj);
            goto out;
        }
    }
out:
    for (k = 0; k < GPU_FIELD_COUNT; k++)
        Py_XDECREF(v[k]);
    if (!obj && !PyErr_Occurred())
        Py_RETURN_NONE; /* odd: the Python converter builds it, with its errors */
    return obj;
}

/*
 * gpu(inventory, i, built) -> GpuRecord | None
 *
 * built: the records of positions 0..i-1 of this inventory (None where a GPU
 * has none), for sharing equal profile tuples.
 */
static PyObject *records_gpu(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    Py_buffer cur;
    PyObject *out;
    Py_ssize_t i;

    if (!GpuRecord_t) {
        PyErr_SetString(PyExc_RuntimeError, "configure() first");
        return NULL;
    }
    if (nargs != 3 || !PyList_Check(args[2])) {
        PyErr_SetString(PyExc_TypeError, "gpu(inventory, index, built: list)");
        return NULL;
    }
    i = PyLong_AsSsize_t(args[1]);
    if (i == -1 && PyErr_Occurred())
        return NULL;
    if (get_inventory(args[0], &cur, 0) != 0)
        return NULL;
    if (i < 0 || i >= FP_MAX_GPUS || (unsigned int)i >= ((fp_inventory_t *)cur.buf)->gpu_count) {
        PyBuffer_Release(&cur);
        PyErr_SetString(PyExc_IndexError, "no such GPU position");
        return NULL;
    }
    out = gpu_record(cur.buf, (unsigned int)i, args[2]);
    PyBuffer_Release(&cur);
    return out;
}

static PyMethodDef records_methods[] = {
    {"configure", records_configure, METH_VARARGS,
     "configure(GpuRecord, MigRecord, MigProfile, gpu_field_names)"},
    {"diff", (PyCFunction)(void (*)(void))records_diff, METH_FASTCALL,
     "diff(inventory, previous) -> changed-parts mask (0: unchanged)"},
    {"same", (PyCFunction)(void (*)(void))records_same, METH_FASTCALL,
     "same(current, previous, n) -> whether n bytes are equal (previous updated if not)"},
    {"gpu", (PyCFunction)(void (*)(void))records_gpu, METH_FASTCALL,
     "gpu(inventory, i, built) -> GpuRecord, or None for the Python converter"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef records_module = {
    PyModuleDef_HEAD_INIT, "_records", "Inventory records from fp_inventory_t.", -1,
    records_methods,
};

PyMODINIT_FUNC PyInit__records(void)
{
    PyObject *m = PyModule_Create(&records_module);

    if (!m)
        return NULL;
    if (PyModule_AddIntConstant(m, "INVENTORY_SIZE", (long)sizeof(fp_inventory_t)) != 0
        || PyModule_AddIntConstant(m, "HEAD_BIT", FP_MAX_GPUS) != 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
