/*
 * MIG management fast path: create a MIG device (GPU instance at a placement
 * plus the compute instance covering it) or destroy one, each in one native
 * call over its own dlopen()ed libnvidia-ml.
 *
 * Kept apart from fastpath.c on purpose: its own context (dlopen of the same
 * library returns the same loaded copy, and nvmlInit/nvmlShutdown are
 * reference counted, so both contexts share one NVML), its own symbols, each
 * resolved on its own (a missing one answers FUNCTION_NOT_FOUND: "not
 * supported"), so the inventory and health paths never depend on it.
 *
 * The part between the CDEF markers is also fed to cffi's cdef() by
 * native/build_fastpath.py.
 */
#ifndef DRA_MIGMGMT_H
#define DRA_MIGMGMT_H

#include <stddef.h>

/* CDEF BEGIN */
/* Which NVML call a failure came from (names: fpm_call_name()). */
#define FPM_CALL_NONE 0
#define FPM_CALL_HANDLE_BY_UUID 1
#define FPM_CALL_PROFILE_INFO 2
#define FPM_CALL_PLACEMENTS 3
#define FPM_CALL_CREATE_GI 4
#define FPM_CALL_GI_INFO 5
#define FPM_CALL_CI_PROFILE_INFO 6
#define FPM_CALL_CREATE_CI 7
#define FPM_CALL_CI_INFO 8
#define FPM_CALL_MAX_MIG_COUNT 9
#define FPM_CALL_MIG_HANDLE 10
#define FPM_CALL_MIG_UUID 11
#define FPM_CALL_GI_BY_ID 12
#define FPM_CALL_CI_BY_ID 13
#define FPM_CALL_DESTROY_CI 14
#define FPM_CALL_DESTROY_GI 15
#define FPM_CALL_INIT 16
#define FPM_CALL_GPU_INSTANCES 17
#define FPM_CALL_COMPUTE_INSTANCES 18
#define FPM_CALL_COUNT_OF_CALLS 19

typedef struct fpm_ctx fpm_ctx_t;

/* What a create or destroy did. On a failed create, rc/call name the first
   failing step and anything already made was destroyed again (rollback_rc:
   SUCCESS, or the rc of the destroy that failed, leaving gpu_instance_id
   behind; -1: nothing to roll back). */
typedef struct {
    int rc;
    int call;
    int rollback_rc;
    unsigned int gpu_instance_id;
    unsigned int compute_instance_id;
    unsigned int placement_start;
    unsigned int placement_size;
    unsigned int ci_profile_id;
    char uuid[96]; /* the new MIG device's UUID, NUL-terminated */
    unsigned long long nvml_calls;
} fpm_result_t;

fpm_ctx_t *fpm_open(const char *path, char *err, size_t err_len);
int fpm_init(fpm_ctx_t *ctx);
int fpm_missing_symbols(fpm_ctx_t *ctx, char *buf, size_t len);
const char *fpm_call_name(int call);
const char *fpm_error_string(fpm_ctx_t *ctx, int rc);
int fpm_create(fpm_ctx_t *ctx, const char *parent_uuid, unsigned int gi_profile_id,
               unsigned int placement_start, fpm_result_t *out);
int fpm_destroy(fpm_ctx_t *ctx, const char *parent_uuid, unsigned int gpu_instance_id,
                unsigned int compute_instance_id, fpm_result_t *out);
/* Destroy whatever GPU instance of this profile sits at placement_start (and
   every compute instance in it), whatever its ids: how a restart removes an
   instance it created but never recorded (or half created: a GI without its
   CI). NOT_FOUND (call FPM_CALL_GPU_INSTANCES) when there is none. */
int fpm_destroy_at(fpm_ctx_t *ctx, const char *parent_uuid, unsigned int gi_profile_id,
                   unsigned int placement_start, fpm_result_t *out);
/* nvmlShutdown for this context's init; IN_USE while a create/destroy runs. */
int fpm_close(fpm_ctx_t *ctx);
void fpm_free(fpm_ctx_t *ctx);
/* CDEF END */

#endif
