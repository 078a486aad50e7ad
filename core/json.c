/* JSON string escaping, shaped like QEMU's writer: ASCII controls and every
 * non-ASCII character as \uXXXX, so that output is plain ASCII whatever
 * bytes a file name holds. */
#include "core/json.h"

#include <stdint.h>

#define REPLACEMENT 0xFFFD   /* for bytes that are not valid UTF-8 */

/* Decode one UTF-8 sequence at *p (first byte >= 0x80) and advance past it;
 * an invalid or overlong sequence consumes one byte and gives REPLACEMENT. */
static uint32_t utf8_next(const unsigned char **p)
{
    const unsigned char *s = *p;
    int n = s[0] >= 0xF0 && s[0] <= 0xF4 ? 3 : s[0] >= 0xE0 ? 2 : s[0] >= 0xC2 ? 1 : -1;
    if (s[0] >= 0xF5)
        n = -1;
    uint32_t cp = n == 3 ? s[0] & 0x07u : n == 2 ? s[0] & 0x0Fu : s[0] & 0x1Fu;
    for (int i = 1; i <= n; i++) {
        if ((s[i] & 0xC0) != 0x80) {
            n = -1;
            break;
        }
        cp = cp << 6 | (s[i] & 0x3Fu);
    }
    static const uint32_t smallest[] = { 0, 0x80, 0x800, 0x10000 };
    if (n < 0 || cp < smallest[n] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) {
        *p = s + 1;
        return REPLACEMENT;
    }
    *p = s + n + 1;
    return cp;
}

static void put_codepoint(FILE *out, uint32_t cp)
{
    if (cp > 0xFFFF) {   /* a surrogate pair, as JSON spells it */
        cp -= 0x10000;
        fprintf(out, "\\u%04X\\u%04X", 0xD800 + (cp >> 10), 0xDC00 + (cp & 0x3FF));
    } else {
        fprintf(out, "\\u%04X", cp);
    }
}

void img_json_string(FILE *out, const char *s)
{
    fputc('"', out);
    const unsigned char *p = (const unsigned char *)s;
    while (*p) {
        unsigned char c = *p;
        if (c >= 0x80) {
            put_codepoint(out, utf8_next(&p));
            continue;
        }
        p++;
        switch (c) {
        case '"':  fputs("\\\"", out); break;
        case '\\': fputs("\\\\", out); break;
        case '\b': fputs("\\b", out); break;
        case '\f': fputs("\\f", out); break;
        case '\n': fputs("\\n", out); break;
        case '\r': fputs("\\r", out); break;
        case '\t': fputs("\\t", out); break;
        default:
            if (c < 0x20 || c == 0x7f)
                fprintf(out, "\\u%04X", c);
            else
                fputc(c, out);
        }
    }
    fputc('"', out);
}
