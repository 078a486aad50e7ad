/* A small string -> uint64 hash map (chained, grows by doubling).  Not
 * thread-safe: callers hold their own lock. */
#ifndef IMGFS_STRMAP_H
#define IMGFS_STRMAP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct strmap_ent;
struct strmap {
    struct strmap_ent **b;
    size_t nb, n;
};

/* 0 or -ENOMEM; an existing key gets the new value. */
int strmap_put(struct strmap *m, const char *key, uint64_t val);
bool strmap_get(const struct strmap *m, const char *key, uint64_t *val);
void strmap_free(struct strmap *m);

#endif
