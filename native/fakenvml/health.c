/*
 * Health queries: the polled signals a driver watches for slow failures.
 *
 * Values come from the topology defaults plus folded faults.  A product
 * without a feature (ECC, row remapping, retired pages, temperature sensor)
 * answers NVML_ERROR_NOT_SUPPORTED, as the real library does; MIG handles
 * answer NOT_SUPPORTED for these board-level queries.
 *
 * Field values: only NVML_FI_DEV_GET_GPU_RECOVERY_ACTION, which drivers
 * before 565 do not know (their per-field answer is INVALID_ARGUMENT, as for
 * any field id beyond their NVML_FI_MAX); every other field is NOT_SUPPORTED.
 */
#include "api_common.h"

static nvmlReturn_t board(nvmlDevice_t device, fake_gpu **g, const void *out) {
    nvmlReturn_t rc = fake_resolve_gpu(device, g, NVML_ERROR_NOT_SUPPORTED);
    if (rc != NVML_SUCCESS) return rc;
    return out == NULL ? NVML_ERROR_INVALID_ARGUMENT : NVML_SUCCESS;
}

FAKE_API(nvmlDeviceGetCurrentClocksEventReasons,
         (nvmlDevice_t device, unsigned long long *clocksEventReasons),
         (device, clocksEventReasons)) {
    fake_gpu *g;
    nvmlReturn_t rc = board(device, &g, clocksEventReasons);
    if (rc != NVML_SUCCESS) return rc;
    *clocksEventReasons = g->health.clocks_event_reasons;
    return NVML_SUCCESS;
}

FAKE_API(nvmlDeviceGetCurrentClocksThrottleReasons,
         (nvmlDevice_t device, unsigned long long *clocksThrottleReasons),
         (device, clocksThrottleReasons)) {
    fake_gpu *g;
    nvmlReturn_t rc = board(device, &g, clocksThrottleReasons);
    if (rc != NVML_SUCCESS) return rc;
    *clocksThrottleReasons = g->health.clocks_event_reasons;
    return NVML_SUCCESS;
}

FAKE_API(nvmlDeviceGetTemperature,
         (nvmlDevice_t device, nvmlTemperatureSensors_t sensorType, unsigned int *temp),
         (device, sensorType, temp)) {
    fake_gpu *g;
    nvmlReturn_t rc = board(device, &g, temp);
    if (rc != NVML_SUCCESS) return rc;
    if (sensorType != NVML_TEMPERATURE_GPU) return NVML_ERROR_INVALID_ARGUMENT;
    if (!g->has_temperature) return NVML_ERROR_NOT_SUPPORTED;
    *temp = g->health.temperature;
    return NVML_SUCCESS;
}

FAKE_API(nvmlDeviceGetEccMode,
         (nvmlDevice_t device, nvmlEnableState_t *current, nvmlEnableState_t *pending),
         (device, current, pending)) {
    fake_gpu *g;
    nvmlReturn_t rc = board(device, &g, current);
    if (rc != NVML_SUCCESS) return rc;
    if (pending == NULL) return NVML_ERROR_INVALID_ARGUMENT;
    if (!g->has_ecc) return NVML_ERROR_NOT_SUPPORTED;
    *current = *pending = NVML_FEATURE_ENABLED;
    return NVML_SUCCESS;
}

FAKE_API(nvmlDeviceGetTotalEccErrors,
         (nvmlDevice_t device, nvmlMemoryErrorType_t errorType, nvmlEccCounterType_t counterType,
          unsigned long long *eccCounts),
         (device, errorType, counterType, eccCounts)) {
    fake_gpu *g;
    nvmlReturn_t rc = board(device, &g, eccCounts);
    if (rc != NVML_SUCCESS) return rc;
    if ((unsigned int)errorType >= NVML_MEMORY_ERROR_TYPE_COUNT ||
        (unsigned int)counterType >= NVML_ECC_COUNTER_TYPE_COUNT)
        return NVML_ERROR_INVALID_ARGUMENT;
    if (!g->has_ecc) return NVML_ERROR_NOT_SUPPORTED;
    *eccCounts = counterType == NVML_VOLATILE_ECC ? g->health.ecc_volatile[errorType]
                                                  : g->health.ecc_aggregate[errorType];
    return NVML_SUCCESS;
}

FAKE_API(nvmlDeviceGetRetiredPagesPendingStatus,
         (nvmlDevice_t device, nvmlEnableState_t *isPending), (device, isPending)) {
    fake_gpu *g;
    nvmlReturn_t rc = board(device, &g, isPending);
    if (rc != NVML_SUCCESS) return rc;
    if (!g->has_retired_pages) return NVML_ERROR_NOT_SUPPORTED;
    *isPending = g->health.retired_pages_pending ? NVML_FEATURE_ENABLED : NVML_FEATURE_DISABLED;
    return NVML_SUCCESS;
}

FAKE_API(nvmlDeviceGetRemappedRows,
         (nvmlDevice_t device, unsigned int *corrRows, unsigned int *uncRows,
          unsigned int *isPending, unsigned int *failureOccurred),
         (device, corrRows, uncRows, isPending, failureOccurred)) {
    fake_gpu *g;
    nvmlReturn_t rc = board(device, &g, corrRows);
    if (rc != NVML_SUCCESS) return rc;
    if (uncRows == NULL || isPending == NULL || failureOccurred == NULL)
        return NVML_ERROR_INVALID_ARGUMENT;
    if (!g->has_row_remapping) return NVML_ERROR_NOT_SUPPORTED;
    *corrRows = g->health.remap_corr;
    *uncRows = g->health.remap_unc;
    *isPending = (unsigned int)g->health.remap_pending;
    *failureOccurred = (unsigned int)g->health.remap_failure;
    return NVML_SUCCESS;
}

FAKE_API(nvmlDeviceGetCurrPcieLinkWidth, (nvmlDevice_t device, unsigned int *currLinkWidth),
         (device, currLinkWidth)) {
    fake_gpu *g;
    nvmlReturn_t rc = board(device, &g, currLinkWidth);
    if (rc != NVML_SUCCESS) return rc;
    *currLinkWidth = g->health.pcie_width_current;
    return NVML_SUCCESS;
}

FAKE_API(nvmlDeviceGetMaxPcieLinkWidth, (nvmlDevice_t device, unsigned int *maxLinkWidth),
         (device, maxLinkWidth)) {
    fake_gpu *g;
    nvmlReturn_t rc = board(device, &g, maxLinkWidth);
    if (rc != NVML_SUCCESS) return rc;
    *maxLinkWidth = g->pcie_width_max;
    return NVML_SUCCESS;
}

FAKE_API(nvmlDeviceGetFieldValues, (nvmlDevice_t device, int valuesCount, nvmlFieldValue_t *values),
         (device, valuesCount, values)) {
    fake_gpu *g;
    nvmlReturn_t rc = board(device, &g, values);
    if (rc != NVML_SUCCESS) return rc;
    if (valuesCount < 0) return NVML_ERROR_INVALID_ARGUMENT;
    for (int i = 0; i < valuesCount; i++) {
        nvmlFieldValue_t *v = &values[i];
        v->timestamp = 0;
        v->latencyUsec = 0;
        if (v->fieldId != NVML_FI_DEV_GET_GPU_RECOVERY_ACTION) {
            v->nvmlReturn = NVML_ERROR_NOT_SUPPORTED;
        } else if (!fake_has_recovery_action()) {
            v->nvmlReturn = NVML_ERROR_INVALID_ARGUMENT;
        } else {
            v->nvmlReturn = NVML_SUCCESS;
            v->valueType = NVML_VALUE_TYPE_UNSIGNED_INT;
            v->value.uiVal = g->health.recovery_action;
        }
    }
    return NVML_SUCCESS;
}
