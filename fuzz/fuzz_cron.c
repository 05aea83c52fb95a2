/* fuzz/fuzz_cron.c: bytes -> cron_parse -> a few cron_next calls in zones with DST, a 30-minute
 * DST and a :45 offset. Must never crash, leak or hang; parse failures must say why; fire times
 * must be whole seconds and strictly increasing. The first byte picks the zone and start. */
#include <stdint.h>
#include <stdlib.h>

#include "engine/cron.h"
#include "engine/mem.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const char *const zones[] = {"UTC", "America/New_York", "Europe/Berlin",
                                        "Australia/Lord_Howe", "Asia/Kathmandu", "Pacific/Chatham"};
    if (size == 0)
        return 0;
    uint8_t pick = data[0];
    char *src = eng_xstrndup((const char *)data + 1, size - 1);
    cron *c = NULL;
    eng_err err;
    eng_err_clear(&err);
    if (cron_parse(src, &c, &err) == ENG_OK) {
        /* a start around a DST change of 2026 or in a year like 2100 (no Feb 29) */
        static const int64_t starts[] = {1772928000000LL, 1793491200000LL, 4102444800000LL,
                                         1775224800000LL};
        int64_t t = starts[pick >> 4 & 3] + (int64_t)(pick & 15) * 1234567;
        const char *zone = zones[(pick >> 6 | (pick & 1) << 2) % 6];
        for (int i = 0; i < 4; i++) {
            int64_t next;
            eng_rc rc = cron_next(c, zone, t, &next, &err);
            if (rc == ENG_ENOTFOUND)
                break;
            if (rc != ENG_OK || next <= t || next % 1000 != 0)
                abort();
            t = next;
        }
        cron_free(c);
    } else if (!err.msg[0]) {
        abort();
    }
    free(src);
    return 0;
}
