/*
 * Topology loading and validation.
 *
 * The topology file (format documented in dra_driver/testing/fakenvml.py) is
 * read once per nvmlInit that takes the reference count from 0 to 1.  Every
 * inconsistency a real GPU could not have (overlapping MIG placements, an
 * unknown profile, duplicate UUIDs or bus ids) fails the load with a message
 * naming the offending element, so a broken test fixture is caught at init
 * rather than surfacing as a confusing driver bug later.
 */
#define _GNU_SOURCE
#include <ctype.h>
#include <dlfcn.h>
#include <errno.h>
#include <libgen.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fakenvml.h"

#define FAIL(...)                                   \
    do {                                            \
        snprintf(err, errlen, __VA_ARGS__);         \
        return -1;                                  \
    } while (0)

typedef struct {
    const char *name;
    unsigned int value;
} enum_name;

static const enum_name k_brands[] = {
    {"Unknown", NVML_BRAND_UNKNOWN}, {"Quadro", NVML_BRAND_QUADRO},
    {"Tesla", NVML_BRAND_TESLA},     {"NVS", NVML_BRAND_NVS},
    {"GeForce", NVML_BRAND_GEFORCE}, {"Titan", NVML_BRAND_TITAN},
    {"Quadro RTX", NVML_BRAND_QUADRO_RTX}, {"NVIDIA RTX", NVML_BRAND_NVIDIA_RTX},
    {"NVIDIA", NVML_BRAND_NVIDIA},   {NULL, 0},
};

static const enum_name k_archs[] = {
    {"Kepler", NVML_DEVICE_ARCH_KEPLER}, {"Maxwell", NVML_DEVICE_ARCH_MAXWELL},
    {"Pascal", NVML_DEVICE_ARCH_PASCAL}, {"Volta", NVML_DEVICE_ARCH_VOLTA},
    {"Turing", NVML_DEVICE_ARCH_TURING}, {"Ampere", NVML_DEVICE_ARCH_AMPERE},
    {"Ada", NVML_DEVICE_ARCH_ADA},       {"Hopper", NVML_DEVICE_ARCH_HOPPER},
    {"Blackwell", NVML_DEVICE_ARCH_BLACKWELL}, {NULL, 0},
};

static const enum_name k_events[] = {
    {"SingleBitEccError", nvmlEventTypeSingleBitEccError},
    {"DoubleBitEccError", nvmlEventTypeDoubleBitEccError},
    {"PState", nvmlEventTypePState},
    {"XidCriticalError", nvmlEventTypeXidCriticalError},
    {"Clock", nvmlEventTypeClock},
    {"PowerSourceChange", nvmlEventTypePowerSourceChange},
    {"GpuUnavailableError", nvmlEventTypeGpuUnavailableError},
    {NULL, 0},
};

const char *fake_library_dir(void) {
    static char dir[PATH_MAX];
    Dl_info info;
    if (dir[0] == '\0' && dladdr((void *)&fake_library_dir, &info) && info.dli_fname) {
        char tmp[PATH_MAX];
        snprintf(tmp, sizeof tmp, "%s", info.dli_fname);
        snprintf(dir, sizeof dir, "%s", dirname(tmp));
    }
    return dir;
}

static int resolve_path(char *out, size_t outlen, char *err, size_t errlen) {
    const char *spec = getenv("FAKE_NVML_TOPOLOGY");
    if (spec == NULL || spec[0] == '\0') spec = "small";
    size_t n = strlen(spec);
    if (strchr(spec, '/') != NULL || (n > 5 && strcmp(spec + n - 5, ".json") == 0)) {
        snprintf(out, outlen, "%s", spec);
        return 0;
    }
    for (const char *p = spec; *p; p++) {
        if (!isalnum((unsigned char)*p) && *p != '-' && *p != '_')
            FAIL("FAKE_NVML_TOPOLOGY=%s: not a path and not a shipped topology name", spec);
    }
    snprintf(out, outlen, "%.3800s/topologies/%.200s.json", fake_library_dir(), spec);
    return 0;
}

static char *read_file(const char *path, char *err, size_t errlen) {
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        snprintf(err, errlen, "cannot open topology %s: %s", path, strerror(errno));
        return NULL;
    }
    size_t cap = 65536, len = 0;
    char *buf = malloc(cap);
    while (buf != NULL) {
        size_t got = fread(buf + len, 1, cap - len - 1, f);
        len += got;
        if (got == 0) break;
        if (len + 1 >= cap) {
            char *bigger = realloc(buf, cap * 2);
            if (bigger == NULL) {
                free(buf);
                buf = NULL;
                break;
            }
            buf = bigger;
            cap *= 2;
        }
    }
    fclose(f);
    if (buf == NULL) {
        snprintf(err, errlen, "out of memory reading %s", path);
        return NULL;
    }
    buf[len] = '\0';
    return buf;
}

/* Field accessors: return 0 on success, -1 with err set. */

static int get_uint(const cJSON *obj, const char *where, const char *key, int required,
                    unsigned long long def, unsigned long long max, unsigned long long *out,
                    char *err, size_t errlen) {
    const cJSON *item = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (item == NULL) {
        if (required) FAIL("%s: missing required field \"%s\"", where, key);
        *out = def;
        return 0;
    }
    if (cJSON_IsString(item)) {
        /* hex strings such as PCI ids */
        char *end = NULL;
        errno = 0;
        unsigned long long v = strtoull(item->valuestring, &end, 0);
        if (errno || end == item->valuestring || *end != '\0' || v > max)
            FAIL("%s: \"%s\" must be an integer <= %llu, got \"%s\"", where, key, max,
                 item->valuestring);
        *out = v;
        return 0;
    }
    if (!cJSON_IsNumber(item) || item->valuedouble < 0 || item->valuedouble > (double)max ||
        item->valuedouble != (double)(unsigned long long)item->valuedouble)
        FAIL("%s: \"%s\" must be an integer in 0..%llu", where, key, max);
    *out = (unsigned long long)item->valuedouble;
    return 0;
}

static int get_u32(const cJSON *obj, const char *where, const char *key, int required,
                   unsigned int def, unsigned int max, unsigned int *out, char *err,
                   size_t errlen) {
    unsigned long long v;
    if (get_uint(obj, where, key, required, def, max, &v, err, errlen)) return -1;
    *out = (unsigned int)v;
    return 0;
}

static int get_str(const cJSON *obj, const char *where, const char *key, int required,
                   const char *def, char *out, size_t outlen, char *err, size_t errlen) {
    const cJSON *item = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (item == NULL) {
        if (required) FAIL("%s: missing required field \"%s\"", where, key);
        snprintf(out, outlen, "%s", def);
        return 0;
    }
    if (!cJSON_IsString(item)) FAIL("%s: \"%s\" must be a string", where, key);
    if (strlen(item->valuestring) >= outlen)
        FAIL("%s: \"%s\" is longer than %zu characters", where, key, outlen - 1);
    snprintf(out, outlen, "%s", item->valuestring);
    return 0;
}

static int get_bool(const cJSON *obj, const char *where, const char *key, int def, int *out,
                    char *err, size_t errlen) {
    const cJSON *item = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (item == NULL) {
        *out = def;
        return 0;
    }
    if (!cJSON_IsBool(item)) FAIL("%s: \"%s\" must be true or false", where, key);
    *out = cJSON_IsTrue(item);
    return 0;
}

static int get_enum(const cJSON *obj, const char *where, const char *key,
                    const enum_name *names, unsigned int *out, char *err, size_t errlen) {
    const cJSON *item = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (item == NULL) FAIL("%s: missing required field \"%s\"", where, key);
    if (cJSON_IsNumber(item) && item->valuedouble >= 0) {
        *out = (unsigned int)item->valuedouble;
        return 0;
    }
    if (cJSON_IsString(item)) {
        for (const enum_name *e = names; e->name; e++) {
            if (strcmp(e->name, item->valuestring) == 0) {
                *out = e->value;
                return 0;
            }
        }
    }
    FAIL("%s: unknown %s value", where, key);
}

static int check_keys(const cJSON *obj, const char *where, const char *const *allowed,
                      char *err, size_t errlen) {
    if (!cJSON_IsObject(obj)) FAIL("%s: must be an object", where);
    for (const cJSON *c = obj->child; c; c = c->next) {
        int ok = 0;
        for (const char *const *a = allowed; *a; a++) ok |= strcmp(*a, c->string) == 0;
        if (!ok) FAIL("%s: unknown field \"%s\"", where, c->string);
    }
    return 0;
}

static int parse_bus_id(const char *s, fake_gpu *g) {
    unsigned int dom = 0, bus, dev, fn;
    char tail;
    if (sscanf(s, "%x:%x:%x.%x%c", &dom, &bus, &dev, &fn, &tail) != 4) {
        dom = 0;
        if (sscanf(s, "%x:%x.%x%c", &bus, &dev, &fn, &tail) != 3) return -1;
    }
    if (bus > 0xff || dev > 0x1f || fn > 7) return -1;
    g->pci_domain = dom;
    g->pci_bus = bus;
    g->pci_device = dev;
    g->pci_function = fn;
    snprintf(g->bus_id, sizeof g->bus_id, "%08X:%02X:%02X.%X", dom, bus, dev, fn);
    snprintf(g->bus_id_legacy, sizeof g->bus_id_legacy, "%04X:%02X:%02X.%X", dom & 0xffff, bus,
             dev, fn);
    return 0;
}

static int parse_profile(const cJSON *p, const char *where, fake_gpu *g, char *err,
                         size_t errlen) {
    static const char *const keys[] = {"index", "id", "name", "slices", "instances",
                                       "multiprocessors", "copy_engines", "decoders",
                                       "encoders", "jpeg", "ofa", "memory_mib",
                                       "placement_size", "placements", NULL};
    if (check_keys(p, where, keys, err, errlen)) return -1;
    if (g->profile_count >= FAKE_MAX_PROFILES) FAIL("%s: too many profiles", where);
    fake_profile *pr = &g->profiles[g->profile_count];
    memset(pr, 0, sizeof *pr);
    if (get_u32(p, where, "index", 1, 0, NVML_GPU_INSTANCE_PROFILE_COUNT - 1, &pr->index, err,
                errlen) ||
        get_u32(p, where, "id", 1, 0, 1000, &pr->id, err, errlen) ||
        get_str(p, where, "name", 1, "", pr->name, sizeof pr->name, err, errlen) ||
        get_u32(p, where, "slices", 1, 0, 8, &pr->slice_count, err, errlen) ||
        get_u32(p, where, "instances", 1, 0, 8, &pr->instance_count, err, errlen) ||
        get_u32(p, where, "multiprocessors", 1, 0, 1024, &pr->multiprocessors, err, errlen) ||
        get_u32(p, where, "copy_engines", 1, 0, 64, &pr->copy_engines, err, errlen) ||
        get_u32(p, where, "decoders", 1, 0, 64, &pr->decoders, err, errlen) ||
        get_u32(p, where, "encoders", 1, 0, 64, &pr->encoders, err, errlen) ||
        get_u32(p, where, "jpeg", 1, 0, 64, &pr->jpegs, err, errlen) ||
        get_u32(p, where, "ofa", 1, 0, 64, &pr->ofas, err, errlen) ||
        get_uint(p, where, "memory_mib", 1, 0, 1ULL << 32, &pr->memory_mb, err, errlen) ||
        get_u32(p, where, "placement_size", 1, 0, 8, &pr->placement_size, err, errlen))
        return -1;
    if (pr->slice_count == 0 || pr->instance_count == 0 || pr->placement_size == 0)
        FAIL("%s: slices, instances and placement_size must be positive", where);
    const cJSON *pl = cJSON_GetObjectItemCaseSensitive(p, "placements");
    if (!cJSON_IsArray(pl) || cJSON_GetArraySize(pl) == 0 ||
        cJSON_GetArraySize(pl) > FAKE_MAX_PLACEMENTS)
        FAIL("%s: \"placements\" must be a list of 1..%d start slices", where,
             FAKE_MAX_PLACEMENTS);
    const cJSON *s;
    cJSON_ArrayForEach(s, pl) {
        if (!cJSON_IsNumber(s) || s->valuedouble < 0 ||
            s->valueint + pr->placement_size > g->memory_slices)
            FAIL("%s: placement %g + size %u exceeds %u memory slices", where, s->valuedouble,
                 pr->placement_size, g->memory_slices);
        pr->placements[pr->placement_count++] = (unsigned int)s->valueint;
    }
    for (int i = 0; i < g->profile_count; i++) {
        if (g->profiles[i].id == pr->id) FAIL("%s: duplicate profile id %u", where, pr->id);
        if (g->profiles[i].index == pr->index)
            FAIL("%s: duplicate profile index %u", where, pr->index);
    }
    g->profile_count++;
    return 0;
}

static int parse_model(const cJSON *m, const char *where, fake_gpu *g, char *err, size_t errlen) {
    static const char *const keys[] = {"name", "brand", "architecture",
                                       "cuda_compute_capability", "memory_mib",
                                       "memory_reserved_mib", "multiprocessors",
                                       "pci_device_id", "pci_subsystem_id",
                                       "pcie_max_link_width", "features", "supported_events",
                                       "mig", NULL};
    if (check_keys(m, where, keys, err, errlen)) return -1;
    unsigned int brand, arch;
    unsigned long long mem_mib, reserved_mib;
    char cc[16];
    if (get_str(m, where, "name", 1, "", g->name, NVML_DEVICE_NAME_V2_BUFFER_SIZE, err, errlen) ||
        get_enum(m, where, "brand", k_brands, &brand, err, errlen) ||
        get_enum(m, where, "architecture", k_archs, &arch, err, errlen) ||
        get_str(m, where, "cuda_compute_capability", 1, "", cc, sizeof cc, err, errlen) ||
        get_uint(m, where, "memory_mib", 1, 0, 1ULL << 32, &mem_mib, err, errlen) ||
        get_uint(m, where, "memory_reserved_mib", 0, 0, mem_mib, &reserved_mib, err, errlen) ||
        get_u32(m, where, "multiprocessors", 1, 0, 4096, &g->multiprocessors, err, errlen) ||
        get_u32(m, where, "pci_device_id", 1, 0, 0xffffffffu, &g->pci_device_id, err, errlen) ||
        get_u32(m, where, "pci_subsystem_id", 0, 0, 0xffffffffu, &g->pci_subsystem_id, err,
                errlen) ||
        get_u32(m, where, "pcie_max_link_width", 1, 0, 32, &g->pcie_width_max, err, errlen))
        return -1;
    g->brand = (nvmlBrandType_t)brand;
    g->architecture = arch;
    g->memory_total = mem_mib << 20;
    g->memory_reserved = reserved_mib << 20;
    char tail;
    if (sscanf(cc, "%d.%d%c", &g->cc_major, &g->cc_minor, &tail) != 2)
        FAIL("%s: cuda_compute_capability must look like \"9.0\"", where);

    char sub[512];
    const cJSON *feat = cJSON_GetObjectItemCaseSensitive(m, "features");
    static const cJSON empty = {0};
    static const char *const fkeys[] = {"ecc", "row_remapping", "retired_pages", "temperature",
                                        NULL};
    snprintf(sub, sizeof sub, "%s.features", where);
    if (feat != NULL && check_keys(feat, sub, fkeys, err, errlen)) return -1;
    if (feat == NULL) feat = &empty;
    if (get_bool(feat, sub, "ecc", 1, &g->has_ecc, err, errlen) ||
        get_bool(feat, sub, "row_remapping", 1, &g->has_row_remapping, err, errlen) ||
        get_bool(feat, sub, "retired_pages", 0, &g->has_retired_pages, err, errlen) ||
        get_bool(feat, sub, "temperature", 1, &g->has_temperature, err, errlen))
        return -1;

    const cJSON *ev = cJSON_GetObjectItemCaseSensitive(m, "supported_events");
    if (ev == NULL) {
        g->supported_events = nvmlEventTypeXidCriticalError | nvmlEventTypePState |
                              nvmlEventTypeClock | nvmlEventTypeGpuUnavailableError;
        if (g->has_ecc)
            g->supported_events |= nvmlEventTypeSingleBitEccError | nvmlEventTypeDoubleBitEccError;
    } else {
        if (!cJSON_IsArray(ev)) FAIL("%s: supported_events must be a list of names", where);
        const cJSON *e;
        cJSON_ArrayForEach(e, ev) {
            unsigned int found = 0;
            for (const enum_name *n = k_events; n->name; n++)
                if (cJSON_IsString(e) && strcmp(n->name, e->valuestring) == 0) found = n->value;
            if (!found) FAIL("%s: unknown event type in supported_events", where);
            g->supported_events |= found;
        }
    }

    const cJSON *mig = cJSON_GetObjectItemCaseSensitive(m, "mig");
    g->mig_capable = mig != NULL;
    if (mig != NULL) {
        static const char *const mkeys[] = {"max_devices", "memory_slices", "profiles", NULL};
        snprintf(sub, sizeof sub, "%s.mig", where);
        if (check_keys(mig, sub, mkeys, err, errlen) ||
            get_u32(mig, sub, "max_devices", 1, 0, FAKE_MAX_MIG_PER_GPU, &g->max_mig_devices,
                    err, errlen) ||
            get_u32(mig, sub, "memory_slices", 1, 0, 8, &g->memory_slices, err, errlen))
            return -1;
        const cJSON *profiles = cJSON_GetObjectItemCaseSensitive(mig, "profiles");
        if (!cJSON_IsArray(profiles) || cJSON_GetArraySize(profiles) == 0)
            FAIL("%s: \"profiles\" must be a non-empty list", sub);
        int i = 0;
        const cJSON *p;
        cJSON_ArrayForEach(p, profiles) {
            char pw[600];
            snprintf(pw, sizeof pw, "%s.profiles[%d]", sub, i++);
            if (parse_profile(p, pw, g, err, errlen)) return -1;
        }
    }
    return 0;
}

static int parse_mig_devices(const cJSON *mig, const char *where, fake_gpu *g, char *err,
                             size_t errlen) {
    static const char *const keys[] = {"current", "pending", "devices", NULL};
    if (check_keys(mig, where, keys, err, errlen)) return -1;
    if (!g->mig_capable) FAIL("%s: GPU model %s is not MIG-capable", where, g->name);
    if (get_u32(mig, where, "current", 1, 0, 1, &g->mig_current, err, errlen) ||
        get_u32(mig, where, "pending", 0, g->mig_current, 1, &g->mig_pending, err, errlen))
        return -1;
    const cJSON *devs = cJSON_GetObjectItemCaseSensitive(mig, "devices");
    if (devs == NULL) return 0;
    if (!cJSON_IsArray(devs)) FAIL("%s: \"devices\" must be a list", where);
    if (cJSON_GetArraySize(devs) > 0 && !g->mig_current)
        FAIL("%s: MIG devices listed but MIG mode is disabled", where);
    if ((unsigned int)cJSON_GetArraySize(devs) > g->max_mig_devices)
        FAIL("%s: more MIG devices than the GPU allows (%u)", where, g->max_mig_devices);
    unsigned int used_slices = 0;
    int i = 0;
    const cJSON *d;
    cJSON_ArrayForEach(d, devs) {
        char w[600];
        snprintf(w, sizeof w, "%s.devices[%d]", where, i++);
        static const char *const dkeys[] = {"profile_id", "placement_start", "gi_id", "ci_id",
                                            "uuid", NULL};
        if (check_keys(d, w, dkeys, err, errlen)) return -1;
        fake_mig *m = &g->migs[g->mig_count];
        unsigned int pid;
        if (get_u32(d, w, "profile_id", 1, 0, 1000, &pid, err, errlen) ||
            get_u32(d, w, "placement_start", 1, 0, 7, &m->placement_start, err, errlen) ||
            get_u32(d, w, "gi_id", 1, 0, 64, &m->gi_id, err, errlen) ||
            get_u32(d, w, "ci_id", 0, 0, 64, &m->ci_id, err, errlen) ||
            get_str(d, w, "uuid", 1, "", m->uuid, sizeof m->uuid, err, errlen))
            return -1;
        m->profile = -1;
        for (int p = 0; p < g->profile_count; p++)
            if (g->profiles[p].id == pid) m->profile = p;
        if (m->profile < 0) FAIL("%s: unknown GPU instance profile id %u on %s", w, pid, g->name);
        const fake_profile *pr = &g->profiles[m->profile];
        int placed = 0;
        for (unsigned int k = 0; k < pr->placement_count; k++)
            placed |= pr->placements[k] == m->placement_start;
        if (!placed)
            FAIL("%s: %s cannot be placed at memory slice %u", w, pr->name, m->placement_start);
        unsigned int mask = ((1u << pr->placement_size) - 1) << m->placement_start;
        if (used_slices & mask)
            FAIL("%s: placement %u..%u of %s overlaps another MIG device", w, m->placement_start,
                 m->placement_start + pr->placement_size - 1, pr->name);
        used_slices |= mask;
        if (strncmp(m->uuid, "MIG-", 4) != 0) FAIL("%s: MIG uuid must start with \"MIG-\"", w);
        for (int k = 0; k < g->mig_count; k++)
            if (g->migs[k].gi_id == m->gi_id) FAIL("%s: duplicate gi_id %u", w, m->gi_id);
        m->state = FAKE_SLOT_MIG;
        g->mig_count++;
    }
    return 0;
}

static int parse_gpu(const cJSON *gj, const cJSON *models, const char *where, fake_gpu *g,
                     char *err, size_t errlen) {
    static const char *const keys[] = {"model", "minor", "uuid", "serial", "pci_bus_id",
                                       "pcie_link_width", "temperature", "clocks_event_reasons",
                                       "mig", NULL};
    if (check_keys(gj, where, keys, err, errlen)) return -1;
    char model[128], bus[64];
    if (get_str(gj, where, "model", 1, "", model, sizeof model, err, errlen)) return -1;
    const cJSON *m = cJSON_GetObjectItemCaseSensitive(models, model);
    if (m == NULL) FAIL("%s: unknown model \"%s\"", where, model);
    char mw[300];
    snprintf(mw, sizeof mw, "models.%s", model);
    if (parse_model(m, mw, g, err, errlen)) return -1;
    unsigned int width, temp;
    unsigned long long reasons;
    if (get_u32(gj, where, "minor", 1, 0, 255, &g->minor, err, errlen) ||
        get_str(gj, where, "uuid", 1, "", g->uuid, sizeof g->uuid, err, errlen) ||
        get_str(gj, where, "serial", 0, "", g->serial, sizeof g->serial, err, errlen) ||
        get_str(gj, where, "pci_bus_id", 1, "", bus, sizeof bus, err, errlen) ||
        get_u32(gj, where, "pcie_link_width", 0, g->pcie_width_max, g->pcie_width_max, &width,
                err, errlen) ||
        get_u32(gj, where, "temperature", 0, 35, 200, &temp, err, errlen) ||
        get_uint(gj, where, "clocks_event_reasons", 0, 0, ~0ULL, &reasons, err, errlen))
        return -1;
    if (strncmp(g->uuid, "GPU-", 4) != 0) FAIL("%s: GPU uuid must start with \"GPU-\"", where);
    if (parse_bus_id(bus, g)) FAIL("%s: bad pci_bus_id \"%s\"", where, bus);
    const cJSON *mig = cJSON_GetObjectItemCaseSensitive(gj, "mig");
    if (mig != NULL && parse_mig_devices(mig, where, g, err, errlen)) return -1;
    fake_health *h = &g->defaults;
    memset(h, 0, sizeof *h);
    h->pcie_width_current = width;
    h->temperature = temp;
    h->clocks_event_reasons = reasons;
    h->compute_mode = NVML_COMPUTEMODE_DEFAULT;
    g->health = *h;
    g->topo_mig_count = g->mig_count;
    memcpy(g->topo_migs, g->migs, sizeof g->migs);
    return 0;
}

static int check_unique(char *err, size_t errlen) {
    for (int i = 0; i < g_sys.gpu_count; i++) {
        for (int j = 0; j < i; j++) {
            if (g_gpus[i].minor == g_gpus[j].minor)
                FAIL("gpus[%d]: minor %u already used by gpus[%d]", i, g_gpus[i].minor, j);
            if (strcasecmp(g_gpus[i].uuid, g_gpus[j].uuid) == 0)
                FAIL("gpus[%d]: uuid %s already used by gpus[%d]", i, g_gpus[i].uuid, j);
            if (strcmp(g_gpus[i].bus_id, g_gpus[j].bus_id) == 0)
                FAIL("gpus[%d]: pci_bus_id %s already used by gpus[%d]", i, g_gpus[i].bus_id, j);
        }
        for (int a = 0; a < g_gpus[i].mig_count; a++) {
            for (int j = 0; j <= i; j++) {
                for (int b = 0; b < (j == i ? a : g_gpus[j].mig_count); b++) {
                    if (strcasecmp(g_gpus[i].migs[a].uuid, g_gpus[j].migs[b].uuid) == 0)
                        FAIL("gpus[%d].mig.devices[%d]: uuid %s is not unique", i, a,
                             g_gpus[i].migs[a].uuid);
                }
            }
        }
    }
    return 0;
}

int fake_topology_load(char *err, size_t errlen) {
    char path[4096];
    if (resolve_path(path, sizeof path, err, errlen)) return -1;
    char *text = read_file(path, err, errlen);
    if (text == NULL) return -1;
    cJSON *root = cJSON_Parse(text);
    if (root == NULL) {
        /* The error pointer points into text: report from it before text is freed. */
        const char *at = cJSON_GetErrorPtr();
        int line = 1, col = 1;
        char near[41] = "?";
        if (at != NULL) {
            for (const char *c = text; c < at && *c; c++) {
                if (*c == '\n') {
                    line++;
                    col = 1;
                } else {
                    col++;
                }
            }
            size_t n = 0;
            for (; n < sizeof near - 1 && at[n]; n++)
                near[n] = (at[n] >= 0x20 && at[n] < 0x7f) ? at[n] : ' ';
            near[n] = '\0';
            if (n == 0) snprintf(near, sizeof near, "end of file");
        }
        snprintf(err, errlen, "topology %s is not valid JSON at line %d, column %d (near: %s)",
                 path, line, col, near);
        free(text);
        return -1;
    }
    free(text);
    int rc = -1;
    char e2[1024] = "";
    static const char *const keys[] = {"name", "description", "driver_version", "nvml_version",
                                       "cuda_driver_version", "models", "gpus", NULL};
    memset(&g_sys, 0, sizeof g_sys);
    memset(g_gpus, 0, sizeof g_gpus);
    snprintf(g_sys.path, sizeof g_sys.path, "%s", path);
    unsigned int cuda;
    const cJSON *models, *gpus;
    if (check_keys(root, "topology", keys, e2, sizeof e2) ||
        get_str(root, "topology", "name", 1, "", g_sys.name, sizeof g_sys.name, e2, sizeof e2) ||
        get_str(root, "topology", "driver_version", 1, "", g_sys.driver_version,
                NVML_SYSTEM_DRIVER_VERSION_BUFFER_SIZE, e2, sizeof e2) ||
        get_u32(root, "topology", "cuda_driver_version", 1, 0, 1000000, &cuda, e2, sizeof e2))
        goto out;
    g_sys.cuda_driver_version = (int)cuda;
    {
        char def[FAKE_STR];
        snprintf(def, sizeof def, "%d.%.80s", (int)cuda / 1000, g_sys.driver_version);
        if (get_str(root, "topology", "nvml_version", 0, def, g_sys.nvml_version,
                    NVML_SYSTEM_NVML_VERSION_BUFFER_SIZE, e2, sizeof e2))
            goto out;
    }
    models = cJSON_GetObjectItemCaseSensitive(root, "models");
    gpus = cJSON_GetObjectItemCaseSensitive(root, "gpus");
    if (!cJSON_IsObject(models)) {
        snprintf(e2, sizeof e2, "topology: \"models\" must be an object");
        goto out;
    }
    if (!cJSON_IsArray(gpus) || cJSON_GetArraySize(gpus) > FAKE_MAX_GPUS) {
        snprintf(e2, sizeof e2, "topology: \"gpus\" must be a list of at most %d GPUs",
                 FAKE_MAX_GPUS);
        goto out;
    }
    {
        const cJSON *gj;
        cJSON_ArrayForEach(gj, gpus) {
            char where[64];
            snprintf(where, sizeof where, "gpus[%d]", g_sys.gpu_count);
            fake_gpu *g = &g_gpus[g_sys.gpu_count];
            g->index = (unsigned int)g_sys.gpu_count;
            if (parse_gpu(gj, models, where, g, e2, sizeof e2)) goto out;
            g_sys.gpu_count++;
        }
    }
    if (check_unique(e2, sizeof e2)) goto out;
    rc = 0;
out:
    if (rc) snprintf(err, errlen, "%s: %s", path, e2);
    cJSON_Delete(root);
    return rc;
}
