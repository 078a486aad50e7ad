/* Messages of the daemon: stderr in the foreground, syslog once daemonized
 * (fuse_daemonize points stderr at /dev/null). */
#include "imgfs.h"
#include "strmap.h"

#include <stdarg.h>
#include <stdio.h>
#include <syslog.h>

static pthread_mutex_t once_lock = PTHREAD_MUTEX_INITIALIZER;
static struct strmap once_seen;

void log_msg(int prio, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    if (cfg.use_syslog) {
        vsyslog(prio, fmt, ap);
    } else {
        flockfile(stderr);
        fputs("imgfs: ", stderr);
        vfprintf(stderr, fmt, ap);
        fputc('\n', stderr);
        funlockfile(stderr);
    }
    va_end(ap);
}

/* A broken image is looked at again on every lookup and open; saying so each
 * time would flood the log, so each distinct message is said once. */
void log_once(const char *msg)
{
    pthread_mutex_lock(&once_lock);
    bool seen = strmap_get(&once_seen, msg, NULL);
    if (!seen)
        strmap_put(&once_seen, msg, 1);
    pthread_mutex_unlock(&once_lock);
    if (!seen)
        log_msg(LOG_WARNING, "%s", msg);
}
