/*
 * Internal model of the fake libnvidia-ml.so.1.
 *
 * The library exports the real NVML C ABI (declared by nvml.h, so every struct
 * and signature matches the real one) on top of this model: a topology loaded
 * from a JSON file at nvmlInit, plus persistent fault state folded from an
 * append-only JSON-lines fault log that other processes write to.
 *
 * Locking: one process-wide mutex (g_lock) guards the model and the fault
 * records.  Every API call holds it only for its own short critical section;
 * nvmlEventSetWait blocks in poll() with the lock released.
 */
#ifndef FAKENVML_H
#define FAKENVML_H

#define NVML_NO_UNVERSIONED_FUNC_DEFS 1
#include <nvml.h>

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

/* Only the NVML entry points are exported.  Everything declared from here on,
 * the vendored cJSON calls included, binds inside the library, so a process
 * that loads another cJSON (or defines a g_lock) cannot interpose on it. */
#pragma GCC visibility push(hidden)
#include "cJSON.h"

#define FAKE_MAX_GPUS 32
#define FAKE_MAX_PROFILES 24
#define FAKE_MAX_PLACEMENTS 8
#define FAKE_MAX_MIG_PER_GPU 8
#define FAKE_MAX_MIG (FAKE_MAX_GPUS * FAKE_MAX_MIG_PER_GPU)
#define FAKE_MAX_EVENT_SETS 64
#define FAKE_NO_ID 0xFFFFFFFFu

#define FAKE_STR 96

/* A MIG GPU instance profile as NVML reports it (static per product). */
typedef struct {
    unsigned int index; /* NVML_GPU_INSTANCE_PROFILE_* */
    unsigned int id;    /* device-specific profile id, e.g. 19 for 1g.10gb on H100 */
    char name[FAKE_STR]; /* e.g. "MIG 1g.10gb" */
    unsigned int slice_count;
    unsigned int instance_count;
    unsigned int multiprocessors;
    unsigned int copy_engines;
    unsigned int decoders;
    unsigned int encoders;
    unsigned int jpegs;
    unsigned int ofas;
    unsigned long long memory_mb;
    unsigned int placement_size; /* memory slices one instance occupies */
    unsigned int placement_count;
    unsigned int placements[FAKE_MAX_PLACEMENTS]; /* possible start slices */
} fake_profile;

/* Mutable health state of one physical GPU (topology defaults + folded faults). */
typedef struct {
    int lost;
    unsigned long long ecc_volatile[2];  /* [NVML_MEMORY_ERROR_TYPE_CORRECTED/UNCORRECTED] */
    unsigned long long ecc_aggregate[2];
    unsigned long long clocks_event_reasons;
    unsigned int pcie_width_current;
    unsigned int temperature;
    unsigned int remap_corr, remap_unc;
    int remap_pending, remap_failure;
    int retired_pages_pending;
    nvmlComputeMode_t compute_mode;
    unsigned int recovery_action; /* nvmlDeviceGpuRecoveryAction_t (field 230) */
} fake_health;

struct fake_gpu;

struct nvmlDevice_st {
    int is_mig;
    struct fake_gpu *gpu; /* physical GPU (itself for a physical handle) */
    int mig_slot;         /* index into gpu->migs for a MIG handle */
};

struct nvmlGpuInstance_st {
    struct fake_gpu *gpu;
    int mig_slot;
};

struct nvmlComputeInstance_st {
    struct fake_gpu *gpu;
    int mig_slot;
};

/* What a MIG slot holds. Slots keep their index for the instance's life
 * (handles point at them), so a destroyed instance leaves a hole. */
#define FAKE_SLOT_FREE 0
#define FAKE_SLOT_GI 1  /* a GPU instance without its compute instance: no MIG device */
#define FAKE_SLOT_MIG 2 /* GPU instance + compute instance: a MIG device */

typedef struct {
    int state; /* FAKE_SLOT_* */
    int profile; /* index into gpu->profiles */
    unsigned int placement_start;
    unsigned int gi_id;
    unsigned int ci_id;
    int busy; /* processes on it (a "mig_busy" record): destroy answers IN_USE */
    char uuid[FAKE_STR];
} fake_mig;

typedef struct fake_gpu {
    unsigned int index;
    unsigned int minor;
    char uuid[FAKE_STR];
    char name[FAKE_STR];
    char serial[FAKE_STR];
    nvmlBrandType_t brand;
    unsigned int architecture;
    int cc_major, cc_minor;
    unsigned long long memory_total, memory_reserved;
    unsigned int pci_domain, pci_bus, pci_device, pci_function;
    unsigned int pci_device_id, pci_subsystem_id;
    char bus_id[NVML_DEVICE_PCI_BUS_ID_BUFFER_SIZE];
    char bus_id_legacy[NVML_DEVICE_PCI_BUS_ID_BUFFER_V2_SIZE];
    unsigned int pcie_width_max;
    unsigned int multiprocessors;
    /* feature switches: 0 -> NVML_ERROR_NOT_SUPPORTED */
    int has_ecc, has_row_remapping, has_retired_pages, has_temperature;
    unsigned long long supported_events;
    /* MIG */
    int mig_capable;
    unsigned int mig_current, mig_pending;
    unsigned int max_mig_devices;
    unsigned int memory_slices;
    int profile_count;
    fake_profile profiles[FAKE_MAX_PROFILES];
    int mig_count; /* slots in use or holes below the highest used one */
    fake_mig migs[FAKE_MAX_MIG_PER_GPU];
    int topo_mig_count; /* the topology's layout, restored when the fault log is refolded */
    fake_mig topo_migs[FAKE_MAX_MIG_PER_GPU];
    /* state */
    fake_health defaults;
    fake_health health;
} fake_gpu;

typedef struct {
    char name[256];
    char path[4096];
    char driver_version[FAKE_STR];
    char nvml_version[FAKE_STR];
    int cuda_driver_version;
    int gpu_count;
} fake_system;

/* Fault records folded from the fault log. */
typedef enum {
    FAULT_XID,
    FAULT_LOST,
    FAULT_ECC,
    FAULT_THROTTLE,
    FAULT_PCIE,
    FAULT_REMAP,
    FAULT_RETIRED_PAGES,
    FAULT_TEMPERATURE,
    FAULT_RECOVER,
    FAULT_HANG,            /* calls of fn (any if "") on gpu (any if -1) block until released */
    FAULT_DELAY,           /* ... each take ms longer */
    FAULT_RELEASE,         /* lifts the hangs and delays matching fn / gpu */
    FAULT_RECOVERY_ACTION, /* the GPU's recovery action becomes value (and an event says so) */
    /* MIG layout changes (migmgmt.c writes them; every process folds them): */
    FAULT_GI_CREATE,  /* profile_id, start, gi */
    FAULT_CI_CREATE,  /* gi, ci, uuid */
    FAULT_CI_DESTROY, /* gi, ci */
    FAULT_GI_DESTROY, /* gi */
    FAULT_MIG_BUSY,   /* gi, value: processes run on it (1) or not (0) */
    FAULT_FAIL,       /* calls of fn on gpu answer rc, count times (0: until released) */
    /* Operator actions, not faults: a static MIG re-layout (nvidia-smi mig -dgi / -cgi). */
    FAULT_MIG_DESTROY, /* the MIG device with GPU instance gi is destroyed */
    FAULT_MIG_CREATE,  /* a MIG device of GI profile value is created (at placement, as gi) */
} fault_kind;

#define FAKE_FN_LEN 64
#define FAKE_MAX_STALLS 64
/* gpu argument of fake_stall() for a call that concerns no single GPU (an
   event wait): only entries naming its function match, whatever their GPU. */
#define FAKE_STALL_ANY_GPU (-2)

typedef struct {
    fault_kind kind;
    int gpu; /* physical index, -1 = all (recover only) */
    unsigned long long xid;
    unsigned int gi, ci;
    unsigned long long corrected, uncorrected;
    unsigned long long reasons;
    unsigned int value;
    int pending, failure; /* -1: not given (leave unchanged) */
    char fn[FAKE_FN_LEN]; /* hang / delay / release: NVML function name, "" = any */
    unsigned int ms;      /* delay */
    long long action;     /* xid: recovery action it sets (-1: none given) */
    unsigned int profile_id, start; /* gi_create */
    unsigned int rc, count;         /* fail */
    /* mig_create: placement (FAKE_NO_ID: the first free one), uuid ("" = derived) */
    unsigned int placement;
    char uuid[FAKE_STR]; /* ci_create, mig_create */
} fault_record;

/* One active hang or delay (folded from the log). */
typedef struct {
    int gpu; /* physical index, -1 = every GPU and device-less calls */
    char fn[FAKE_FN_LEN];
    int hang;
    unsigned int delay_ms;
} fake_stall_entry;

/* One active "fail" fault (folded from the log). */
typedef struct {
    int gpu; /* physical index, -1 = every GPU */
    char fn[FAKE_FN_LEN];
    nvmlReturn_t rc;
    unsigned int left; /* calls still to fail; 0 = until released */
} fake_fail_entry;

/* Globals (defined in state.c). */
extern pthread_mutex_t g_lock;
extern int g_init_count;
extern fake_system g_sys;
extern fake_gpu g_gpus[FAKE_MAX_GPUS];
extern struct nvmlDevice_st g_dev_handles[FAKE_MAX_GPUS];
extern struct nvmlDevice_st g_mig_handles[FAKE_MAX_GPUS][FAKE_MAX_MIG_PER_GPU];
extern struct nvmlGpuInstance_st g_gi_handles[FAKE_MAX_GPUS][FAKE_MAX_MIG_PER_GPU];
extern struct nvmlComputeInstance_st g_ci_handles[FAKE_MAX_GPUS][FAKE_MAX_MIG_PER_GPU];
extern char g_fault_path[4096];
extern fault_record *g_records;
extern size_t g_record_count;

/* topology.c: load and validate; writes a reason into err on failure. */
int fake_topology_load(char *err, size_t errlen);
const char *fake_library_dir(void);

/* faults.c */
int fake_faults_open(char *err, size_t errlen);
void fake_faults_close(void);
void fake_faults_refresh(void);       /* g_lock held; cheap when nothing changed */
void fake_faults_refresh_force(void); /* g_lock held; always checks the log */
int fake_fault_events(const fault_record *rec, nvmlEventData_t *out, int max);
/* g_lock held: block or delay a call of fn concerning gpu (-1: none) as the
   active hang/delay faults say, with g_lock released meanwhile. Returns
   UNINITIALIZED when NVML was shut down during the wait, else SUCCESS. */
nvmlReturn_t fake_stall(const char *fn, int gpu);
/* g_lock held: the rc an active "fail" fault gives this call of fn on gpu
   (consuming one of its count), or NVML_SUCCESS. */
nvmlReturn_t fake_fail(const char *fn, int gpu);
/* g_lock held: fold one record line into this process only (no fault log). */
int fake_faults_fold_line(const char *line, char *why, size_t whylen);
/* The physical GPU a handle (device, MIG, GPU or compute instance) belongs to, or -1. */
int fake_handle_gpu(uintptr_t handle);
/* Whether this driver version knows NVML_FI_DEV_GET_GPU_RECOVERY_ACTION (565+). */
int fake_has_recovery_action(void);

/* migmgmt.c: apply a folded MIG record to the model (g_lock held). */
void fake_mig_apply(const fault_record *r);
void fake_mig_reset(void); /* back to the topology's layout */

/* events.c */
void fake_events_reset(void);

/* Handle helpers (state.c). */
fake_gpu *fake_device_gpu(nvmlDevice_t dev);
fake_mig *fake_device_mig(nvmlDevice_t dev);
void fake_warn(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#pragma GCC visibility pop

#endif
