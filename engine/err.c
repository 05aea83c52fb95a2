/* engine/err.c: the result convention (see err.h). */
#include "engine/err.h"

#include <stdio.h>
#include <string.h>

static void err_vfill(eng_err *err, eng_rc rc, const char *field, const char *fmt, va_list ap)
{
    err->rc = rc;
    err->sqlstate[0] = '\0';
    snprintf(err->field, sizeof err->field, "%s", field ? field : "");
    vsnprintf(err->msg, sizeof err->msg, fmt, ap);
}

eng_rc eng_err_set(eng_err *err, eng_rc rc, const char *fmt, ...)
{
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        err_vfill(err, rc, NULL, fmt, ap);
        va_end(ap);
    }
    return rc;
}

eng_rc eng_err_field(eng_err *err, eng_rc rc, const char *field, const char *fmt, ...)
{
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        err_vfill(err, rc, field, fmt, ap);
        va_end(ap);
    }
    return rc;
}

void eng_err_clear(eng_err *err)
{
    if (err)
        memset(err, 0, sizeof *err);
}

const char *eng_rc_name(eng_rc rc)
{
    switch (rc) {
    case ENG_OK: return "ok";
    case ENG_EINVAL: return "invalid";
    case ENG_ENOTFOUND: return "not_found";
    case ENG_ECONFLICT: return "conflict";
    case ENG_ETIMEOUT: return "timeout";
    case ENG_ECANCELED: return "canceled";
    case ENG_EDB: return "db";
    case ENG_EDB_RETRY: return "db_retry";
    case ENG_EHTTP: return "http";
    case ENG_EPROTO: return "protocol";
    case ENG_ETOOBIG: return "too_big";
    case ENG_ESYS: return "system";
    case ENG_EINTERNAL: return "internal";
    }
    return "unknown";
}
