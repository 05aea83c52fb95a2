/* engine/err.h: the one result convention of flowd.
 *
 * Every fallible function returns eng_rc and takes an optional eng_err * that, when non-NULL, is
 * filled with a message (and, for input errors, the JSON pointer of the offending field).
 * Asynchronous completions deliver `const eng_err *`, NULL meaning success. */
#pragma once

#include <stdarg.h>
#include <stddef.h>

#define ENG_MUST_CHECK __attribute__((warn_unused_result))
#define ENG_PRINTF(fmt, args) __attribute__((format(printf, fmt, args)))
#define ENG_CONTAINER_OF(ptr, type, member) ((type *)(void *)((char *)(ptr)-offsetof(type, member)))
#define ENG_ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

typedef enum {
    ENG_OK = 0,
    ENG_EINVAL,     /* bad input: the message (and field) say what and where */
    ENG_ENOTFOUND,  /* no such object, or not visible to this tenant */
    ENG_ECONFLICT,  /* unique violation or a state that forbids the change */
    ENG_ETIMEOUT,   /* a deadline passed */
    ENG_ECANCELED,  /* the operation was abandoned (shutdown, cancelled run, lost lease) */
    ENG_EDB,        /* PostgreSQL refused the statement for good */
    ENG_EDB_RETRY,  /* connection lost, serialization failure, server shutting down: try again */
    ENG_EHTTP,      /* an outbound HTTP exchange failed */
    ENG_EPROTO,     /* a peer spoke something we cannot parse */
    ENG_ETOOBIG,    /* a size cap was exceeded */
    ENG_ESYS,       /* an operating-system call failed (errno in the message) */
    ENG_EINTERNAL,  /* a bug: an invariant did not hold */
} eng_rc;

typedef struct eng_err {
    eng_rc rc;
    char sqlstate[6]; /* PostgreSQL SQLSTATE when the error came from the server, else "" */
    char field[128];  /* JSON pointer of the bad input field, else "" */
    char msg[256];    /* lowercase, no final period (PostgreSQL's message style) */
} eng_err;

/* Fills err (when non-NULL) and returns rc, so that `return eng_err_set(err, ENG_EINVAL, ...)`
 * reports and returns in one statement. Clears field and sqlstate. */
eng_rc eng_err_set(eng_err *err, eng_rc rc, const char *fmt, ...) ENG_PRINTF(3, 4);

/* As eng_err_set, naming the JSON pointer of the offending input field. */
eng_rc eng_err_field(eng_err *err, eng_rc rc, const char *field, const char *fmt, ...)
    ENG_PRINTF(4, 5);

/* Resets err to success. NULL-safe. */
void eng_err_clear(eng_err *err);

/* A short stable name for rc ("invalid", "not_found", ...), for logs and API error codes. */
const char *eng_rc_name(eng_rc rc);
