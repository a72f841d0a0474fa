/*
 * The fault channel: an append-only JSON-lines log shared by every process
 * that uses the same topology instance.
 *
 * Writers (dra_driver.testing.fakenvml, any process) append one JSON object
 * per line with O_APPEND.  Each process keeps its own read offset and folds
 * complete new lines into (a) the persistent per-GPU health state and (b) an
 * in-memory record list that event sets walk with their own cursors.  A log
 * that shrank (was truncated or replaced) is refolded from the start.
 *
 * Cheap change detection: writers also store the log's new size into a
 * sidecar "<log>.gen" (8 bytes, little endian) that every reader maps shared,
 * so the per-call check is one memory load instead of an fstat().  Appends by
 * a writer that does not update the sidecar are still noticed: the log is
 * fstat()ed at least every FALLBACK_MS, and always before an event wait.
 *
 * Hangs and delays ("hang", "delay", "release" records) model NVML calls that
 * block on a sick GPU: a call of the named function (any, when none is named)
 * on the named GPU (any, when none is named) waits with g_lock released, so
 * calls on other GPUs and event waits go on, until a "release" (or a
 * "recover" of that GPU) lifts it; a delay adds its milliseconds to each call.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "fakenvml.h"

char g_fault_path[4096];
fault_record *g_records;
size_t g_record_count;
static size_t g_record_cap;
static int g_fault_fd = -1;
static off_t g_fold_off;
static const volatile uint64_t *g_gen_map; /* NULL: fstat on every call */
static uint64_t g_gen_seen;
static long long g_last_stat_ms;
static fake_stall_entry g_stalls[FAKE_MAX_STALLS];
static int g_stall_count;
static fake_fail_entry g_fails[FAKE_MAX_STALLS];
static int g_fail_count;

#define FALLBACK_MS 100
#define STALL_POLL_MS 10

static long long coarse_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Map the sidecar generation word; failure only costs speed. */
static void map_generation(void) {
    char path[4200];
    snprintf(path, sizeof path, "%s.gen", g_fault_path);
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) fd = open(path, O_RDONLY | O_CLOEXEC);
    struct stat st;
    if (fd < 0) return;
    if (fstat(fd, &st) == 0 && st.st_size < (off_t)sizeof(uint64_t) &&
        ftruncate(fd, sizeof(uint64_t)) != 0) {
        close(fd);
        return;
    }
    void *map = mmap(NULL, sizeof(uint64_t), PROT_READ, MAP_SHARED, fd, 0);
    close(fd);
    if (map != MAP_FAILED) g_gen_map = map;
}

static int mkdirs(const char *dir) {
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s", dir);
    for (char *p = tmp + 1; *p; p++) {
        if (*p == '/') {
            *p = '\0';
            if (mkdir(tmp, 0755) != 0 && errno != EEXIST) return -1;
            *p = '/';
        }
    }
    if (mkdir(tmp, 0755) != 0 && errno != EEXIST) return -1;
    return 0;
}

int fake_faults_open(char *err, size_t errlen) {
    const char *path = getenv("FAKE_NVML_FAULTS");
    const char *state = getenv("FAKE_NVML_STATE_DIR");
    if (path != NULL && path[0] != '\0') {
        snprintf(g_fault_path, sizeof g_fault_path, "%s", path);
    } else if (state != NULL && state[0] != '\0') {
        snprintf(g_fault_path, sizeof g_fault_path, "%.3800s/%.200s.faults.jsonl", state, g_sys.name);
    } else {
        /* No fault log named: this run sees no faults. A shared default would let an
         * injection of one run (say `inject lost`) reach every later, unrelated one. */
        g_fault_path[0] = '\0';
        g_fault_fd = -1;
        g_fold_off = 0;
        g_record_count = 0;
        g_stall_count = 0;
        g_fail_count = 0;
        g_gen_map = NULL;
        return 0;
    }
    char dir[4096];
    snprintf(dir, sizeof dir, "%s", g_fault_path);
    char *slash = strrchr(dir, '/');
    if (slash != NULL && slash != dir) {
        *slash = '\0';
        if (mkdirs(dir) != 0) {
            snprintf(err, errlen, "cannot create fault log directory %s: %s", dir,
                     strerror(errno));
            return -1;
        }
    }
    g_fault_fd = open(g_fault_path, O_RDONLY | O_CREAT | O_CLOEXEC, 0644);
    if (g_fault_fd < 0) {
        snprintf(err, errlen, "cannot open fault log %s: %s", g_fault_path, strerror(errno));
        return -1;
    }
    g_fold_off = 0;
    g_record_count = 0;
    g_stall_count = 0;
    g_fail_count = 0;
    g_gen_map = NULL;
    map_generation();
    g_gen_seen = g_gen_map ? *g_gen_map : 0;
    g_last_stat_ms = 0;
    return 0;
}

void fake_faults_close(void) {
    if (g_fault_fd >= 0) close(g_fault_fd);
    g_fault_fd = -1;
    if (g_gen_map != NULL) munmap((void *)g_gen_map, sizeof(uint64_t));
    g_gen_map = NULL;
    free(g_records);
    g_records = NULL;
    g_record_count = g_record_cap = 0;
    g_fold_off = 0;
}

/* Drop the "fail" faults of gpu (-1: every entry) for fn (NULL: any function). */
static void fails_release(int gpu, const char *fn) {
    int kept = 0;
    for (int i = 0; i < g_fail_count; i++) {
        const fake_fail_entry *e = &g_fails[i];
        int hit = (gpu < 0 || e->gpu == gpu) && (fn == NULL || strcmp(e->fn, fn) == 0);
        if (!hit) g_fails[kept++] = *e;
    }
    g_fail_count = kept;
}

static void fails_set(const fault_record *r) {
    fails_release(r->gpu, r->fn);
    if (g_fail_count == FAKE_MAX_STALLS) {
        fake_warn("more than %d fail faults active; record dropped", FAKE_MAX_STALLS);
        return;
    }
    fake_fail_entry *e = &g_fails[g_fail_count++];
    e->gpu = r->gpu;
    snprintf(e->fn, sizeof e->fn, "%s", r->fn);
    e->rc = (nvmlReturn_t)r->rc;
    e->left = r->count;
}

nvmlReturn_t fake_fail(const char *fn, int gpu) {
    for (int i = 0; i < g_fail_count; i++) {
        fake_fail_entry *e = &g_fails[i];
        if (strcmp(e->fn, fn) != 0 || (e->gpu != -1 && e->gpu != gpu)) continue;
        nvmlReturn_t rc = e->rc;
        if (e->left > 0 && --e->left == 0) { /* the last of its count: drop it */
            g_fails[i] = g_fails[--g_fail_count];
        }
        return rc;
    }
    return NVML_SUCCESS;
}

/* Drop the stalls of gpu (-1: every entry) for fn (NULL: any function). */
static void stalls_release(int gpu, const char *fn) {
    int kept = 0;
    for (int i = 0; i < g_stall_count; i++) {
        const fake_stall_entry *e = &g_stalls[i];
        int hit = (gpu < 0 || e->gpu == gpu) && (fn == NULL || strcmp(e->fn, fn) == 0);
        if (!hit) g_stalls[kept++] = *e;
    }
    g_stall_count = kept;
}

static void stalls_set(const fault_record *r) {
    stalls_release(r->gpu, r->fn); /* replaces what it covers ("every GPU": all of them) */
    if (g_stall_count == FAKE_MAX_STALLS) {
        fake_warn("more than %d hang/delay faults active; record dropped", FAKE_MAX_STALLS);
        return;
    }
    fake_stall_entry *e = &g_stalls[g_stall_count++];
    e->gpu = r->gpu;
    snprintf(e->fn, sizeof e->fn, "%s", r->fn);
    e->hang = r->kind == FAULT_HANG;
    e->delay_ms = r->kind == FAULT_DELAY ? r->ms : 0;
}

/* The entry that applies to a call of fn concerning gpu, or NULL. A specific
   function beats the wildcard; a hang beats a delay. */
static const fake_stall_entry *stall_for(const char *fn, int gpu) {
    const fake_stall_entry *best = NULL;
    for (int i = 0; i < g_stall_count; i++) {
        const fake_stall_entry *e = &g_stalls[i];
        int fn_ok = e->fn[0] == '\0' ? gpu != FAKE_STALL_ANY_GPU || e->gpu == -1
                                      : strcmp(e->fn, fn) == 0;
        int gpu_ok = e->gpu == -1 || e->gpu == gpu || (gpu == FAKE_STALL_ANY_GPU && e->fn[0]);
        if (!fn_ok || !gpu_ok) continue;
        if (best == NULL || (e->hang && !best->hang)) best = e;
    }
    return best;
}

static void sleep_ms(unsigned int ms) {
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

nvmlReturn_t fake_stall(const char *fn, int gpu) {
    const fake_stall_entry *e = stall_for(fn, gpu);
    if (e == NULL) return NVML_SUCCESS;
    if (!e->hang) {
        unsigned int ms = e->delay_ms;
        pthread_mutex_unlock(&g_lock);
        sleep_ms(ms);
        pthread_mutex_lock(&g_lock);
        return g_init_count > 0 ? NVML_SUCCESS : NVML_ERROR_UNINITIALIZED;
    }
    while (e != NULL && e->hang) {
        pthread_mutex_unlock(&g_lock);
        sleep_ms(STALL_POLL_MS);
        pthread_mutex_lock(&g_lock);
        if (g_init_count == 0) return NVML_ERROR_UNINITIALIZED;
        fake_faults_refresh_force();
        e = stall_for(fn, gpu);
    }
    return NVML_SUCCESS;
}

int fake_handle_gpu(uintptr_t h) {
    uintptr_t devs = (uintptr_t)g_dev_handles, migs = (uintptr_t)g_mig_handles;
    uintptr_t gis = (uintptr_t)g_gi_handles, cis = (uintptr_t)g_ci_handles;
    if (h >= devs && h < devs + sizeof g_dev_handles)
        return (int)((h - devs) / sizeof g_dev_handles[0]);
    if (h >= migs && h < migs + sizeof g_mig_handles)
        return (int)((h - migs) / sizeof g_mig_handles[0]);
    if (h >= gis && h < gis + sizeof g_gi_handles) return (int)((h - gis) / sizeof g_gi_handles[0]);
    if (h >= cis && h < cis + sizeof g_ci_handles) return (int)((h - cis) / sizeof g_ci_handles[0]);
    return -1;
}

int fake_has_recovery_action(void) {
    return atoi(g_sys.driver_version) >= 565;
}

static void recover_gpu(fake_gpu *g) {
    unsigned long long agg0 = g->health.ecc_aggregate[0], agg1 = g->health.ecc_aggregate[1];
    nvmlComputeMode_t mode = g->health.compute_mode;
    g->health = g->defaults;
    /* Aggregate ECC counters live in the infoROM and survive a GPU reset. */
    g->health.ecc_aggregate[0] = agg0;
    g->health.ecc_aggregate[1] = agg1;
    g->health.compute_mode = mode;
}

static void apply(const fault_record *r) {
    if (r->kind == FAULT_RECOVER && r->gpu < 0) {
        for (int i = 0; i < g_sys.gpu_count; i++) recover_gpu(&g_gpus[i]);
        g_stall_count = 0;
        g_fail_count = 0;
        return;
    }
    switch (r->kind) {
    case FAULT_GI_CREATE:
    case FAULT_CI_CREATE:
    case FAULT_CI_DESTROY:
    case FAULT_GI_DESTROY:
    case FAULT_MIG_BUSY:
    case FAULT_MIG_DESTROY:
    case FAULT_MIG_CREATE: fake_mig_apply(r); return;
    case FAULT_FAIL: fails_set(r); return;
    default: break;
    }
    if (r->kind == FAULT_HANG || r->kind == FAULT_DELAY) {
        stalls_set(r);
        return;
    }
    if (r->kind == FAULT_RELEASE) {
        stalls_release(r->gpu, r->fn[0] ? r->fn : NULL);
        fails_release(r->gpu, r->fn[0] ? r->fn : NULL);
        return;
    }
    fake_health *h = &g_gpus[r->gpu].health;
    switch (r->kind) {
    case FAULT_XID: /* an XID is an event; with "action" it also sets the recovery action */
        if (r->action >= 0) h->recovery_action = (unsigned int)r->action;
        break;
    case FAULT_RECOVERY_ACTION: h->recovery_action = r->value; break;
    case FAULT_HANG:
    case FAULT_DELAY:
    case FAULT_RELEASE:
    case FAULT_GI_CREATE:
    case FAULT_CI_CREATE:
    case FAULT_CI_DESTROY:
    case FAULT_GI_DESTROY:
    case FAULT_MIG_BUSY:
    case FAULT_FAIL: break; /* handled above */
    case FAULT_LOST: h->lost = 1; break;
    case FAULT_ECC:
        h->ecc_volatile[NVML_MEMORY_ERROR_TYPE_CORRECTED] += r->corrected;
        h->ecc_aggregate[NVML_MEMORY_ERROR_TYPE_CORRECTED] += r->corrected;
        h->ecc_volatile[NVML_MEMORY_ERROR_TYPE_UNCORRECTED] += r->uncorrected;
        h->ecc_aggregate[NVML_MEMORY_ERROR_TYPE_UNCORRECTED] += r->uncorrected;
        break;
    case FAULT_THROTTLE: h->clocks_event_reasons = r->reasons; break;
    case FAULT_PCIE: h->pcie_width_current = r->value; break;
    case FAULT_REMAP:
        h->remap_corr += (unsigned int)r->corrected;
        h->remap_unc += (unsigned int)r->uncorrected;
        if (r->pending >= 0) h->remap_pending = r->pending;
        if (r->failure >= 0) h->remap_failure = r->failure;
        break;
    case FAULT_RETIRED_PAGES: h->retired_pages_pending = r->pending != 0; break;
    case FAULT_TEMPERATURE: h->temperature = r->value; break;
    case FAULT_RECOVER:
        recover_gpu(&g_gpus[r->gpu]);
        stalls_release(r->gpu, NULL);
        fails_release(r->gpu, NULL);
        break;
    case FAULT_MIG_DESTROY:
    case FAULT_MIG_CREATE: break; /* handled above */
    }
}

static int num_field(const cJSON *o, const char *key, unsigned long long def,
                     unsigned long long *out) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (v == NULL) {
        *out = def;
        return 0;
    }
    if (!cJSON_IsNumber(v) || v->valuedouble < 0) return -1;
    *out = (unsigned long long)v->valuedouble;
    return 0;
}

static int bool_field(const cJSON *o, const char *key, int def, int *out) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (v == NULL) {
        *out = def;
        return 0;
    }
    if (!cJSON_IsBool(v)) return -1;
    *out = cJSON_IsTrue(v);
    return 0;
}

/* Parse one log line; returns 0 and fills r, or -1 with a reason in why. */
static int parse_line(const char *line, fault_record *r, char *why, size_t whylen) {
    cJSON *o = cJSON_Parse(line);
    int rc = -1;
    if (!cJSON_IsObject(o)) {
        snprintf(why, whylen, "not a JSON object");
        goto out;
    }
    memset(r, 0, sizeof *r);
    r->gi = r->ci = FAKE_NO_ID;
    const cJSON *kind = cJSON_GetObjectItemCaseSensitive(o, "kind");
    const cJSON *gpu = cJSON_GetObjectItemCaseSensitive(o, "gpu");
    static const struct {
        const char *name;
        fault_kind kind;
    } kinds[] = {{"xid", FAULT_XID},         {"lost", FAULT_LOST},
                 {"ecc", FAULT_ECC},         {"throttle", FAULT_THROTTLE},
                 {"pcie", FAULT_PCIE},       {"remap", FAULT_REMAP},
                 {"retired_pages", FAULT_RETIRED_PAGES},
                 {"temperature", FAULT_TEMPERATURE},
                 {"recover", FAULT_RECOVER},
                 {"hang", FAULT_HANG},
                 {"delay", FAULT_DELAY},
                 {"release", FAULT_RELEASE},
                 {"recovery_action", FAULT_RECOVERY_ACTION},
                 {"gi_create", FAULT_GI_CREATE},
                 {"ci_create", FAULT_CI_CREATE},
                 {"ci_destroy", FAULT_CI_DESTROY},
                 {"gi_destroy", FAULT_GI_DESTROY},
                 {"mig_busy", FAULT_MIG_BUSY},
                 {"fail", FAULT_FAIL},

                 {"mig_destroy", FAULT_MIG_DESTROY},
                 {"mig_create", FAULT_MIG_CREATE}};
    int found = 0;
    for (size_t i = 0; cJSON_IsString(kind) && i < sizeof kinds / sizeof kinds[0]; i++) {
        if (strcmp(kinds[i].name, kind->valuestring) == 0) {
            r->kind = kinds[i].kind;
            found = 1;
        }
    }
    if (!found) {
        snprintf(why, whylen, "unknown or missing \"kind\"");
        goto out;
    }
    r->gpu = -1;
    if (gpu != NULL) {
        if (!cJSON_IsString(gpu)) {
            snprintf(why, whylen, "\"gpu\" must be a GPU UUID string");
            goto out;
        }
        for (int i = 0; i < g_sys.gpu_count; i++)
            if (strcasecmp(g_gpus[i].uuid, gpu->valuestring) == 0) r->gpu = i;
        if (r->gpu < 0) {
            snprintf(why, whylen, "GPU %.100s is not in topology %.100s", gpu->valuestring, g_sys.name);
            goto out;
        }
    } else if (r->kind != FAULT_RECOVER && r->kind != FAULT_HANG && r->kind != FAULT_DELAY &&
               r->kind != FAULT_RELEASE && r->kind != FAULT_FAIL) {
        snprintf(why, whylen, "missing \"gpu\"");
        goto out;
    }
    const cJSON *fn = cJSON_GetObjectItemCaseSensitive(o, "fn");
    if (fn != NULL) {
        if (!cJSON_IsString(fn) || strlen(fn->valuestring) >= FAKE_FN_LEN) {
            snprintf(why, whylen, "\"fn\" must be an NVML function name (< %d characters)",
                     FAKE_FN_LEN);
            goto out;
        }
        snprintf(r->fn, sizeof r->fn, "%s", fn->valuestring);
    }
    const cJSON *action = cJSON_GetObjectItemCaseSensitive(o, "action");
    r->action = -1;
    if (action != NULL) {
        if (!cJSON_IsNumber(action) || action->valuedouble < 0 || action->valuedouble > 0xffff) {
            snprintf(why, whylen, "\"action\" must be a recovery action number");
            goto out;
        }
        r->action = (long long)action->valuedouble;
    }
    const cJSON *uuid = cJSON_GetObjectItemCaseSensitive(o, "uuid");
    if (uuid != NULL) {
        if (!cJSON_IsString(uuid) || strlen(uuid->valuestring) >= FAKE_STR ||
            strncmp(uuid->valuestring, "MIG-", 4) != 0) {
            snprintf(why, whylen, "\"uuid\" must be a MIG-... string");
            goto out;
        }
        snprintf(r->uuid, sizeof r->uuid, "%s", uuid->valuestring);
    }
    unsigned long long gi, ci, val, ms, profile_id, start, frc, count;
    const fake_gpu *g = r->gpu >= 0 ? &g_gpus[r->gpu] : NULL;
    int bad = num_field(o, "xid", 0, &r->xid) || num_field(o, "gi", FAKE_NO_ID, &gi) ||
              num_field(o, "ci", FAKE_NO_ID, &ci) ||
              num_field(o, "corrected", 0, &r->corrected) ||
              num_field(o, "uncorrected", 0, &r->uncorrected) ||
              num_field(o, "reasons", 0, &r->reasons) || num_field(o, "value", 0, &val) ||
              num_field(o, "ms", 0, &ms) || num_field(o, "profile_id", 0, &profile_id) ||
              num_field(o, "start", 0, &start) || num_field(o, "rc", 0, &frc) ||
              num_field(o, "count", 0, &count) ||
              bool_field(o, "pending", -1, &r->pending) ||
              bool_field(o, "failure", -1, &r->failure);
    if (bad) {
        snprintf(why, whylen, "a numeric or boolean field has the wrong type");
        goto out;
    }
    r->gi = (unsigned int)gi;
    r->ci = (unsigned int)ci;
    r->value = (unsigned int)val;
    r->ms = ms > 600000 ? 600000 : (unsigned int)ms;
    r->profile_id = (unsigned int)profile_id;
    r->start = (unsigned int)start;
    r->rc = (unsigned int)frc;
    r->count = (unsigned int)count;
    if (r->kind == FAULT_FAIL && (r->fn[0] == '\0' || r->rc == 0)) {
        snprintf(why, whylen, "a fail needs \"fn\" and a non-zero \"rc\"");
        goto out;
    }
    if ((r->kind == FAULT_GI_CREATE || r->kind == FAULT_CI_CREATE || r->kind == FAULT_CI_DESTROY ||
         r->kind == FAULT_GI_DESTROY || r->kind == FAULT_MIG_BUSY) &&
        r->gi == FAKE_NO_ID) {
        snprintf(why, whylen, "a MIG record needs \"gi\"");
        goto out;
    }
    if (r->kind == FAULT_CI_CREATE && (r->uuid[0] == '\0' || r->ci == FAKE_NO_ID)) {
        snprintf(why, whylen, "a ci_create needs \"ci\" and \"uuid\"");
        goto out;
    }
    if (r->kind == FAULT_DELAY && r->ms == 0) {
        snprintf(why, whylen, "a delay needs \"ms\" > 0");
        goto out;
    }
    if (r->kind == FAULT_RECOVERY_ACTION && cJSON_GetObjectItemCaseSensitive(o, "value") == NULL) {
        snprintf(why, whylen, "a recovery_action needs \"value\"");
        goto out;
    }
    if (r->kind == FAULT_MIG_DESTROY && r->gi == FAKE_NO_ID) {
        snprintf(why, whylen, "a mig_destroy needs \"gi\"");
        goto out;
    }
    if (r->kind == FAULT_MIG_CREATE) {
        unsigned long long placement;
        const cJSON *uuid = cJSON_GetObjectItemCaseSensitive(o, "uuid");
        if (cJSON_GetObjectItemCaseSensitive(o, "profile_id") == NULL ||
            num_field(o, "profile_id", 0, &val) ||
            num_field(o, "placement_start", FAKE_NO_ID, &placement)) {
            snprintf(why, whylen, "a mig_create needs a numeric \"profile_id\"");
            goto out;
        }
        if (uuid != NULL && (!cJSON_IsString(uuid) || strncmp(uuid->valuestring, "MIG-", 4) != 0 ||
                             strlen(uuid->valuestring) >= FAKE_STR)) {
            snprintf(why, whylen, "\"uuid\" must be a MIG UUID string");
            goto out;
        }
        r->value = (unsigned int)val;
        r->placement = (unsigned int)placement;
        if (uuid != NULL) snprintf(r->uuid, sizeof r->uuid, "%s", uuid->valuestring);
    }
    if (r->kind == FAULT_XID && r->ci != FAKE_NO_ID && r->gi == FAKE_NO_ID) {
        snprintf(why, whylen, "\"ci\" given without \"gi\"");
        goto out;
    }
    if (r->kind == FAULT_PCIE && (r->value == 0 || r->value > g->pcie_width_max)) {
        snprintf(why, whylen, "PCIe width %u outside 1..%u", r->value, g->pcie_width_max);
        goto out;
    }
    rc = 0;
out:
    cJSON_Delete(o);
    return rc;
}

static void push_record(const fault_record *r) {
    if (g_record_count == g_record_cap) {
        size_t cap = g_record_cap ? g_record_cap * 2 : 64;
        fault_record *bigger = realloc(g_records, cap * sizeof *bigger);
        if (bigger == NULL) {
            fake_warn("out of memory folding the fault log; record dropped");
            return;
        }
        g_records = bigger;
        g_record_cap = cap;
    }
    g_records[g_record_count++] = *r;
}

static void reset_state(void) {
    for (int i = 0; i < g_sys.gpu_count; i++) g_gpus[i].health = g_gpus[i].defaults;
    fake_mig_reset();
    g_stall_count = 0;
    g_fail_count = 0;
    g_record_count = 0;
    g_fold_off = 0;
}

void fake_faults_refresh(void) {
    if (g_gen_map != NULL) {
        uint64_t gen = __atomic_load_n(g_gen_map, __ATOMIC_ACQUIRE);
        long long now = coarse_ms();
        if (gen == g_gen_seen && now - g_last_stat_ms < FALLBACK_MS) return;
        g_gen_seen = gen;
        g_last_stat_ms = now;
    }
    fake_faults_refresh_force();
}

void fake_faults_refresh_force(void) {
    struct stat st;
    if (g_fault_fd < 0 || fstat(g_fault_fd, &st) != 0) return;
    if (st.st_size == g_fold_off) return;
    if (st.st_size < g_fold_off) {
        fake_warn("fault log %s shrank; refolding from the start", g_fault_path);
        reset_state();
    }
    size_t want = (size_t)(st.st_size - g_fold_off);
    char *buf = malloc(want + 1);
    if (buf == NULL) return;
    ssize_t got = pread(g_fault_fd, buf, want, g_fold_off);
    if (got <= 0) {
        free(buf);
        return;
    }
    buf[got] = '\0';
    char *line = buf;
    char *nl;
    /* Only complete lines: a writer's partial line is picked up next time. */
    while ((nl = memchr(line, '\n', (size_t)(buf + got - line))) != NULL) {
        *nl = '\0';
        off_t line_off = g_fold_off + (line - buf);
        if (line[strspn(line, " \t\r")] != '\0') {
            fault_record r;
            char why[256];
            if (parse_line(line, &r, why, sizeof why) == 0) {
                apply(&r);
                push_record(&r);
            } else {
                fake_warn("%s: ignoring record at byte %lld: %s", g_fault_path,
                          (long long)line_off, why);
            }
        }
        line = nl + 1;
    }
    g_fold_off += line - buf;
    free(buf);
}

int fake_faults_fold_line(const char *line, char *why, size_t whylen) {
    fault_record r;
    if (parse_line(line, &r, why, whylen) != 0) return -1;
    apply(&r);
    push_record(&r);
    return 0;
}

int fake_fault_events(const fault_record *r, nvmlEventData_t *out, int max) {
    int n = 0;
    nvmlEventData_t e;
    if (r->gpu < 0 || max < 2) return 0;
    e.device = &g_dev_handles[r->gpu];
    e.gpuInstanceId = FAKE_NO_ID;
    e.computeInstanceId = FAKE_NO_ID;
    e.eventData = 0;
    switch (r->kind) {
    case FAULT_XID:
        e.eventType = nvmlEventTypeXidCriticalError;
        e.eventData = r->xid;
        e.gpuInstanceId = r->gi;
        e.computeInstanceId = r->ci;
        out[n++] = e;
        if (r->action >= 0 && fake_has_recovery_action()) {
            /* The driver follows the XID with its recovery action (Xid 154). */
            e.eventType = nvmlEventTypeGpuRecoveryAction;
            e.eventData = (unsigned long long)r->action;
            e.gpuInstanceId = e.computeInstanceId = FAKE_NO_ID;
            out[n++] = e;
        }
        break;
    case FAULT_RECOVERY_ACTION:
        if (fake_has_recovery_action()) {
            e.eventType = nvmlEventTypeGpuRecoveryAction;
            e.eventData = r->value;
            out[n++] = e;
        }
        break;
    case FAULT_LOST:
        /* The kernel reports Xid 79 ("GPU has fallen off the bus") first. */
        e.eventType = nvmlEventTypeXidCriticalError;
        e.eventData = 79;
        out[n++] = e;
        e.eventType = nvmlEventTypeGpuUnavailableError;
        e.eventData = 0;
        out[n++] = e;
        break;
    case FAULT_GI_CREATE:
    case FAULT_CI_CREATE:
    case FAULT_CI_DESTROY:
    case FAULT_GI_DESTROY:
        if (g_gpus[r->gpu].mig_capable) {
            e.eventType = nvmlEventMigConfigChange;
            e.gpuInstanceId = r->gi;
            e.computeInstanceId = r->kind == FAULT_CI_CREATE || r->kind == FAULT_CI_DESTROY
                                      ? r->ci
                                      : FAKE_NO_ID;
            out[n++] = e;
        }
        break;
    case FAULT_ECC:
        if (r->corrected) {
            e.eventType = nvmlEventTypeSingleBitEccError;
            out[n++] = e;
        }
        if (r->uncorrected) {
            e.eventType = nvmlEventTypeDoubleBitEccError;
            out[n++] = e;
        }
        break;
    default: break;
    }
    return n;
}
