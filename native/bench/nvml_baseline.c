/*
 * The limit for the NVML fast path: exactly the NVML calls of one inventory
 * and of one health sample, in the order native/fastpath/fastpath.c makes
 * them, from plain C, with nothing around them (no struct canonicalisation,
 * no records, no Python). tests/bench/bench_nvml.py builds it with gcc against
 * the nvml.h the project builds with, runs it beside the backends and prints
 * every backend's time as a multiple of it.
 *
 *   nvml_baseline LIBRARY PROFILE_INDEX_COUNT
 *
 * dlopen()s LIBRARY, nvmlInit_v2, then answers commands on stdin, one a line:
 *   inventory N   N inventories; one line "CALLS NS NS ..." (NVML calls per
 *                 job, then each job's time in nanoseconds)
 *   health N      N health samples of every GPU the last inventory found
 *
 * Built with -DBASELINE_LIBRARY -shared it has no main() and exports
 * bl_open() and bl_run() instead, so the bench can also run it inside its own
 * process: on the very library instance the backends use, with the caches as
 * warm or as cold as theirs between jobs.
 * A job's calls and their stopping rules follow fastpath.c (REQUIRED fields
 * abandon a GPU on any failure, OPTIONAL ones only on GPU_IS_LOST or
 * UNINITIALIZED), so on any library both make the same calls; the bench
 * checks the counts match before it prints a ratio.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <nvml.h>

#pragma GCC diagnostic ignored "-Wdeprecated-declarations"

#define MAX_GPUS 64
#define MAX_MIGS 16
#define MAX_PLACEMENTS 16
#define MAX_JOBS 100000

#define SYMBOLS(X)                                     \
    X(nvmlInit_v2)                                     \
    X(nvmlShutdown)                                    \
    X(nvmlSystemGetDriverVersion)                      \
    X(nvmlSystemGetCudaDriverVersion_v2)               \
    X(nvmlSystemGetCudaDriverVersion)                  \
    X(nvmlDeviceGetCount_v2)                           \
    X(nvmlDeviceGetHandleByIndex_v2)                   \
    X(nvmlDeviceGetMinorNumber)                        \
    X(nvmlDeviceGetUUID)                               \
    X(nvmlDeviceGetName)                               \
    X(nvmlDeviceGetBrand)                              \
    X(nvmlDeviceGetArchitecture)                       \
    X(nvmlDeviceGetCudaComputeCapability)              \
    X(nvmlDeviceGetMemoryInfo)                         \
    X(nvmlDeviceGetPciInfo_v3)                         \
    X(nvmlDeviceGetMigMode)                            \
    X(nvmlDeviceGetGpuInstanceProfileInfoV)            \
    X(nvmlDeviceGetGpuInstancePossiblePlacements_v2)   \
    X(nvmlDeviceGetMaxMigDeviceCount)                  \
    X(nvmlDeviceGetMigDeviceHandleByIndex)             \
    X(nvmlDeviceGetGpuInstanceId)                      \
    X(nvmlDeviceGetComputeInstanceId)                  \
    X(nvmlDeviceGetGpuInstanceById)                    \
    X(nvmlGpuInstanceGetInfo)                          \
    X(nvmlDeviceGetAttributes_v2)                      \
    X(nvmlDeviceGetCurrentClocksEventReasons)          \
    X(nvmlDeviceGetCurrentClocksThrottleReasons)       \
    X(nvmlDeviceGetTemperature)                        \
    X(nvmlDeviceGetTotalEccErrors)                     \
    X(nvmlDeviceGetRetiredPagesPendingStatus)          \
    X(nvmlDeviceGetRemappedRows)                       \
    X(nvmlDeviceGetCurrPcieLinkWidth)                  \
    X(nvmlDeviceGetMaxPcieLinkWidth)                   \
    X(nvmlDeviceGetFieldValues)

static struct {
#define MEMBER(name) __typeof__(&name) name;
    SYMBOLS(MEMBER)
#undef MEMBER
} s;

static unsigned long long calls;
static nvmlDevice_t handles[MAX_GPUS];
static int handle_ok[MAX_GPUS];
static unsigned int gpu_count;
static unsigned int profile_index_count;

/* What the calls write into; volatile-free: the calls go through pointers
   into another library, which the compiler cannot elide. */
static char text[NVML_DEVICE_NAME_V2_BUFFER_SIZE + NVML_DEVICE_UUID_V2_BUFFER_SIZE + 128];

#define NV(fn, ...) (calls++, s.fn ? (int)s.fn(__VA_ARGS__) : (int)NVML_ERROR_FUNCTION_NOT_FOUND)

static int fatal(int rc)
{
    return rc == NVML_ERROR_GPU_IS_LOST || rc == NVML_ERROR_UNINITIALIZED;
}

static int profiles(nvmlDevice_t dev)
{
    unsigned int p;

    for (p = 0; p < profile_index_count && p < 32; p++) {
        nvmlGpuInstanceProfileInfo_v2_t info;
        nvmlGpuInstancePlacement_t placements[MAX_PLACEMENTS];
        unsigned int pc = MAX_PLACEMENTS;
        int rc;

        memset(&info, 0, sizeof(info));
        info.version = nvmlGpuInstanceProfileInfo_v2;
        rc = NV(nvmlDeviceGetGpuInstanceProfileInfoV, dev, p, &info);
        if (fatal(rc))
            return rc;
        if (rc != NVML_SUCCESS)
            continue;
        rc = NV(nvmlDeviceGetGpuInstancePossiblePlacements_v2, dev, info.id, placements, &pc);
        if (fatal(rc))
            return rc;
    }
    return NVML_SUCCESS;
}

static int mig(nvmlDevice_t parent, unsigned int slot)
{
    nvmlDevice_t m;
    nvmlGpuInstance_t gi;
    nvmlGpuInstanceInfo_t gi_info;
    nvmlDeviceAttributes_t attrs;
    unsigned int gi_id = 0, ci_id = 0;
    int rc;

#define STEP(expr)               \
    if ((rc = (expr)) != NVML_SUCCESS) \
        return rc;
    STEP(NV(nvmlDeviceGetMigDeviceHandleByIndex, parent, slot, &m));
    STEP(NV(nvmlDeviceGetUUID, m, text, NVML_DEVICE_UUID_V2_BUFFER_SIZE));
    STEP(NV(nvmlDeviceGetGpuInstanceId, m, &gi_id));
    STEP(NV(nvmlDeviceGetComputeInstanceId, m, &ci_id));
    STEP(NV(nvmlDeviceGetGpuInstanceById, parent, gi_id, &gi));
    STEP(NV(nvmlGpuInstanceGetInfo, gi, &gi_info));
    STEP(NV(nvmlDeviceGetAttributes_v2, m, &attrs));
#undef STEP
    return NVML_SUCCESS;
}

static int gpu(unsigned int index)
{
    nvmlDevice_t dev;
    nvmlPciInfo_t pci;
    nvmlMemory_t mem;
    nvmlBrandType_t brand;
    nvmlDeviceArchitecture_t arch;
    unsigned int minor, current = 0, pending = 0, max_migs = 0, slot;
    int major_cc, minor_cc, rc;

    if ((rc = NV(nvmlDeviceGetHandleByIndex_v2, index, &dev)) != NVML_SUCCESS)
        return rc;
    handles[index] = dev;
    handle_ok[index] = 1;
#define REQUIRED(expr)                    \
    if ((rc = (expr)) != NVML_SUCCESS)    \
        return rc;
#define OPTIONAL(expr)                    \
    if (fatal(rc = (expr)))               \
        return rc;
    REQUIRED(NV(nvmlDeviceGetMinorNumber, dev, &minor));
    REQUIRED(NV(nvmlDeviceGetUUID, dev, text, NVML_DEVICE_UUID_V2_BUFFER_SIZE));
    OPTIONAL(NV(nvmlDeviceGetName, dev, text, NVML_DEVICE_NAME_V2_BUFFER_SIZE));
    OPTIONAL(NV(nvmlDeviceGetBrand, dev, &brand));
    OPTIONAL(NV(nvmlDeviceGetArchitecture, dev, &arch));
    OPTIONAL(NV(nvmlDeviceGetCudaComputeCapability, dev, &major_cc, &minor_cc));
    OPTIONAL(NV(nvmlDeviceGetMemoryInfo, dev, &mem));
    OPTIONAL(NV(nvmlDeviceGetPciInfo_v3, dev, &pci));
    OPTIONAL(NV(nvmlDeviceGetMigMode, dev, &current, &pending));
#undef REQUIRED
#undef OPTIONAL
    if (rc != NVML_SUCCESS)
        return NVML_SUCCESS;
    if ((rc = profiles(dev)) != NVML_SUCCESS)
        return rc;
    if (current != NVML_DEVICE_MIG_ENABLE)
        return NVML_SUCCESS;
    rc = NV(nvmlDeviceGetMaxMigDeviceCount, dev, &max_migs);
    if (rc != NVML_SUCCESS)
        return rc;
    for (slot = 0; slot < max_migs && slot < MAX_MIGS; slot++)
        if (fatal(rc = mig(dev, slot)))
            return rc;
    return NVML_SUCCESS;
}

static int inventory(void)
{
    unsigned int n = 0, i;
    int cuda = 0, rc;

    if ((rc = NV(nvmlDeviceGetCount_v2, &n)) != NVML_SUCCESS)
        return rc;
    NV(nvmlSystemGetDriverVersion, text, NVML_SYSTEM_DRIVER_VERSION_BUFFER_SIZE);
    if (NV(nvmlSystemGetCudaDriverVersion_v2, &cuda) == NVML_ERROR_FUNCTION_NOT_FOUND)
        NV(nvmlSystemGetCudaDriverVersion, &cuda);
    memset(handle_ok, 0, sizeof(handle_ok));
    gpu_count = n < MAX_GPUS ? n : MAX_GPUS;
    for (i = 0; i < gpu_count; i++)
        if (gpu(i) == NVML_ERROR_UNINITIALIZED)
            return NVML_ERROR_UNINITIALIZED;
    return NVML_SUCCESS;
}

static void health(void)
{
    unsigned int i;

    for (i = 0; i < gpu_count; i++) {
        nvmlDevice_t dev = handles[i];
        nvmlEnableState_t retired;
        nvmlFieldValue_t fv;
        unsigned long long reasons, ecc;
        unsigned int temp, corr, unc, pend, fail, width;

        if (!handle_ok[i])
            continue;
        if (NV(nvmlDeviceGetCurrentClocksEventReasons, dev, &reasons)
            == NVML_ERROR_FUNCTION_NOT_FOUND)
            NV(nvmlDeviceGetCurrentClocksThrottleReasons, dev, &reasons);
        NV(nvmlDeviceGetTemperature, dev, NVML_TEMPERATURE_GPU, &temp);
        NV(nvmlDeviceGetTotalEccErrors, dev, NVML_MEMORY_ERROR_TYPE_CORRECTED, NVML_VOLATILE_ECC,
           &ecc);
        NV(nvmlDeviceGetTotalEccErrors, dev, NVML_MEMORY_ERROR_TYPE_UNCORRECTED,
           NVML_VOLATILE_ECC, &ecc);
        NV(nvmlDeviceGetRetiredPagesPendingStatus, dev, &retired);
        NV(nvmlDeviceGetRemappedRows, dev, &corr, &unc, &pend, &fail);
        NV(nvmlDeviceGetCurrPcieLinkWidth, dev, &width);
        NV(nvmlDeviceGetMaxPcieLinkWidth, dev, &width);
        memset(&fv, 0, sizeof(fv));
        fv.fieldId = NVML_FI_DEV_GET_GPU_RECOVERY_ACTION;
        NV(nvmlDeviceGetFieldValues, dev, 1, &fv);
    }
}

static long long now_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* ---- entry points --------------------------------------------------------- */

/* Open LIBRARY, nvmlInit_v2 and take the first inventory; 0 or a reason. */
int bl_open(const char *library, unsigned int profiles_to_probe, char *err, size_t err_len)
{
    void *lib = dlopen(library, RTLD_NOW | RTLD_LOCAL);
    int rc;

    if (!lib) {
        snprintf(err, err_len, "dlopen %s: %s", library, dlerror());
        return -1;
    }
    profile_index_count = profiles_to_probe;
#define RESOLVE(name) s.name = (__typeof__(&name))dlsym(lib, #name);
    SYMBOLS(RESOLVE)
#undef RESOLVE
    if (!s.nvmlInit_v2 || !s.nvmlDeviceGetCount_v2 || !s.nvmlDeviceGetHandleByIndex_v2) {
        snprintf(err, err_len, "%s lacks a required symbol", library);
        return -1;
    }
    if ((rc = (int)s.nvmlInit_v2()) != NVML_SUCCESS) {
        snprintf(err, err_len, "nvmlInit_v2: %d", rc);
        return rc;
    }
    if ((rc = inventory()) != NVML_SUCCESS) {
        snprintf(err, err_len, "inventory: %d", rc);
        return rc;
    }
    return 0;
}

/* n jobs (job 0: inventory, 1: health) back to back, each timed into ns[];
   answers the NVML calls of the last one. */
unsigned long long bl_run(int job, long n, long long *ns)
{
    unsigned long long before = calls;
    long k;

    for (k = 0; k < n; k++) {
        long long t0;

        before = calls;
        t0 = now_ns();
        if (job == 0)
            inventory();
        else
            health();
        ns[k] = now_ns() - t0;
    }
    return calls - before;
}

/* nvmlShutdown, so the next nvmlInit of this library starts afresh. */
int bl_close(void)
{
    return s.nvmlShutdown ? (int)s.nvmlShutdown() : 0;
}

#ifndef BASELINE_LIBRARY
int main(int argc, char **argv)
{
    static long long ns[MAX_JOBS];
    char line[128], job[32], err[512];
    int rc;

    if (argc != 3) {
        fprintf(stderr, "usage: %s LIBRARY PROFILE_INDEX_COUNT\n", argv[0]);
        return 2;
    }
    if ((rc = bl_open(argv[1], (unsigned int)strtoul(argv[2], NULL, 0), err, sizeof err))) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    while (fgets(line, sizeof line, stdin)) {
        long n = 0, k;
        unsigned long long n_calls;
        int is_inventory;

        if (sscanf(line, "%31s %ld", job, &n) != 2 || n < 1 || n > MAX_JOBS) {
            fprintf(stderr, "bad command: %s", line);
            return 2;
        }
        is_inventory = strcmp(job, "inventory") == 0;
        if (!is_inventory && strcmp(job, "health") != 0) {
            fprintf(stderr, "unknown job: %s\n", job);
            return 2;
        }
        n_calls = bl_run(is_inventory ? 0 : 1, n, ns);
        printf("%llu", n_calls);
        for (k = 0; k < n; k++)
            printf(" %lld", ns[k]);
        printf("\n");
        fflush(stdout);
    }
    return 0;
}
#endif
