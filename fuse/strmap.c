#include "strmap.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

struct strmap_ent {
    struct strmap_ent *next;
    uint64_t val;
    char key[];
};

static uint64_t hash(const char *s)
{
    uint64_t h = 0xcbf29ce484222325ull;   /* FNV-1a */
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 0x100000001b3ull;
    return h;
}

static struct strmap_ent *find(const struct strmap *m, const char *key)
{
    if (!m->nb)
        return NULL;
    for (struct strmap_ent *e = m->b[hash(key) & (m->nb - 1)]; e; e = e->next)
        if (strcmp(e->key, key) == 0)
            return e;
    return NULL;
}

/* Keep chains short: double the buckets when the map is as full as it is
 * wide. */
static int grow(struct strmap *m)
{
    size_t nb = m->nb ? m->nb * 2 : 64;
    struct strmap_ent **b = calloc(nb, sizeof(*b));
    if (!b)
        return -ENOMEM;
    for (size_t i = 0; i < m->nb; i++) {
        for (struct strmap_ent *e = m->b[i], *next; e; e = next) {
            next = e->next;
            size_t k = hash(e->key) & (nb - 1);
            e->next = b[k];
            b[k] = e;
        }
    }
    free(m->b);
    m->b = b;
    m->nb = nb;
    return 0;
}

int strmap_put(struct strmap *m, const char *key, uint64_t val)
{
    struct strmap_ent *e = find(m, key);
    if (e) {
        e->val = val;
        return 0;
    }
    if (m->n >= m->nb && grow(m) < 0)
        return -ENOMEM;
    size_t len = strlen(key) + 1;
    e = malloc(sizeof(*e) + len);
    if (!e)
        return -ENOMEM;
    memcpy(e->key, key, len);
    e->val = val;
    size_t k = hash(key) & (m->nb - 1);
    e->next = m->b[k];
    m->b[k] = e;
    m->n++;
    return 0;
}

bool strmap_get(const struct strmap *m, const char *key, uint64_t *val)
{
    struct strmap_ent *e = find(m, key);
    if (e && val)
        *val = e->val;
    return e != NULL;
}

void strmap_free(struct strmap *m)
{
    for (size_t i = 0; i < m->nb; i++) {
        for (struct strmap_ent *e = m->b[i], *next; e; e = next) {
            next = e->next;
            free(e);
        }
    }
    free(m->b);
    m->b = NULL;
    m->nb = m->n = 0;
}
