/*
 * NVML fast path: whole jobs per native call over a dlopen()ed libnvidia-ml.
 *
 * The part between the CDEF markers is also fed to cffi's cdef() by
 * native/build_fastpath.py, so it must stay in the subset cffi parses:
 * integer #defines, typedefs, prototypes. Everything else lives in fastpath.c.
 */
#ifndef DRA_FASTPATH_H
#define DRA_FASTPATH_H

#include <stddef.h>

/* CDEF BEGIN */
#define FP_MAX_GPUS 64
#define FP_MAX_MIGS 16
#define FP_MAX_PROFILES 32
#define FP_MAX_PLACEMENTS 16
#define FP_STR_LEN 96
#define FP_BUS_ID_LEN 32
#define FP_VERSION_LEN 80
#define FP_MISSING_LEN 2048

/* rc of a call that was never made (an earlier step failed, or no symbol). */
#define FP_NOT_CALLED -1

/* Which NVML call a recorded rc belongs to (names: fp_call_name()). */
#define FP_CALL_NONE 0
#define FP_CALL_INIT 1
#define FP_CALL_DRIVER_VERSION 2
#define FP_CALL_CUDA_VERSION 3
#define FP_CALL_COUNT 4
#define FP_CALL_HANDLE_BY_INDEX 5
#define FP_CALL_MINOR 6
#define FP_CALL_UUID 7
#define FP_CALL_NAME 8
#define FP_CALL_BRAND 9
#define FP_CALL_ARCHITECTURE 10
#define FP_CALL_COMPUTE_CAPABILITY 11
#define FP_CALL_MEMORY 12
#define FP_CALL_PCI 13
#define FP_CALL_MIG_MODE 14
#define FP_CALL_PROFILE_INFO 15
#define FP_CALL_PLACEMENTS 16
#define FP_CALL_MAX_MIG_COUNT 17
#define FP_CALL_MIG_HANDLE 18
#define FP_CALL_GPU_INSTANCE_ID 19
#define FP_CALL_COMPUTE_INSTANCE_ID 20
#define FP_CALL_GPU_INSTANCE_BY_ID 21
#define FP_CALL_GPU_INSTANCE_INFO 22
#define FP_CALL_ATTRIBUTES 23
#define FP_CALL_EVENT_SET_CREATE 24
#define FP_CALL_SUPPORTED_EVENTS 25
#define FP_CALL_REGISTER_EVENTS 26
#define FP_CALL_EVENT_WAIT 27
#define FP_CALL_HANDLE_BY_UUID 28
#define FP_CALL_SET_COMPUTE_MODE 29
#define FP_CALL_SHUTDOWN 30
#define FP_CALL_FIELD_VALUES 31
#define FP_CALL_COUNT_OF_CALLS 32

typedef struct fp_ctx fp_ctx_t;

/* The char arrays of fp_profile_t, fp_mig_t, fp_gpu_t and fp_inventory_t hold
   length-prefixed strings: the first byte is the length, the text follows,
   the rest is zero (Python reads them with struct's 'p' format). */

/* One possible GPU-instance placement, in memory slices. */
typedef struct {
    unsigned int start;
    unsigned int size;
} fp_placement_t;

/* One GPU-instance profile, queried by profile index (0..count-1). */
typedef struct {
    unsigned int profile_index;
    int rc; /* nvmlDeviceGetGpuInstanceProfileInfoV */
    unsigned int id;
    unsigned int slice_count;
    unsigned int multiprocessors;
    unsigned int copy_engines;
    unsigned int decoders;
    unsigned int encoders;
    unsigned int jpeg_engines;
    unsigned int ofa_engines;
    unsigned long long memory_mb;
    char name[96];
    int placements_rc; /* nvmlDeviceGetGpuInstancePossiblePlacements_v2 */
    unsigned int placement_count;
    fp_placement_t placements[16];
} fp_profile_t;

/* One MIG slot. Steps run in order; the first failure is stop_call/stop_rc. */
typedef struct {
    unsigned int slot;
    int handle_rc; /* nvmlDeviceGetMigDeviceHandleByIndex */
    int stop_rc;
    int stop_call;
    char uuid[96];
    unsigned int gpu_instance_id;
    unsigned int compute_instance_id;
    unsigned int gi_profile_id;
    unsigned int placement_start;
    unsigned int placement_size;
    unsigned int multiprocessors;
    unsigned int copy_engines;
    unsigned int decoders;
    unsigned int encoders;
    unsigned int jpeg_engines;
    unsigned int ofa_engines;
    unsigned long long memory_mb;
} fp_mig_t;

typedef struct {
    unsigned int index;
    /* Non-zero when the GPU had to be abandoned (handle, minor or UUID failed,
       or any call answered GPU_IS_LOST): stop_call says which call. */
    int stop_rc;
    int stop_call;
    int minor_rc;
    unsigned int minor;
    int uuid_rc;
    char uuid[96];
    int name_rc;
    char name[96];
    int brand_rc;
    unsigned int brand;
    int arch_rc;
    unsigned int architecture;
    int cc_rc;
    int cc_major;
    int cc_minor;
    int memory_rc;
    unsigned long long memory_total;
    int pci_rc;
    char bus_id[32];
    int mig_mode_rc;
    unsigned int mig_current;
    unsigned int mig_pending;
    unsigned int profile_count; /* entries filled in profiles[] */
    fp_profile_t profiles[32];
    int max_mig_rc;
    unsigned int max_mig_count; /* as NVML reported it */
    unsigned int mig_count;     /* slots filled in migs[] (<= FP_MAX_MIGS) */
    unsigned int mig_failed;    /* of those, entries with stop_rc != SUCCESS */
    fp_mig_t migs[16];
} fp_gpu_t;

typedef struct {
    int driver_version_rc;
    char driver_version[80];
    int cuda_version_rc;
    int cuda_version;
    int count_rc;
    unsigned int device_count; /* as NVML reported it */
    unsigned int gpu_count;    /* entries filled in gpus[] (<= FP_MAX_GPUS) */
    fp_gpu_t gpus[64];
    unsigned long long nvml_calls; /* NVML calls this inventory made */
} fp_inventory_t;

typedef struct {
    unsigned int index;
    int handle_rc; /* FP_NOT_CALLED unless the GPU has no cached handle */
    int reasons_rc;
    unsigned long long reasons;
    int temperature_rc;
    unsigned int temperature;
    int ecc_corrected_rc;
    unsigned long long ecc_corrected;
    int ecc_uncorrected_rc;
    unsigned long long ecc_uncorrected;
    int retired_pending_rc;
    unsigned int retired_pending;
    int remapped_rc;
    unsigned int remapped_corrected;
    unsigned int remapped_uncorrected;
    unsigned int remapped_pending;
    unsigned int remapped_failure;
    int link_width_rc;
    unsigned int link_width;
    int max_link_width_rc;
    unsigned int max_link_width;
    /* NVML_FI_DEV_GET_GPU_RECOVERY_ACTION (drivers 565+; older ones: NOT_SUPPORTED) */
    int recovery_action_rc;
    unsigned int recovery_action;
} fp_health_t;

typedef struct {
    unsigned int index;
    int rc;
    int call;
    unsigned long long registered;
} fp_registration_t;

typedef struct {
    int rc;
    int gpu_index; /* -1 when the handle maps to no known GPU */
    unsigned long long event_type;
    unsigned long long event_data;
    unsigned int gpu_instance_id;
    unsigned int compute_instance_id;
} fp_event_t;

/* Why fp_open() returned NULL. */
#define FP_OPEN_NO_LIBRARY 1
#define FP_OPEN_NO_SYMBOL 2
#define FP_OPEN_NO_MEMORY 3

fp_ctx_t *fp_open(const char *path, char *err, size_t err_len, int *why);
int fp_init(fp_ctx_t *ctx);
int fp_missing_symbols(fp_ctx_t *ctx, char *buf, size_t len);
const char *fp_error_string(fp_ctx_t *ctx, int rc);
const char *fp_call_name(int call);
/* NVML_GPU_INSTANCE_PROFILE_COUNT of the nvml.h this was built against. */
unsigned int fp_header_profile_count(void);
int fp_inventory(fp_ctx_t *ctx, unsigned int profile_index_count, fp_inventory_t *out);
int fp_health(fp_ctx_t *ctx, const unsigned int *indices, unsigned int n, fp_health_t *out);
int fp_register_events(fp_ctx_t *ctx, unsigned long long mask, const unsigned int *indices,
                       unsigned int n, fp_registration_t *out);
int fp_wait_event(fp_ctx_t *ctx, unsigned int timeout_ms, fp_event_t *out);
int fp_set_compute_mode(fp_ctx_t *ctx, const char *uuid, int mode, int *failed_call);
unsigned long long fp_nvml_calls(fp_ctx_t *ctx);
int fp_close(fp_ctx_t *ctx);
/* fp_close that waits at most timeout_ms (< 0: forever) for calls still inside
   NVML; IN_USE when one is: NVML is then left initialised (never shut down
   under a live call) and the context is never freed. */
int fp_close_timed(fp_ctx_t *ctx, int timeout_ms);
/* NVML calls in flight right now (health samples, compute mode, event waits). */
unsigned int fp_busy(fp_ctx_t *ctx);
void fp_free(fp_ctx_t *ctx);
/* CDEF END */

#endif
