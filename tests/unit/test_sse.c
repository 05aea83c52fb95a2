/* tests/unit/test_sse.c: engine/sse.c, the reader of Server-Sent Events in a response body. */
// clang-format off
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>
// clang-format on
#include <string.h>

#include "engine/sse.h"

typedef struct reader {
    const char *p, *end;
    char name[16];
    eng_buf data;
} reader;

static void reader_init(reader *r, const char *text, size_t max)
{
    r->p = text;
    r->end = text + strlen(text);
    eng_buf_init(&r->data, max);
}

static void expect_event(reader *r, const char *name, const char *data)
{
    assert_true(eng_sse_next(&r->p, r->end, r->name, sizeof r->name, &r->data));
    assert_string_equal(r->name, name);
    assert_string_equal(r->data.ptr ? r->data.ptr : "", data);
}

static void test_fields(void **state)
{
    (void)state;
    reader r;
    /* blank lines before an event, comments, unknown fields (id, retry) and a field without a
     * colon; data lines joined with LF; one leading space of a value dropped, not two; CRLF */
    reader_init(&r, "\n\n: comment\n"
                    "event: first\ndata: a\ndata:b\ndata:  c\nid: 7\nretry: 10\n\n"
                    "data: only data\r\n\r\n"
                    "event: x\r\ndata\r\n\r\n"
                    "id: 8\n\n"
                    "event: a-name-longer-than-the-buffer\ndata: y\n\n",
                0);
    expect_event(&r, "first", "a\nb\n c");
    expect_event(&r, "", "only data");
    expect_event(&r, "x", "");
    /* an event of only an id carries nothing: the reader goes on to the next */
    expect_event(&r, "a-name-longer-t", "y");
    assert_false(eng_sse_next(&r.p, r.end, r.name, sizeof r.name, &r.data));
    assert_true(r.p == r.end);
    eng_buf_deinit(&r.data);
}

/* An event is only complete at its blank line: a cut stream ends without its last event. */
static void test_cut_stream(void **state)
{
    (void)state;
    reader r;
    reader_init(&r, "data: whole\n\ndata: cut\n", 0);
    expect_event(&r, "", "whole");
    assert_false(eng_sse_next(&r.p, r.end, r.name, sizeof r.name, &r.data));
    eng_buf_deinit(&r.data);
    reader_init(&r, "data: no newline", 0);
    assert_false(eng_sse_next(&r.p, r.end, r.name, sizeof r.name, &r.data));
    eng_buf_deinit(&r.data);
}

/* The data buffer's cap bounds an event: past it the reader stops. */
static void test_data_cap(void **state)
{
    (void)state;
    reader r;
    reader_init(&r, "data: 1234\n\ndata: 12\ndata: 345\n\n", 5); /* "12\n345" is 6 */
    expect_event(&r, "", "1234");
    assert_false(eng_sse_next(&r.p, r.end, r.name, sizeof r.name, &r.data));
    eng_buf_deinit(&r.data);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fields),
        cmocka_unit_test(test_cut_stream),
        cmocka_unit_test(test_data_cap),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
