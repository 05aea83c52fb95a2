/* api/csv.h: CSV fields for the API's exports (RFC 4180), safe to open in a spreadsheet. */
#pragma once

#include <stdbool.h>

#include "engine/buf.h"

/* Appends s as one field, then "," or, when last, CRLF. Quoted when it holds a comma, quote or line
 * break. A field starting with '=', '+', '-', '@', tab or CR, which spreadsheets read as a formula
 * (OWASP's CSV injection), gets a leading apostrophe so it is shown as the text it is. */
ENG_MUST_CHECK eng_rc api_csv_field(eng_buf *out, const char *s, bool last);
