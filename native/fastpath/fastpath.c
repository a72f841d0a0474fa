/*
 * NVML fast path (see fastpath.h).
 *
 * libnvidia-ml is never linked: fp_open() dlopen()s a path (the real driver's
 * library or the fake one) and resolves every symbol on its own with dlsym,
 * by its real exported, versioned name. A missing symbol disables the feature
 * that needs it (its rc reads FUNCTION_NOT_FOUND); only init, device count
 * and handle-by-index are required. Each exported fp_* call does one whole
 * job (a complete inventory, one health sample of every GPU, one event wait)
 * so Python crosses into native code once per job, not once per NVML call.
 *
 * Threading: ctx->mu guards the handle cache, the event set and the count of
 * calls in flight; it is never held across an NVML call that may block on a
 * sick GPU. A health sample, a compute-mode change and an event wait take it
 * only to enter (copy the handle, count themselves busy) and to leave, so a
 * call hung on one GPU (a GPU off the bus can block NVML for minutes) stalls
 * neither the samples of other GPUs nor the event wait that reports its XID.
 * Inventory and event registration run once at start, alone, and keep the
 * lock for their whole job. fp_close_timed() waits a bounded time for busy
 * calls to leave; when one does not, NVML is left initialised and the context
 * is never freed (the process is about to exit; a call still inside NVML must
 * not find freed memory or a shut-down library when it returns).
 */
#define _GNU_SOURCE
#include "fastpath.h"

#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <nvml.h>

/* nvml.h marks a few calls we still need on older drivers as deprecated. */
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"

_Static_assert(FP_STR_LEN >= NVML_DEVICE_UUID_V2_BUFFER_SIZE, "uuid buffer");
_Static_assert(FP_STR_LEN >= NVML_DEVICE_NAME_V2_BUFFER_SIZE, "name buffer");
_Static_assert(FP_BUS_ID_LEN >= NVML_DEVICE_PCI_BUS_ID_BUFFER_SIZE, "bus id buffer");
_Static_assert(FP_VERSION_LEN >= NVML_SYSTEM_DRIVER_VERSION_BUFFER_SIZE, "version buffer");
_Static_assert(sizeof(((fp_gpu_t *)0)->profiles) / sizeof(fp_profile_t) == FP_MAX_PROFILES, "");
_Static_assert(sizeof(((fp_gpu_t *)0)->migs) / sizeof(fp_mig_t) == FP_MAX_MIGS, "");
_Static_assert(sizeof(((fp_inventory_t *)0)->gpus) / sizeof(fp_gpu_t) == FP_MAX_GPUS, "");
_Static_assert(sizeof(((fp_profile_t *)0)->placements) / sizeof(fp_placement_t)
                   == FP_MAX_PLACEMENTS, "");

/*
 * Every symbol we resolve: (name, required). Names must be the exported,
 * versioned ones; nvml.h #defines several unversioned names to versioned ones
 * (nvmlInit -> nvmlInit_v2), and a macro here would make dlsym look up the
 * legacy symbol while the pointer is typed for the new one. FP_CHECK_NAME
 * rejects that at compile time: a name that is a macro stringifies differently
 * before and after expansion.
 */
#define FP_SYMBOLS(X)                                  \
    X(nvmlInit_v2, 1)                                  \
    X(nvmlShutdown, 0)                                 \
    X(nvmlErrorString, 0)                              \
    X(nvmlSystemGetDriverVersion, 0)                   \
    X(nvmlSystemGetCudaDriverVersion_v2, 0)            \
    X(nvmlSystemGetCudaDriverVersion, 0)               \
    X(nvmlDeviceGetCount_v2, 1)                        \
    X(nvmlDeviceGetHandleByIndex_v2, 1)                \
    X(nvmlDeviceGetHandleByUUID, 0)                    \
    X(nvmlDeviceGetIndex, 0)                           \
    X(nvmlDeviceGetMinorNumber, 0)                     \
    X(nvmlDeviceGetUUID, 0)                            \
    X(nvmlDeviceGetName, 0)                            \
    X(nvmlDeviceGetBrand, 0)                           \
    X(nvmlDeviceGetArchitecture, 0)                    \
    X(nvmlDeviceGetCudaComputeCapability, 0)           \
    X(nvmlDeviceGetMemoryInfo, 0)                      \
    X(nvmlDeviceGetPciInfo_v3, 0)                      \
    X(nvmlDeviceGetMigMode, 0)                         \
    X(nvmlDeviceGetGpuInstanceProfileInfoV, 0)         \
    X(nvmlDeviceGetGpuInstancePossiblePlacements_v2, 0) \
    X(nvmlDeviceGetMaxMigDeviceCount, 0)               \
    X(nvmlDeviceGetMigDeviceHandleByIndex, 0)          \
    X(nvmlDeviceGetGpuInstanceId, 0)                   \
    X(nvmlDeviceGetComputeInstanceId, 0)               \
    X(nvmlDeviceGetGpuInstanceById, 0)                 \
    X(nvmlGpuInstanceGetInfo, 0)                       \
    X(nvmlDeviceGetAttributes_v2, 0)                   \
    X(nvmlDeviceGetCurrentClocksEventReasons, 0)       \
    X(nvmlDeviceGetCurrentClocksThrottleReasons, 0)    \
    X(nvmlDeviceGetTemperature, 0)                     \
    X(nvmlDeviceGetTotalEccErrors, 0)                  \
    X(nvmlDeviceGetRetiredPagesPendingStatus, 0)       \
    X(nvmlDeviceGetRemappedRows, 0)                    \
    X(nvmlDeviceGetCurrPcieLinkWidth, 0)               \
    X(nvmlDeviceGetMaxPcieLinkWidth, 0)                \
    X(nvmlDeviceGetSupportedEventTypes, 0)             \
    X(nvmlDeviceRegisterEvents, 0)                     \
    X(nvmlEventSetCreate, 0)                           \
    X(nvmlEventSetWait_v2, 0)                          \
    X(nvmlEventSetFree, 0)                             \
    X(nvmlDeviceSetComputeMode, 0)                     \
    X(nvmlDeviceGetFieldValues, 0)

#define FP_STR(x) #x
#define FP_XSTR(x) FP_STR(x)
#define FP_CHECK_NAME(name, req)                                      \
    _Static_assert(sizeof(FP_STR(name)) == sizeof(FP_XSTR(name)),     \
                   "nvml.h renames " #name ": use the versioned symbol");
FP_SYMBOLS(FP_CHECK_NAME)

struct fp_syms {
#define FP_MEMBER(name, req) __typeof__(&name) name;
    FP_SYMBOLS(FP_MEMBER)
#undef FP_MEMBER
};

struct fp_ctx {
    void *lib;
    struct fp_syms s;
    char missing[FP_MISSING_LEN];
    pthread_mutex_t mu;
    pthread_cond_t idle;
    unsigned int busy;   /* NVML calls in flight without mu held */
    unsigned int closers; /* threads inside fp_close_timed: fp_free must not free */
    int shut;             /* nvmlShutdown done (or never needed) after close */
    int initialized;     /* nvmlInit_v2 succeeded and no shutdown since */
    int closed;
    nvmlDevice_t handles[FP_MAX_GPUS];
    int handle_ok[FP_MAX_GPUS];
    unsigned int handle_count;
    nvmlEventSet_t event_set;
    unsigned long long calls; /* NVML calls made, for the benchmark */
};

static const char *const call_names[FP_CALL_COUNT_OF_CALLS] = {
    [FP_CALL_NONE] = "",
    [FP_CALL_INIT] = "nvmlInit_v2",
    [FP_CALL_DRIVER_VERSION] = "nvmlSystemGetDriverVersion",
    [FP_CALL_CUDA_VERSION] = "nvmlSystemGetCudaDriverVersion_v2",
    [FP_CALL_COUNT] = "nvmlDeviceGetCount_v2",
    [FP_CALL_HANDLE_BY_INDEX] = "nvmlDeviceGetHandleByIndex_v2",
    [FP_CALL_MINOR] = "nvmlDeviceGetMinorNumber",
    [FP_CALL_UUID] = "nvmlDeviceGetUUID",
    [FP_CALL_NAME] = "nvmlDeviceGetName",
    [FP_CALL_BRAND] = "nvmlDeviceGetBrand",
    [FP_CALL_ARCHITECTURE] = "nvmlDeviceGetArchitecture",
    [FP_CALL_COMPUTE_CAPABILITY] = "nvmlDeviceGetCudaComputeCapability",
    [FP_CALL_MEMORY] = "nvmlDeviceGetMemoryInfo",
    [FP_CALL_PCI] = "nvmlDeviceGetPciInfo_v3",
    [FP_CALL_MIG_MODE] = "nvmlDeviceGetMigMode",
    [FP_CALL_PROFILE_INFO] = "nvmlDeviceGetGpuInstanceProfileInfoV",
    [FP_CALL_PLACEMENTS] = "nvmlDeviceGetGpuInstancePossiblePlacements_v2",
    [FP_CALL_MAX_MIG_COUNT] = "nvmlDeviceGetMaxMigDeviceCount",
    [FP_CALL_MIG_HANDLE] = "nvmlDeviceGetMigDeviceHandleByIndex",
    [FP_CALL_GPU_INSTANCE_ID] = "nvmlDeviceGetGpuInstanceId",
    [FP_CALL_COMPUTE_INSTANCE_ID] = "nvmlDeviceGetComputeInstanceId",
    [FP_CALL_GPU_INSTANCE_BY_ID] = "nvmlDeviceGetGpuInstanceById",
    [FP_CALL_GPU_INSTANCE_INFO] = "nvmlGpuInstanceGetInfo",
    [FP_CALL_ATTRIBUTES] = "nvmlDeviceGetAttributes_v2",
    [FP_CALL_EVENT_SET_CREATE] = "nvmlEventSetCreate",
    [FP_CALL_SUPPORTED_EVENTS] = "nvmlDeviceGetSupportedEventTypes",
    [FP_CALL_REGISTER_EVENTS] = "nvmlDeviceRegisterEvents",
    [FP_CALL_EVENT_WAIT] = "nvmlEventSetWait_v2",
    [FP_CALL_HANDLE_BY_UUID] = "nvmlDeviceGetHandleByUUID",
    [FP_CALL_SET_COMPUTE_MODE] = "nvmlDeviceSetComputeMode",
    [FP_CALL_SHUTDOWN] = "nvmlShutdown",
    [FP_CALL_FIELD_VALUES] = "nvmlDeviceGetFieldValues",
};

const char *fp_call_name(int call)
{
    if (call < 0 || call >= FP_CALL_COUNT_OF_CALLS || call_names[call] == NULL)
        return "";
    return call_names[call];
}

unsigned int fp_header_profile_count(void)
{
    return NVML_GPU_INSTANCE_PROFILE_COUNT;
}

/* Call a resolved symbol, or answer FUNCTION_NOT_FOUND when it is missing. */
#define NV(ctx, fn, ...)                                   \
    (__atomic_fetch_add(&(ctx)->calls, 1, __ATOMIC_RELAXED), \
     (ctx)->s.fn ? (int)(ctx)->s.fn(__VA_ARGS__) : (int)NVML_ERROR_FUNCTION_NOT_FOUND)

static void copy_str(char *dst, size_t dst_len, const char *src)
{
    snprintf(dst, dst_len, "%s", src ? src : "");
}

/* Rewrite a NUL-terminated string NVML wrote as a length-prefixed one (see
   fastpath.h), zero-padded: canonical bytes (they key Python's record memo)
   that Python's struct reads with its 'p' format, without a NUL search. */
static void to_pascal(char *s, size_t len)
{
    size_t n = strnlen(s, len - 1);

    if (n > 255)
        n = 255;
    memmove(s + 1, s, n);
    s[0] = (char)(unsigned char)n;
    memset(s + 1 + n, 0, len - 1 - n);
}

static void note_missing(struct fp_ctx *ctx, const char *name)
{
    size_t used = strlen(ctx->missing);
    if (used + strlen(name) + 2 >= sizeof(ctx->missing))
        return;
    if (used)
        ctx->missing[used++] = ',';
    memcpy(ctx->missing + used, name, strlen(name) + 1);
}

fp_ctx_t *fp_open(const char *path, char *err, size_t err_len, int *why)
{
    const char *lib_path = (path && *path) ? path : "libnvidia-ml.so.1";
    struct fp_ctx *ctx;

    if (err && err_len)
        err[0] = '\0';
    *why = 0;
    ctx = calloc(1, sizeof(*ctx));
    if (!ctx) {
        *why = FP_OPEN_NO_MEMORY;
        if (err && err_len)
            copy_str(err, err_len, "out of memory");
        return NULL;
    }
    dlerror();
    ctx->lib = dlopen(lib_path, RTLD_NOW | RTLD_LOCAL);
    if (!ctx->lib) {
        *why = FP_OPEN_NO_LIBRARY;
        if (err && err_len)
            copy_str(err, err_len, dlerror());
        free(ctx);
        return NULL;
    }
#define FP_RESOLVE(name, req)                                      \
    ctx->s.name = (__typeof__(&name))dlsym(ctx->lib, #name);       \
    if (!ctx->s.name)                                              \
        note_missing(ctx, #name);
    FP_SYMBOLS(FP_RESOLVE)
#undef FP_RESOLVE
#define FP_REQUIRE(name, req)                                           \
    if ((req) && !ctx->s.name) {                                        \
        *why = FP_OPEN_NO_SYMBOL;                                       \
        if (err && err_len)                                             \
            snprintf(err, err_len, "%s lacks required symbol %s", lib_path, #name); \
        dlclose(ctx->lib);                                              \
        free(ctx);                                                      \
        return NULL;                                                    \
    }
    FP_SYMBOLS(FP_REQUIRE)
#undef FP_REQUIRE
    pthread_mutex_init(&ctx->mu, NULL);
    pthread_cond_init(&ctx->idle, NULL);
    return ctx;
}

int fp_init(fp_ctx_t *ctx)
{
    int rc;

    pthread_mutex_lock(&ctx->mu);
    if (ctx->closed) {
        pthread_mutex_unlock(&ctx->mu);
        return NVML_ERROR_UNINITIALIZED;
    }
    rc = NV(ctx, nvmlInit_v2);
    if (rc == NVML_SUCCESS)
        ctx->initialized = 1;
    pthread_mutex_unlock(&ctx->mu);
    return rc;
}

int fp_missing_symbols(fp_ctx_t *ctx, char *buf, size_t len)
{
    if (!buf || !len)
        return 0;
    copy_str(buf, len, ctx->missing);
    return (int)strlen(buf);
}

const char *fp_error_string(fp_ctx_t *ctx, int rc)
{
    if (!ctx->s.nvmlErrorString)
        return NULL;
    return ctx->s.nvmlErrorString((nvmlReturn_t)rc);
}

unsigned long long fp_nvml_calls(fp_ctx_t *ctx)
{
    unsigned long long n;

    n = __atomic_load_n(&ctx->calls, __ATOMIC_RELAXED);
    return n;
}

/* Count a call in flight (mu held by the caller): fp_close waits for it. */
static void busy_enter(struct fp_ctx *ctx)
{
    ctx->busy++;
}

static void busy_leave(struct fp_ctx *ctx)
{
    pthread_mutex_lock(&ctx->mu);
    ctx->busy--;
    pthread_cond_broadcast(&ctx->idle);
    pthread_mutex_unlock(&ctx->mu);
}

unsigned int fp_busy(fp_ctx_t *ctx)
{
    unsigned int n;

    pthread_mutex_lock(&ctx->mu);
    n = ctx->busy;
    pthread_mutex_unlock(&ctx->mu);
    return n;
}

/* ---- inventory ---------------------------------------------------------- */

/* Record the call that made us abandon a GPU (or MIG slot). */
#define STOP(obj, call, rc) ((obj)->stop_call = (call), (obj)->stop_rc = (rc))

static int profiles_read(struct fp_ctx *ctx, nvmlDevice_t dev, unsigned int count, fp_gpu_t *g)
{
    unsigned int p, n = count < FP_MAX_PROFILES ? count : FP_MAX_PROFILES;

    g->profile_count = 0;
    for (p = 0; p < n; p++) {
        fp_profile_t *pr = &g->profiles[g->profile_count];
        nvmlGpuInstanceProfileInfo_v2_t info;
        nvmlGpuInstancePlacement_t placements[FP_MAX_PLACEMENTS];
        unsigned int pc = FP_MAX_PLACEMENTS, k;
        int rc;

        memset(&info, 0, sizeof(info));
        info.version = nvmlGpuInstanceProfileInfo_v2;
        rc = NV(ctx, nvmlDeviceGetGpuInstanceProfileInfoV, dev, p, &info);
        if (rc == NVML_ERROR_GPU_IS_LOST || rc == NVML_ERROR_UNINITIALIZED) {
            STOP(g, FP_CALL_PROFILE_INFO, rc);
            return rc;
        }
        if (rc != NVML_SUCCESS)
            continue; /* this GPU does not offer profile index p */
        memset(pr, 0, sizeof(*pr)); /* canonical bytes: they key the record memo */
        pr->profile_index = p;
        pr->rc = rc;
        pr->id = info.id;
        pr->slice_count = info.sliceCount;
        pr->multiprocessors = info.multiprocessorCount;
        pr->copy_engines = info.copyEngineCount;
        pr->decoders = info.decoderCount;
        pr->encoders = info.encoderCount;
        pr->jpeg_engines = info.jpegCount;
        pr->ofa_engines = info.ofaCount;
        pr->memory_mb = info.memorySizeMB;
        memcpy(pr->name, info.name, sizeof(pr->name));
        to_pascal(pr->name, sizeof(pr->name));

        memset(placements, 0, sizeof(placements));
        rc = NV(ctx, nvmlDeviceGetGpuInstancePossiblePlacements_v2, dev, info.id, placements, &pc);
        if (rc == NVML_ERROR_GPU_IS_LOST || rc == NVML_ERROR_UNINITIALIZED) {
            STOP(g, FP_CALL_PLACEMENTS, rc);
            return rc;
        }
        /* A GPU has at most 8 memory slices, so FP_MAX_PLACEMENTS always
           suffices; INSUFFICIENT_SIZE would read as "no placements". */
        pr->placements_rc = rc;
        pr->placement_count = 0;
        if (rc == NVML_SUCCESS) {
            pr->placement_count = pc < FP_MAX_PLACEMENTS ? pc : FP_MAX_PLACEMENTS;
            for (k = 0; k < pr->placement_count; k++) {
                pr->placements[k].start = placements[k].start;
                pr->placements[k].size = placements[k].size;
            }
        }
        g->profile_count++;
    }
    return NVML_SUCCESS;
}

/* One MIG slot; returns GPU_IS_LOST/UNINITIALIZED when the parent must go. */
static int mig_read(struct fp_ctx *ctx, nvmlDevice_t parent, unsigned int slot, fp_mig_t *m)
{
    nvmlDevice_t mig;
    nvmlGpuInstance_t gi;
    nvmlGpuInstanceInfo_t gi_info;
    nvmlDeviceAttributes_t attrs;
    int rc;

    memset(m, 0, sizeof(*m)); /* canonical bytes: they key the record memo */
    m->slot = slot;
    m->stop_rc = NVML_SUCCESS;
    m->stop_call = FP_CALL_NONE;
    rc = NV(ctx, nvmlDeviceGetMigDeviceHandleByIndex, parent, slot, &mig);
    m->handle_rc = rc;
    if (rc != NVML_SUCCESS) {
        STOP(m, FP_CALL_MIG_HANDLE, rc);
        return rc;
    }
#define MIG_STEP(call, expr)                                       \
    rc = (expr);                                                   \
    if (rc != NVML_SUCCESS) {                                      \
        STOP(m, call, rc);                                         \
        return rc;                                                 \
    }
    MIG_STEP(FP_CALL_UUID, NV(ctx, nvmlDeviceGetUUID, mig, m->uuid, FP_STR_LEN));
    to_pascal(m->uuid, FP_STR_LEN);
    MIG_STEP(FP_CALL_GPU_INSTANCE_ID, NV(ctx, nvmlDeviceGetGpuInstanceId, mig, &m->gpu_instance_id));
    MIG_STEP(FP_CALL_COMPUTE_INSTANCE_ID,
             NV(ctx, nvmlDeviceGetComputeInstanceId, mig, &m->compute_instance_id));
    MIG_STEP(FP_CALL_GPU_INSTANCE_BY_ID,
             NV(ctx, nvmlDeviceGetGpuInstanceById, parent, m->gpu_instance_id, &gi));
    memset(&gi_info, 0, sizeof(gi_info));
    MIG_STEP(FP_CALL_GPU_INSTANCE_INFO, NV(ctx, nvmlGpuInstanceGetInfo, gi, &gi_info));
    m->gi_profile_id = gi_info.profileId;
    m->placement_start = gi_info.placement.start;
    m->placement_size = gi_info.placement.size;
    memset(&attrs, 0, sizeof(attrs));
    MIG_STEP(FP_CALL_ATTRIBUTES, NV(ctx, nvmlDeviceGetAttributes_v2, mig, &attrs));
#undef MIG_STEP
    m->multiprocessors = attrs.multiprocessorCount;
    m->copy_engines = attrs.sharedCopyEngineCount;
    m->decoders = attrs.sharedDecoderCount;
    m->encoders = attrs.sharedEncoderCount;
    m->jpeg_engines = attrs.sharedJpegCount;
    m->ofa_engines = attrs.sharedOfaCount;
    m->memory_mb = attrs.memorySizeMB;
    return NVML_SUCCESS;
}

static int fatal(int rc)
{
    return rc == NVML_ERROR_GPU_IS_LOST || rc == NVML_ERROR_UNINITIALIZED;
}

/* Read one GPU. Returns UNINITIALIZED when the whole inventory must restart. */
static int gpu_read(struct fp_ctx *ctx, unsigned int index, unsigned int profile_index_count,
                    fp_gpu_t *g)
{
    nvmlDevice_t dev;
    nvmlPciInfo_t pci;
    nvmlMemory_t mem;
    unsigned int slot, slots;
    int rc;

    /* Canonical bytes (no leftovers from an earlier inventory in strings or
       fields a failed call never wrote): Python keys its record memo on them. */
    memset(g, 0, offsetof(fp_gpu_t, profiles));
    g->index = index;
    g->stop_rc = NVML_SUCCESS;
    g->stop_call = FP_CALL_NONE;
    g->minor_rc = g->uuid_rc = g->name_rc = g->brand_rc = g->arch_rc = g->cc_rc = FP_NOT_CALLED;
    g->memory_rc = g->pci_rc = g->mig_mode_rc = g->max_mig_rc = FP_NOT_CALLED;
    g->profile_count = g->mig_count = g->mig_failed = g->max_mig_count = 0;

    rc = NV(ctx, nvmlDeviceGetHandleByIndex_v2, index, &dev);
    if (rc != NVML_SUCCESS) {
        STOP(g, FP_CALL_HANDLE_BY_INDEX, rc);
        return rc;
    }
    ctx->handles[index] = dev;
    ctx->handle_ok[index] = 1;

/* A required field: any failure abandons the GPU. */
#define REQUIRED(field_rc, call, expr)                            \
    g->field_rc = (expr);                                         \
    if (g->field_rc != NVML_SUCCESS) {                            \
        STOP(g, call, g->field_rc);                               \
        return g->field_rc;                                       \
    }
/* An optional field: only GPU_IS_LOST / UNINITIALIZED abandon the GPU. */
#define OPTIONAL(field_rc, call, expr)                            \
    g->field_rc = (expr);                                         \
    if (fatal(g->field_rc)) {                                     \
        STOP(g, call, g->field_rc);                               \
        return g->field_rc;                                       \
    }
    REQUIRED(minor_rc, FP_CALL_MINOR, NV(ctx, nvmlDeviceGetMinorNumber, dev, &g->minor));
    REQUIRED(uuid_rc, FP_CALL_UUID, NV(ctx, nvmlDeviceGetUUID, dev, g->uuid, FP_STR_LEN));
    to_pascal(g->uuid, FP_STR_LEN);
    OPTIONAL(name_rc, FP_CALL_NAME, NV(ctx, nvmlDeviceGetName, dev, g->name, FP_STR_LEN));
    if (g->name_rc != NVML_SUCCESS)
        g->name[0] = '\0';
    to_pascal(g->name, FP_STR_LEN);
    {
        nvmlBrandType_t brand = NVML_BRAND_UNKNOWN;
        OPTIONAL(brand_rc, FP_CALL_BRAND, NV(ctx, nvmlDeviceGetBrand, dev, &brand));
        g->brand = (unsigned int)brand;
    }
    {
        nvmlDeviceArchitecture_t arch = 0;
        OPTIONAL(arch_rc, FP_CALL_ARCHITECTURE, NV(ctx, nvmlDeviceGetArchitecture, dev, &arch));
        g->architecture = (unsigned int)arch;
    }
    OPTIONAL(cc_rc, FP_CALL_COMPUTE_CAPABILITY,
             NV(ctx, nvmlDeviceGetCudaComputeCapability, dev, &g->cc_major, &g->cc_minor));
    memset(&mem, 0, sizeof(mem));
    OPTIONAL(memory_rc, FP_CALL_MEMORY, NV(ctx, nvmlDeviceGetMemoryInfo, dev, &mem));
    g->memory_total = mem.total;
    memset(&pci, 0, sizeof(pci));
    OPTIONAL(pci_rc, FP_CALL_PCI, NV(ctx, nvmlDeviceGetPciInfo_v3, dev, &pci));
    copy_str(g->bus_id, sizeof(g->bus_id), g->pci_rc == NVML_SUCCESS ? pci.busId : "");
    to_pascal(g->bus_id, sizeof(g->bus_id));
    OPTIONAL(mig_mode_rc, FP_CALL_MIG_MODE,
             NV(ctx, nvmlDeviceGetMigMode, dev, &g->mig_current, &g->mig_pending));
#undef REQUIRED
#undef OPTIONAL
    if (g->mig_mode_rc != NVML_SUCCESS)
        return NVML_SUCCESS; /* not MIG capable: no profiles, no MIG devices */

    rc = profiles_read(ctx, dev, profile_index_count, g);
    if (rc != NVML_SUCCESS)
        return rc;
    if (g->mig_current != NVML_DEVICE_MIG_ENABLE)
        return NVML_SUCCESS;

    g->max_mig_rc = NV(ctx, nvmlDeviceGetMaxMigDeviceCount, dev, &g->max_mig_count);
    if (fatal(g->max_mig_rc)) {
        STOP(g, FP_CALL_MAX_MIG_COUNT, g->max_mig_rc);
        return g->max_mig_rc;
    }
    if (g->max_mig_rc != NVML_SUCCESS)
        return NVML_SUCCESS;
    slots = g->max_mig_count < FP_MAX_MIGS ? g->max_mig_count : FP_MAX_MIGS;
    for (slot = 0; slot < slots; slot++) {
        fp_mig_t *m = &g->migs[g->mig_count];

        rc = mig_read(ctx, dev, slot, m);
        if (fatal(rc)) {
            STOP(g, m->stop_call, rc);
            return rc;
        }
        /* An empty slot is normal and not worth a record. */
        if (m->handle_rc == NVML_ERROR_NOT_FOUND || m->handle_rc == NVML_ERROR_INVALID_ARGUMENT)
            continue;
        if (m->stop_rc != NVML_SUCCESS)
            g->mig_failed++;
        g->mig_count++;
    }
    return NVML_SUCCESS;
}

int fp_inventory(fp_ctx_t *ctx, unsigned int profile_index_count, fp_inventory_t *out)
{
    unsigned int i, n;
    unsigned long long calls_before;
    int rc = NVML_SUCCESS;

    pthread_mutex_lock(&ctx->mu);
    calls_before = ctx->calls;
    out->gpu_count = out->device_count = 0;
    out->driver_version[0] = '\0';
    out->cuda_version = 0;
    out->driver_version_rc = out->cuda_version_rc = FP_NOT_CALLED;
    if (ctx->closed || !ctx->initialized) {
        out->count_rc = NVML_ERROR_UNINITIALIZED;
        rc = NVML_ERROR_UNINITIALIZED;
        goto done;
    }
    out->count_rc = NV(ctx, nvmlDeviceGetCount_v2, &out->device_count);
    if (out->count_rc != NVML_SUCCESS) {
        rc = out->count_rc;
        goto done;
    }
    out->driver_version_rc =
        NV(ctx, nvmlSystemGetDriverVersion, out->driver_version, FP_VERSION_LEN);
    if (out->driver_version_rc != NVML_SUCCESS)
        out->driver_version[0] = '\0';
    to_pascal(out->driver_version, FP_VERSION_LEN);
    out->cuda_version_rc = NV(ctx, nvmlSystemGetCudaDriverVersion_v2, &out->cuda_version);
    if (out->cuda_version_rc == NVML_ERROR_FUNCTION_NOT_FOUND)
        out->cuda_version_rc = NV(ctx, nvmlSystemGetCudaDriverVersion, &out->cuda_version);
    if (out->cuda_version_rc != NVML_SUCCESS)
        out->cuda_version = 0;

    memset(ctx->handle_ok, 0, sizeof(ctx->handle_ok));
    n = out->device_count < FP_MAX_GPUS ? out->device_count : FP_MAX_GPUS;
    ctx->handle_count = n;
    for (i = 0; i < n; i++) {
        int grc = gpu_read(ctx, i, profile_index_count, &out->gpus[i]);
        out->gpu_count = i + 1;
        if (grc == NVML_ERROR_UNINITIALIZED) {
            rc = grc; /* driver reloaded under us: the caller re-inits and retries */
            break;
        }
    }
done:
    out->nvml_calls = ctx->calls - calls_before;
    pthread_mutex_unlock(&ctx->mu);
    return rc;
}

/* ---- health ------------------------------------------------------------- */

/* NVML_FI_DEV_GET_GPU_RECOVERY_ACTION through nvmlDeviceGetFieldValues. A
   driver older than 565 does not know the field: it answers the field's
   nvmlReturn with NOT_SUPPORTED or INVALID_ARGUMENT, read as "not supported". */
static void recovery_action_read(struct fp_ctx *ctx, nvmlDevice_t dev, fp_health_t *h)
{
    nvmlFieldValue_t fv;
    int rc;

    memset(&fv, 0, sizeof(fv));
    fv.fieldId = NVML_FI_DEV_GET_GPU_RECOVERY_ACTION;
    rc = NV(ctx, nvmlDeviceGetFieldValues, dev, 1, &fv);
    if (rc == NVML_SUCCESS)
        rc = (int)fv.nvmlReturn;
    if (rc == NVML_ERROR_INVALID_ARGUMENT)
        rc = NVML_ERROR_NOT_SUPPORTED;
    h->recovery_action_rc = rc;
    h->recovery_action = rc == NVML_SUCCESS ? fv.value.uiVal : 0;
}

static void health_read(struct fp_ctx *ctx, nvmlDevice_t dev, fp_health_t *h)
{
    nvmlEnableState_t pending = NVML_FEATURE_DISABLED;
    unsigned int temp = 0;

    h->reasons_rc = NV(ctx, nvmlDeviceGetCurrentClocksEventReasons, dev, &h->reasons);
    if (h->reasons_rc == NVML_ERROR_FUNCTION_NOT_FOUND)
        h->reasons_rc = NV(ctx, nvmlDeviceGetCurrentClocksThrottleReasons, dev, &h->reasons);
    h->temperature_rc = NV(ctx, nvmlDeviceGetTemperature, dev, NVML_TEMPERATURE_GPU, &temp);
    h->temperature = temp;
    h->ecc_corrected_rc = NV(ctx, nvmlDeviceGetTotalEccErrors, dev,
                             NVML_MEMORY_ERROR_TYPE_CORRECTED, NVML_VOLATILE_ECC,
                             &h->ecc_corrected);
    h->ecc_uncorrected_rc = NV(ctx, nvmlDeviceGetTotalEccErrors, dev,
                               NVML_MEMORY_ERROR_TYPE_UNCORRECTED, NVML_VOLATILE_ECC,
                               &h->ecc_uncorrected);
    h->retired_pending_rc = NV(ctx, nvmlDeviceGetRetiredPagesPendingStatus, dev, &pending);
    h->retired_pending = (unsigned int)pending;
    h->remapped_rc = NV(ctx, nvmlDeviceGetRemappedRows, dev, &h->remapped_corrected,
                        &h->remapped_uncorrected, &h->remapped_pending, &h->remapped_failure);
    h->link_width_rc = NV(ctx, nvmlDeviceGetCurrPcieLinkWidth, dev, &h->link_width);
    h->max_link_width_rc = NV(ctx, nvmlDeviceGetMaxPcieLinkWidth, dev, &h->max_link_width);
    recovery_action_read(ctx, dev, h);
}

/* Each GPU is entered and left on its own: the lock is never held while NVML
   answers, so callers may sample different GPUs from different threads at
   once, and one GPU that hangs holds up only the thread sampling it. */
int fp_health(fp_ctx_t *ctx, const unsigned int *indices, unsigned int n, fp_health_t *out)
{
    unsigned int i;

    for (i = 0; i < n; i++) {
        fp_health_t *h = &out[i];
        unsigned int idx = indices[i];
        nvmlDevice_t dev;

        memset(h, 0, sizeof(*h));
        h->index = idx;
        h->handle_rc = FP_NOT_CALLED;
        pthread_mutex_lock(&ctx->mu);
        if (ctx->closed || !ctx->initialized) {
            pthread_mutex_unlock(&ctx->mu);
            return NVML_ERROR_UNINITIALIZED;
        }
        if (idx >= FP_MAX_GPUS || !ctx->handle_ok[idx]) {
            pthread_mutex_unlock(&ctx->mu);
            h->handle_rc = NVML_ERROR_INVALID_ARGUMENT;
            continue;
        }
        dev = ctx->handles[idx];
        busy_enter(ctx);
        pthread_mutex_unlock(&ctx->mu);
        health_read(ctx, dev, h);
        busy_leave(ctx);
    }
    return NVML_SUCCESS;
}

/* ---- events ------------------------------------------------------------- */

int fp_register_events(fp_ctx_t *ctx, unsigned long long mask, const unsigned int *indices,
                       unsigned int n, fp_registration_t *out)
{
    unsigned int i;
    int rc;

    pthread_mutex_lock(&ctx->mu);
    if (ctx->closed || !ctx->initialized) {
        pthread_mutex_unlock(&ctx->mu);
        return NVML_ERROR_UNINITIALIZED;
    }
    if (!ctx->event_set) {
        nvmlEventSet_t set = NULL;
        rc = NV(ctx, nvmlEventSetCreate, &set);
        if (rc != NVML_SUCCESS) {
            pthread_mutex_unlock(&ctx->mu);
            return rc;
        }
        ctx->event_set = set;
    }
    for (i = 0; i < n; i++) {
        fp_registration_t *r = &out[i];
        unsigned int idx = indices[i];
        unsigned long long supported = 0, want;

        r->index = idx;
        r->registered = 0;
        r->call = FP_CALL_NONE;
        if (idx >= FP_MAX_GPUS || !ctx->handle_ok[idx]) {
            r->rc = NVML_ERROR_INVALID_ARGUMENT;
            r->call = FP_CALL_HANDLE_BY_INDEX;
            continue;
        }
        r->rc = NV(ctx, nvmlDeviceGetSupportedEventTypes, ctx->handles[idx], &supported);
        if (r->rc != NVML_SUCCESS) {
            r->call = FP_CALL_SUPPORTED_EVENTS;
            continue;
        }
        want = mask & supported;
        if (!want) {
            r->rc = NVML_ERROR_NOT_SUPPORTED;
            r->call = FP_CALL_SUPPORTED_EVENTS;
            continue;
        }
        r->rc = NV(ctx, nvmlDeviceRegisterEvents, ctx->handles[idx], want, ctx->event_set);
        if (r->rc != NVML_SUCCESS) {
            r->call = FP_CALL_REGISTER_EVENTS;
            continue;
        }
        r->registered = want;
    }
    pthread_mutex_unlock(&ctx->mu);
    return NVML_SUCCESS;
}

int fp_wait_event(fp_ctx_t *ctx, unsigned int timeout_ms, fp_event_t *out)
{
    nvmlEventSet_t set;
    nvmlEventData_t data;
    unsigned int i, idx;

    memset(out, 0, sizeof(*out));
    out->gpu_index = -1;
    pthread_mutex_lock(&ctx->mu);
    if (ctx->closed || !ctx->initialized) {
        pthread_mutex_unlock(&ctx->mu);
        return out->rc = NVML_ERROR_UNINITIALIZED;
    }
    if (!ctx->event_set || !ctx->s.nvmlEventSetWait_v2) {
        pthread_mutex_unlock(&ctx->mu);
        return out->rc = ctx->event_set ? NVML_ERROR_FUNCTION_NOT_FOUND
                                        : NVML_ERROR_INVALID_ARGUMENT;
    }
    set = ctx->event_set;
    busy_enter(ctx);
    __atomic_fetch_add(&ctx->calls, 1, __ATOMIC_RELAXED);
    pthread_mutex_unlock(&ctx->mu);

    memset(&data, 0, sizeof(data));
    out->rc = (int)ctx->s.nvmlEventSetWait_v2(set, &data, timeout_ms);

    pthread_mutex_lock(&ctx->mu);
    if (out->rc == NVML_SUCCESS) {
        out->event_type = data.eventType;
        out->event_data = data.eventData;
        out->gpu_instance_id = data.gpuInstanceId;
        out->compute_instance_id = data.computeInstanceId;
        for (i = 0; i < ctx->handle_count; i++) {
            if (ctx->handle_ok[i] && ctx->handles[i] == data.device) {
                out->gpu_index = (int)i;
                break;
            }
        }
        if (out->gpu_index < 0 && data.device
            && NV(ctx, nvmlDeviceGetIndex, data.device, &idx) == NVML_SUCCESS)
            out->gpu_index = (int)idx;
    }
    ctx->busy--;
    pthread_cond_broadcast(&ctx->idle);
    pthread_mutex_unlock(&ctx->mu);
    return out->rc;
}

/* ---- configuration ------------------------------------------------------ */

int fp_set_compute_mode(fp_ctx_t *ctx, const char *uuid, int mode, int *failed_call)
{
    nvmlDevice_t dev;
    int rc;

    *failed_call = FP_CALL_NONE;
    pthread_mutex_lock(&ctx->mu);
    if (ctx->closed || !ctx->initialized) {
        pthread_mutex_unlock(&ctx->mu);
        return NVML_ERROR_UNINITIALIZED;
    }
    busy_enter(ctx);
    pthread_mutex_unlock(&ctx->mu); /* a GPU that hangs here holds up this caller only */
    rc = NV(ctx, nvmlDeviceGetHandleByUUID, uuid, &dev);
    if (rc != NVML_SUCCESS) {
        *failed_call = FP_CALL_HANDLE_BY_UUID;
    } else {
        rc = NV(ctx, nvmlDeviceSetComputeMode, dev, (nvmlComputeMode_t)mode);
        if (rc != NVML_SUCCESS)
            *failed_call = FP_CALL_SET_COMPUTE_MODE;
    }
    busy_leave(ctx);
    return rc;
}

/* ---- teardown ----------------------------------------------------------- */

int fp_close_timed(fp_ctx_t *ctx, int timeout_ms)
{
    struct timespec until;
    int rc = NVML_SUCCESS;

    pthread_mutex_lock(&ctx->mu);
    ctx->closed = 1; /* new calls are refused from here on */
    if (timeout_ms >= 0) {
        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_sec += timeout_ms / 1000;
        until.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
        if (until.tv_nsec >= 1000000000L) {
            until.tv_sec++;
            until.tv_nsec -= 1000000000L;
        }
    }
    ctx->closers++;
    while (ctx->busy) {
        if (timeout_ms < 0) {
            pthread_cond_wait(&ctx->idle, &ctx->mu);
        } else if (pthread_cond_timedwait(&ctx->idle, &ctx->mu, &until) != 0) {
            break;
        }
    }
    ctx->closers--;
    if (ctx->busy) { /* a call is still inside NVML: leave NVML and ctx alone */
        pthread_mutex_unlock(&ctx->mu);
        return NVML_ERROR_IN_USE;
    }
    if (!ctx->shut) {
        ctx->shut = 1;
        if (ctx->event_set) {
            NV(ctx, nvmlEventSetFree, ctx->event_set);
            ctx->event_set = NULL;
        }
        if (ctx->initialized) {
            rc = NV(ctx, nvmlShutdown);
            ctx->initialized = 0;
        }
        memset(ctx->handle_ok, 0, sizeof(ctx->handle_ok));
        ctx->handle_count = 0;
    }
    pthread_mutex_unlock(&ctx->mu);
    return rc;
}

int fp_close(fp_ctx_t *ctx)
{
    return fp_close_timed(ctx, -1);
}

void fp_free(fp_ctx_t *ctx)
{
    if (!ctx)
        return;
    /* At garbage collection (often interpreter exit) never wait for a call
       hung in NVML: leak the context instead of freeing it under that call. */
    if (fp_close_timed(ctx, 0) == NVML_ERROR_IN_USE)
        return;
    pthread_mutex_lock(&ctx->mu);
    if (ctx->closers) { /* another thread still waits in fp_close_timed */
        pthread_mutex_unlock(&ctx->mu);
        return;
    }
    pthread_mutex_unlock(&ctx->mu);
    /* The library stays mapped: another user in this process (nvidia-ml-py,
       a second backend) may hold the same handle, and unloading NVML under
       live handles is never worth the few pages it would return. */
    pthread_cond_destroy(&ctx->idle);
    pthread_mutex_destroy(&ctx->mu);
    free(ctx);
}
