/* api/csv.c: CSV fields (see csv.h). */
#include "api/csv.h"

#include <string.h>

eng_rc api_csv_field(eng_buf *out, const char *s, bool last)
{
    bool formula = s[0] && strchr("=+-@\t\r", s[0]);
    bool quote = strpbrk(s, ",\"\r\n") != NULL;
    eng_rc rc = quote ? eng_buf_append(out, "\"", 1) : ENG_OK;
    if (rc == ENG_OK && formula)
        rc = eng_buf_append(out, "'", 1);
    for (const char *p = s; rc == ENG_OK && *p;) {
        const char *q = strchr(p, '"');
        size_t n = q ? (size_t)(q - p) : strlen(p);
        rc = eng_buf_append(out, p, n);
        if (rc == ENG_OK && q)
            rc = eng_buf_append(out, "\"\"", 2);
        p += n + (q ? 1 : 0);
    }
    if (rc == ENG_OK && quote)
        rc = eng_buf_append(out, "\"", 1);
    if (rc == ENG_OK)
        rc = eng_buf_append(out, last ? "\r\n" : ",", last ? 2 : 1);
    return rc;
}
