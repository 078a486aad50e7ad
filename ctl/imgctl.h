/* imgctl: the control tool.  One file per subcommand; each defines a
 * `const struct ctl_cmd ctl_cmd_NAME` listed in imgctl.c. */
#ifndef IMGCTL_H
#define IMGCTL_H

#define IMGCTL_VERSION "0.1.0"

struct ctl_cmd {
    const char *name;       /* "convert" */
    const char *summary;    /* one line for `imgctl --help` */
    /* argv[0] is the subcommand name; returns the process exit code. */
    int (*run)(int argc, char **argv);
};

#endif
