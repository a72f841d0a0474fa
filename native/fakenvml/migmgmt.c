/*
 * MIG management: creating and destroying GPU and compute instances.
 *
 * The fake's model lives in each process, so a layout change must reach
 * every process that uses the same node: each create or destroy is written
 * to the fault log as a record ("gi_create", "ci_create", "ci_destroy",
 * "gi_destroy"), which every process folds in log order, exactly as it folds
 * faults. A change is decided under an exclusive flock() of the log after
 * folding everything appended so far, so two processes creating at once
 * never pick the same placement or id; the new instance's ids and UUID are
 * in the record, so both backends in every process see the same ones.
 * Without a fault log the change stays in this process.
 *
 * Semantics follow nvml.h: a GPU without MIG mode enabled answers
 * NOT_SUPPORTED; an unknown profile or a placement the profile does not offer
 * INVALID_ARGUMENT; a placement that overlaps an existing instance, or a GPU
 * (or profile) at its instance limit, INSUFFICIENT_RESOURCES; destroying a GPU
 * instance that still has its compute instance, or a compute instance with
 * processes on it ("mig_busy"), IN_USE; a handle of a destroyed instance
 * INVALID_ARGUMENT. NO_PERMISSION and any other code come from "fail" faults.
 *
 * Modelled: one compute instance per GPU instance, spanning all of it (the
 * only CI profile offered is the GI's full slice count; smaller ones answer
 * NOT_SUPPORTED). GPU instance ids are the lowest unused id from 1; the
 * compute instance id is 0, as the first CI of a GI gets on a real GPU.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "api_common.h"

/* ---------------------------------------------------------------- model */

static int profile_slot(const fake_gpu *g, unsigned int profile_id) {
    for (int i = 0; i < g->profile_count; i++)
        if (g->profiles[i].id == profile_id) return i;
    return -1;
}

static fake_mig *by_gi(fake_gpu *g, unsigned int gi_id) {
    for (int i = 0; i < g->mig_count; i++)
        if (g->migs[i].state != FAKE_SLOT_FREE && g->migs[i].gi_id == gi_id) return &g->migs[i];
    return NULL;
}

static unsigned int mask_of(const fake_profile *p, unsigned int start) {
    return ((1u << p->placement_size) - 1) << start;
}

static unsigned int used_slices(const fake_gpu *g) {
    unsigned int used = 0;
    for (int i = 0; i < g->mig_count; i++) {
        const fake_mig *m = &g->migs[i];
        if (m->state != FAKE_SLOT_FREE) used |= mask_of(&g->profiles[m->profile], m->placement_start);
    }
    return used;
}

void fake_mig_reset(void) {
    for (int i = 0; i < g_sys.gpu_count; i++) {
        fake_gpu *g = &g_gpus[i];
        memcpy(g->migs, g->topo_migs, sizeof g->migs);
        g->mig_count = g->topo_mig_count;
    }
}

static int uuid_taken(const char *uuid) {
    for (int i = 0; i < g_sys.gpu_count; i++)
        for (int j = 0; j < g_gpus[i].mig_count; j++)
            if (g_gpus[i].migs[j].state == FAKE_SLOT_MIG &&
                strcasecmp(g_gpus[i].migs[j].uuid, uuid) == 0)
                return 1;
    return 0;
}

static int free_slot(const fake_gpu *g) {
    for (int i = 0; i < FAKE_MAX_MIG_PER_GPU; i++)
        if (i >= g->mig_count || g->migs[i].state == FAKE_SLOT_FREE) return i;
    return -1;
}

static fake_mig *take_slot(fake_gpu *g, int slot) {
    if (slot >= g->mig_count) {
        for (int i = g->mig_count; i < slot; i++) g->migs[i].state = FAKE_SLOT_FREE;
        g->mig_count = slot + 1;
    }
    fake_mig *m = &g->migs[slot];
    memset(m, 0, sizeof *m);
    return m;
}

/* An operator's `nvidia-smi mig -cgi P -C` ("mig_create": value = profile id,
 * placement and gi optional) and `-dci -dgi -gi N` ("mig_destroy"): the whole
 * MIG device at once. What the GPU cannot take is logged and changes nothing. */
static void operator_create(fake_gpu *g, const fault_record *r) {
    int p = profile_slot(g, r->value);
    unsigned int live = 0;
    for (int i = 0; i < g->mig_count; i++) live += g->migs[i].state != FAKE_SLOT_FREE;
    int slot = free_slot(g);
    if (!g->mig_current || p < 0 || live >= g->max_mig_devices || slot < 0) {
        fake_warn("mig_create: GPU %u cannot take a MIG device of profile %u", g->index, r->value);
        return;
    }
    const fake_profile *pr = &g->profiles[p];
    unsigned int used = used_slices(g);
    long start = -1;
    for (unsigned int k = 0; k < pr->placement_count && start < 0; k++) {
        unsigned int at = pr->placements[k];
        if ((r->placement == FAKE_NO_ID || r->placement == at) && !(used & mask_of(pr, at)))
            start = at;
    }
    if (start < 0) {
        fake_warn("mig_create: no free placement for profile %u on GPU %u", r->value, g->index);
        return;
    }
    unsigned int gi = r->gi;
    if (gi == FAKE_NO_ID)
        for (gi = 1; by_gi(g, gi) != NULL; gi++) {
        }
    if (by_gi(g, gi) != NULL) {
        fake_warn("mig_create: GPU %u already has GPU instance %u", g->index, gi);
        return;
    }
    char uuid[FAKE_STR];
    if (r->uuid[0])
        snprintf(uuid, sizeof uuid, "%s", r->uuid);
    else
        snprintf(uuid, sizeof uuid, "MIG-%08x-0000-4000-8000-%012x", g->index + 1, gi);
    if (uuid_taken(uuid)) {
        fake_warn("mig_create: MIG uuid %s already exists; nothing created", uuid);
        return;
    }
    fake_mig *m = take_slot(g, slot);
    m->state = FAKE_SLOT_MIG;
    m->profile = p;
    m->placement_start = (unsigned int)start;
    m->gi_id = gi;
    m->ci_id = 0;
    snprintf(m->uuid, sizeof m->uuid, "%s", uuid);
}

static void operator_destroy(fake_gpu *g, unsigned int gi) {
    fake_mig *m = by_gi(g, gi);
    if (m == NULL) {
        fake_warn("mig_destroy: GPU %u has no GPU instance %u; nothing destroyed", g->index, gi);
        return;
    }
    memset(m, 0, sizeof *m);
    m->state = FAKE_SLOT_FREE;
    while (g->mig_count > 0 && g->migs[g->mig_count - 1].state == FAKE_SLOT_FREE) g->mig_count--;
}

void fake_mig_apply(const fault_record *r) {
    if (r->gpu < 0 || r->gpu >= g_sys.gpu_count) return;
    fake_gpu *g = &g_gpus[r->gpu];
    fake_mig *m = by_gi(g, r->gi);
    switch (r->kind) {
    case FAULT_MIG_CREATE: operator_create(g, r); return;
    case FAULT_MIG_DESTROY: operator_destroy(g, r->gi); return;
    case FAULT_GI_CREATE: {
        int p = profile_slot(g, r->profile_id);
        int slot = -1;
        for (int i = 0; i < FAKE_MAX_MIG_PER_GPU && slot < 0; i++)
            if (i >= g->mig_count || g->migs[i].state == FAKE_SLOT_FREE) slot = i;
        if (!g->mig_capable || p < 0 || m != NULL || slot < 0 ||
            r->start + g->profiles[p].placement_size > g->memory_slices ||
            (used_slices(g) & mask_of(&g->profiles[p], r->start))) {
            fake_warn("gi_create of GI %u on GPU %d does not fit its layout; ignored", r->gi,
                      r->gpu);
            return;
        }
        m = &g->migs[slot];
        memset(m, 0, sizeof *m);
        m->state = FAKE_SLOT_GI;
        m->profile = p;
        m->placement_start = r->start;
        m->gi_id = r->gi;
        m->ci_id = FAKE_NO_ID;
        if (slot >= g->mig_count) {
            for (int i = g->mig_count; i < slot; i++) g->migs[i].state = FAKE_SLOT_FREE;
            g->mig_count = slot + 1;
        }
        return;
    }
    case FAULT_CI_CREATE:
        if (m == NULL || m->state != FAKE_SLOT_GI) {
            fake_warn("ci_create on GI %u of GPU %d, which has no free GPU instance; ignored",
                      r->gi, r->gpu);
            return;
        }
        m->state = FAKE_SLOT_MIG;
        m->ci_id = r->ci;
        snprintf(m->uuid, sizeof m->uuid, "%s", r->uuid);
        return;
    case FAULT_CI_DESTROY:
        if (m == NULL || m->state != FAKE_SLOT_MIG || m->ci_id != r->ci) {
            fake_warn("ci_destroy of CI %u/%u on GPU %d, which does not exist; ignored", r->gi,
                      r->ci, r->gpu);
            return;
        }
        m->state = FAKE_SLOT_GI;
        m->ci_id = FAKE_NO_ID;
        m->busy = 0;
        m->uuid[0] = '\0';
        return;
    case FAULT_GI_DESTROY:
        if (m == NULL || m->state != FAKE_SLOT_GI) {
            fake_warn("gi_destroy of GI %u on GPU %d, which is absent or in use; ignored", r->gi,
                      r->gpu);
            return;
        }
        memset(m, 0, sizeof *m);
        m->state = FAKE_SLOT_FREE;
        while (g->mig_count > 0 && g->migs[g->mig_count - 1].state == FAKE_SLOT_FREE)
            g->mig_count--;
        return;
    case FAULT_MIG_BUSY:
        if (m != NULL) m->busy = r->value != 0;
        return;
    default: return;
    }
}

/* ------------------------------------------------------ the layout log */

static int g_write_fd = -1;

/* Take the cross-process layout lock and fold what others appended. */
static nvmlReturn_t layout_begin(void) {
    if (g_fault_path[0] == '\0') return NVML_SUCCESS;
    g_write_fd = open(g_fault_path, O_WRONLY | O_APPEND | O_CLOEXEC);
    if (g_write_fd < 0) {
        fake_warn("cannot open fault log %s for a MIG change: %s", g_fault_path, strerror(errno));
        return NVML_ERROR_UNKNOWN;
    }
    while (flock(g_write_fd, LOCK_EX) != 0) {
        if (errno != EINTR) {
            fake_warn("cannot lock %s: %s", g_fault_path, strerror(errno));
            close(g_write_fd);
            g_write_fd = -1;
            return NVML_ERROR_UNKNOWN;
        }
    }
    fake_faults_refresh_force();
    return NVML_SUCCESS;
}

static void layout_end(void) {
    if (g_write_fd < 0) return;
    flock(g_write_fd, LOCK_UN);
    close(g_write_fd);
    g_write_fd = -1;
}

/* Append one record and fold it (so this process applies it in log order). */
static nvmlReturn_t layout_commit(const char *json) {
    char why[256];
    if (g_fault_path[0] == '\0') {
        if (fake_faults_fold_line(json, why, sizeof why) != 0) {
            fake_warn("MIG record refused: %s", why);
            return NVML_ERROR_UNKNOWN;
        }
        return NVML_SUCCESS;
    }
    char line[1024];
    int n = snprintf(line, sizeof line, "%s\n", json);
    if (n <= 0 || (size_t)n >= sizeof line || write(g_write_fd, line, (size_t)n) != n) {
        fake_warn("cannot append a MIG record to %s: %s", g_fault_path, strerror(errno));
        return NVML_ERROR_UNKNOWN;
    }
    struct stat st;
    if (fstat(g_write_fd, &st) == 0) {
        char gen[4200];
        snprintf(gen, sizeof gen, "%s.gen", g_fault_path);
        int fd = open(gen, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
        if (fd >= 0) {
            uint64_t size = (uint64_t)st.st_size; /* little endian, as the readers expect */
            unsigned char b[8];
            for (int i = 0; i < 8; i++) b[i] = (unsigned char)(size >> (8 * i));
            if (pwrite(fd, b, sizeof b, 0) != (ssize_t)sizeof b)
                fake_warn("cannot update %s; readers notice within 100 ms", gen);
            close(fd);
        }
    }
    fake_faults_refresh_force();
    return NVML_SUCCESS;
}

static unsigned long long fnv(unsigned long long h, const char *s) {
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 0x100000001b3ULL;
    return h;
}

/* A fresh UUID for a new compute instance: unique per creation within a log
 * (the record count is part of it), the same in every process (it is in the
 * record). */
static void new_uuid(const fake_gpu *g, unsigned int gi, char *out, size_t len) {
    char seed[256];
    snprintf(seed, sizeof seed, "%s|%u|%zu", g->uuid, gi, g_record_count);
    unsigned long long a = fnv(0xcbf29ce484222325ULL, seed);
    unsigned long long b = fnv(a ^ 0x9e3779b97f4a7c15ULL, seed);
    snprintf(out, len, "MIG-%08llx-%04llx-4%03llx-%04llx-%012llx", a >> 32, (a >> 16) & 0xffff,
             a & 0xfff, 0x8000 | ((b >> 48) & 0x3fff), b & 0xffffffffffffULL);
}

/* ---------------------------------------------------------------- API */

static nvmlReturn_t create_gi(nvmlDevice_t device, unsigned int profileId,
                              const nvmlGpuInstancePlacement_t *placement,
                              nvmlGpuInstance_t *gpuInstance) {
    fake_gpu *g;
    nvmlReturn_t rc = fake_resolve_gpu(device, &g, NVML_ERROR_INVALID_ARGUMENT);
    if (rc != NVML_SUCCESS) return rc;
    if (!g->mig_capable || !g->mig_current) return NVML_ERROR_NOT_SUPPORTED;
    if (gpuInstance == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    int p = profile_slot(g, profileId);
    if (p < 0) return NVML_ERROR_INVALID_ARGUMENT;
    const fake_profile *pr = &g->profiles[p];
    if (placement != NULL) {
        int offered = 0;
        for (unsigned int k = 0; k < pr->placement_count; k++)
            offered |= pr->placements[k] == placement->start;
        if (!offered || placement->size != pr->placement_size) return NVML_ERROR_INVALID_ARGUMENT;
    }
    rc = layout_begin();
    if (rc != NVML_SUCCESS) return rc;
    if (g->health.lost) {
        rc = NVML_ERROR_GPU_IS_LOST;
        goto out;
    }
    unsigned int used = used_slices(g), live = 0, same = 0;
    for (int i = 0; i < g->mig_count; i++) {
        if (g->migs[i].state == FAKE_SLOT_FREE) continue;
        live++;
        same += g->migs[i].profile == p;
    }
    if (live >= g->max_mig_devices || same >= pr->instance_count) {
        rc = NVML_ERROR_INSUFFICIENT_RESOURCES;
        goto out;
    }
    long start = -1;
    if (placement != NULL) {
        if (!(used & mask_of(pr, placement->start))) start = placement->start;
    } else {
        for (unsigned int k = 0; k < pr->placement_count && start < 0; k++)
            if (!(used & mask_of(pr, pr->placements[k]))) start = pr->placements[k];
    }
    if (start < 0) {
        rc = NVML_ERROR_INSUFFICIENT_RESOURCES;
        goto out;
    }
    unsigned int gi = 1;
    while (by_gi(g, gi) != NULL) gi++;
    char json[512];
    snprintf(json, sizeof json,
             "{\"kind\":\"gi_create\",\"gpu\":\"%s\",\"profile_id\":%u,\"start\":%ld,\"gi\":%u}",
             g->uuid, pr->id, start, gi);
    rc = layout_commit(json);
    if (rc != NVML_SUCCESS) goto out;
    fake_mig *m = by_gi(g, gi);
    if (m == NULL) {
        rc = NVML_ERROR_UNKNOWN;
        goto out;
    }
    *gpuInstance = &g_gi_handles[g->index][m - g->migs];
out:
    layout_end();
    return rc;
}

FAKE_API(nvmlDeviceCreateGpuInstanceWithPlacement,
         (nvmlDevice_t device, unsigned int profileId, const nvmlGpuInstancePlacement_t *placement,
          nvmlGpuInstance_t *gpuInstance),
         (device, profileId, placement, gpuInstance)) {
    if (placement == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    return create_gi(device, profileId, placement, gpuInstance);
}

FAKE_API(nvmlDeviceCreateGpuInstance,
         (nvmlDevice_t device, unsigned int profileId, nvmlGpuInstance_t *gpuInstance),
         (device, profileId, gpuInstance)) {
    return create_gi(device, profileId, NULL, gpuInstance);
}

FAKE_API(nvmlGpuInstanceDestroy, (nvmlGpuInstance_t gpuInstance), (gpuInstance)) {
    fake_gpu *g;
    fake_mig *m;
    nvmlReturn_t rc = fake_resolve_instance(gpuInstance, g_gi_handles, sizeof g_gi_handles[0][0],
                                            &g, &m);
    if (rc != NVML_SUCCESS) return rc;
    rc = layout_begin();
    if (rc != NVML_SUCCESS) return rc;
    if (m->state == FAKE_SLOT_FREE) {
        rc = NVML_ERROR_INVALID_ARGUMENT; /* destroyed by another process meanwhile */
    } else if (m->state == FAKE_SLOT_MIG) {
        rc = NVML_ERROR_IN_USE; /* its compute instance is still there */
    } else {
        char json[256];
        snprintf(json, sizeof json, "{\"kind\":\"gi_destroy\",\"gpu\":\"%s\",\"gi\":%u}", g->uuid,
                 m->gi_id);
        rc = layout_commit(json);
    }
    layout_end();
    return rc;
}

static nvmlReturn_t create_ci(nvmlGpuInstance_t gpuInstance, unsigned int profileId,
                              const nvmlComputeInstancePlacement_t *placement,
                              nvmlComputeInstance_t *computeInstance) {
    fake_gpu *g;
    fake_mig *m;
    nvmlReturn_t rc = fake_resolve_instance(gpuInstance, g_gi_handles, sizeof g_gi_handles[0][0],
                                            &g, &m);
    if (rc != NVML_SUCCESS) return rc;
    if (computeInstance == NULL || profileId >= NVML_COMPUTE_INSTANCE_PROFILE_COUNT)
        return NVML_ERROR_INVALID_ARGUMENT;
    const fake_profile *pr = &g->profiles[m->profile];
    if (profileId != ci_profile_of(pr)) return NVML_ERROR_NOT_SUPPORTED;
    if (placement != NULL && (placement->start != 0 || placement->size != pr->slice_count))
        return NVML_ERROR_INVALID_ARGUMENT;
    rc = layout_begin();
    if (rc != NVML_SUCCESS) return rc;
    if (m->state == FAKE_SLOT_FREE) {
        rc = NVML_ERROR_INVALID_ARGUMENT;
    } else if (m->state == FAKE_SLOT_MIG) {
        rc = NVML_ERROR_INSUFFICIENT_RESOURCES; /* its compute slices are taken */
    } else {
        char uuid[FAKE_STR], json[512];
        new_uuid(g, m->gi_id, uuid, sizeof uuid);
        snprintf(json, sizeof json,
                 "{\"kind\":\"ci_create\",\"gpu\":\"%s\",\"gi\":%u,\"ci\":0,\"uuid\":\"%s\"}",
                 g->uuid, m->gi_id, uuid);
        rc = layout_commit(json);
        if (rc == NVML_SUCCESS && m->state == FAKE_SLOT_MIG)
            *computeInstance = &g_ci_handles[g->index][m - g->migs];
        else if (rc == NVML_SUCCESS)
            rc = NVML_ERROR_UNKNOWN;
    }
    layout_end();
    return rc;
}

FAKE_API(nvmlGpuInstanceCreateComputeInstance,
         (nvmlGpuInstance_t gpuInstance, unsigned int profileId,
          nvmlComputeInstance_t *computeInstance),
         (gpuInstance, profileId, computeInstance)) {
    return create_ci(gpuInstance, profileId, NULL, computeInstance);
}

FAKE_API(nvmlGpuInstanceCreateComputeInstanceWithPlacement,
         (nvmlGpuInstance_t gpuInstance, unsigned int profileId,
          const nvmlComputeInstancePlacement_t *placement, nvmlComputeInstance_t *computeInstance),
         (gpuInstance, profileId, placement, computeInstance)) {
    if (placement == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    return create_ci(gpuInstance, profileId, placement, computeInstance);
}

FAKE_API(nvmlComputeInstanceDestroy, (nvmlComputeInstance_t computeInstance), (computeInstance)) {
    fake_gpu *g;
    fake_mig *m;
    nvmlReturn_t rc = fake_resolve_instance(computeInstance, g_ci_handles,
                                            sizeof g_ci_handles[0][0], &g, &m);
    if (rc != NVML_SUCCESS) return rc;
    rc = layout_begin();
    if (rc != NVML_SUCCESS) return rc;
    if (m->state != FAKE_SLOT_MIG) {
        rc = NVML_ERROR_INVALID_ARGUMENT;
    } else if (m->busy) {
        rc = NVML_ERROR_IN_USE; /* processes run on it */
    } else {
        char json[256];
        snprintf(json, sizeof json,
                 "{\"kind\":\"ci_destroy\",\"gpu\":\"%s\",\"gi\":%u,\"ci\":%u}", g->uuid,
                 m->gi_id, m->ci_id);
        rc = layout_commit(json);
    }
    layout_end();
    return rc;
}

/* The one CI profile a GI offers here: its full slice count, shared engines. */
static nvmlReturn_t ci_profile(nvmlGpuInstance_t gpuInstance, unsigned int profile,
                               unsigned int engProfile, const fake_profile **out) {
    fake_gpu *g;
    fake_mig *m;
    nvmlReturn_t rc = fake_resolve_instance(gpuInstance, g_gi_handles, sizeof g_gi_handles[0][0],
                                            &g, &m);
    if (rc != NVML_SUCCESS) return rc;
    if (profile >= NVML_COMPUTE_INSTANCE_PROFILE_COUNT ||
        engProfile != NVML_COMPUTE_INSTANCE_ENGINE_PROFILE_SHARED)
        return NVML_ERROR_INVALID_ARGUMENT;
    *out = &g->profiles[m->profile];
    return profile == ci_profile_of(*out) ? NVML_SUCCESS : NVML_ERROR_NOT_SUPPORTED;
}

/* The fields nvmlComputeInstanceProfileInfo_t and its _v2 share (distinct C types):
 * the one compute instance covering a whole GPU instance of profile p. */
#define FILL_CI_PROFILE(info, profile_id, p)                                                  \
    do {                                                                                      \
        (info)->id = (profile_id);                                                            \
        (info)->sliceCount = (p)->slice_count;                                                \
        (info)->instanceCount = 1;                                                            \
        (info)->multiprocessorCount = (p)->multiprocessors;                                   \
        (info)->sharedCopyEngineCount = (p)->copy_engines;                                    \
        (info)->sharedDecoderCount = (p)->decoders;                                           \
        (info)->sharedEncoderCount = (p)->encoders;                                           \
        (info)->sharedJpegCount = (p)->jpegs;                                                 \
        (info)->sharedOfaCount = (p)->ofas;                                                   \
    } while (0)

FAKE_API(nvmlGpuInstanceGetComputeInstanceProfileInfo,
         (nvmlGpuInstance_t gpuInstance, unsigned int profile, unsigned int engProfile,
          nvmlComputeInstanceProfileInfo_t *info),
         (gpuInstance, profile, engProfile, info)) {
    const fake_profile *p;
    nvmlReturn_t rc = ci_profile(gpuInstance, profile, engProfile, &p);
    if (rc != NVML_SUCCESS) return rc;
    if (info == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    FILL_CI_PROFILE(info, profile, p);
    return NVML_SUCCESS;
}

FAKE_API(nvmlGpuInstanceGetComputeInstanceProfileInfoV,
         (nvmlGpuInstance_t gpuInstance, unsigned int profile, unsigned int engProfile,
          nvmlComputeInstanceProfileInfo_v2_t *info),
         (gpuInstance, profile, engProfile, info)) {
    const fake_profile *p;
    nvmlReturn_t rc = ci_profile(gpuInstance, profile, engProfile, &p);
    if (rc != NVML_SUCCESS) return rc;
    if (info == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    if (info->version != nvmlComputeInstanceProfileInfo_v2) return NVML_ERROR_ARGUMENT_VERSION_MISMATCH;
    FILL_CI_PROFILE(info, profile, p);
    snprintf(info->name, sizeof info->name, "%s", p->name);
    return NVML_SUCCESS;
}

FAKE_API(nvmlGpuInstanceGetComputeInstanceRemainingCapacity,
         (nvmlGpuInstance_t gpuInstance, unsigned int profileId, unsigned int *count),
         (gpuInstance, profileId, count)) {
    fake_gpu *g;
    fake_mig *m;
    nvmlReturn_t rc = fake_resolve_instance(gpuInstance, g_gi_handles, sizeof g_gi_handles[0][0],
                                            &g, &m);
    if (rc != NVML_SUCCESS) return rc;
    if (count == NULL || profileId >= NVML_COMPUTE_INSTANCE_PROFILE_COUNT)
        return NVML_ERROR_INVALID_ARGUMENT;
    if (profileId != ci_profile_of(&g->profiles[m->profile])) return NVML_ERROR_NOT_SUPPORTED;
    *count = m->state == FAKE_SLOT_GI ? 1 : 0;
    return NVML_SUCCESS;
}
