/*
 * Device inventory and MIG queries.
 *
 * MIG handle rules follow real NVML: nvmlDeviceGetHandleBy{Index,PciBusId}
 * return physical GPUs only (GetHandleByUUID also accepts "MIG-" UUIDs), MIG
 * handles come from nvmlDeviceGetMigDeviceHandleByIndex, and GPU-level
 * queries on a MIG handle answer NOT_SUPPORTED (or INVALID_ARGUMENT where the
 * real documentation says the handle itself is invalid for the call).
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "api_common.h"

static const fake_profile *mig_profile(const fake_gpu *g, const fake_mig *m) {
    return &g->profiles[m->profile];
}

FAKE_API(nvmlDeviceGetCount_v2, (unsigned int *deviceCount), (deviceCount)) {
    if (deviceCount == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    *deviceCount = (unsigned int)g_sys.gpu_count;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetCount(unsigned int *deviceCount) {
    return nvmlDeviceGetCount_v2(deviceCount);
}

FAKE_API(nvmlDeviceGetHandleByIndex_v2, (unsigned int index, nvmlDevice_t *device),
         (index, device)) {
    if (device == NULL || index >= (unsigned int)g_sys.gpu_count)
        return NVML_ERROR_INVALID_ARGUMENT;
    if (g_gpus[index].health.lost) return NVML_ERROR_GPU_IS_LOST;
    *device = &g_dev_handles[index];
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetHandleByIndex(unsigned int index, nvmlDevice_t *device) {
    return nvmlDeviceGetHandleByIndex_v2(index, device);
}

FAKE_API(nvmlDeviceGetHandleByUUID, (const char *uuid, nvmlDevice_t *device), (uuid, device)) {
    if (uuid == NULL || device == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    for (int i = 0; i < g_sys.gpu_count; i++) {
        fake_gpu *g = &g_gpus[i];
        if (strcasecmp(g->uuid, uuid) == 0) {
            if (g->health.lost) return NVML_ERROR_GPU_IS_LOST;
            *device = &g_dev_handles[i];
            return NVML_SUCCESS;
        }
        for (int j = 0; g->mig_current && j < g->mig_count; j++) {
            if (g->migs[j].state == FAKE_SLOT_MIG && strcasecmp(g->migs[j].uuid, uuid) == 0) {
                if (g->health.lost) return NVML_ERROR_GPU_IS_LOST;
                *device = &g_mig_handles[i][j];
                return NVML_SUCCESS;
            }
        }
    }
    return NVML_ERROR_NOT_FOUND;
}

static nvmlReturn_t by_bus_id(const char *pciBusId, nvmlDevice_t *device) {
    if (pciBusId == NULL || device == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    unsigned int dom = 0, bus, dev, fn;
    char tail;
    if (sscanf(pciBusId, "%x:%x:%x.%x%c", &dom, &bus, &dev, &fn, &tail) != 4) {
        dom = 0;
        if (sscanf(pciBusId, "%x:%x.%x%c", &bus, &dev, &fn, &tail) != 3)
            return NVML_ERROR_INVALID_ARGUMENT;
    }
    for (int i = 0; i < g_sys.gpu_count; i++) {
        fake_gpu *g = &g_gpus[i];
        if (g->pci_domain == dom && g->pci_bus == bus && g->pci_device == dev &&
            g->pci_function == fn) {
            if (g->health.lost) return NVML_ERROR_GPU_IS_LOST;
            *device = &g_dev_handles[i];
            return NVML_SUCCESS;
        }
    }
    return NVML_ERROR_NOT_FOUND;
}

FAKE_API(nvmlDeviceGetHandleByPciBusId_v2, (const char *pciBusId, nvmlDevice_t *device),
         (pciBusId, device)) {
    return by_bus_id(pciBusId, device);
}

nvmlReturn_t nvmlDeviceGetHandleByPciBusId(const char *pciBusId, nvmlDevice_t *device) {
    return nvmlDeviceGetHandleByPciBusId_v2(pciBusId, device);
}

FAKE_API(nvmlDeviceGetIndex, (nvmlDevice_t device, unsigned int *index), (device, index)) {
    fake_gpu *g;
    nvmlReturn_t rc = fake_resolve_gpu(device, &g, NVML_ERROR_NOT_SUPPORTED);
    if (rc != NVML_SUCCESS) return rc;
    if (index == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    *index = g->index;
    return NVML_SUCCESS;
}

FAKE_API(nvmlDeviceGetMinorNumber, (nvmlDevice_t device, unsigned int *minorNumber),
         (device, minorNumber)) {
    fake_gpu *g;
    nvmlReturn_t rc = fake_resolve_gpu(device, &g, NVML_ERROR_NOT_SUPPORTED);
    if (rc != NVML_SUCCESS) return rc;
    if (minorNumber == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    *minorNumber = g->minor;
    return NVML_SUCCESS;
}

FAKE_API(nvmlDeviceGetUUID, (nvmlDevice_t device, char *uuid, unsigned int length),
         (device, uuid, length)) {
    fake_gpu *g;
    fake_mig *m;
    nvmlReturn_t rc = fake_resolve(device, &g, &m);
    if (rc != NVML_SUCCESS) return rc;
    return fake_copy_str(uuid, length, m ? m->uuid : g->uuid);
}

FAKE_API(nvmlDeviceGetName, (nvmlDevice_t device, char *name, unsigned int length),
         (device, name, length)) {
    fake_gpu *g;
    fake_mig *m;
    nvmlReturn_t rc = fake_resolve(device, &g, &m);
    if (rc != NVML_SUCCESS) return rc;
    if (m == NULL) return fake_copy_str(name, length, g->name);
    char full[2 * FAKE_STR + 2];
    snprintf(full, sizeof full, "%s %s", g->name, mig_profile(g, m)->name);
    return fake_copy_str(name, length, full);
}

FAKE_API(nvmlDeviceGetSerial, (nvmlDevice_t device, char *serial, unsigned int length),
         (device, serial, length)) {
    fake_gpu *g;
    nvmlReturn_t rc = fake_resolve_gpu(device, &g, NVML_ERROR_NOT_SUPPORTED);
    if (rc != NVML_SUCCESS) return rc;
    if (g->serial[0] == '\0') return NVML_ERROR_NOT_SUPPORTED;
    return fake_copy_str(serial, length, g->serial);
}

FAKE_API(nvmlDeviceGetBrand, (nvmlDevice_t device, nvmlBrandType_t *type), (device, type)) {
    fake_gpu *g;
    fake_mig *m;
    nvmlReturn_t rc = fake_resolve(device, &g, &m);
    if (rc != NVML_SUCCESS) return rc;
    if (type == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    *type = g->brand;
    return NVML_SUCCESS;
}

FAKE_API(nvmlDeviceGetArchitecture, (nvmlDevice_t device, nvmlDeviceArchitecture_t *arch),
         (device, arch)) {
    fake_gpu *g;
    fake_mig *m;
    nvmlReturn_t rc = fake_resolve(device, &g, &m);
    if (rc != NVML_SUCCESS) return rc;
    if (arch == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    *arch = g->architecture;
    return NVML_SUCCESS;
}

FAKE_API(nvmlDeviceGetCudaComputeCapability, (nvmlDevice_t device, int *major, int *minor),
         (device, major, minor)) {
    fake_gpu *g;
    fake_mig *m;
    nvmlReturn_t rc = fake_resolve(device, &g, &m);
    if (rc != NVML_SUCCESS) return rc;
    if (major == NULL || minor == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    *major = g->cc_major;
    *minor = g->cc_minor;
    return NVML_SUCCESS;
}

static void memory_of(const fake_gpu *g, const fake_mig *m, unsigned long long *total,
                      unsigned long long *reserved) {
    if (m != NULL) {
        *total = mig_profile(g, m)->memory_mb << 20;
        *reserved = 0;
    } else {
        *total = g->memory_total;
        *reserved = g->memory_reserved;
    }
}

FAKE_API(nvmlDeviceGetMemoryInfo, (nvmlDevice_t device, nvmlMemory_t *memory),
         (device, memory)) {
    fake_gpu *g;
    fake_mig *m;
    nvmlReturn_t rc = fake_resolve(device, &g, &m);
    if (rc != NVML_SUCCESS) return rc;
    if (memory == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    unsigned long long total, reserved;
    memory_of(g, m, &total, &reserved);
    memory->total = total;
    memory->used = reserved; /* v1 "used" includes the reserved part */
    memory->free = total - reserved;
    return NVML_SUCCESS;
}

FAKE_API(nvmlDeviceGetMemoryInfo_v2, (nvmlDevice_t device, nvmlMemory_v2_t *memory),
         (device, memory)) {
    fake_gpu *g;
    fake_mig *m;
    nvmlReturn_t rc = fake_resolve(device, &g, &m);
    if (rc != NVML_SUCCESS) return rc;
    if (memory == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    if (memory->version != nvmlMemory_v2) return NVML_ERROR_ARGUMENT_VERSION_MISMATCH;
    unsigned long long total, reserved;
    memory_of(g, m, &total, &reserved);
    memory->total = total;
    memory->reserved = reserved;
    memory->used = 0;
    memory->free = total - reserved;
    return NVML_SUCCESS;
}

static nvmlReturn_t pci_info(nvmlDevice_t device, nvmlPciInfo_t *pci, int legacy_only) {
    fake_gpu *g;
    fake_mig *m;
    nvmlReturn_t rc = fake_resolve(device, &g, &m); /* MIG handles report the parent */
    if (rc != NVML_SUCCESS) return rc;
    if (pci == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    memset(pci, 0, sizeof *pci);
    snprintf(pci->busIdLegacy, sizeof pci->busIdLegacy, "%s", g->bus_id_legacy);
    snprintf(pci->busId, sizeof pci->busId, "%s", legacy_only ? g->bus_id_legacy : g->bus_id);
    pci->domain = g->pci_domain;
    pci->bus = g->pci_bus;
    pci->device = g->pci_device;
    pci->pciDeviceId = g->pci_device_id;
    pci->pciSubSystemId = g->pci_subsystem_id;
    return NVML_SUCCESS;
}

FAKE_API(nvmlDeviceGetPciInfo_v3, (nvmlDevice_t device, nvmlPciInfo_t *pci), (device, pci)) {
    return pci_info(device, pci, 0);
}

FAKE_API(nvmlDeviceGetPciInfo_v2, (nvmlDevice_t device, nvmlPciInfo_t *pci), (device, pci)) {
    return pci_info(device, pci, 0);
}

FAKE_API(nvmlDeviceGetPciInfo, (nvmlDevice_t device, nvmlPciInfo_t *pci), (device, pci)) {
    return pci_info(device, pci, 1);
}

FAKE_API(nvmlDeviceGetPciInfoExt, (nvmlDevice_t device, nvmlPciInfoExt_t *pci), (device, pci)) {
    fake_gpu *g;
    fake_mig *m;
    nvmlReturn_t rc = fake_resolve(device, &g, &m);
    if (rc != NVML_SUCCESS) return rc;
    if (pci == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    if (pci->version != nvmlPciInfoExt_v1) return NVML_ERROR_ARGUMENT_VERSION_MISMATCH;
    pci->domain = g->pci_domain;
    pci->bus = g->pci_bus;
    pci->device = g->pci_device;
    pci->pciDeviceId = g->pci_device_id;
    pci->pciSubSystemId = g->pci_subsystem_id;
    pci->baseClass = 0x03; /* display controller */
    pci->subClass = 0x02;  /* 3D controller */
    snprintf(pci->busId, sizeof pci->busId, "%s", g->bus_id);
    return NVML_SUCCESS;
}

FAKE_API(nvmlDeviceGetComputeMode, (nvmlDevice_t device, nvmlComputeMode_t *mode),
         (device, mode)) {
    fake_gpu *g;
    fake_mig *m;
    nvmlReturn_t rc = fake_resolve(device, &g, &m);
    if (rc != NVML_SUCCESS) return rc;
    if (mode == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    *mode = g->health.compute_mode;
    return NVML_SUCCESS;
}

FAKE_API(nvmlDeviceSetComputeMode, (nvmlDevice_t device, nvmlComputeMode_t mode),
         (device, mode)) {
    fake_gpu *g;
    nvmlReturn_t rc = fake_resolve_gpu(device, &g, NVML_ERROR_NOT_SUPPORTED);
    if (rc != NVML_SUCCESS) return rc;
    if ((unsigned int)mode >= NVML_COMPUTEMODE_COUNT || mode == 1 /* retired EXCLUSIVE_THREAD */)
        return NVML_ERROR_INVALID_ARGUMENT;
    g->health.compute_mode = mode;
    return NVML_SUCCESS;
}

/* ---------------------------------------------------------------- MIG */

FAKE_API(nvmlDeviceGetMigMode,
         (nvmlDevice_t device, unsigned int *currentMode, unsigned int *pendingMode),
         (device, currentMode, pendingMode)) {
    fake_gpu *g;
    nvmlReturn_t rc = fake_resolve_gpu(device, &g, NVML_ERROR_NOT_SUPPORTED);
    if (rc != NVML_SUCCESS) return rc;
    if (currentMode == NULL || pendingMode == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    if (!g->mig_capable) return NVML_ERROR_NOT_SUPPORTED;
    *currentMode = g->mig_current;
    *pendingMode = g->mig_pending;
    return NVML_SUCCESS;
}

FAKE_API(nvmlDeviceGetMaxMigDeviceCount, (nvmlDevice_t device, unsigned int *count),
         (device, count)) {
    fake_gpu *g;
    nvmlReturn_t rc = fake_resolve_gpu(device, &g, NVML_ERROR_INVALID_ARGUMENT);
    if (rc != NVML_SUCCESS) return rc;
    if (count == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    *count = g->mig_capable && g->mig_current ? g->max_mig_devices : 0;
    return NVML_SUCCESS;
}

FAKE_API(nvmlDeviceGetMigDeviceHandleByIndex,
         (nvmlDevice_t device, unsigned int index, nvmlDevice_t *migDevice),
         (device, index, migDevice)) {
    fake_gpu *g;
    nvmlReturn_t rc = fake_resolve_gpu(device, &g, NVML_ERROR_INVALID_ARGUMENT);
    if (rc != NVML_SUCCESS) return rc;
    if (!g->mig_capable) return NVML_ERROR_NOT_SUPPORTED;
    if (migDevice == NULL || !g->mig_current || index >= g->max_mig_devices)
        return NVML_ERROR_INVALID_ARGUMENT;
    /* A slot whose instance was destroyed (or that holds a GPU instance
     * without a compute instance) is a hole, as on a real GPU. */
    if (index >= (unsigned int)g->mig_count || g->migs[index].state != FAKE_SLOT_MIG)
        return NVML_ERROR_NOT_FOUND;
    *migDevice = &g_mig_handles[g->index][index];
    return NVML_SUCCESS;
}

FAKE_API(nvmlDeviceGetDeviceHandleFromMigDeviceHandle,
         (nvmlDevice_t migDevice, nvmlDevice_t *device), (migDevice, device)) {
    fake_gpu *g;
    fake_mig *m;
    nvmlReturn_t rc = fake_resolve(migDevice, &g, &m);
    if (rc != NVML_SUCCESS) return rc;
    if (m == NULL || device == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    *device = &g_dev_handles[g->index];
    return NVML_SUCCESS;
}

FAKE_API(nvmlDeviceIsMigDeviceHandle, (nvmlDevice_t device, unsigned int *isMigDevice),
         (device, isMigDevice)) {
    fake_gpu *g;
    fake_mig *m;
    nvmlReturn_t rc = fake_resolve(device, &g, &m);
    if (rc != NVML_SUCCESS) return rc;
    if (isMigDevice == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    *isMigDevice = m != NULL;
    return NVML_SUCCESS;
}

FAKE_API(nvmlDeviceGetGpuInstanceId, (nvmlDevice_t device, unsigned int *id), (device, id)) {
    fake_gpu *g;
    fake_mig *m;
    nvmlReturn_t rc = fake_resolve(device, &g, &m);
    if (rc != NVML_SUCCESS) return rc;
    if (m == NULL || id == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    *id = m->gi_id;
    return NVML_SUCCESS;
}

FAKE_API(nvmlDeviceGetComputeInstanceId, (nvmlDevice_t device, unsigned int *id),
         (device, id)) {
    fake_gpu *g;
    fake_mig *m;
    nvmlReturn_t rc = fake_resolve(device, &g, &m);
    if (rc != NVML_SUCCESS) return rc;
    if (m == NULL || id == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    *id = m->ci_id;
    return NVML_SUCCESS;
}

static nvmlReturn_t attributes(nvmlDevice_t device, nvmlDeviceAttributes_t *attributes) {
    fake_gpu *g;
    fake_mig *m;
    nvmlReturn_t rc = fake_resolve(device, &g, &m);
    if (rc != NVML_SUCCESS) return rc;
    if (attributes == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    if (m == NULL) return NVML_ERROR_NOT_SUPPORTED; /* MIG device handles only */
    const fake_profile *p = mig_profile(g, m);
    attributes->multiprocessorCount = p->multiprocessors;
    attributes->sharedCopyEngineCount = p->copy_engines;
    attributes->sharedDecoderCount = p->decoders;
    attributes->sharedEncoderCount = p->encoders;
    attributes->sharedJpegCount = p->jpegs;
    attributes->sharedOfaCount = p->ofas;
    attributes->gpuInstanceSliceCount = p->slice_count;
    attributes->computeInstanceSliceCount = p->slice_count;
    attributes->memorySizeMB = p->memory_mb;
    return NVML_SUCCESS;
}

FAKE_API(nvmlDeviceGetAttributes_v2, (nvmlDevice_t device, nvmlDeviceAttributes_t *attrs),
         (device, attrs)) {
    return attributes(device, attrs);
}

FAKE_API(nvmlDeviceGetAttributes, (nvmlDevice_t device, nvmlDeviceAttributes_t *attrs),
         (device, attrs)) {
    return attributes(device, attrs);
}

/* Profile lookups.  by_index: NVML_GPU_INSTANCE_PROFILE_* index; else profile id. */
static nvmlReturn_t find_profile(nvmlDevice_t device, unsigned int key, int by_index,
                                 fake_gpu **gpu, const fake_profile **out) {
    nvmlReturn_t rc = fake_resolve_gpu(device, gpu, NVML_ERROR_INVALID_ARGUMENT);
    if (rc != NVML_SUCCESS) return rc;
    if (!(*gpu)->mig_capable) return NVML_ERROR_NOT_SUPPORTED;
    if (by_index && key >= NVML_GPU_INSTANCE_PROFILE_COUNT) return NVML_ERROR_INVALID_ARGUMENT;
    for (int i = 0; i < (*gpu)->profile_count; i++) {
        const fake_profile *p = &(*gpu)->profiles[i];
        if ((by_index ? p->index : p->id) == key) {
            *out = p;
            return NVML_SUCCESS;
        }
    }
    return by_index ? NVML_ERROR_NOT_SUPPORTED : NVML_ERROR_INVALID_ARGUMENT;
}

FAKE_API(nvmlDeviceGetGpuInstanceProfileInfo,
         (nvmlDevice_t device, unsigned int profile, nvmlGpuInstanceProfileInfo_t *info),
         (device, profile, info)) {
    fake_gpu *g;
    const fake_profile *p;
    nvmlReturn_t rc = find_profile(device, profile, 1, &g, &p);
    if (rc != NVML_SUCCESS) return rc;
    if (info == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    info->id = p->id;
    info->isP2pSupported = 0;
    info->sliceCount = p->slice_count;
    info->instanceCount = p->instance_count;
    info->multiprocessorCount = p->multiprocessors;
    info->copyEngineCount = p->copy_engines;
    info->decoderCount = p->decoders;
    info->encoderCount = p->encoders;
    info->jpegCount = p->jpegs;
    info->ofaCount = p->ofas;
    info->memorySizeMB = p->memory_mb;
    return NVML_SUCCESS;
}

static nvmlReturn_t fill_profile_v(const fake_profile *p, nvmlGpuInstanceProfileInfo_v2_t *info) {
    if (info == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    if (info->version == nvmlGpuInstanceProfileInfo_v2) {
        info->id = p->id;
        info->isP2pSupported = 0;
        info->sliceCount = p->slice_count;
        info->instanceCount = p->instance_count;
        info->multiprocessorCount = p->multiprocessors;
        info->copyEngineCount = p->copy_engines;
        info->decoderCount = p->decoders;
        info->encoderCount = p->encoders;
        info->jpegCount = p->jpegs;
        info->ofaCount = p->ofas;
        info->memorySizeMB = p->memory_mb;
        snprintf(info->name, sizeof info->name, "%s", p->name);
        return NVML_SUCCESS;
    }
    if (info->version == nvmlGpuInstanceProfileInfo_v3) {
        nvmlGpuInstanceProfileInfo_v3_t *v3 = (nvmlGpuInstanceProfileInfo_v3_t *)info;
        v3->id = p->id;
        v3->sliceCount = p->slice_count;
        v3->instanceCount = p->instance_count;
        v3->multiprocessorCount = p->multiprocessors;
        v3->copyEngineCount = p->copy_engines;
        v3->decoderCount = p->decoders;
        v3->encoderCount = p->encoders;
        v3->jpegCount = p->jpegs;
        v3->ofaCount = p->ofas;
        v3->memorySizeMB = p->memory_mb;
        snprintf(v3->name, sizeof v3->name, "%s", p->name);
        v3->capabilities = 0;
        return NVML_SUCCESS;
    }
    return NVML_ERROR_ARGUMENT_VERSION_MISMATCH;
}

FAKE_API(nvmlDeviceGetGpuInstanceProfileInfoV,
         (nvmlDevice_t device, unsigned int profile, nvmlGpuInstanceProfileInfo_v2_t *info),
         (device, profile, info)) {
    fake_gpu *g;
    const fake_profile *p;
    nvmlReturn_t rc = find_profile(device, profile, 1, &g, &p);
    if (rc != NVML_SUCCESS) return rc;
    return fill_profile_v(p, info);
}

FAKE_API(nvmlDeviceGetGpuInstanceProfileInfoByIdV,
         (nvmlDevice_t device, unsigned int profileId, nvmlGpuInstanceProfileInfo_v2_t *info),
         (device, profileId, info)) {
    fake_gpu *g;
    const fake_profile *p;
    nvmlReturn_t rc = find_profile(device, profileId, 0, &g, &p);
    if (rc != NVML_SUCCESS) return rc;
    return fill_profile_v(p, info);
}

FAKE_API(nvmlDeviceGetGpuInstancePossiblePlacements_v2,
         (nvmlDevice_t device, unsigned int profileId, nvmlGpuInstancePlacement_t *placements,
          unsigned int *count),
         (device, profileId, placements, count)) {
    fake_gpu *g;
    const fake_profile *p;
    nvmlReturn_t rc = find_profile(device, profileId, 0, &g, &p);
    if (rc != NVML_SUCCESS) return rc;
    if (count == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    if (placements == NULL) {
        *count = p->placement_count;
        return NVML_SUCCESS;
    }
    if (*count < p->placement_count) {
        *count = p->placement_count;
        return NVML_ERROR_INSUFFICIENT_SIZE;
    }
    for (unsigned int i = 0; i < p->placement_count; i++) {
        placements[i].start = p->placements[i];
        placements[i].size = p->placement_size;
    }
    *count = p->placement_count;
    return NVML_SUCCESS;
}

FAKE_API(nvmlDeviceGetGpuInstanceRemainingCapacity,
         (nvmlDevice_t device, unsigned int profileId, unsigned int *count),
         (device, profileId, count)) {
    fake_gpu *g;
    const fake_profile *p;
    nvmlReturn_t rc = find_profile(device, profileId, 0, &g, &p);
    if (rc != NVML_SUCCESS) return rc;
    if (count == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    if (!g->mig_current) return NVML_ERROR_NOT_SUPPORTED;
    unsigned int used = 0, free_count = 0;
    unsigned int live = 0, same = 0;
    for (int i = 0; i < g->mig_count; i++) {
        if (g->migs[i].state == FAKE_SLOT_FREE) continue;
        const fake_profile *q = mig_profile(g, &g->migs[i]);
        used |= ((1u << q->placement_size) - 1) << g->migs[i].placement_start;
        live++;
        same += q == p;
    }
    for (unsigned int k = 0; k < p->placement_count; k++) {
        unsigned int mask = ((1u << p->placement_size) - 1) << p->placements[k];
        if (!(used & mask)) {
            free_count++;
            used |= mask;
        }
    }
    /* Also bounded by the GPU's instance limit and the profile's own. */
    unsigned int room = live < g->max_mig_devices ? g->max_mig_devices - live : 0;
    unsigned int prof_room = same < p->instance_count ? p->instance_count - same : 0;
    if (free_count > room) free_count = room;
    if (free_count > prof_room) free_count = prof_room;
    *count = free_count;
    return NVML_SUCCESS;
}

static nvmlReturn_t mig_enabled_gpu(nvmlDevice_t device, fake_gpu **g) {
    nvmlReturn_t rc = fake_resolve_gpu(device, g, NVML_ERROR_INVALID_ARGUMENT);
    if (rc != NVML_SUCCESS) return rc;
    if (!(*g)->mig_capable || !(*g)->mig_current) return NVML_ERROR_NOT_SUPPORTED;
    return NVML_SUCCESS;
}

FAKE_API(nvmlDeviceGetGpuInstances,
         (nvmlDevice_t device, unsigned int profileId, nvmlGpuInstance_t *gpuInstances,
          unsigned int *count),
         (device, profileId, gpuInstances, count)) {
    fake_gpu *g;
    const fake_profile *p;
    nvmlReturn_t rc = mig_enabled_gpu(device, &g);
    if (rc != NVML_SUCCESS) return rc;
    rc = find_profile(device, profileId, 0, &g, &p);
    if (rc != NVML_SUCCESS) return rc;
    if (gpuInstances == NULL || count == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    unsigned int n = 0;
    for (int i = 0; i < g->mig_count; i++)
        if (g->migs[i].state != FAKE_SLOT_FREE && mig_profile(g, &g->migs[i]) == p)
            gpuInstances[n++] = &g_gi_handles[g->index][i];
    *count = n;
    return NVML_SUCCESS;
}

FAKE_API(nvmlDeviceGetGpuInstanceById,
         (nvmlDevice_t device, unsigned int id, nvmlGpuInstance_t *gpuInstance),
         (device, id, gpuInstance)) {
    fake_gpu *g;
    nvmlReturn_t rc = mig_enabled_gpu(device, &g);
    if (rc != NVML_SUCCESS) return rc;
    if (gpuInstance == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    for (int i = 0; i < g->mig_count; i++) {
        if (g->migs[i].state != FAKE_SLOT_FREE && g->migs[i].gi_id == id) {
            *gpuInstance = &g_gi_handles[g->index][i];
            return NVML_SUCCESS;
        }
    }
    return NVML_ERROR_NOT_FOUND;
}

static int in_table(const void *h, const void *base, size_t elem, int *gpu, int *slot) {
    uintptr_t a = (uintptr_t)h, b = (uintptr_t)base;
    size_t count = (size_t)FAKE_MAX_GPUS * FAKE_MAX_MIG_PER_GPU;
    if (h == NULL || a < b || a >= b + elem * count || (a - b) % elem) return 0;
    size_t i = (a - b) / elem;
    *gpu = (int)(i / FAKE_MAX_MIG_PER_GPU);
    *slot = (int)(i % FAKE_MAX_MIG_PER_GPU);
    return 1;
}

/* Validate a GI or CI handle: the slot must still hold a GPU instance (a GI
 * handle) or a GPU instance with its compute instance (a CI handle). */
nvmlReturn_t fake_resolve_instance(const void *h, const void *base, size_t elem, fake_gpu **g,
                                   fake_mig **m) {
    int gi, slot;
    int need = base == (const void *)g_ci_handles ? FAKE_SLOT_MIG : FAKE_SLOT_GI;
    if (!in_table(h, base, elem, &gi, &slot) || gi >= g_sys.gpu_count ||
        slot >= g_gpus[gi].mig_count || g_gpus[gi].migs[slot].state < need ||
        !g_gpus[gi].mig_current)
        return NVML_ERROR_INVALID_ARGUMENT;
    *g = &g_gpus[gi];
    *m = &g_gpus[gi].migs[slot];
    return (*g)->health.lost ? NVML_ERROR_GPU_IS_LOST : NVML_SUCCESS;
}

FAKE_API(nvmlGpuInstanceGetInfo, (nvmlGpuInstance_t gpuInstance, nvmlGpuInstanceInfo_t *info),
         (gpuInstance, info)) {
    fake_gpu *g;
    fake_mig *m;
    nvmlReturn_t rc = fake_resolve_instance(gpuInstance, g_gi_handles, sizeof g_gi_handles[0][0], &g,
                                       &m);
    if (rc != NVML_SUCCESS) return rc;
    if (info == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    info->device = &g_dev_handles[g->index];
    info->id = m->gi_id;
    info->profileId = mig_profile(g, m)->id;
    info->placement.start = m->placement_start;
    info->placement.size = mig_profile(g, m)->placement_size;
    return NVML_SUCCESS;
}

/* Every GI in a topology holds one compute instance spanning the whole GI, so
 * its CI profile is the NVML_COMPUTE_INSTANCE_PROFILE_* of the GI's slice count. */
unsigned int ci_profile_of(const fake_profile *p) {
    switch (p->slice_count) {
    case 1: return NVML_COMPUTE_INSTANCE_PROFILE_1_SLICE;
    case 2: return NVML_COMPUTE_INSTANCE_PROFILE_2_SLICE;
    case 3: return NVML_COMPUTE_INSTANCE_PROFILE_3_SLICE;
    case 4: return NVML_COMPUTE_INSTANCE_PROFILE_4_SLICE;
    case 6: return NVML_COMPUTE_INSTANCE_PROFILE_6_SLICE;
    case 8: return NVML_COMPUTE_INSTANCE_PROFILE_8_SLICE;
    default: return NVML_COMPUTE_INSTANCE_PROFILE_7_SLICE;
    }
}

FAKE_API(nvmlGpuInstanceGetComputeInstanceById,
         (nvmlGpuInstance_t gpuInstance, unsigned int id, nvmlComputeInstance_t *computeInstance),
         (gpuInstance, id, computeInstance)) {
    fake_gpu *g;
    fake_mig *m;
    nvmlReturn_t rc = fake_resolve_instance(gpuInstance, g_gi_handles, sizeof g_gi_handles[0][0], &g,
                                       &m);
    if (rc != NVML_SUCCESS) return rc;
    if (computeInstance == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    if (m->state != FAKE_SLOT_MIG || m->ci_id != id) return NVML_ERROR_NOT_FOUND;
    *computeInstance = &g_ci_handles[g->index][m - g->migs];
    return NVML_SUCCESS;
}

FAKE_API(nvmlGpuInstanceGetComputeInstances,
         (nvmlGpuInstance_t gpuInstance, unsigned int profileId,
          nvmlComputeInstance_t *computeInstances, unsigned int *count),
         (gpuInstance, profileId, computeInstances, count)) {
    fake_gpu *g;
    fake_mig *m;
    nvmlReturn_t rc = fake_resolve_instance(gpuInstance, g_gi_handles, sizeof g_gi_handles[0][0], &g,
                                       &m);
    if (rc != NVML_SUCCESS) return rc;
    if (computeInstances == NULL || count == NULL ||
        profileId >= NVML_COMPUTE_INSTANCE_PROFILE_COUNT)
        return NVML_ERROR_INVALID_ARGUMENT;
    *count = 0;
    if (m->state == FAKE_SLOT_MIG && ci_profile_of(mig_profile(g, m)) == profileId) {
        computeInstances[0] = &g_ci_handles[g->index][m - g->migs];
        *count = 1;
    }
    return NVML_SUCCESS;
}

static nvmlReturn_t ci_info(nvmlComputeInstance_t computeInstance, nvmlComputeInstanceInfo_t *info) {
    fake_gpu *g;
    fake_mig *m;
    nvmlReturn_t rc = fake_resolve_instance(computeInstance, g_ci_handles, sizeof g_ci_handles[0][0],
                                       &g, &m);
    if (rc != NVML_SUCCESS) return rc;
    if (info == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    int slot = (int)(m - g->migs);
    info->device = &g_dev_handles[g->index];
    info->gpuInstance = &g_gi_handles[g->index][slot];
    info->id = m->ci_id;
    info->profileId = ci_profile_of(mig_profile(g, m));
    info->placement.start = 0;
    info->placement.size = mig_profile(g, m)->slice_count;
    return NVML_SUCCESS;
}

FAKE_API(nvmlComputeInstanceGetInfo_v2,
         (nvmlComputeInstance_t computeInstance, nvmlComputeInstanceInfo_t *info),
         (computeInstance, info)) {
    return ci_info(computeInstance, info);
}

FAKE_API(nvmlComputeInstanceGetInfo,
         (nvmlComputeInstance_t computeInstance, nvmlComputeInstanceInfo_t *info),
         (computeInstance, info)) {
    return ci_info(computeInstance, info);
}
