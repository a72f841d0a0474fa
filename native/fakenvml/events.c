/*
 * Event sets.
 *
 * An event set walks the folded fault records with its own cursor, so each
 * set sees every event appended after it registered a GPU, exactly once.
 * nvmlEventSetWait blocks in poll() on an inotify watch of the fault log with
 * g_lock released: an append by any process wakes it within milliseconds.
 * The poll is also capped at a short interval so a missed notification (a
 * log on a filesystem without inotify) only delays, never loses, an event.
 *
 * Lost GPUs: the Xid 79 and GpuUnavailableError events are delivered first;
 * the wait after them returns NVML_ERROR_GPU_IS_LOST once per loss, as the
 * real library reports a registered GPU that fell off the bus.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <sys/inotify.h>
#include <time.h>
#include <unistd.h>

#include "api_common.h"

#define RECHECK_MS 250

struct nvmlEventSet_st {
    int in_use;
    int waiters;
    int ifd; /* inotify fd; -1 when unavailable */
    unsigned long long mask[FAKE_MAX_GPUS];
    size_t reg_from[FAKE_MAX_GPUS]; /* first record index this GPU's events count from */
    size_t next_rec;
    int next_sub;
};

static struct nvmlEventSet_st g_sets[FAKE_MAX_EVENT_SETS];

static void release_set(struct nvmlEventSet_st *s) {
    s->in_use = 0;
    /* A thread still blocked in poll() owns the fd until it leaves. */
    if (s->waiters == 0 && s->ifd >= 0) {
        close(s->ifd);
        s->ifd = -1;
    }
}

void fake_events_reset(void) {
    for (int i = 0; i < FAKE_MAX_EVENT_SETS; i++)
        if (g_sets[i].in_use) release_set(&g_sets[i]);
}

static struct nvmlEventSet_st *resolve_set(nvmlEventSet_t set) {
    uintptr_t a = (uintptr_t)set, b = (uintptr_t)g_sets;
    if (set == NULL || a < b || a >= b + sizeof g_sets || (a - b) % sizeof g_sets[0]) return NULL;
    return set->in_use ? set : NULL;
}

/* The topology's event types, plus the recovery-action event on drivers that have it (565+)
 * and, on MIG-capable GPUs, MIG configuration changes (a GI/CI created or destroyed). */
static unsigned long long supported(const fake_gpu *g) {
    return g->supported_events | (fake_has_recovery_action() ? nvmlEventTypeGpuRecoveryAction : 0) |
           (g->mig_capable ? nvmlEventMigConfigChange : 0);
}

FAKE_API(nvmlEventSetCreate, (nvmlEventSet_t *set), (set)) {
    if (set == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    for (int i = 0; i < FAKE_MAX_EVENT_SETS; i++) {
        struct nvmlEventSet_st *s = &g_sets[i];
        if (s->in_use || s->waiters) continue;
        *s = (struct nvmlEventSet_st){0};
        s->in_use = 1;
        s->next_rec = g_record_count;
        s->ifd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
        if (s->ifd >= 0 &&
            inotify_add_watch(s->ifd, g_fault_path,
                              IN_MODIFY | IN_CLOSE_WRITE | IN_ATTRIB | IN_MOVE_SELF |
                                  IN_DELETE_SELF) < 0) {
            close(s->ifd);
            s->ifd = -1;
        }
        *set = s;
        return NVML_SUCCESS;
    }
    return NVML_ERROR_MEMORY;
}

FAKE_API(nvmlEventSetFree, (nvmlEventSet_t set), (set)) {
    struct nvmlEventSet_st *s = resolve_set(set);
    if (s == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    release_set(s);
    return NVML_SUCCESS;
}

FAKE_API(nvmlDeviceGetSupportedEventTypes, (nvmlDevice_t device, unsigned long long *eventTypes),
         (device, eventTypes)) {
    fake_gpu *g;
    nvmlReturn_t rc = fake_resolve_gpu(device, &g, NVML_ERROR_NOT_SUPPORTED);
    if (rc != NVML_SUCCESS) return rc;
    if (eventTypes == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    *eventTypes = supported(g);
    return NVML_SUCCESS;
}

FAKE_API(nvmlDeviceRegisterEvents,
         (nvmlDevice_t device, unsigned long long eventTypes, nvmlEventSet_t set),
         (device, eventTypes, set)) {
    fake_gpu *g;
    nvmlReturn_t rc = fake_resolve_gpu(device, &g, NVML_ERROR_NOT_SUPPORTED);
    if (rc != NVML_SUCCESS) return rc;
    struct nvmlEventSet_st *s = resolve_set(set);
    if (s == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    if (eventTypes & ~supported(g)) return NVML_ERROR_NOT_SUPPORTED;
    if (s->mask[g->index] == 0) s->reg_from[g->index] = g_record_count;
    s->mask[g->index] |= eventTypes;
    return NVML_SUCCESS;
}

/* Next deliverable event for s, with g_lock held.  Returns SUCCESS with *data
 * filled, GPU_IS_LOST once after a loss's events, or TIMEOUT when none. */
static nvmlReturn_t next_event(struct nvmlEventSet_st *s, nvmlEventData_t *data) {
    if (s->next_rec > g_record_count) { /* the log was refolded */
        s->next_rec = g_record_count;
        s->next_sub = 0;
    }
    while (s->next_rec < g_record_count) {
        const fault_record *r = &g_records[s->next_rec];
        nvmlEventData_t evs[4];
        int n = fake_fault_events(r, evs, 4);
        int watched = r->gpu >= 0 && s->mask[r->gpu] != 0 && s->next_rec >= s->reg_from[r->gpu];
        while (watched && s->next_sub < n) {
            const nvmlEventData_t *e = &evs[s->next_sub++];
            if (e->eventType & s->mask[r->gpu]) {
                *data = *e;
                return NVML_SUCCESS;
            }
        }
        if (watched && r->kind == FAULT_LOST && s->next_sub <= n) {
            s->next_sub = n + 1;
            return NVML_ERROR_GPU_IS_LOST;
        }
        s->next_rec++;
        s->next_sub = 0;
    }
    return NVML_ERROR_TIMEOUT;
}

static long long now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static nvmlReturn_t event_wait(nvmlEventSet_t set, nvmlEventData_t *data, unsigned int timeoutms) {
    long long deadline = now_ms() + timeoutms;
    nvmlReturn_t rc = fake_api_enter();
    if (rc != NVML_SUCCESS) return rc;
    rc = fake_stall("nvmlEventSetWait_v2", FAKE_STALL_ANY_GPU); /* a hung event path */
    if (rc != NVML_SUCCESS) {
        fake_api_leave();
        return rc;
    }
    struct nvmlEventSet_st *s = resolve_set(set);
    if (s == NULL || data == NULL) {
        fake_api_leave();
        return NVML_ERROR_INVALID_ARGUMENT;
    }
    s->waiters++;
    fake_faults_refresh_force();
    for (;;) {
        rc = next_event(s, data);
        long long left = deadline - now_ms();
        if (rc != NVML_ERROR_TIMEOUT || left <= 0 || !s->in_use || g_init_count == 0) break;
        int ifd = s->ifd;
        pthread_mutex_unlock(&g_lock);
        struct pollfd pfd = {.fd = ifd, .events = POLLIN};
        int slice = left < RECHECK_MS ? (int)left : RECHECK_MS;
        if (ifd >= 0) {
            if (poll(&pfd, 1, slice) > 0) {
                char drain[4096];
                while (read(ifd, drain, sizeof drain) > 0) {
                }
            }
        } else {
            poll(NULL, 0, slice < 10 ? slice : 10);
        }
        pthread_mutex_lock(&g_lock);
        /* inotify fires on the log append, possibly before the writer updates
         * the generation word: look at the log itself. */
        if (g_init_count > 0) fake_faults_refresh_force();
    }
    if (g_init_count == 0 || !s->in_use) {
        rc = g_init_count == 0 ? NVML_ERROR_UNINITIALIZED : NVML_ERROR_INVALID_ARGUMENT;
    }
    if (--s->waiters == 0 && !s->in_use && s->ifd >= 0) {
        close(s->ifd);
        s->ifd = -1;
    }
    fake_api_leave();
    return rc;
}

nvmlReturn_t nvmlEventSetWait_v2(nvmlEventSet_t set, nvmlEventData_t *data,
                                 unsigned int timeoutms) {
    return event_wait(set, data, timeoutms);
}

nvmlReturn_t nvmlEventSetWait(nvmlEventSet_t set, nvmlEventData_t *data, unsigned int timeoutms) {
    return event_wait(set, data, timeoutms);
}
