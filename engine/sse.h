/* engine/sse.h: a reader of Server-Sent Events (the WHATWG event-stream format) in a response
 * body held whole in memory, for providers that stream their answers.
 *
 * Pure: it walks a buffer the caller owns. Lines end in LF or CRLF; comment lines (":...") are
 * skipped; "event" names the event; "data" lines are joined with LF; other fields are ignored. */
#pragma once

#include <stdbool.h>
#include <stddef.h>

#include "engine/buf.h"

/* The next event of [*p, end): its name (empty when the event has none; cut to namelen - 1
 * bytes) and its data (data is reset first; its cap bounds the event). Advances *p past the event.
 * false at the end of the input, when the last event is not ended by a blank line (a cut stream),
 * or when data would pass its cap. */
bool eng_sse_next(const char **p, const char *end, char *name, size_t namelen, eng_buf *data);
