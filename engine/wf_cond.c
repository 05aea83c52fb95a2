/* engine/wf_cond.c: see wf_cond.h. A tokenizer plus a recursive-descent parser into a small tree;
 * evaluation walks the tree. Nesting is capped (WF_COND_MAX_DEPTH) so hostile input cannot exhaust
 * the stack, and the source length is capped so the tree stays small. */
#include "engine/wf_cond.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/mem.h"

typedef enum {
    T_END,
    T_LPAREN,
    T_RPAREN,
    T_LBRACK,
    T_RBRACK,
    T_COMMA,
    T_OP, /* comparison operator: op holds which */
    T_AND,
    T_OR,
    T_NOT,
    T_IN,
    T_EXISTS,
    T_PATH,    /* text/len hold the path */
    T_LITERAL, /* lit holds the parsed JSON value (owned by the token until taken) */
} tok_kind;

typedef enum { OP_EQ, OP_NE, OP_LT, OP_GT, OP_LE, OP_GE } cmp_op;

typedef struct token {
    tok_kind kind;
    cmp_op op;
    const char *text; /* T_PATH */
    size_t len;
    json_t *lit; /* T_LITERAL */
    size_t at;   /* byte offset, for messages */
} token;

typedef struct operand {
    char *path;  /* owned; NULL for a literal */
    json_t *lit; /* owned; NULL for a path */
} operand;

typedef enum { N_OR, N_AND, N_NOT, N_CMP, N_IN, N_EXISTS, N_TRUTHY } node_kind;

typedef struct node {
    node_kind kind;
    struct node *a, *b; /* N_OR/N_AND: both; N_NOT: a */
    cmp_op op;          /* N_CMP */
    operand l, r;       /* N_CMP: both; N_IN/N_EXISTS/N_TRUTHY: l */
    json_t *list;       /* N_IN: array of literals, owned */
} node;

struct wf_cond {
    node *root;
};

typedef struct parser {
    const char *src;
    size_t len;
    size_t pos;
    token tok; /* current lookahead */
    int depth;
    eng_err *err;
    bool failed;
} parser;

static eng_rc perr(parser *p, size_t at, const char *what)
{
    p->failed = true;
    return eng_err_set(p->err, ENG_EINVAL, "bad condition at offset %zu: %s", at, what);
}

/* ---- tokenizer ---- */

static bool is_path_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
           c == '-' || c == '.';
}

static bool word_is(const char *s, size_t n, const char *kw)
{
    return strlen(kw) == n && memcmp(s, kw, n) == 0;
}

/* Reads the next token into p->tok. Returns false (with the error set) on a lexical error. */
static bool lex(parser *p)
{
    const char *s = p->src;
    while (p->pos < p->len &&
           (s[p->pos] == ' ' || s[p->pos] == '\t' || s[p->pos] == '\n' || s[p->pos] == '\r'))
        p->pos++;
    token *t = &p->tok;
    json_decref(t->lit);
    memset(t, 0, sizeof *t);
    t->at = p->pos;
    if (p->pos >= p->len) {
        t->kind = T_END;
        return true;
    }
    char c = s[p->pos];
    char c2 = p->pos + 1 < p->len ? s[p->pos + 1] : '\0';
    switch (c) {
    case '(':
        t->kind = T_LPAREN;
        p->pos++;
        return true;
    case ')':
        t->kind = T_RPAREN;
        p->pos++;
        return true;
    case '[':
        t->kind = T_LBRACK;
        p->pos++;
        return true;
    case ']':
        t->kind = T_RBRACK;
        p->pos++;
        return true;
    case ',':
        t->kind = T_COMMA;
        p->pos++;
        return true;
    case '=':
    case '!':
        if (c2 != '=') {
            perr(p, p->pos, c == '=' ? "expected \"==\"" : "expected \"!=\"");
            return false;
        }
        t->kind = T_OP;
        t->op = c == '=' ? OP_EQ : OP_NE;
        p->pos += 2;
        return true;
    case '<':
    case '>':
        t->kind = T_OP;
        if (c2 == '=') {
            t->op = c == '<' ? OP_LE : OP_GE;
            p->pos += 2;
        } else {
            t->op = c == '<' ? OP_LT : OP_GT;
            p->pos++;
        }
        return true;
    default: break;
    }
    if (c == '"') {
        size_t i = p->pos + 1;
        while (i < p->len && s[i] != '"') {
            if (s[i] == '\\')
                i++;
            i++;
        }
        if (i >= p->len) {
            perr(p, p->pos, "unterminated string");
            return false;
        }
        t->lit = json_loadb(s + p->pos, i + 1 - p->pos, JSON_DECODE_ANY, NULL);
        if (!t->lit) {
            perr(p, p->pos, "bad string literal");
            return false;
        }
        t->kind = T_LITERAL;
        p->pos = i + 1;
        return true;
    }
    if (c == '-' || (c >= '0' && c <= '9')) {
        size_t i = p->pos + 1;
        while (i < p->len && ((s[i] >= '0' && s[i] <= '9') || s[i] == '.' || s[i] == 'e' ||
                              s[i] == 'E' || s[i] == '+' || s[i] == '-'))
            i++;
        t->lit = json_loadb(s + p->pos, i - p->pos, JSON_DECODE_ANY, NULL);
        if (!json_is_number(t->lit)) {
            perr(p, p->pos, "bad number");
            return false;
        }
        t->kind = T_LITERAL;
        p->pos = i;
        return true;
    }
    if (c == '{' && c2 == '{') {
        /* A template-style operand: {{ path }}, for authors used to writing templates. */
        const char *close = NULL;
        for (size_t i = p->pos + 2; i + 1 < p->len; i++)
            if (s[i] == '}' && s[i + 1] == '}') {
                close = s + i;
                break;
            }
        if (!close) {
            perr(p, p->pos, "unclosed \"{{\"");
            return false;
        }
        const char *b = s + p->pos + 2;
        while (b < close && (*b == ' ' || *b == '\t'))
            b++;
        const char *e = close;
        while (e > b && (e[-1] == ' ' || e[-1] == '\t'))
            e--;
        if (!wf_path_valid(b, (size_t)(e - b))) {
            perr(p, p->pos, "bad path inside \"{{ }}\"");
            return false;
        }
        t->kind = T_PATH;
        t->text = b;
        t->len = (size_t)(e - b);
        p->pos = (size_t)(close - s) + 2;
        return true;
    }
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_') {
        /* A word runs over segment characters, dots and [digits] indices, so that a path ending
         * a list ("in [x]") leaves the "]" alone. */
        size_t i = p->pos;
        for (;;) {
            while (i < p->len && is_path_char(s[i]))
                i++;
            size_t j = i + 1;
            if (i >= p->len || s[i] != '[')
                break;
            while (j < p->len && s[j] >= '0' && s[j] <= '9')
                j++;
            if (j == i + 1 || j >= p->len || s[j] != ']')
                break;
            i = j + 1;
        }
        const char *w = s + p->pos;
        size_t n = i - p->pos;
        p->pos = i;
        if (word_is(w, n, "and"))
            t->kind = T_AND;
        else if (word_is(w, n, "or"))
            t->kind = T_OR;
        else if (word_is(w, n, "not"))
            t->kind = T_NOT;
        else if (word_is(w, n, "in"))
            t->kind = T_IN;
        else if (word_is(w, n, "exists"))
            t->kind = T_EXISTS;
        else if (word_is(w, n, "true"))
            t->kind = T_LITERAL, t->lit = json_true();
        else if (word_is(w, n, "false"))
            t->kind = T_LITERAL, t->lit = json_false();
        else if (word_is(w, n, "null"))
            t->kind = T_LITERAL, t->lit = json_null();
        else if (wf_path_valid(w, n))
            t->kind = T_PATH, t->text = w, t->len = n;
        else {
            perr(p, t->at, "bad path");
            return false;
        }
        return true;
    }
    perr(p, p->pos, "unexpected character");
    return false;
}

/* ---- tree ---- */

static void operand_free(operand *o)
{
    free(o->path);
    json_decref(o->lit);
}

static void node_free(node *n)
{
    if (!n)
        return;
    node_free(n->a);
    node_free(n->b);
    operand_free(&n->l);
    operand_free(&n->r);
    json_decref(n->list);
    free(n);
}

static node *node_new(node_kind k)
{
    node *n = eng_xcalloc(1, sizeof *n);
    n->kind = k;
    return n;
}

/* ---- parser ---- */

static node *parse_or(parser *p);

/* Takes the current token as an operand, or fails. */
static bool take_operand(parser *p, operand *o)
{
    if (p->tok.kind == T_PATH) {
        o->path = eng_xstrndup(p->tok.text, p->tok.len);
    } else if (p->tok.kind == T_LITERAL) {
        o->lit = p->tok.lit;
        p->tok.lit = NULL;
    } else {
        perr(p, p->tok.at, "expected a path or a literal");
        return false;
    }
    return lex(p);
}

static node *parse_in_list(parser *p, node *n)
{
    if (!lex(p))
        return n;
    if (p->tok.kind != T_LBRACK) {
        perr(p, p->tok.at, "expected \"[\" after \"in\"");
        return n;
    }
    if (!lex(p))
        return n;
    n->list = json_array();
    if (p->tok.kind == T_RBRACK) {
        lex(p);
        return n;
    }
    for (;;) {
        if (p->tok.kind != T_LITERAL) {
            perr(p, p->tok.at, "expected a literal in the list");
            return n;
        }
        json_array_append_new(n->list, p->tok.lit);
        p->tok.lit = NULL;
        if (!lex(p))
            return n;
        if (p->tok.kind == T_RBRACK)
            break;
        if (p->tok.kind != T_COMMA) {
            perr(p, p->tok.at, "expected \",\" or \"]\"");
            return n;
        }
        if (!lex(p))
            return n;
    }
    lex(p);
    return n;
}

static node *parse_cmp(parser *p)
{
    node *n = node_new(N_TRUTHY);
    if (!take_operand(p, &n->l))
        return n;
    switch (p->tok.kind) {
    case T_OP:
        n->kind = N_CMP;
        n->op = p->tok.op;
        if (lex(p))
            take_operand(p, &n->r);
        break;
    case T_IN:
        n->kind = N_IN;
        parse_in_list(p, n);
        break;
    case T_EXISTS:
        n->kind = N_EXISTS;
        if (!n->l.path)
            perr(p, p->tok.at, "\"exists\" needs a path");
        else
            lex(p);
        break;
    default: break;
    }
    return n;
}

static node *parse_unary(parser *p)
{
    if (p->tok.kind != T_NOT && p->tok.kind != T_LPAREN)
        return parse_cmp(p);
    if (++p->depth > WF_COND_MAX_DEPTH) {
        perr(p, p->tok.at, "nested too deeply");
        return NULL;
    }
    node *n;
    if (p->tok.kind == T_NOT) {
        n = node_new(N_NOT);
        if (lex(p))
            n->a = parse_unary(p);
    } else { /* T_LPAREN */
        if (!lex(p))
            return NULL;
        n = parse_or(p);
        if (!p->failed) {
            if (p->tok.kind != T_RPAREN)
                perr(p, p->tok.at, "expected \")\"");
            else
                lex(p);
        }
    }
    p->depth--;
    return n;
}

static node *parse_and(parser *p)
{
    node *n = parse_unary(p);
    while (!p->failed && p->tok.kind == T_AND) {
        node *x = node_new(N_AND);
        x->a = n;
        n = x;
        if (lex(p))
            x->b = parse_unary(p);
    }
    return n;
}

static node *parse_or(parser *p)
{
    node *n = parse_and(p);
    while (!p->failed && p->tok.kind == T_OR) {
        node *x = node_new(N_OR);
        x->a = n;
        n = x;
        if (lex(p))
            x->b = parse_and(p);
    }
    return n;
}

eng_rc wf_cond_parse(const char *src, wf_cond **out, eng_err *err)
{
    if (!src)
        return eng_err_set(err, ENG_EINVAL, "no condition");
    parser p = {.src = src, .len = strlen(src), .err = err};
    if (p.len > WF_COND_MAX_SRC)
        return eng_err_set(err, ENG_EINVAL, "condition longer than %d bytes", WF_COND_MAX_SRC);
    node *root = NULL;
    if (lex(&p)) {
        if (p.tok.kind == T_END)
            perr(&p, 0, "empty condition");
        else
            root = parse_or(&p);
        if (!p.failed && p.tok.kind != T_END)
            perr(&p, p.tok.at, "unexpected token");
    }
    json_decref(p.tok.lit);
    if (p.failed) {
        node_free(root);
        return ENG_EINVAL;
    }
    wf_cond *c = eng_xmalloc(sizeof *c);
    c->root = root;
    *out = c;
    return ENG_OK;
}

void wf_cond_free(wf_cond *c)
{
    if (!c)
        return;
    node_free(c->root);
    free(c);
}

/* ---- evaluation ---- */

static const json_t *operand_value(const operand *o, const json_t *ctx)
{
    return o->path ? wf_path_lookup(ctx, o->path, strlen(o->path)) : o->lit;
}

/* Equality with numbers compared by value; NULL is "absent" and equals only itself. */
static bool values_equal(const json_t *a, const json_t *b)
{
    if (!a || !b)
        return a == b;
    if (json_is_number(a) && json_is_number(b))
        return json_number_value(a) == json_number_value(b);
    return json_equal(a, b) != 0;
}

/* Ordering: -2 when a and b are not comparable, else -1/0/1. */
static int values_order(const json_t *a, const json_t *b)
{
    if (json_is_integer(a) && json_is_integer(b)) {
        json_int_t x = json_integer_value(a), y = json_integer_value(b);
        return x < y ? -1 : x > y;
    }
    if (json_is_number(a) && json_is_number(b)) {
        double x = json_number_value(a), y = json_number_value(b);
        return x < y ? -1 : x > y;
    }
    if (json_is_string(a) && json_is_string(b)) {
        size_t la = json_string_length(a), lb = json_string_length(b);
        int r = memcmp(json_string_value(a), json_string_value(b), la < lb ? la : lb);
        if (r == 0)
            return la < lb ? -1 : la > lb;
        return r < 0 ? -1 : 1;
    }
    return -2;
}

static bool truthy(const json_t *v)
{
    if (!v || json_is_null(v) || json_is_false(v))
        return false;
    if (json_is_number(v))
        return json_number_value(v) != 0;
    if (json_is_string(v))
        return json_string_length(v) != 0;
    return true;
}

static bool eval_node(const node *n, const json_t *ctx)
{
    switch (n->kind) {
    case N_OR: return eval_node(n->a, ctx) || eval_node(n->b, ctx);
    case N_AND: return eval_node(n->a, ctx) && eval_node(n->b, ctx);
    case N_NOT: return !eval_node(n->a, ctx);
    case N_TRUTHY: return truthy(operand_value(&n->l, ctx));
    case N_EXISTS: {
        const json_t *v = operand_value(&n->l, ctx);
        return v && !json_is_null(v);
    }
    case N_IN: {
        const json_t *v = operand_value(&n->l, ctx);
        if (!v)
            return false;
        for (size_t i = 0; i < json_array_size(n->list); i++)
            if (values_equal(v, json_array_get(n->list, i)))
                return true;
        return false;
    }
    case N_CMP: {
        const json_t *a = operand_value(&n->l, ctx), *b = operand_value(&n->r, ctx);
        if (n->op == OP_EQ)
            return values_equal(a, b);
        if (n->op == OP_NE)
            return !values_equal(a, b);
        if (!a || !b)
            return false;
        int o = values_order(a, b);
        if (o == -2)
            return false;
        switch (n->op) {
        case OP_LT: return o < 0;
        case OP_GT: return o > 0;
        case OP_LE: return o <= 0;
        case OP_GE: return o >= 0;
        default: return false;
        }
    }
    }
    return false;
}

eng_rc wf_cond_eval(const wf_cond *c, const json_t *ctx, bool *result, eng_err *err)
{
    if (!c || !c->root)
        return eng_err_set(err, ENG_EINVAL, "no condition");
    *result = eval_node(c->root, ctx);
    return ENG_OK;
}

static eng_rc refs_node(const node *n, wf_template_ref_cb *cb, void *arg, const char *ptr,
                        eng_err *err)
{
    if (!n)
        return ENG_OK;
    eng_rc rc = refs_node(n->a, cb, arg, ptr, err);
    if (rc == ENG_OK)
        rc = refs_node(n->b, cb, arg, ptr, err);
    if (rc == ENG_OK && n->l.path)
        rc = cb(arg, n->l.path, ptr, err);
    if (rc == ENG_OK && n->r.path)
        rc = cb(arg, n->r.path, ptr, err);
    return rc;
}

eng_rc wf_cond_refs(const wf_cond *c, wf_template_ref_cb *cb, void *arg, const char *ptr,
                    eng_err *err)
{
    if (!c)
        return ENG_OK;
    return refs_node(c->root, cb, arg, ptr ? ptr : "", err);
}
