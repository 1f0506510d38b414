/* expertd check-config: validate a config file against serve's option table and print the
 * settings it gives, in the config file format. */
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "config/config_file.h"
#include "config/server_config.h"
#include "daemon/commands.h"

/* serve's settings plus the --config flag, which serve's table leaves to the command. */
struct check_values {
    struct xd_server_config srv; /* first: serve's offsets hold as they are */
    const char *config;
    bool help;
};

static void usage(FILE *out)
{
    fprintf(out,
            "usage: expertd check-config FILE [FLAGS]\n"
            "\n"
            "Reads FILE as `expertd serve --config FILE` would, applies the EXPERTD_*\n"
            "environment variables and any serve FLAGS over it, checks every value and the\n"
            "api-key-file, and prints the effective settings as a config file. Exit status 0\n"
            "when valid; 1 with the message (file:line: key '...': what is wrong) when not.\n");
}

/* Checks that the files the settings name can be used; serious problems are errors, the rest
 * warnings on stderr. */
static int check_files(const struct xd_server_config *c, struct xd_err *err)
{
    if (c->api_key_file && c->api_key_file[0]) {
        char *key = NULL;
        bool exposed = false;
        if (xd_read_secret_file_mode(c->api_key_file, &key, &exposed, err) < 0) {
            char msg[sizeof err->msg];
            snprintf(msg, sizeof msg, "%s", err->msg);
            return xd_err_set(err, XD_ERR_CONFIG, "key 'api-key-file': %s", msg);
        }
        xd_secret_free(key);
        if (exposed)
            fprintf(stderr,
                    "expertd check-config: warning: %s can be read by its group or others; "
                    "chmod 600 it\n",
                    c->api_key_file);
    }
    struct stat st;
    char path[4096];
    snprintf(path, sizeof path, "%s/config.json", c->engine.model);
    if (stat(path, &st) < 0)
        fprintf(stderr,
                "expertd check-config: warning: %s is missing (fine if the model is not on this "
                "machine yet)\n",
                path);
    return XD_OK;
}

int xd_cmd_check_config(int argc, char **argv)
{
    if (argc < 1 || argv[0][0] == '-') {
        bool help = argc >= 1 && (strcmp(argv[0], "--help") == 0 || strcmp(argv[0], "-h") == 0);
        usage(help ? stdout : stderr);
        return help ? 0 : 2;
    }
    const char *path = argv[0];
    struct xd_opt table[96];
    size_t n = xd_server_config_table(table, sizeof table / sizeof table[0] - 2);
    if (n == 0) {
        fprintf(stderr, "expertd check-config: serve's option table does not fit\n");
        return 1;
    }
    if (!xd_opts_find(table, n, "config"))
        table[n++] = (struct xd_opt){"config", XD_OPT_STRING, offsetof(struct check_values, config),
                                     0, 0, NULL, "the config file"};
    struct check_values v;
    memset(&v, 0, sizeof v);
    xd_server_config_init(&v.srv);

    /* the file through --config, so that the precedence is exactly serve's */
    char **args = malloc(sizeof *args * (size_t)(argc + 2));
    if (!args) {
        fprintf(stderr, "expertd check-config: out of memory\n");
        return 1;
    }
    args[0] = "--config";
    args[1] = (char *)path;
    for (int i = 1; i < argc; i++)
        args[i + 1] = argv[i];
    struct xd_config_file *file = NULL;
    struct xd_err err = {{0}};
    int status = 1;
    if (xd_config_file_load_opts(table, n, &v, argc + 1, args, &file, &err) < 0 ||
        xd_server_config_validate(&v.srv, &err) < 0 || check_files(&v.srv, &err) < 0) {
        xd_config_file_locate(file, &err);
        fprintf(stderr, "expertd check-config: %s\n", err.msg);
        goto out;
    }
    printf("# effective settings from %s (defaults < file < environment < flags)\n", path);
    xd_config_file_print(stdout, table, n, &v);
    fprintf(stderr, "expertd check-config: %s: OK (%zu keys set)\n", path,
            xd_config_file_n_keys(file));
    status = 0;
out:
    xd_config_file_destroy(file);
    free(args);
    return status;
}
