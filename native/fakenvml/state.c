/*
 * Library state, init/shutdown reference counting, handle validation and the
 * system-level queries.
 */
#define _GNU_SOURCE
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api_common.h"

pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
int g_init_count;
fake_system g_sys;
fake_gpu g_gpus[FAKE_MAX_GPUS];
/* Handles live in static storage so a handle kept across shutdown/init never
 * dangles: like real NVML, it refers to the same index after re-init. */
struct nvmlDevice_st g_dev_handles[FAKE_MAX_GPUS];
struct nvmlDevice_st g_mig_handles[FAKE_MAX_GPUS][FAKE_MAX_MIG_PER_GPU];
struct nvmlGpuInstance_st g_gi_handles[FAKE_MAX_GPUS][FAKE_MAX_MIG_PER_GPU];
struct nvmlComputeInstance_st g_ci_handles[FAKE_MAX_GPUS][FAKE_MAX_MIG_PER_GPU];

void fake_warn(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fputs("fakenvml: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

nvmlReturn_t fake_api_enter(void) {
    pthread_mutex_lock(&g_lock);
    if (g_init_count == 0) {
        pthread_mutex_unlock(&g_lock);
        return NVML_ERROR_UNINITIALIZED;
    }
    fake_faults_refresh();
    return NVML_SUCCESS;
}

void fake_api_leave(void) { pthread_mutex_unlock(&g_lock); }

static int in_array(const void *p, const void *base, size_t elem, size_t count, size_t *idx) {
    uintptr_t a = (uintptr_t)p, b = (uintptr_t)base;
    if (a < b || a >= b + elem * count || (a - b) % elem != 0) return 0;
    *idx = (a - b) / elem;
    return 1;
}

nvmlReturn_t fake_resolve(nvmlDevice_t dev, fake_gpu **gpu, fake_mig **mig) {
    size_t i;
    if (dev == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    if (in_array(dev, g_dev_handles, sizeof g_dev_handles[0], FAKE_MAX_GPUS, &i)) {
        if (i >= (size_t)g_sys.gpu_count) return NVML_ERROR_INVALID_ARGUMENT;
        *gpu = &g_gpus[i];
        *mig = NULL;
    } else if (in_array(dev, g_mig_handles, sizeof g_mig_handles[0][0],
                        FAKE_MAX_GPUS * FAKE_MAX_MIG_PER_GPU, &i)) {
        size_t gi = i / FAKE_MAX_MIG_PER_GPU, slot = i % FAKE_MAX_MIG_PER_GPU;
        if (gi >= (size_t)g_sys.gpu_count || slot >= (size_t)g_gpus[gi].mig_count ||
            g_gpus[gi].migs[slot].state != FAKE_SLOT_MIG || !g_gpus[gi].mig_current)
            return NVML_ERROR_INVALID_ARGUMENT;
        *gpu = &g_gpus[gi];
        *mig = &g_gpus[gi].migs[slot];
    } else {
        return NVML_ERROR_INVALID_ARGUMENT;
    }
    if ((*gpu)->health.lost) return NVML_ERROR_GPU_IS_LOST;
    return NVML_SUCCESS;
}

nvmlReturn_t fake_resolve_gpu(nvmlDevice_t dev, fake_gpu **gpu, nvmlReturn_t mig_rc) {
    fake_mig *mig;
    nvmlReturn_t rc = fake_resolve(dev, gpu, &mig);
    if (rc != NVML_SUCCESS) return rc;
    return mig != NULL ? mig_rc : NVML_SUCCESS;
}

nvmlReturn_t fake_copy_str(char *buf, unsigned int length, const char *s) {
    if (buf == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    size_t n = strlen(s);
    if ((size_t)length < n + 1) return NVML_ERROR_INSUFFICIENT_SIZE;
    memcpy(buf, s, n + 1);
    return NVML_SUCCESS;
}

static void build_handles(void) {
    for (int i = 0; i < FAKE_MAX_GPUS; i++) {
        g_dev_handles[i] = (struct nvmlDevice_st){0, &g_gpus[i], -1};
        for (int j = 0; j < FAKE_MAX_MIG_PER_GPU; j++) {
            g_mig_handles[i][j] = (struct nvmlDevice_st){1, &g_gpus[i], j};
            g_gi_handles[i][j] = (struct nvmlGpuInstance_st){&g_gpus[i], j};
            g_ci_handles[i][j] = (struct nvmlComputeInstance_st){&g_gpus[i], j};
        }
    }
}

static nvmlReturn_t do_init(void) {
    static char last_error[2048];
    pthread_mutex_lock(&g_lock);
    if (g_init_count > 0) {
        g_init_count++;
        pthread_mutex_unlock(&g_lock);
        return NVML_SUCCESS;
    }
    char err[2048] = "";
    nvmlReturn_t rc = NVML_SUCCESS;
    if (fake_topology_load(err, sizeof err) != 0 || fake_faults_open(err, sizeof err) != 0) {
        rc = NVML_ERROR_UNKNOWN;
        /* Print each distinct reason once: callers retrying init stay quiet. */
        if (strcmp(err, last_error) != 0) {
            fake_warn("nvmlInit failed: %s", err);
            snprintf(last_error, sizeof last_error, "%s", err);
        }
        memset(&g_sys, 0, sizeof g_sys);
    } else {
        build_handles();
        fake_events_reset();
        g_init_count = 1;
        fake_faults_refresh_force();
    }
    pthread_mutex_unlock(&g_lock);
    return rc;
}

nvmlReturn_t nvmlInit_v2(void) { return do_init(); }
nvmlReturn_t nvmlInit(void) { return do_init(); }

nvmlReturn_t nvmlInitWithFlags(unsigned int flags) {
    (void)flags; /* NO_GPUS / NO_ATTACH only relax checks a fake never fails */
    return do_init();
}

nvmlReturn_t nvmlShutdown(void) {
    pthread_mutex_lock(&g_lock);
    if (g_init_count == 0) {
        pthread_mutex_unlock(&g_lock);
        return NVML_ERROR_UNINITIALIZED;
    }
    if (--g_init_count == 0) {
        fake_faults_close();
        fake_events_reset();
    }
    pthread_mutex_unlock(&g_lock);
    return NVML_SUCCESS;
}

const char *nvmlErrorString(nvmlReturn_t result) {
    switch (result) {
    case NVML_SUCCESS: return "Success";
    case NVML_ERROR_UNINITIALIZED: return "Uninitialized";
    case NVML_ERROR_INVALID_ARGUMENT: return "Invalid Argument";
    case NVML_ERROR_NOT_SUPPORTED: return "Not Supported";
    case NVML_ERROR_NO_PERMISSION: return "Insufficient Permissions";
    case NVML_ERROR_ALREADY_INITIALIZED: return "Already Initialized";
    case NVML_ERROR_NOT_FOUND: return "Not Found";
    case NVML_ERROR_INSUFFICIENT_SIZE: return "Insufficient Size";
    case NVML_ERROR_INSUFFICIENT_POWER: return "Insufficient External Power";
    case NVML_ERROR_DRIVER_NOT_LOADED: return "Driver Not Loaded";
    case NVML_ERROR_TIMEOUT: return "Timeout";
    case NVML_ERROR_IRQ_ISSUE: return "Interrupt Request Issue";
    case NVML_ERROR_LIBRARY_NOT_FOUND: return "NVML Shared Library Not Found";
    case NVML_ERROR_FUNCTION_NOT_FOUND: return "Function Not Found";
    case NVML_ERROR_CORRUPTED_INFOROM: return "Corrupted infoROM";
    case NVML_ERROR_GPU_IS_LOST: return "GPU is lost";
    case NVML_ERROR_RESET_REQUIRED: return "GPU requires restart";
    case NVML_ERROR_OPERATING_SYSTEM: return "The operating system has blocked the request.";
    case NVML_ERROR_LIB_RM_VERSION_MISMATCH: return "RM has detected an NVML/RM version mismatch.";
    case NVML_ERROR_IN_USE: return "In use by another client";
    case NVML_ERROR_MEMORY: return "Insufficient Memory";
    case NVML_ERROR_NO_DATA: return "No data";
    case NVML_ERROR_INSUFFICIENT_RESOURCES: return "Insufficient resources";
    case NVML_ERROR_ARGUMENT_VERSION_MISMATCH: return "Argument version mismatch";
    case NVML_ERROR_DEPRECATED: return "Deprecated";
    case NVML_ERROR_NOT_READY: return "Not Ready";
    case NVML_ERROR_GPU_NOT_FOUND: return "GPU not found";
    case NVML_ERROR_INVALID_STATE: return "Invalid state";
    default: return "Unknown Error";
    }
}

FAKE_API(nvmlSystemGetDriverVersion, (char *version, unsigned int length), (version, length)) {
    return fake_copy_str(version, length, g_sys.driver_version);
}

FAKE_API(nvmlSystemGetNVMLVersion, (char *version, unsigned int length), (version, length)) {
    return fake_copy_str(version, length, g_sys.nvml_version);
}

FAKE_API(nvmlSystemGetCudaDriverVersion, (int *cudaDriverVersion), (cudaDriverVersion)) {
    if (cudaDriverVersion == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    *cudaDriverVersion = g_sys.cuda_driver_version;
    return NVML_SUCCESS;
}

FAKE_API(nvmlSystemGetCudaDriverVersion_v2, (int *cudaDriverVersion), (cudaDriverVersion)) {
    if (cudaDriverVersion == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    *cudaDriverVersion = g_sys.cuda_driver_version;
    return NVML_SUCCESS;
}
