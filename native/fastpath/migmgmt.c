/*
 * MIG management fast path (see migmgmt.h).
 *
 * fpm_create: parent by UUID -> the GI profile (its slice count) -> the
 * placement's size -> nvmlDeviceCreateGpuInstanceWithPlacement -> the CI
 * profile covering the whole GI -> nvmlGpuInstanceCreateComputeInstance ->
 * the new MIG device's UUID. Any failure after the GI exists destroys what
 * was made, so a create either yields a whole MIG device or nothing (unless
 * the rollback itself fails, which the result says).
 *
 * fpm_destroy: the CI, then the GI. A GI that is already gone answers
 * NOT_FOUND (the caller decides whether that is success).
 *
 * No lock is held across NVML: the caller serialises creates and destroys
 * per GPU (NVML serialises them anyway); `busy` only keeps fpm_close from
 * shutting NVML down under a call in flight.
 */
#define _GNU_SOURCE
#include "migmgmt.h"

#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <nvml.h>

#pragma GCC diagnostic ignored "-Wdeprecated-declarations"

_Static_assert(sizeof(((fpm_result_t *)0)->uuid) >= NVML_DEVICE_UUID_V2_BUFFER_SIZE, "uuid");

#define FPM_SYMBOLS(X)                                   \
    X(nvmlInit_v2)                                       \
    X(nvmlShutdown)                                      \
    X(nvmlErrorString)                                   \
    X(nvmlDeviceGetHandleByUUID)                         \
    X(nvmlDeviceGetGpuInstanceProfileInfoByIdV)          \
    X(nvmlDeviceGetGpuInstanceProfileInfoV)              \
    X(nvmlDeviceGetGpuInstancePossiblePlacements_v2)     \
    X(nvmlDeviceCreateGpuInstanceWithPlacement)          \
    X(nvmlGpuInstanceGetInfo)                            \
    X(nvmlGpuInstanceGetComputeInstanceProfileInfoV)     \
    X(nvmlGpuInstanceGetComputeInstanceProfileInfo)      \
    X(nvmlGpuInstanceCreateComputeInstance)              \
    X(nvmlComputeInstanceGetInfo_v2)                     \
    X(nvmlDeviceGetMaxMigDeviceCount)                    \
    X(nvmlDeviceGetMigDeviceHandleByIndex)               \
    X(nvmlDeviceGetGpuInstanceId)                        \
    X(nvmlDeviceGetComputeInstanceId)                    \
    X(nvmlDeviceGetUUID)                                 \
    X(nvmlDeviceGetGpuInstanceById)                      \
    X(nvmlGpuInstanceGetComputeInstanceById)             \
    X(nvmlComputeInstanceDestroy)                        \
    X(nvmlGpuInstanceDestroy)                            \
    X(nvmlDeviceGetGpuInstances)                         \
    X(nvmlGpuInstanceGetComputeInstances)

#define FPM_STR(x) #x
#define FPM_XSTR(x) FPM_STR(x)
#define FPM_CHECK_NAME(name)                                          \
    _Static_assert(sizeof(FPM_STR(name)) == sizeof(FPM_XSTR(name)),   \
                   "nvml.h renames " #name ": use the versioned symbol");
FPM_SYMBOLS(FPM_CHECK_NAME)

struct fpm_syms {
#define FPM_MEMBER(name) __typeof__(&name) name;
    FPM_SYMBOLS(FPM_MEMBER)
#undef FPM_MEMBER
};

struct fpm_ctx {
    void *lib;
    struct fpm_syms s;
    char missing[1024];
    int initialized;
    unsigned int busy;
    unsigned long long calls;
};

static const char *const call_names[FPM_CALL_COUNT_OF_CALLS] = {
    [FPM_CALL_NONE] = "",
    [FPM_CALL_HANDLE_BY_UUID] = "nvmlDeviceGetHandleByUUID",
    [FPM_CALL_PROFILE_INFO] = "nvmlDeviceGetGpuInstanceProfileInfoByIdV",
    [FPM_CALL_PLACEMENTS] = "nvmlDeviceGetGpuInstancePossiblePlacements_v2",
    [FPM_CALL_CREATE_GI] = "nvmlDeviceCreateGpuInstanceWithPlacement",
    [FPM_CALL_GI_INFO] = "nvmlGpuInstanceGetInfo",
    [FPM_CALL_CI_PROFILE_INFO] = "nvmlGpuInstanceGetComputeInstanceProfileInfoV",
    [FPM_CALL_CREATE_CI] = "nvmlGpuInstanceCreateComputeInstance",
    [FPM_CALL_CI_INFO] = "nvmlComputeInstanceGetInfo_v2",
    [FPM_CALL_MAX_MIG_COUNT] = "nvmlDeviceGetMaxMigDeviceCount",
    [FPM_CALL_MIG_HANDLE] = "nvmlDeviceGetMigDeviceHandleByIndex",
    [FPM_CALL_MIG_UUID] = "nvmlDeviceGetUUID",
    [FPM_CALL_GI_BY_ID] = "nvmlDeviceGetGpuInstanceById",
    [FPM_CALL_CI_BY_ID] = "nvmlGpuInstanceGetComputeInstanceById",
    [FPM_CALL_DESTROY_CI] = "nvmlComputeInstanceDestroy",
    [FPM_CALL_DESTROY_GI] = "nvmlGpuInstanceDestroy",
    [FPM_CALL_INIT] = "nvmlInit_v2",
    [FPM_CALL_GPU_INSTANCES] = "nvmlDeviceGetGpuInstances",
    [FPM_CALL_COMPUTE_INSTANCES] = "nvmlGpuInstanceGetComputeInstances",
};

const char *fpm_call_name(int call)
{
    if (call < 0 || call >= FPM_CALL_COUNT_OF_CALLS || call_names[call] == NULL)
        return "";
    return call_names[call];
}

#define NV(ctx, fn, ...)                                            \
    (__atomic_fetch_add(&(ctx)->calls, 1, __ATOMIC_RELAXED),       \
     (ctx)->s.fn ? (int)(ctx)->s.fn(__VA_ARGS__) : (int)NVML_ERROR_FUNCTION_NOT_FOUND)

fpm_ctx_t *fpm_open(const char *path, char *err, size_t err_len)
{
    const char *lib_path = (path && *path) ? path : "libnvidia-ml.so.1";
    struct fpm_ctx *ctx = calloc(1, sizeof(*ctx));

    if (err && err_len)
        err[0] = '\0';
    if (!ctx) {
        if (err && err_len)
            snprintf(err, err_len, "out of memory");
        return NULL;
    }
    dlerror();
    ctx->lib = dlopen(lib_path, RTLD_NOW | RTLD_LOCAL);
    if (!ctx->lib) {
        if (err && err_len)
            snprintf(err, err_len, "%s", dlerror());
        free(ctx);
        return NULL;
    }
#define FPM_RESOLVE(name)                                                   \
    ctx->s.name = (__typeof__(&name))dlsym(ctx->lib, #name);                \
    if (!ctx->s.name) {                                                     \
        size_t used = strlen(ctx->missing);                                 \
        if (used + sizeof(#name) + 1 < sizeof(ctx->missing))                \
            snprintf(ctx->missing + used, sizeof(ctx->missing) - used, "%s%s", \
                     used ? "," : "", #name);                               \
    }
    FPM_SYMBOLS(FPM_RESOLVE)
#undef FPM_RESOLVE
    return ctx;
}

int fpm_init(fpm_ctx_t *ctx)
{
    int rc = NV(ctx, nvmlInit_v2);

    if (rc == NVML_SUCCESS)
        ctx->initialized = 1;
    return rc;
}

int fpm_missing_symbols(fpm_ctx_t *ctx, char *buf, size_t len)
{
    if (!buf || !len)
        return 0;
    snprintf(buf, len, "%s", ctx->missing);
    return (int)strlen(buf);
}

const char *fpm_error_string(fpm_ctx_t *ctx, int rc)
{
    return ctx->s.nvmlErrorString ? ctx->s.nvmlErrorString((nvmlReturn_t)rc) : NULL;
}

#define FAIL(out, c, r) ((out)->call = (c), (out)->rc = (r))

/* The GI profile's slice count, by id (ByIdV, else a walk of the indices). */
static int gi_slices(struct fpm_ctx *ctx, nvmlDevice_t dev, unsigned int profile_id,
                     unsigned int *slices)
{
    nvmlGpuInstanceProfileInfo_v2_t info;
    unsigned int p;
    int rc;

    memset(&info, 0, sizeof(info));
    info.version = nvmlGpuInstanceProfileInfo_v2;
    rc = NV(ctx, nvmlDeviceGetGpuInstanceProfileInfoByIdV, dev, profile_id, &info);
    if (rc != NVML_ERROR_FUNCTION_NOT_FOUND) {
        *slices = info.sliceCount;
        return rc;
    }
    if (!ctx->s.nvmlDeviceGetGpuInstanceProfileInfoV)
        return NVML_ERROR_FUNCTION_NOT_FOUND;
    for (p = 0; p < NVML_GPU_INSTANCE_PROFILE_COUNT; p++) {
        memset(&info, 0, sizeof(info));
        info.version = nvmlGpuInstanceProfileInfo_v2;
        rc = NV(ctx, nvmlDeviceGetGpuInstanceProfileInfoV, dev, p, &info);
        if (rc == NVML_ERROR_GPU_IS_LOST || rc == NVML_ERROR_UNINITIALIZED)
            return rc;
        if (rc == NVML_SUCCESS && info.id == profile_id) {
            *slices = info.sliceCount;
            return NVML_SUCCESS;
        }
    }
    return NVML_ERROR_INVALID_ARGUMENT;
}

static int ci_profile_index(unsigned int slices, unsigned int *out)
{
    switch (slices) {
    case 1: *out = NVML_COMPUTE_INSTANCE_PROFILE_1_SLICE; return 0;
    case 2: *out = NVML_COMPUTE_INSTANCE_PROFILE_2_SLICE; return 0;
    case 3: *out = NVML_COMPUTE_INSTANCE_PROFILE_3_SLICE; return 0;
    case 4: *out = NVML_COMPUTE_INSTANCE_PROFILE_4_SLICE; return 0;
    case 6: *out = NVML_COMPUTE_INSTANCE_PROFILE_6_SLICE; return 0;
    case 7: *out = NVML_COMPUTE_INSTANCE_PROFILE_7_SLICE; return 0;
    case 8: *out = NVML_COMPUTE_INSTANCE_PROFILE_8_SLICE; return 0;
    default: return -1;
    }
}

/* The id NVML wants for the CI profile at index `index` of this GI. */
static int ci_profile_id(struct fpm_ctx *ctx, nvmlGpuInstance_t gi, unsigned int index,
                         unsigned int *id)
{
    nvmlComputeInstanceProfileInfo_v2_t v2;
    nvmlComputeInstanceProfileInfo_t v1;
    int rc;

    memset(&v2, 0, sizeof(v2));
    v2.version = nvmlComputeInstanceProfileInfo_v2;
    rc = NV(ctx, nvmlGpuInstanceGetComputeInstanceProfileInfoV, gi, index,
            NVML_COMPUTE_INSTANCE_ENGINE_PROFILE_SHARED, &v2);
    if (rc == NVML_SUCCESS) {
        *id = v2.id;
        return rc;
    }
    if (rc != NVML_ERROR_FUNCTION_NOT_FOUND)
        return rc;
    memset(&v1, 0, sizeof(v1));
    rc = NV(ctx, nvmlGpuInstanceGetComputeInstanceProfileInfo, gi, index,
            NVML_COMPUTE_INSTANCE_ENGINE_PROFILE_SHARED, &v1);
    *id = v1.id;
    return rc;
}

/* The UUID of the MIG device that is (gi, ci) of dev. */
static int mig_uuid(struct fpm_ctx *ctx, nvmlDevice_t dev, unsigned int gi, unsigned int ci,
                    fpm_result_t *out)
{
    unsigned int max = 0, i, g, c;
    nvmlDevice_t mig;
    int rc = NV(ctx, nvmlDeviceGetMaxMigDeviceCount, dev, &max);

    if (rc != NVML_SUCCESS) {
        FAIL(out, FPM_CALL_MAX_MIG_COUNT, rc);
        return rc;
    }
    for (i = 0; i < max; i++) {
        rc = NV(ctx, nvmlDeviceGetMigDeviceHandleByIndex, dev, i, &mig);
        if (rc == NVML_ERROR_NOT_FOUND || rc == NVML_ERROR_INVALID_ARGUMENT)
            continue;
        if (rc != NVML_SUCCESS) {
            FAIL(out, FPM_CALL_MIG_HANDLE, rc);
            return rc;
        }
        if (NV(ctx, nvmlDeviceGetGpuInstanceId, mig, &g) != NVML_SUCCESS || g != gi ||
            NV(ctx, nvmlDeviceGetComputeInstanceId, mig, &c) != NVML_SUCCESS || c != ci)
            continue;
        rc = NV(ctx, nvmlDeviceGetUUID, mig, out->uuid, sizeof(out->uuid));
        if (rc != NVML_SUCCESS)
            FAIL(out, FPM_CALL_MIG_UUID, rc);
        return rc;
    }
    FAIL(out, FPM_CALL_MIG_HANDLE, NVML_ERROR_NOT_FOUND);
    return NVML_ERROR_NOT_FOUND;
}

static void reset(fpm_result_t *out)
{
    memset(out, 0, sizeof(*out));
    out->rc = NVML_SUCCESS;
    out->call = FPM_CALL_NONE;
    out->rollback_rc = -1;
}

/* The parent GPU's handle, failing `out` when NVML is not initialised or the UUID unknown. */
static int parent_handle(struct fpm_ctx *ctx, const char *parent_uuid, nvmlDevice_t *dev,
                         fpm_result_t *out)
{
    int rc;

    if (!ctx->initialized) {
        FAIL(out, FPM_CALL_INIT, NVML_ERROR_UNINITIALIZED);
        return NVML_ERROR_UNINITIALIZED;
    }
    rc = NV(ctx, nvmlDeviceGetHandleByUUID, parent_uuid, dev);
    if (rc != NVML_SUCCESS)
        FAIL(out, FPM_CALL_HANDLE_BY_UUID, rc);
    return rc;
}

int fpm_create(fpm_ctx_t *ctx, const char *parent_uuid, unsigned int gi_profile_id,
               unsigned int placement_start, fpm_result_t *out)
{
    nvmlDevice_t dev;
    nvmlGpuInstancePlacement_t placements[16], want;
    nvmlGpuInstance_t gi = NULL;
    nvmlComputeInstance_t ci = NULL;
    nvmlGpuInstanceInfo_t gi_info;
    nvmlComputeInstanceInfo_t ci_info;
    unsigned int count = 16, k, slices = 0, ci_index, ci_id = 0;
    unsigned long long calls0 = ctx->calls;
    int rc, found = 0;

    reset(out);
    __atomic_fetch_add(&ctx->busy, 1, __ATOMIC_SEQ_CST);
    if (parent_handle(ctx, parent_uuid, &dev, out) != NVML_SUCCESS)
        goto done;
    rc = gi_slices(ctx, dev, gi_profile_id, &slices);
    if (rc != NVML_SUCCESS) {
        FAIL(out, FPM_CALL_PROFILE_INFO, rc);
        goto done;
    }
    if (ci_profile_index(slices, &ci_index) != 0) {
        FAIL(out, FPM_CALL_PROFILE_INFO, NVML_ERROR_NOT_SUPPORTED);
        goto done;
    }
    memset(placements, 0, sizeof(placements));
    rc = NV(ctx, nvmlDeviceGetGpuInstancePossiblePlacements_v2, dev, gi_profile_id, placements,
            &count);
    if (rc != NVML_SUCCESS) {
        FAIL(out, FPM_CALL_PLACEMENTS, rc);
        goto done;
    }
    for (k = 0; k < count && k < 16; k++) {
        if (placements[k].start == placement_start) {
            want = placements[k];
            found = 1;
        }
    }
    if (!found) { /* not a placement this profile offers */
        FAIL(out, FPM_CALL_PLACEMENTS, NVML_ERROR_INVALID_ARGUMENT);
        goto done;
    }
    rc = NV(ctx, nvmlDeviceCreateGpuInstanceWithPlacement, dev, gi_profile_id, &want, &gi);
    if (rc != NVML_SUCCESS) {
        FAIL(out, FPM_CALL_CREATE_GI, rc);
        goto done;
    }
    memset(&gi_info, 0, sizeof(gi_info));
    rc = NV(ctx, nvmlGpuInstanceGetInfo, gi, &gi_info);
    if (rc != NVML_SUCCESS) {
        FAIL(out, FPM_CALL_GI_INFO, rc);
        goto rollback;
    }
    out->gpu_instance_id = gi_info.id;
    out->placement_start = gi_info.placement.start;
    out->placement_size = gi_info.placement.size;
    rc = ci_profile_id(ctx, gi, ci_index, &ci_id);
    if (rc != NVML_SUCCESS) {
        FAIL(out, FPM_CALL_CI_PROFILE_INFO, rc);
        goto rollback;
    }
    out->ci_profile_id = ci_id;
    rc = NV(ctx, nvmlGpuInstanceCreateComputeInstance, gi, ci_id, &ci);
    if (rc != NVML_SUCCESS) {
        FAIL(out, FPM_CALL_CREATE_CI, rc);
        goto rollback;
    }
    memset(&ci_info, 0, sizeof(ci_info));
    rc = NV(ctx, nvmlComputeInstanceGetInfo_v2, ci, &ci_info);
    if (rc != NVML_SUCCESS) {
        FAIL(out, FPM_CALL_CI_INFO, rc);
        goto rollback;
    }
    out->compute_instance_id = ci_info.id;
    if (mig_uuid(ctx, dev, gi_info.id, ci_info.id, out) != NVML_SUCCESS)
        goto rollback;
    goto done;
rollback:
    out->rollback_rc = NVML_SUCCESS;
    if (ci != NULL)
        out->rollback_rc = NV(ctx, nvmlComputeInstanceDestroy, ci);
    if (out->rollback_rc == NVML_SUCCESS)
        out->rollback_rc = NV(ctx, nvmlGpuInstanceDestroy, gi);
done:
    out->nvml_calls = ctx->calls - calls0;
    __atomic_fetch_sub(&ctx->busy, 1, __ATOMIC_SEQ_CST);
    return out->rc;
}

int fpm_destroy(fpm_ctx_t *ctx, const char *parent_uuid, unsigned int gpu_instance_id,
                unsigned int compute_instance_id, fpm_result_t *out)
{
    nvmlDevice_t dev;
    nvmlGpuInstance_t gi;
    nvmlComputeInstance_t ci;
    unsigned long long calls0 = ctx->calls;
    int rc;

    reset(out);
    out->gpu_instance_id = gpu_instance_id;
    out->compute_instance_id = compute_instance_id;
    __atomic_fetch_add(&ctx->busy, 1, __ATOMIC_SEQ_CST);
    if (parent_handle(ctx, parent_uuid, &dev, out) != NVML_SUCCESS)
        goto done;
    rc = NV(ctx, nvmlDeviceGetGpuInstanceById, dev, gpu_instance_id, &gi);
    if (rc != NVML_SUCCESS) {
        FAIL(out, FPM_CALL_GI_BY_ID, rc);
        goto done;
    }
    rc = NV(ctx, nvmlGpuInstanceGetComputeInstanceById, gi, compute_instance_id, &ci);
    if (rc == NVML_SUCCESS) {
        rc = NV(ctx, nvmlComputeInstanceDestroy, ci);
        if (rc != NVML_SUCCESS) {
            FAIL(out, FPM_CALL_DESTROY_CI, rc);
            goto done;
        }
    } else if (rc != NVML_ERROR_NOT_FOUND) { /* NOT_FOUND: a GI left without its CI */
        FAIL(out, FPM_CALL_CI_BY_ID, rc);
        goto done;
    }
    rc = NV(ctx, nvmlGpuInstanceDestroy, gi);
    if (rc != NVML_SUCCESS)
        FAIL(out, FPM_CALL_DESTROY_GI, rc);
done:
    out->nvml_calls = ctx->calls - calls0;
    __atomic_fetch_sub(&ctx->busy, 1, __ATOMIC_SEQ_CST);
    return out->rc;
}

int fpm_destroy_at(fpm_ctx_t *ctx, const char *parent_uuid, unsigned int gi_profile_id,
                   unsigned int placement_start, fpm_result_t *out)
{
    nvmlDevice_t dev;
    nvmlGpuInstance_t gis[16];
    nvmlGpuInstanceInfo_t info;
    unsigned int count = 16, i, p, k;
    unsigned long long calls0 = ctx->calls;
    int rc;

    reset(out);
    out->placement_start = placement_start;
    __atomic_fetch_add(&ctx->busy, 1, __ATOMIC_SEQ_CST);
    if (parent_handle(ctx, parent_uuid, &dev, out) != NVML_SUCCESS)
        goto done;
    rc = NV(ctx, nvmlDeviceGetGpuInstances, dev, gi_profile_id, gis, &count);
    if (rc != NVML_SUCCESS) {
        FAIL(out, FPM_CALL_GPU_INSTANCES, rc);
        goto done;
    }
    for (i = 0; i < count && i < 16; i++) {
        memset(&info, 0, sizeof(info));
        if (NV(ctx, nvmlGpuInstanceGetInfo, gis[i], &info) != NVML_SUCCESS ||
            info.placement.start != placement_start)
            continue;
        out->gpu_instance_id = info.id;
        out->placement_size = info.placement.size;
        for (p = 0; p < NVML_COMPUTE_INSTANCE_PROFILE_COUNT; p++) {
            nvmlComputeInstance_t cis[8];
            unsigned int n = 8;
            if (NV(ctx, nvmlGpuInstanceGetComputeInstances, gis[i], p, cis, &n) != NVML_SUCCESS)
                continue;
            for (k = 0; k < n && k < 8; k++) {
                rc = NV(ctx, nvmlComputeInstanceDestroy, cis[k]);
                if (rc != NVML_SUCCESS) {
                    FAIL(out, FPM_CALL_DESTROY_CI, rc);
                    goto done;
                }
            }
        }
        rc = NV(ctx, nvmlGpuInstanceDestroy, gis[i]);
        if (rc != NVML_SUCCESS)
            FAIL(out, FPM_CALL_DESTROY_GI, rc);
        goto done;
    }
    FAIL(out, FPM_CALL_GPU_INSTANCES, NVML_ERROR_NOT_FOUND);
done:
    out->nvml_calls = ctx->calls - calls0;
    __atomic_fetch_sub(&ctx->busy, 1, __ATOMIC_SEQ_CST);
    return out->rc;
}

int fpm_close(fpm_ctx_t *ctx)
{
    if (__atomic_load_n(&ctx->busy, __ATOMIC_SEQ_CST) != 0)
        return NVML_ERROR_IN_USE;
    if (ctx->initialized) {
        ctx->initialized = 0;
        if (ctx->s.nvmlShutdown)
            return (int)ctx->s.nvmlShutdown();
    }
    return NVML_SUCCESS;
}

void fpm_free(fpm_ctx_t *ctx)
{
    if (!ctx)
        return;
    if (ctx->lib)
        dlclose(ctx->lib);
    free(ctx);
}
