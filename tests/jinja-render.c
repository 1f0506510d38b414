/* Developer tool for differential checks against jinja2 (tools/golden/jinja_differential.py):
 * reads a JSON array of {"template", "context"} on stdin, renders each with the interpreter and
 * writes a JSON array of {"output"} or {"error", "parse"} to stdout. Not a test by itself. */
#include <jansson.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>

#include "engine/text/jinja.h"

int main(void)
{
    json_error_t jerr;
    json_t *in = json_loadf(stdin, 0, &jerr);
    if (!json_is_array(in)) {
        fprintf(stderr, "jinja-render: stdin: %s\n", in ? "not an array" : jerr.text);
        return 1;
    }
    json_t *out = json_array();
    size_t i;
    json_t *c;
    json_array_foreach(in, i, c) {
        json_t *tpl = json_object_get(c, "template");
        struct xd_jinja_template *t;
        struct xd_err err;
        json_t *res = json_object();
        if (xd_jinja_parse(json_string_value(tpl), json_string_length(tpl), &t, &err) != XD_OK) {
            json_object_set_new(res, "error", json_string(err.msg));
            json_object_set_new(res, "parse", json_true());
        } else {
            char *text;
            size_t len;
            struct xd_jinja_limits lim = {.max_steps = 200000};
            if (xd_jinja_render(t, json_object_get(c, "context"), &lim, &text, &len, &err) == XD_OK) {
                json_object_set_new(res, "output", json_stringn(text, len));
                free(text);
            } else {
                json_object_set_new(res, "error", json_string(err.msg));
                json_object_set_new(res, "parse", json_false());
            }
            xd_jinja_free(t);
        }
        json_array_append_new(out, res);
    }
    json_dumpf(out, stdout, JSON_ENSURE_ASCII);
    json_decref(out);
    json_decref(in);
    return 0;
}
