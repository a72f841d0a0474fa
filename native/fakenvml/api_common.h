/*
 * Entry/exit discipline shared by every exported NVML function.
 *
 * FAKE_API(name, (params), (args)) defines the exported function `name`,
 * which takes g_lock, fails with NVML_ERROR_UNINITIALIZED outside an
 * init/shutdown pair, folds new fault-log records, honours any hang or delay
 * fault for this function and the GPU its first argument names (with the
 * lock released while it waits, as a real NVML call stuck on one GPU leaves
 * calls on other GPUs alone), answers the rc of an active "fail" fault for
 * them, and then runs the body written after the macro
 * (as name##_locked) with the lock held.
 */
#ifndef FAKENVML_API_COMMON_H
#define FAKENVML_API_COMMON_H

#include "fakenvml.h"

#pragma GCC visibility push(hidden)

nvmlReturn_t fake_api_enter(void);
void fake_api_leave(void);

#define FAKE_FIRST_(first, ...) first
#define FAKE_FIRST(args) FAKE_FIRST_ args

#define FAKE_API(name, params, args)                                            \
    static nvmlReturn_t name##_locked params;                                   \
    nvmlReturn_t name params {                                                  \
        nvmlReturn_t rc_ = fake_api_enter();                                    \
        if (rc_ != NVML_SUCCESS) return rc_;                                    \
        int gpu_ = fake_handle_gpu((uintptr_t)(FAKE_FIRST(args)));              \
        rc_ = fake_stall(#name, gpu_);                                          \
        if (rc_ == NVML_SUCCESS) rc_ = fake_fail(#name, gpu_);                  \
        if (rc_ == NVML_SUCCESS) rc_ = name##_locked args;                      \
        fake_api_leave();                                                       \
        return rc_;                                                             \
    }                                                                           \
    static nvmlReturn_t name##_locked params

/* Resolve a device handle.  Physical or MIG handle; *mig is NULL for a
 * physical one.  Fails INVALID_ARGUMENT for a bad handle and GPU_IS_LOST
 * when the (parent) GPU has fallen off the bus. */
nvmlReturn_t fake_resolve(nvmlDevice_t dev, fake_gpu **gpu, fake_mig **mig);

/* Same, but only a physical GPU is acceptable (MIG handle -> mig_rc). */
nvmlReturn_t fake_resolve_gpu(nvmlDevice_t dev, fake_gpu **gpu, nvmlReturn_t mig_rc);

nvmlReturn_t fake_copy_str(char *buf, unsigned int length, const char *s);

/* device.c: a GI handle (base g_gi_handles) must name a slot holding a GPU
 * instance, a CI handle (base g_ci_handles) one holding its compute instance. */
nvmlReturn_t fake_resolve_instance(const void *h, const void *base, size_t elem, fake_gpu **g,
                                   fake_mig **m);
/* The NVML_COMPUTE_INSTANCE_PROFILE_* of the one CI spanning a GI of profile p. */
unsigned int ci_profile_of(const fake_profile *p);

#pragma GCC visibility pop

#endif
