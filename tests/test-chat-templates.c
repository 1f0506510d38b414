/* Published chat templates rendered through engine/text/chat_template.c byte for byte as
 * transformers' apply_chat_template renders them: every case of every family under
 * tests/fixtures/chat_templates (made by tools/golden/make_chat_template_fixtures.py).
 * Usage: test-chat-templates FIXTURES_DIR [FAMILY...] (no family: every directory there) */
#include <dirent.h>
#include <jansson.h>
#include <pthread.h>
#include <stdlib.h>
#include <sys/stat.h>

#include "engine/base/text_file.h"
#include "engine/text/chat_template.h"
#include "tests/test.h"

static const char *root;
static int n_cases, n_failed;

static char *read_file(const char *dir, const char *name, size_t *ret_len)
{
    char path[8192];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    char *text = NULL;
    struct xd_err err;
    if (xd_read_text_file(path, 64u << 20, &text, ret_len, &err) < 0) {
        fprintf(stderr, "  %s\n", err.msg);
        return NULL;
    }
    return text;
}

static const char *str(json_t *o, const char *k)
{
    return json_string_value(json_object_get(o, k));
}

/* Writes n bytes of s with newlines, tabs and other control bytes escaped (one line). */
static void put_escaped(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '\n')
            fputs("\\n", stderr);
        else if (c == '\t')
            fputs("\\t", stderr);
        else if (c < 0x20 || c == 0x7f)
            fprintf(stderr, "\\x%02x", c);
        else
            fputc(c, stderr);
    }
}

/* Prints where got and want part: the offset and 40 bytes of each from 20 before it. */
static void report_diff(const char *fam, const char *name, const char *got, size_t got_len,
                        const char *want, size_t want_len)
{
    size_t i = 0;
    while (i < got_len && i < want_len && got[i] == want[i])
        i++;
    size_t from = i > 20 ? i - 20 : 0;
    size_t gn = got_len - from < 40 ? got_len - from : 40;
    size_t wn = want_len - from < 40 ? want_len - from : 40;
    fprintf(stderr, "  FAIL %s / %s: first difference at byte %zu (got %zu bytes, want %zu)\n"
                    "    got:  ...", fam, name, i, got_len, want_len);
    put_escaped(got + from, gn);
    fputs("\n    want: ...", stderr);
    put_escaped(want + from, wn);
    fputc('\n', stderr);
}

/* One case: the rendering equals the golden text, or fails where transformers failed (with the
 * template's own raise_exception message where it raised one). */
static void run_case(const char *fam, const struct xd_chat_template *t, json_t *c, long long now)
{
    const char *name = str(c, "name");
    struct xd_chat_input in = {
        .messages = json_object_get(c, "messages"),
        .tools = json_object_get(c, "tools"),
        .documents = json_object_get(c, "documents"),
        .kwargs = json_object_get(c, "chat_template_kwargs"),
        .add_generation_prompt = json_is_true(json_object_get(c, "add_generation_prompt")),
        .now = now,
    };
    char *out = NULL;
    size_t len = 0;
    struct xd_err err = {{0}};
    int rc = xd_chat_template_render(t, &in, &out, &len, &err);
    json_t *want = json_object_get(c, "text"), *error = json_object_get(c, "error");
    bool ok = true;
    n_cases++;
    if (want) {
        if (rc < 0) {
            fprintf(stderr, "  FAIL %s / %s: %s\n", fam, name, err.msg);
            ok = false;
        } else if (len != json_string_length(want) ||
                   memcmp(out, json_string_value(want), len) != 0) {
            report_diff(fam, name, out, len, json_string_value(want), json_string_length(want));
            ok = false;
        } else if (strlen(out) != len) {
            fprintf(stderr, "  FAIL %s / %s: NUL inside the output\n", fam, name);
            ok = false;
        }
    } else {
        const char *type = str(error, "type"), *msg = str(error, "message");
        if (rc == XD_OK) {
            fprintf(stderr, "  FAIL %s / %s: rendered, transformers raised %s: %s\n", fam, name,
                    type, msg);
            ok = false;
        } else if (rc != XD_ERR_INVALID) {
            fprintf(stderr, "  FAIL %s / %s: status %d, want XD_ERR_INVALID: %s\n", fam, name,
                    rc, err.msg);
            ok = false;
        } else if (strcmp(type, "TemplateError") == 0 && !strstr(err.msg, msg)) {
            /* raise_exception's message reaches the client as the template wrote it */
            fprintf(stderr, "  FAIL %s / %s: '%s' does not carry the template's '%s'\n", fam,
                    name, err.msg, msg);
            ok = false;
        } else if (!strstr(err.msg, "chat template (")) {
            fprintf(stderr, "  FAIL %s / %s: '%s' does not name the template\n", fam, name,
                    err.msg);
            ok = false;
        }
    }
    free(out);
    if (!ok) {
        n_failed++;
        test_failures++;
    }
}

/* Four threads render every case of one template at once (one parsed template serves every
 * HTTP thread): each gets transformers' text, as alone. */
struct par {
    const struct xd_chat_template *t;
    json_t *cases;
    long long now;
    int bad;
};

static void *render_all(void *arg)
{
    struct par *p = arg;
    size_t i;
    json_t *c;
    json_array_foreach(p->cases, i, c) {
        json_t *want = json_object_get(c, "text");
        struct xd_chat_input in = {
            .messages = json_object_get(c, "messages"),
            .tools = json_object_get(c, "tools"),
            .documents = json_object_get(c, "documents"),
            .kwargs = json_object_get(c, "chat_template_kwargs"),
            .add_generation_prompt = json_is_true(json_object_get(c, "add_generation_prompt")),
            .now = p->now,
        };
        char *out = NULL;
        size_t len = 0;
        struct xd_err err;
        int rc = xd_chat_template_render(p->t, &in, &out, &len, &err);
        if (want ? rc != XD_OK || len != json_string_length(want) ||
                       memcmp(out, json_string_value(want), len) != 0
                 : rc == XD_OK)
            p->bad++;
        free(out);
    }
    return NULL;
}

static void check_concurrent(const char *fam, const struct xd_chat_template *t, json_t *cases,
                             long long now)
{
    pthread_t th[4];
    struct par p[4];
    int started = 0;
    for (int k = 0; k < 4; k++) {
        p[k] = (struct par){t, cases, now, 0};
        if (pthread_create(&th[k], NULL, render_all, &p[k]) == 0)
            started++;
    }
    CHECK(started == 4, "%s: %d threads started", fam, started);
    int bad = 0;
    for (int k = 0; k < started; k++) {
        pthread_join(th[k], NULL);
        bad += p[k].bad;
    }
    CHECK(bad == 0, "%s: %d renderings differ when four threads render at once", fam, bad);
}

static void run_family(const char *fam)
{
    char dir[4096];
    snprintf(dir, sizeof dir, "%.2000s/%.1000s", root, fam);
    size_t src_len = 0, tok_len = 0, cases_len = 0;
    char *src = read_file(dir, "template.jinja", &src_len);
    char *tokens = read_file(dir, "special_tokens.json", &tok_len);
    char *cases = read_file(dir, "cases.json", &cases_len);
    json_t *tj = tokens ? json_loadb(tokens, tok_len, 0, NULL) : NULL;
    json_t *cj = cases ? json_loadb(cases, cases_len, 0, NULL) : NULL;
    CHECK(src && tj && cj, "%s: template.jinja, special_tokens.json or cases.json unreadable", fam);
    if (src && tj && cj) {
        struct xd_chat_tokens tk = {str(tj, "bos_token"), str(tj, "eos_token"),
                                    str(tj, "unk_token"), str(tj, "sep_token"),
                                    str(tj, "pad_token"), str(tj, "cls_token"),
                                    str(tj, "mask_token")};
        struct xd_chat_template *t = NULL;
        struct xd_err err = {{0}};
        int rc = xd_chat_template_create(src, src_len, NULL, &tk, fam, &t, &err);
        CHECK(rc == XD_OK, "%s: %s", fam, err.msg);
        CHECK(!t || strcmp(xd_chat_template_source(t), src) == 0, "%s: source not kept", fam);
        long long now = json_integer_value(json_object_get(cj, "now"));
        json_t *list = json_object_get(cj, "cases");
        CHECK(json_array_size(list) > 0, "%s: no cases", fam);
        int before = n_failed;
        size_t i;
        json_t *c;
        json_array_foreach(list, i, c) {
            if (t) {
                run_case(fam, t, c, now);
            } else { /* the template did not parse: every case fails */
                n_cases++;
                n_failed++;
            }
        }
        if (t && n_failed == before)
            check_concurrent(fam, t, list, now);
        printf("%-20s %zu cases, %d failed\n", fam, json_array_size(list), n_failed - before);
        xd_chat_template_destroy(t);
    }
    json_decref(tj);
    json_decref(cj);
    free(src);
    free(tokens);
    free(cases);
}

static int cmp_names(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static void test_every_family_renders_as_transformers(int n_names, char **names)
{
    char **list = names;
    int n = n_names;
    DIR *d = NULL;
    if (n == 0) {
        d = opendir(root);
        CHECK(d != NULL, "cannot open %s", root);
        list = calloc(256, sizeof *list);
        struct dirent *e;
        while (d && list && n < 256 && (e = readdir(d))) {
            char path[4096];
            struct stat st;
            snprintf(path, sizeof path, "%s/%s/template.jinja", root, e->d_name);
            if (e->d_name[0] != '.' && stat(path, &st) == 0)
                list[n++] = strdup(e->d_name);
        }
        qsort(list, (size_t)n, sizeof *list, cmp_names);
        CHECK(n >= 15, "%d template families under %s, want at least 15", n, root);
    }
    for (int i = 0; i < n; i++)
        run_family(list[i]);
    printf("%d cases, %d failed\n", n_cases, n_failed);
    if (d) {
        for (int i = 0; i < n; i++)
            free(list[i]);
        free(list);
        closedir(d);
    }
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s FIXTURES_DIR [FAMILY...]\n", argv[0]);
        return 2;
    }
    root = argv[1];
    int before = test_failures;
    test_every_family_renders_as_transformers(argc - 2, argv + 2);
    if (test_failures == before) {
        test_cases_passed++;
        printf("ok   test_every_family_renders_as_transformers\n");
    } else {
        test_cases_failed++;
        printf("FAIL test_every_family_renders_as_transformers\n");
    }
    return test_summary();
}
