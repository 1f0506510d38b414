/* Config files: parse `key = value` lines, apply them through an option table, read secrets. */
#include "config/config_file.h"

#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define MAX_FILE_BYTES (1 << 20)
#define MAX_SECRET_BYTES (64 << 10)

struct entry {
    char *key;
    char *value;
    int line;
};

struct xd_config_file {
    char *name;
    struct entry *entries; /* (n_entries,) in file order */
    size_t n_entries;
};

/* Options that only make sense on a command line. */
static bool cli_only(const char *key)
{
    return strcmp(key, "config") == 0 || strcmp(key, "help") == 0;
}

static bool is_blank(char c)
{
    return c == ' ' || c == '\t';
}

static bool is_key_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           c == '-' || c == '_' || c == '.';
}

/* ---------------------------------------------------------------- parsing */

void xd_config_file_destroy(struct xd_config_file *f)
{
    if (!f)
        return;
    for (size_t i = 0; i < f->n_entries; i++) {
        free(f->entries[i].key);
        free(f->entries[i].value);
    }
    free(f->entries);
    free(f->name);
    free(f);
}

static char *dup_range(const char *s, size_t len)
{
    char *d = malloc(len + 1);
    if (d) {
        memcpy(d, s, len);
        d[len] = '\0';
    }
    return d;
}

/* Parses the value part of a line, p[0..len) with leading blanks already skipped, into a new
 * string in *ret. Returns a static message on a syntax error, NULL on success (and *ret NULL
 * when out of memory). */
static const char *parse_value(const char *p, size_t len, char **ret)
{
    *ret = NULL;
    if (len > 0 && p[0] == '"') {
        char *out = malloc(len), *o = out; /* the unquoted text is shorter than len */
        if (!out)
            return NULL;
        size_t i = 1;
        for (; i < len && p[i] != '"'; i++) {
            if (p[i] != '\\') {
                *o++ = p[i];
                continue;
            }
            if (++i == len)
                break;
            switch (p[i]) {
            case '"': *o++ = '"'; break;
            case '\\': *o++ = '\\'; break;
            case 'n': *o++ = '\n'; break;
            case 't': *o++ = '\t'; break;
            default:
                free(out);
                return "unknown escape in a quoted value (use \\\" \\\\ \\n or \\t)";
            }
        }
        if (i >= len) {
            free(out);
            return "the quoted value has no closing '\"'";
        }
        for (i++; i < len && is_blank(p[i]); i++)
            ;
        if (i < len && p[i] != '#') {
            free(out);
            return "text after the closing '\"' (a comment starts with '#')";
        }
        *o = '\0';
        *ret = out;
        return NULL;
    }
    /* unquoted: up to a '#' that starts the value or follows a blank, trailing blanks cut */
    size_t end = 0;
    while (end < len && !(p[end] == '#' && (end == 0 || is_blank(p[end - 1]))))
        end++;
    while (end > 0 && is_blank(p[end - 1]))
        end--;
    *ret = dup_range(p, end);
    return NULL;
}

/* Appends an entry; takes key and value (freed on failure). */
static int add_entry(struct xd_config_file *f, size_t *cap, char *key, char *value, int line,
                     struct xd_err *err)
{
    if (f->n_entries == *cap) {
        size_t nc = *cap ? *cap * 2 : 16;
        struct entry *ne = realloc(f->entries, nc * sizeof *ne);
        if (!ne) {
            free(key);
            free(value);
            return xd_err_set(err, XD_ERR_NOMEM, "%s: out of memory", f->name);
        }
        f->entries = ne;
        *cap = nc;
    }
    f->entries[f->n_entries++] = (struct entry){key, value, line};
    return XD_OK;
}

int xd_config_file_parse(const char *text, size_t len, const char *name,
                         struct xd_config_file **ret, struct xd_err *err)
{
    struct xd_config_file *f = calloc(1, sizeof *f);
    if (!f || !(f->name = strdup(name))) {
        free(f);
        return xd_err_set(err, XD_ERR_NOMEM, "%s: out of memory", name);
    }
    size_t cap = 0;
    int rc = XD_OK, line = 0;
    size_t pos = 0;
    while (pos < len) {
        line++;
        const char *l = text + pos;
        const char *nl = memchr(l, '\n', len - pos);
        size_t ll = nl ? (size_t)(nl - l) : len - pos;
        pos += ll + (nl ? 1 : 0);
        if (memchr(l, '\0', ll)) {
            rc = xd_err_set(err, XD_ERR_FORMAT, "%s:%d: a NUL byte (is this a text file?)",
                            name, line);
            goto fail;
        }
        if (ll > 0 && l[ll - 1] == '\r')
            ll--;
        size_t i = 0;
        while (i < ll && is_blank(l[i]))
            i++;
        if (i == ll || l[i] == '#')
            continue;
        if (l[i] == '[') {
            rc = xd_err_set(err, XD_ERR_FORMAT,
                            "%s:%d: sections are not supported; write 'key = value' lines",
                            name, line);
            goto fail;
        }
        const char *eq = memchr(l, '=', ll);
        if (!eq) {
            rc = xd_err_set(err, XD_ERR_FORMAT, "%s:%d: expected 'key = value', got '%.*s'",
                            name, line, (int)(ll - i > 80 ? 80 : ll - i), l + i);
            goto fail;
        }
        size_t k0 = i, k1 = (size_t)(eq - l);
        while (k1 > k0 && is_blank(l[k1 - 1]))
            k1--;
        if (k1 == k0) {
            rc = xd_err_set(err, XD_ERR_FORMAT, "%s:%d: a value without a key", name, line);
            goto fail;
        }
        for (size_t j = k0; j < k1; j++)
            if (!is_key_char(l[j])) {
                rc = xd_err_set(err, XD_ERR_FORMAT,
                                "%s:%d: '%.*s' is not a key (keys are flag names such as "
                                "max-tokens)",
                                name, line, (int)(k1 - k0 > 80 ? 80 : k1 - k0), l + k0);
                goto fail;
            }
        char *key = dup_range(l + k0, k1 - k0);
        if (!key) {
            rc = xd_err_set(err, XD_ERR_NOMEM, "%s: out of memory", name);
            goto fail;
        }
        for (size_t e = 0; e < f->n_entries; e++)
            if (strcmp(f->entries[e].key, key) == 0) {
                rc = xd_err_set(err, XD_ERR_CONFIG, "%s:%d: key '%s' is already set on line %d",
                                name, line, key, f->entries[e].line);
                free(key);
                goto fail;
            }
        size_t v = (size_t)(eq - l) + 1;
        while (v < ll && is_blank(l[v]))
            v++;
        char *value;
        const char *msg = parse_value(l + v, ll - v, &value);
        if (msg || !value) {
            rc = msg ? xd_err_set(err, XD_ERR_FORMAT, "%s:%d: key '%s': %s", name, line, key, msg)
                     : xd_err_set(err, XD_ERR_NOMEM, "%s: out of memory", name);
            free(key);
            goto fail;
        }
        if ((rc = add_entry(f, &cap, key, value, line, err)) < 0)
            goto fail;
    }
    *ret = f;
    return XD_OK;
fail:
    xd_config_file_destroy(f);
    return rc;
}

int xd_config_file_read(const char *path, struct xd_config_file **ret, struct xd_err *err)
{
    FILE *fp = fopen(path, "rb");
    if (!fp)
        return xd_err_set(err, XD_ERR_IO, "%s: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fileno(fp), &st) < 0 || !S_ISREG(st.st_mode)) {
        fclose(fp);
        return xd_err_set(err, XD_ERR_IO, "%s: not a regular file", path);
    }
    if (st.st_size > MAX_FILE_BYTES) {
        fclose(fp);
        return xd_err_set(err, XD_ERR_FORMAT, "%s: %lld bytes; a config file is at most %d",
                          path, (long long)st.st_size, MAX_FILE_BYTES);
    }
    char *buf = malloc((size_t)st.st_size + 1);
    if (!buf) {
        fclose(fp);
        return xd_err_set(err, XD_ERR_NOMEM, "%s: out of memory", path);
    }
    size_t len = fread(buf, 1, (size_t)st.st_size, fp);
    int bad = ferror(fp);
    fclose(fp);
    if (bad) {
        free(buf);
        return xd_err_set(err, XD_ERR_IO, "%s: read error", path);
    }
    int rc = xd_config_file_parse(buf, len, path, ret, err);
    free(buf);
    return rc;
}

size_t xd_config_file_n_keys(const struct xd_config_file *f)
{
    return f->n_entries;
}

const char *xd_config_file_key(const struct xd_config_file *f, size_t i, int *ret_line)
{
    if (ret_line)
        *ret_line = f->entries[i].line;
    return f->entries[i].key;
}

const char *xd_config_file_value(const struct xd_config_file *f, size_t i)
{
    return f->entries[i].value;
}

/* ---------------------------------------------------------------- applying */

/* Levenshtein distance, capped: enough to suggest a key for a typo. */
static size_t distance(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    if (la > 63 || lb > 63)
        return 99;
    size_t prev[64], cur[64];
    for (size_t j = 0; j <= lb; j++)
        prev[j] = j;
    for (size_t i = 1; i <= la; i++) {
        cur[0] = i;
        for (size_t j = 1; j <= lb; j++) {
            size_t sub = prev[j - 1] + (a[i - 1] != b[j - 1]);
            size_t del = prev[j] + 1, ins = cur[j - 1] + 1;
            cur[j] = sub < del ? (sub < ins ? sub : ins) : (del < ins ? del : ins);
        }
        memcpy(prev, cur, (lb + 1) * sizeof *prev);
    }
    return prev[lb];
}

static int unknown_key(const struct xd_config_file *f, const struct entry *e,
                       const struct xd_opt *table, size_t n, struct xd_err *err)
{
    if (strcmp(e->key, "api-key") == 0 || strcmp(e->key, "api_key") == 0)
        return xd_err_set(err, XD_ERR_CONFIG,
                          "%s:%d: unknown key '%s': put the key in a file named by "
                          "api-key-file, or in EXPERTD_API_KEY",
                          f->name, e->line, e->key);
    const char *best = NULL;
    size_t best_d = 3;
    char dashed[128];
    snprintf(dashed, sizeof dashed, "%s", e->key);
    for (char *c = dashed; *c; c++)
        if (*c == '_')
            *c = '-';
    for (size_t i = 0; i < n; i++) {
        if (cli_only(table[i].name))
            continue;
        size_t d = strcmp(dashed, table[i].name) == 0 ? 0 : distance(e->key, table[i].name);
        if (d < best_d) {
            best_d = d;
            best = table[i].name;
        }
    }
    if (best)
        return xd_err_set(err, XD_ERR_CONFIG, "%s:%d: unknown key '%s' (did you mean '%s'?)",
                          f->name, e->line, e->key, best);
    return xd_err_set(err, XD_ERR_CONFIG, "%s:%d: unknown key '%s'", f->name, e->line, e->key);
}

int xd_config_file_apply(const struct xd_config_file *f, const struct xd_opt *table, size_t n,
                         void *dst, struct xd_err *err)
{
    for (size_t i = 0; i < f->n_entries; i++) {
        const struct entry *e = &f->entries[i];
        const struct xd_opt *o = xd_opts_find(table, n, e->key);
        if (!o)
            return unknown_key(f, e, table, n, err);
        if (cli_only(e->key))
            return xd_err_set(err, XD_ERR_CONFIG,
                              "%s:%d: key '%s' can only be given on the command line", f->name,
                              e->line, e->key);
        char source[600];
        snprintf(source, sizeof source, "%s:%d: key '%s'", f->name, e->line, e->key);
        XD_TRY(xd_opts_set(o, dst, e->value, source, err));
    }
    return XD_OK;
}

/* Finds the value of --config in argv the way xd_opts_parse reads argv, so that a value that
 * looks like "--config" is not taken for the flag. */
static int find_config_arg(const struct xd_opt *table, size_t n, int argc, char **argv,
                           const char **ret_path, struct xd_err *err)
{
    const char *path = NULL;
    for (int a = 0; a < argc; a++) {
        const char *arg = argv[a];
        if (strncmp(arg, "--", 2) != 0)
            continue;
        const char *name = arg + 2, *eq = strchr(name, '=');
        size_t len = eq ? (size_t)(eq - name) : strlen(name);
        if (len == 6 && strncmp(name, "config", 6) == 0) {
            if (path)
                return xd_err_set(err, XD_ERR_CONFIG, "option '--config' is given twice");
            if (eq)
                path = eq + 1;
            else if (a + 1 < argc)
                path = argv[++a];
            else
                return xd_err_set(err, XD_ERR_CONFIG, "option '--config' needs a value");
            continue;
        }
        for (size_t i = 0; i < n; i++)
            if (!eq && strcmp(table[i].name, name) == 0 && table[i].type != XD_OPT_FLAG) {
                a++; /* its value */
                break;
            }
    }
    *ret_path = path;
    return XD_OK;
}

int xd_config_file_load_opts(const struct xd_opt *table, size_t n, void *dst, int argc,
                             char **argv, struct xd_config_file **ret_file, struct xd_err *err)
{
    const char *path = NULL;
    XD_TRY(find_config_arg(table, n, argc, argv, &path, err));
    const struct xd_opt *co = xd_opts_find(table, n, "config");
    if (path && !co)
        return xd_err_set(err, XD_ERR_CONFIG, "unknown option '--config'");
    if (!path && co && co->env)
        path = getenv(co->env);
    struct xd_config_file *f = NULL;
    if (path && path[0]) {
        XD_TRY(xd_config_file_read(path, &f, err));
        int rc = xd_config_file_apply(f, table, n, dst, err);
        if (rc < 0) {
            xd_config_file_destroy(f);
            return rc;
        }
    }
    int rc = xd_opts_parse(table, n, dst, argc, argv, err);
    if (rc < 0) {
        xd_config_file_destroy(f);
        return rc;
    }
    *ret_file = f;
    return XD_OK;
}

void xd_config_file_locate(const struct xd_config_file *f, struct xd_err *err)
{
    if (!f || !err)
        return;
    char extra[sizeof err->msg] = "";
    size_t used = 0;
    for (const char *p = strstr(err->msg, "'--"); p; p = strstr(p + 1, "'--")) {
        const char *name = p + 3, *end = strchr(name, '\'');
        if (!end)
            break;
        for (size_t i = 0; i < f->n_entries; i++) {
            const struct entry *e = &f->entries[i];
            if (strlen(e->key) == (size_t)(end - name) && strncmp(e->key, name, (size_t)(end - name)) == 0) {
                int w = snprintf(extra + used, sizeof extra - used, "; %s is set on %s:%d",
                                 e->key, f->name, e->line);
                if (w > 0 && (size_t)w < sizeof extra - used)
                    used += (size_t)w;
            }
        }
    }
    size_t len = strlen(err->msg);
    if (used)
        snprintf(err->msg + len, sizeof err->msg - len, "%s", extra);
}

/* ---------------------------------------------------------------- printing */

static void print_string(FILE *out, const char *name, const char *s)
{
    bool quote = s[0] == '\0' || is_blank(s[0]) || is_blank(s[strlen(s) - 1]) || s[0] == '"';
    for (const char *c = s; *c && !quote; c++)
        quote = *c == '#' || *c == '\\' || *c == '\n' || *c == '\t' || *c == '\r';
    if (!quote) {
        fprintf(out, "%s = %s\n", name, s);
        return;
    }
    fprintf(out, "%s = \"", name);
    for (const char *c = s; *c; c++) {
        if (*c == '"' || *c == '\\')
            fprintf(out, "\\%c", *c);
        else if (*c == '\n')
            fputs("\\n", out);
        else if (*c == '\t')
            fputs("\\t", out);
        else
            fputc(*c, out);
    }
    fputs("\"\n", out);
}

void xd_config_file_print(FILE *out, const struct xd_opt *table, size_t n, const void *dst)
{
    for (size_t i = 0; i < n; i++) {
        const struct xd_opt *o = &table[i];
        const char *field = (const char *)dst + o->offset;
        if (cli_only(o->name))
            continue;
        switch (o->type) {
        case XD_OPT_STRING: {
            const char *s = *(const char *const *)field;
            if (s)
                print_string(out, o->name, s);
            else
                fprintf(out, "#%s =\n", o->name);
            break;
        }
        case XD_OPT_INT:
            fprintf(out, "%s = %d\n", o->name, *(const int *)field);
            break;
        case XD_OPT_INT64:
            fprintf(out, "%s = %lld\n", o->name, *(const long long *)field);
            break;
        case XD_OPT_FLOAT: {
            float v = *(const float *)field;
            char buf[64];
            snprintf(buf, sizeof buf, "%g", (double)v);
            if ((float)strtod(buf, NULL) != v) /* %g lost digits: print enough to read back */
                snprintf(buf, sizeof buf, "%.9g", (double)v);
            fprintf(out, "%s = %s\n", o->name, buf);
            break;
        }
        case XD_OPT_FLAG:
            fprintf(out, "%s = %s\n", o->name, *(const bool *)field ? "true" : "false");
            break;
        }
    }
}

/* ---------------------------------------------------------------- secrets */

void xd_secret_free(char *secret)
{
    if (!secret)
        return;
    volatile char *p = secret;
    while (*p)
        *p++ = '\0';
    free(secret);
}

int xd_read_secret_file_mode(const char *path, char **ret, bool *ret_exposed,
                             struct xd_err *err)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return xd_err_set(err, XD_ERR_IO, "%s: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return xd_err_set(err, XD_ERR_IO, "%s: not a regular file", path);
    }
    if (st.st_size > MAX_SECRET_BYTES) {
        close(fd);
        return xd_err_set(err, XD_ERR_FORMAT, "%s: %lld bytes; a secret file is at most %d",
                          path, (long long)st.st_size, MAX_SECRET_BYTES);
    }
    char buf[MAX_SECRET_BYTES + 1];
    size_t len = 0;
    for (;;) {
        ssize_t r = read(fd, buf + len, sizeof buf - 1 - len);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            int e = errno;
            close(fd);
            return xd_err_set(err, XD_ERR_IO, "%s: %s", path, strerror(e));
        }
        if (r == 0 || (len += (size_t)r) == sizeof buf - 1)
            break;
    }
    close(fd);
    buf[len] = '\0';
    size_t line = strcspn(buf, "\n");
    if (line > 0 && buf[line - 1] == '\r')
        line--;
    int rc = XD_OK;
    if (line == 0)
        rc = xd_err_set(err, XD_ERR_CONFIG, "%s: the first line is empty", path);
    else if (memchr(buf, '\0', line))
        rc = xd_err_set(err, XD_ERR_CONFIG, "%s: a NUL byte in the first line", path);
    char *s = rc == XD_OK ? dup_range(buf, line) : NULL;
    if (rc == XD_OK && !s)
        rc = xd_err_set(err, XD_ERR_NOMEM, "out of memory");
    volatile char *p = buf;
    for (size_t i = 0; i < len; i++)
        p[i] = '\0';
    if (rc < 0)
        return rc;
    if (ret_exposed)
        *ret_exposed = (st.st_mode & (S_IRGRP | S_IROTH)) != 0;
    *ret = s;
    return XD_OK;
}

int xd_read_secret_file(const char *path, char **ret, struct xd_err *err)
{
    bool exposed = false;
    XD_TRY(xd_read_secret_file_mode(path, ret, &exposed, err));
    if (exposed)
        fprintf(stderr, "expertd: warning: %s can be read by its group or others; chmod 600 it\n",
                path);
    return XD_OK;
}

int xd_api_key_load(const char *key_file, char **ret, struct xd_err *err)
{
    if (key_file && key_file[0])
        return xd_read_secret_file(key_file, ret, err);
    const char *env = getenv("EXPERTD_API_KEY");
    if (!env) {
        *ret = NULL;
        return XD_OK;
    }
    if (!env[0])
        return xd_err_set(err, XD_ERR_CONFIG,
                          "EXPERTD_API_KEY is set but empty; unset it to turn keys off");
    char *s = strdup(env);
    if (!s)
        return xd_err_set(err, XD_ERR_NOMEM, "out of memory");
    *ret = s;
    return XD_OK;
}
