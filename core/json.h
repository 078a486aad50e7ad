/* JSON string literals, escaped as QEMU's JSON writer does, for imgctl's
 * output and (later) the daemon's control socket. */
#ifndef IMGFS_JSON_H
#define IMGFS_JSON_H

#include <stdio.h>

/* Write `s` as a JSON string literal, quotes included: " and \ escaped,
 * \b \f \n \r \t by name, other control characters and DEL as \u00XX.
 * UTF-8 characters as \uXXXX (surrogate pairs above U+FFFF), bytes that
 * are not UTF-8 as \uFFFD: the output is ASCII, as qemu-img's. */
void img_json_string(FILE *out, const char *s);

#endif
