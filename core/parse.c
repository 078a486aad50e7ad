/* qemu-img's size syntax and -o option lists, without any output. */
#include "core/parse.h"

#include <ctype.h>
#include <errno.h>
#include <string.h>
#include <strings.h>

#define SIZE_LIMIT (UINT64_C(1) << 63)   /* qemu-img: "less than 8 EiB" */

/* Bytes per unit for a suffix letter, or 0 when `c` is not one. */
static uint64_t suffix_unit(char c)
{
    static const char letters[] = "bkmgtpe";
    const char *p = c ? strchr(letters, tolower((unsigned char)c)) : NULL;
    if (!p)
        return 0;
    return UINT64_C(1) << (10 * (p - letters));
}

/* Leading decimal digits of *s into *val; advances *s.  -EINVAL if there
 * are none, -ERANGE when they do not fit. */
static int parse_digits(const char **s, uint64_t *val)
{
    const char *p = *s;
    uint64_t v = 0;
    for (; isdigit((unsigned char)*p); p++) {
        unsigned d = (unsigned)(*p - '0');
        if (v > (UINT64_MAX - d) / 10)
            return -ERANGE;
        v = v * 10 + d;
    }
    if (p == *s)
        return -EINVAL;
    *s = p;
    *val = v;
    return 0;
}

/* The digits after a '.', as a fraction of one unit scaled to bytes.  The
 * result is truncated toward zero, as integer bytes must be. */
static uint64_t fraction_bytes(const char *digits, size_t n, uint64_t unit)
{
    long double f = 0, scale = 1;
    for (size_t i = 0; i < n; i++) {
        scale /= 10;
        f += (digits[i] - '0') * scale;
    }
    return (uint64_t)(f * (long double)unit);
}

int img_parse_size(const char *s, uint64_t *bytes)
{
    uint64_t whole;
    int r = parse_digits(&s, &whole);
    if (r)
        return r;
    const char *frac = NULL;
    size_t frac_len = 0;
    if (*s == '.') {
        frac = ++s;
        while (isdigit((unsigned char)*s))
            s++;
        frac_len = (size_t)(s - frac);
        if (frac_len == 0)
            return -EINVAL;
    }
    uint64_t unit = suffix_unit(*s);
    if (unit)
        s++;
    else
        unit = 1;
    if (*s)
        return -EINVAL;
    uint64_t part = frac ? fraction_bytes(frac, frac_len, unit) : 0;
    /* A fraction needs a unit larger than a byte: "1.5" is no size. */
    if (frac && unit == 1 && strspn(frac, "0") < frac_len)
        return -EINVAL;
    if (whole > (SIZE_LIMIT - 1) / unit)
        return -ERANGE;
    uint64_t total = whole * unit + part;
    if (total >= SIZE_LIMIT)
        return -ERANGE;
    *bytes = total;
    return 0;
}

int img_parse_size_delta(const char *s, struct img_size_delta *d)
{
    d->mode = IMG_SIZE_ABSOLUTE;
    if (*s == '+' || *s == '-')
        d->mode = *s++ == '+' ? IMG_SIZE_GROW : IMG_SIZE_SHRINK;
    return img_parse_size(s, &d->bytes);
}

/* Cut the next item of an option list at an unescaped ',' and collapse
 * ",," to ',' in place.  Returns where the next item starts, or NULL at
 * the end of the list. */
static char *cut_item(char *item)
{
    char *in = item, *out = item;
    for (;;) {
        if (*in == '\0') {
            *out = '\0';
            return NULL;
        }
        if (*in == ',' && in[1] == ',') {
            *out++ = ',';
            in += 2;
        } else if (*in == ',') {
            *out = '\0';
            return in + 1;
        } else {
            *out++ = *in++;
        }
    }
}

int img_split_options(char *buf,
                      int (*cb)(const char *key, const char *value, void *ctx),
                      void *ctx)
{
    char *item = buf;
    while (item) {
        char *next = cut_item(item);
        char *eq = strchr(item, '=');
        const char *value = "on";
        if (eq) {
            *eq = '\0';
            value = eq + 1;
        }
        if (*item == '\0')
            return -EINVAL;
        int r = cb(item, value, ctx);
        if (r)
            return r;
        item = next;
    }
    return 0;
}

int img_parse_bool(const char *s, bool *out)
{
    static const char *const yes[] = { "on", "yes", "true", NULL };
    static const char *const no[] = { "off", "no", "false", NULL };
    for (int i = 0; yes[i]; i++) {
        if (strcasecmp(s, yes[i]) == 0) {
            *out = true;
            return 0;
        }
        if (strcasecmp(s, no[i]) == 0) {
            *out = false;
            return 0;
        }
    }
    return -EINVAL;
}
