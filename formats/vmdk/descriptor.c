/* VMDK descriptor text: "key=value" lines, comments, and extent lines
 *   RW|RDONLY|NOACCESS <sectors> SPARSE|FLAT|ZERO|VMFS|VMFSSPARSE "file" [offset]
 * The parser is strict about extent lines (they decide which files we open
 * and where every byte comes from) and lenient about the rest, which holds
 * tool-specific "ddb.*" entries. */
#include "vmdk.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct line {
    const char *p;   /* first non-blank character */
    size_t len;      /* without trailing blanks and CR */
    unsigned no;     /* 1-based, for messages */
};

static int parse_fail(char *err, size_t errlen, int e, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int parse_fail(char *err, size_t errlen, int e, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
    return -e;
}

static bool is_blank(char c)
{
    return c == ' ' || c == '\t';
}

static void trim(struct line *l)
{
    while (l->len > 0 && is_blank(*l->p)) {
        l->p++;
        l->len--;
    }
    while (l->len > 0 && (is_blank(l->p[l->len - 1]) || l->p[l->len - 1] == '\r'))
        l->len--;
}

/* Does the line begin with `word` followed by a blank? */
static bool starts_with_word(const struct line *l, const char *word)
{
    size_t n = strlen(word);
    return l->len > n && memcmp(l->p, word, n) == 0 && is_blank(l->p[n]);
}

/* ---- a tiny cursor over one line ---- */

struct cursor {
    const char *p, *end;
};

static void skip_blanks(struct cursor *c)
{
    while (c->p < c->end && is_blank(*c->p))
        c->p++;
}

static size_t word_len(const struct cursor *c)
{
    const char *q = c->p;
    while (q < c->end && !is_blank(*q) && *q != '"')
        q++;
    return (size_t)(q - c->p);
}

static bool word_is(const char *w, size_t n, const char *s)
{
    return strlen(s) == n && memcmp(w, s, n) == 0;
}

/* Unsigned decimal, no sign, no overflow.  Returns false when absent. */
static bool read_u64(struct cursor *c, uint64_t *v)
{
    uint64_t x = 0;
    const char *start = c->p;
    while (c->p < c->end && *c->p >= '0' && *c->p <= '9') {
        unsigned d = (unsigned)(*c->p - '0');
        if (x > (UINT64_MAX - d) / 10)
            return false;
        x = x * 10 + d;
        c->p++;
    }
    *v = x;
    return c->p > start;
}

/* A quoted name: everything up to the next quote, spaces included. */
static char *read_quoted(struct cursor *c, const char **why)
{
    if (c->p >= c->end || *c->p != '"') {
        *why = "the file name must be in double quotes";
        return NULL;
    }
    const char *start = ++c->p;
    while (c->p < c->end && *c->p != '"')
        c->p++;
    if (c->p >= c->end) {
        *why = "the file name has no closing quote";
        return NULL;
    }
    size_t n = (size_t)(c->p - start);
    c->p++;
    if (n == 0) {
        *why = "the file name is empty";
        return NULL;
    }
    if (n >= VMDK_MAX_NAME) {
        *why = "the file name is too long";
        return NULL;
    }
    char *s = strndup(start, n);
    if (!s)
        *why = "out of memory";
    return s;
}

/* ---- extent lines ---- */

static bool parse_access(struct cursor *c, enum vmdk_access *a)
{
    size_t n = word_len(c);
    if (word_is(c->p, n, "RW"))
        *a = VMDK_RW;
    else if (word_is(c->p, n, "RDONLY"))
        *a = VMDK_RDONLY;
    else if (word_is(c->p, n, "NOACCESS"))
        *a = VMDK_NOACCESS;
    else
        return false;
    c->p += n;
    return true;
}

/* Type word -> our type, and whether an offset is required / forbidden.
 * QEMU's rules: FLAT needs an offset; VMFS (a flat file on VMFS) must not
 * have one; sparse and ZERO extents take none. */
enum offset_rule { OFFSET_NONE, OFFSET_REQUIRED };

static const char *parse_type(const char *w, size_t n, enum vmdk_ext_type *t,
                              enum offset_rule *rule)
{
    *rule = OFFSET_NONE;
    if (word_is(w, n, "FLAT")) {
        *t = VMDK_EXT_FLAT;
        *rule = OFFSET_REQUIRED;
    } else if (word_is(w, n, "VMFS")) {
        *t = VMDK_EXT_FLAT;
    } else if (word_is(w, n, "SPARSE") || word_is(w, n, "VMFSSPARSE")) {
        *t = VMDK_EXT_SPARSE;
    } else if (word_is(w, n, "ZERO")) {
        *t = VMDK_EXT_ZERO;
    } else if (word_is(w, n, "VMFSRDM") || word_is(w, n, "VMFSRAW") ||
               word_is(w, n, "SESPARSE")) {
        return "is not supported";
    } else {
        return "is unknown";
    }
    return NULL;
}

static int parse_extent_line(const struct line *l, struct vmdk_desc_extent *e,
                             char *err, size_t errlen)
{
    struct cursor c = { l->p, l->p + l->len };
    const char *why = NULL;
    memset(e, 0, sizeof(*e));
    parse_access(&c, &e->access);
    skip_blanks(&c);
    if (!read_u64(&c, &e->sectors))
        return parse_fail(err, errlen, EINVAL, "descriptor line %u: bad extent size: %.*s",
                          l->no, (int)l->len, l->p);
    if (e->sectors == 0 || e->sectors > VMDK_MAX_DISK_BYTES / VMDK_SECTOR)
        return parse_fail(err, errlen, EINVAL,
                          "descriptor line %u: extent size of %llu sectors is absurd", l->no,
                          (unsigned long long)e->sectors);
    skip_blanks(&c);
    size_t n = word_len(&c);
    enum offset_rule rule;
    const char *bad = parse_type(c.p, n, &e->type, &rule);
    if (bad)
        return parse_fail(err, errlen, ENOTSUP, "descriptor line %u: extent type '%.*s' %s",
                          l->no, (int)n, c.p, bad);
    c.p += n;
    skip_blanks(&c);
    if (e->type == VMDK_EXT_ZERO) {
        if (c.p < c.end)
            return parse_fail(err, errlen, EINVAL,
                              "descriptor line %u: a ZERO extent takes no file: %.*s",
                              l->no, (int)l->len, l->p);
        return 0;
    }
    e->file = read_quoted(&c, &why);
    if (!e->file)
        return parse_fail(err, errlen, EINVAL, "descriptor line %u: %s: %.*s", l->no, why,
                          (int)l->len, l->p);
    skip_blanks(&c);
    bool has_offset = read_u64(&c, &e->flat_offset);
    skip_blanks(&c);
    if (c.p < c.end || (rule == OFFSET_REQUIRED) != has_offset)
        return parse_fail(err, errlen, EINVAL, "descriptor line %u: invalid extent line: %.*s",
                          l->no, (int)l->len, l->p);
    if (e->flat_offset > VMDK_MAX_DISK_BYTES / VMDK_SECTOR)
        return parse_fail(err, errlen, EINVAL,
                          "descriptor line %u: extent offset of %llu sectors is absurd", l->no,
                          (unsigned long long)e->flat_offset);
    return 0;
}

static int add_extent(struct vmdk_desc *d, const struct line *l, char *err, size_t errlen)
{
    if (d->n_extents >= VMDK_MAX_EXTENTS)
        return parse_fail(err, errlen, EFBIG, "descriptor lists more than %d extents",
                          VMDK_MAX_EXTENTS);
    /* Capacity doubles at each power of two: 10000 lines must not cost
     * 10000 reallocations (nor, under ASan, gigabytes of quarantine). */
    size_t n = d->n_extents;
    if (n == 0 || (n & (n - 1)) == 0) {
        struct vmdk_desc_extent *grown =
            realloc(d->extents, (n ? 2 * n : 1) * sizeof(*d->extents));
        if (!grown)
            return parse_fail(err, errlen, ENOMEM, "out of memory");
        d->extents = grown;
    }
    struct vmdk_desc_extent *e = &d->extents[d->n_extents];
    int r = parse_extent_line(l, e, err, errlen);
    if (r < 0) {
        free(e->file);
        return r;
    }
    d->n_extents++;
    return 0;
}

/* ---- key=value lines ---- */

static void unquote(const char **v, size_t *n)
{
    if (*n >= 2 && (*v)[0] == '"' && (*v)[*n - 1] == '"') {
        (*v)++;
        *n -= 2;
    }
}

static int parse_cid(const char *v, size_t n, uint32_t *cid, const struct line *l,
                     char *err, size_t errlen)
{
    uint32_t x = 0;
    if (n == 0 || n > 8)
        goto bad;
    for (size_t i = 0; i < n; i++) {
        char ch = v[i];
        unsigned d;
        if (ch >= '0' && ch <= '9')
            d = (unsigned)(ch - '0');
        else if (ch >= 'a' && ch <= 'f')
            d = (unsigned)(ch - 'a' + 10);
        else if (ch >= 'A' && ch <= 'F')
            d = (unsigned)(ch - 'A' + 10);
        else
            goto bad;
        x = x << 4 | d;
    }
    *cid = x;
    return 0;
bad:
    return parse_fail(err, errlen, EINVAL, "descriptor line %u: '%.*s' is not a CID (8 hex digits)",
                      l->no, (int)n, v);
}

static int parse_key_value(struct vmdk_desc *d, const struct line *l, const char *eq,
                           char *err, size_t errlen)
{
    struct line key = { l->p, (size_t)(eq - l->p), l->no };
    struct line val = { eq + 1, l->len - key.len - 1, l->no };
    trim(&key);
    trim(&val);
    const char *v = val.p;
    size_t n = val.len;
    unquote(&v, &n);
    if (word_is(key.p, key.len, "createType")) {
        if (n >= sizeof(d->create_type))
            return parse_fail(err, errlen, EINVAL, "descriptor line %u: createType too long",
                              l->no);
        memcpy(d->create_type, v, n);
        d->create_type[n] = '\0';
    } else if (word_is(key.p, key.len, "CID")) {
        d->has_cid = true;
        return parse_cid(v, n, &d->cid, l, err, errlen);
    } else if (word_is(key.p, key.len, "parentCID")) {
        d->has_parent_cid = true;
        return parse_cid(v, n, &d->parent_cid, l, err, errlen);
    } else if (word_is(key.p, key.len, "parentFileNameHint")) {
        if (n == 0 || n >= VMDK_MAX_NAME || memchr(v, '"', n))
            return parse_fail(err, errlen, EINVAL,
                              "descriptor line %u: bad parentFileNameHint", l->no);
        free(d->parent_hint);
        if (!(d->parent_hint = strndup(v, n)))
            return parse_fail(err, errlen, ENOMEM, "out of memory");
    }
    return 0;   /* ddb.* and other keys do not concern reading */
}

/* ---- the whole text ---- */

static int parse_line(struct vmdk_desc *d, const struct line *l, bool want_extents,
                      char *err, size_t errlen)
{
    if (l->len == 0 || l->p[0] == '#')
        return 0;
    if (starts_with_word(l, "RW") || starts_with_word(l, "RDONLY") ||
        starts_with_word(l, "NOACCESS"))
        return want_extents ? add_extent(d, l, err, errlen) : 0;
    const char *eq = memchr(l->p, '=', l->len);
    if (eq)
        return parse_key_value(d, l, eq, err, errlen);
    return 0;   /* QEMU, too, passes over lines it does not know */
}

int vmdk_desc_parse(const char *text, size_t len, bool want_extents,
                    struct vmdk_desc *d, char *err, size_t errlen)
{
    memset(d, 0, sizeof(*d));
    const char *nul = memchr(text, '\0', len);
    const char *end = nul ? nul : text + len;
    unsigned no = 0;
    for (const char *p = text; p < end; no++) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *stop = nl ? nl : end;
        struct line l = { p, (size_t)(stop - p), no + 1 };
        trim(&l);
        int r = parse_line(d, &l, want_extents, err, errlen);
        if (r < 0)
            return r;
        p = nl ? nl + 1 : end;
    }
    return 0;
}

void vmdk_desc_free(struct vmdk_desc *d)
{
    for (size_t i = 0; i < d->n_extents; i++)
        free(d->extents[i].file);
    free(d->extents);
    free(d->parent_hint);
    memset(d, 0, sizeof(*d));
}

bool vmdk_create_type_supported(const char *t)
{
    static const char *const known[] = {
        "monolithicSparse", "monolithicFlat", "twoGbMaxExtentSparse", "twoGbMaxExtentFlat",
        "streamOptimized", "vmfs", "vmfsSparse",
    };
    for (size_t i = 0; i < sizeof(known) / sizeof(known[0]); i++)
        if (strcmp(t, known[i]) == 0)
            return true;
    return false;
}

/* ---- probe ---- */

/* QEMU's rule: after comment and blank lines, the first line is
 * "version=1|2|3". */
static bool first_line_is_version(const char *p, const char *end)
{
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        struct line l = { p, (size_t)((nl ? nl : end) - p), 0 };
        trim(&l);
        if (l.len > 0 && l.p[0] != '#')
            return l.len == 9 && memcmp(l.p, "version=", 8) == 0 && l.p[8] >= '1' &&
                   l.p[8] <= '3';
        if (!nl)
            return false;
        p = nl + 1;
    }
    return false;
}

static bool has_create_type_line(const char *p, const char *end)
{
    static const char key[] = "createType";
    const size_t n = sizeof(key) - 1;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        struct line l = { p, (size_t)((nl ? nl : end) - p), 0 };
        trim(&l);
        if (l.len > n && memcmp(l.p, key, n) == 0) {
            struct cursor c = { l.p + n, l.p + l.len };
            skip_blanks(&c);
            if (c.p < c.end && *c.p == '=')
                return true;
        }
        if (!nl)
            return false;
        p = nl + 1;
    }
    return false;
}

/* Text only: a binary file that happens to hold these words is not one. */
static bool is_text(const uint8_t *head, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        uint8_t c = head[i];
        if (c == 0)
            return i > 0;   /* descriptors read from a padded sector end in NULs */
        if (c < 0x20 && c != '\n' && c != '\r' && c != '\t')
            return false;
    }
    return true;
}

int vmdk_desc_probe(const uint8_t *head, size_t len)
{
    if (!is_text(head, len))
        return 0;
    const char *p = (const char *)head;
    const char *nul = memchr(p, '\0', len);
    const char *end = nul ? nul : p + len;
    static const char magic[] = "# Disk DescriptorFile";
    if ((size_t)(end - p) >= sizeof(magic) - 1 && memcmp(p, magic, sizeof(magic) - 1) == 0)
        return 100;
    if (first_line_is_version(p, end) || has_create_type_line(p, end))
        return 100;
    return 0;
}
