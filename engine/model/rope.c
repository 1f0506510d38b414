/* RoPE inverse frequencies and attention factors for every rope type expertd computes, in the
 * f32 arithmetic of transformers 5.23's modeling_rope_utils.py. */
#include "engine/model/rope.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

static const double PI = 3.141592653589793; /* python's math.pi */

const char *xd_rope_type_name(enum xd_rope_type type)
{
    switch (type) {
    case XD_ROPE_DEFAULT: return "default";
    case XD_ROPE_LINEAR: return "linear";
    case XD_ROPE_DYNAMIC: return "dynamic";
    case XD_ROPE_YARN: return "yarn";
    case XD_ROPE_LLAMA3: return "llama3";
    }
    return "?";
}

double xd_rope_yarn_mscale(double scale, double mscale)
{
    if (scale <= 1.0)
        return 1.0;
    return 0.1 * mscale * log(scale) + 1.0;
}

bool xd_rope_is_plain(const struct xd_rope *r)
{
    return r->type == XD_ROPE_DEFAULT && r->rot_dim == r->head_dim && r->attention_scaling == 1.0f;
}

/* inv_freq (dim / 2,) = 1 / theta^(2i / dim), each step in f32 as torch does it
 * (base ** (arange(0, dim, 2).float() / dim) with a python-float base). */
static void default_table(float theta, int dim, float *inv)
{
    for (int i = 0; i < dim / 2; i++)
        inv[i] = 1.0f / powf(theta, (float)(2 * i) / (float)dim);
}

void xd_rope_init_default(struct xd_rope *r, int head_dim, float theta,
                          int max_position_embeddings)
{
    memset(r, 0, sizeof *r);
    r->type = XD_ROPE_DEFAULT;
    r->theta = theta;
    r->head_dim = r->rot_dim = head_dim;
    r->partial_rotary_factor = 1.0f;
    r->attention_scaling = 1.0f;
    r->factor = 1.0f;
    r->max_position_embeddings = r->original_max_position_embeddings = max_position_embeddings;
    default_table(theta, head_dim, r->inv_freq);
}

const float *xd_rope_inv_freq(const struct xd_rope *r, int pos, float *scratch)
{
    if (r->type != XD_ROPE_DYNAMIC || pos + 1 <= r->max_position_embeddings)
        return r->inv_freq;
    /* _compute_dynamic_ntk_parameters with seq_len a tensor: every step in f32 */
    const int dim = r->rot_dim;
    float s = r->factor * (float)(pos + 1);
    s = s / (float)r->max_position_embeddings;
    s = s - (float)((double)r->factor - 1.0);
    /* a tensor to a python-float power: torch takes the power in double and rounds it */
    float base = r->theta * (float)pow((double)s, (double)dim / (double)(dim - 2));
    for (int i = 0; i < dim / 2; i++)
        scratch[i] = 1.0f / powf(base, (float)(2 * i) / (float)dim);
    return scratch;
}

/* ---- parsing ---- */

/* A number at obj[key]; *ret = def when absent or null (def NAN: required). */
static int num(json_t *obj, const char *path, const char *where, const char *key, double def,
               double lo, double hi, double *ret, struct xd_err *err)
{
    json_t *v = json_object_get(obj, key);
    if (!v || json_is_null(v)) {
        if (isnan(def))
            return xd_err_set(err, XD_ERR_CONFIG, "%s: key '%s%s' is missing", path, where, key);
        *ret = def;
        return XD_OK;
    }
    if (!json_is_number(v))
        return xd_err_set(err, XD_ERR_CONFIG, "%s: key '%s%s' must be a number", path, where, key);
    double x = json_number_value(v);
    if (!(x >= lo && x <= hi))
        return xd_err_set(err, XD_ERR_CONFIG, "%s: key '%s%s' is %g; it must be in [%g, %g]", path,
                          where, key, x, lo, hi);
    *ret = x;
    return XD_OK;
}

#define TRY(expr)         \
    do {                  \
        int rc_ = (expr); \
        if (rc_ < 0)      \
            return rc_;   \
    } while (0)

/* yarn's inverse frequencies and attention factor (_compute_yarn_parameters). */
static int yarn(json_t *rp, const char *path, const char *where, double theta, int dim,
                struct xd_rope *r, struct xd_err *err)
{
    double attn = NAN, beta_fast = 0, beta_slow = 0, mscale = 0, mscale_all_dim = 0;
    json_t *af = json_object_get(rp, "attention_factor");
    if (af && !json_is_null(af))
        TRY(num(rp, path, where, "attention_factor", 0, 0, 1e6, &attn, err));
    TRY(num(rp, path, where, "beta_fast", 0, -1e6, 1e6, &beta_fast, err));
    TRY(num(rp, path, where, "beta_slow", 0, -1e6, 1e6, &beta_slow, err));
    TRY(num(rp, path, where, "mscale", 0, -1e6, 1e6, &mscale, err));
    TRY(num(rp, path, where, "mscale_all_dim", 0, -1e6, 1e6, &mscale_all_dim, err));
    /* rope_parameters.get("truncate", True): absent is true, an explicit null is falsy */
    json_t *tr = json_object_get(rp, "truncate");
    bool truncate = !tr;
    if (tr && !json_is_null(tr)) {
        if (!json_is_boolean(tr))
            return xd_err_set(err, XD_ERR_CONFIG, "%s: key '%struncate' must be true or false",
                              path, where);
        truncate = json_is_true(tr);
    }
    /* "or 32", "or 1": a zero means the default too */
    if (beta_fast == 0)
        beta_fast = 32;
    if (beta_slow == 0)
        beta_slow = 1;
    const double factor = r->factor;
    if (isnan(attn)) {
        if (mscale != 0 && mscale_all_dim != 0)
            attn = xd_rope_yarn_mscale(factor, mscale) / xd_rope_yarn_mscale(factor, mscale_all_dim);
        else
            attn = xd_rope_yarn_mscale(factor, 1.0);
    }
    r->attention_scaling = (float)attn;
    r->mscale = (float)mscale;
    r->mscale_all_dim = (float)mscale_all_dim;

    const double orig = r->original_max_position_embeddings;
    /* find_correction_range, in double as python's math */
    double low = (dim * log(orig / (beta_fast * 2 * PI))) / (2 * log(theta));
    double high = (dim * log(orig / (beta_slow * 2 * PI))) / (2 * log(theta));
    if (truncate) {
        low = floor(low);
        high = ceil(high);
    }
    low = low > 0 ? low : 0;
    high = high < dim - 1 ? high : dim - 1;
    if (low == high)
        high += 0.001;
    const float ftheta = (float)theta, ffactor = (float)factor;
    for (int i = 0; i < dim / 2; i++) {
        float pos_freq = powf(ftheta, (float)(2 * i) / (float)dim);
        float extra = 1.0f / pos_freq;
        float inter = 1.0f / (ffactor * pos_freq);
        float ramp = ((float)i - (float)low) / (float)(high - low);
        ramp = ramp < 0.0f ? 0.0f : ramp > 1.0f ? 1.0f : ramp;
        float ef = 1.0f - ramp;
        r->inv_freq[i] = inter * (1.0f - ef) + extra * ef;
    }
    return XD_OK;
}

/* llama3's inverse frequencies (_compute_llama3_parameters). */
static int llama3(json_t *rp, const char *path, const char *where, int dim, struct xd_rope *r,
                  struct xd_err *err)
{
    double lo, hi;
    TRY(num(rp, path, where, "low_freq_factor", NAN, 1e-9, 1e9, &lo, err));
    TRY(num(rp, path, where, "high_freq_factor", NAN, 1e-9, 1e9, &hi, err));
    if (!(hi > lo))
        return xd_err_set(err, XD_ERR_CONFIG,
                          "%s: key '%shigh_freq_factor' (%g) must be above low_freq_factor (%g)",
                          path, where, hi, lo);
    const double old = r->original_max_position_embeddings;
    const float low_wl = (float)(old / lo), high_wl = (float)(old / hi);
    const float factor = r->factor, two_pi = (float)(2 * PI);
    for (int i = 0; i < dim / 2; i++) {
        float inv = r->inv_freq[i]; /* the default table, filled by the caller */
        float wavelen = two_pi / inv;
        float inv_llama = wavelen > low_wl ? inv / factor : inv;
        float smooth = ((float)old / wavelen - (float)lo) / (float)(hi - lo);
        float smoothed = (1.0f - smooth) * inv_llama / factor + smooth * inv_llama;
        bool medium = !(wavelen < high_wl) && !(wavelen > low_wl);
        r->inv_freq[i] = medium ? smoothed : inv_llama;
    }
    return XD_OK;
}

int xd_rope_parse(json_t *root, const char *path, int head_dim, int max_position_embeddings,
                  double default_theta, struct xd_rope *ret, struct xd_err *err)
{
    /* rope_scaling or rope_parameters: convert_rope_params_to_dict takes rope_scaling when it
     * is truthy (a non-empty object) */
    const char *key = "rope_parameters";
    json_t *rp = NULL;
    json_t *rs = json_object_get(root, "rope_scaling");
    if (rs && !json_is_null(rs)) {
        if (!json_is_object(rs))
            return xd_err_set(err, XD_ERR_CONFIG, "%s: key 'rope_scaling' must be an object",
                              path);
        if (json_object_size(rs) > 0) {
            rp = rs;
            key = "rope_scaling";
        }
    }
    if (!rp) {
        json_t *p = json_object_get(root, "rope_parameters");
        if (p && !json_is_null(p)) {
            if (!json_is_object(p))
                return xd_err_set(err, XD_ERR_CONFIG,
                                  "%s: key 'rope_parameters' must be an object", path);
            rp = p;
        }
    }
    char where[40];
    snprintf(where, sizeof where, "%s.", key);

    struct xd_rope r;
    memset(&r, 0, sizeof r);
    r.head_dim = head_dim;
    r.max_position_embeddings = r.original_max_position_embeddings = max_position_embeddings;
    r.factor = 1.0f;

    /* rope_type, else the legacy type, else default */
    const char *type = "default";
    const char *type_key = "rope_type";
    if (rp) {
        json_t *t = json_object_get(rp, "rope_type");
        if (!t || json_is_null(t)) {
            t = json_object_get(rp, "type");
            type_key = "type";
        }
        if (t && !json_is_null(t)) {
            if (!json_is_string(t))
                return xd_err_set(err, XD_ERR_CONFIG, "%s: key '%s%s' must be a string", path,
                                  where, type_key);
            type = json_string_value(t);
        }
        if (json_object_get(rp, "mrope_section"))
            return xd_err_set(err, XD_ERR_UNSUPPORTED,
                              "%s: key '%smrope_section' (multimodal rope) is not supported", path,
                              where);
    }
    if (strcmp(type, "default") == 0)
        r.type = XD_ROPE_DEFAULT;
    else if (strcmp(type, "linear") == 0)
        r.type = XD_ROPE_LINEAR;
    else if (strcmp(type, "dynamic") == 0)
        r.type = XD_ROPE_DYNAMIC;
    else if (strcmp(type, "yarn") == 0)
        r.type = XD_ROPE_YARN;
    else if (strcmp(type, "llama3") == 0)
        r.type = XD_ROPE_LLAMA3;
    else
        return xd_err_set(err, XD_ERR_UNSUPPORTED,
                          "%s: key '%s%s' is \"%.32s\"; expertd computes the rope types default, "
                          "linear, dynamic, yarn and llama3%s",
                          path, where, type_key, type,
                          strcmp(type, "longrope") == 0
                              ? " (longrope is used by phimoe and Phi-3, no family expertd serves)"
                              : "");

    /* rope_theta and partial_rotary_factor: the object's value, else the top level's */
    double theta, prf;
    json_t *holder = rp && json_object_get(rp, "rope_theta") &&
                             !json_is_null(json_object_get(rp, "rope_theta"))
                         ? rp
                         : root;
    TRY(num(holder, path, holder == rp ? where : "", "rope_theta", default_theta, 1.0, 1e12,
            &theta, err));
    holder = rp && json_object_get(rp, "partial_rotary_factor") &&
                     !json_is_null(json_object_get(rp, "partial_rotary_factor"))
                 ? rp
                 : root;
    TRY(num(holder, path, holder == rp ? where : "", "partial_rotary_factor", 1.0, 1e-9, 1.0,
            &prf, err));
    r.theta = (float)theta;
    r.partial_rotary_factor = (float)prf;
    r.rot_dim = (int)(head_dim * prf); /* python's int(head_dim * partial_rotary_factor) */
    if (r.rot_dim < 2 || r.rot_dim % 2 != 0 || r.rot_dim / 2 > XD_ROPE_MAX_HALF)
        return xd_err_set(err, XD_ERR_UNSUPPORTED,
                          "%s: key 'partial_rotary_factor' (%g) with a head width of %d gives %d "
                          "rotary dims; expertd needs an even number from 2 to %d",
                          path, prf, head_dim, r.rot_dim, 2 * XD_ROPE_MAX_HALF);
    const int dim = r.rot_dim;
    r.attention_scaling = 1.0f;
    if (r.type == XD_ROPE_DEFAULT) {
        default_table(r.theta, dim, r.inv_freq);
        *ret = r;
        return XD_OK;
    }

    /* factor: required by every scaling type; yarn takes a null one as max / original */
    json_t *fv = json_object_get(rp, "factor");
    double factor = NAN;
    if (!(r.type == XD_ROPE_YARN && fv && json_is_null(fv)))
        TRY(num(rp, path, where, "factor", NAN, 1e-6, 1e6, &factor, err));
    if (r.type == XD_ROPE_YARN || r.type == XD_ROPE_LLAMA3) {
        double orig;
        json_t *top = json_object_get(root, "original_max_position_embeddings");
        if (top && !json_is_null(top))
            TRY(num(root, path, "", "original_max_position_embeddings", NAN, 1, 1 << 30, &orig,
                    err));
        else
            TRY(num(rp, path, where, "original_max_position_embeddings", max_position_embeddings,
                    1, 1 << 30, &orig, err));
        if (orig != floor(orig))
            return xd_err_set(err, XD_ERR_CONFIG,
                              "%s: key 'original_max_position_embeddings' must be an integer",
                              path);
        r.original_max_position_embeddings = (int)orig;
    }
    if (isnan(factor))
        factor = (double)max_position_embeddings / r.original_max_position_embeddings;
    r.factor = (float)factor;

    switch (r.type) {
    case XD_ROPE_DEFAULT:
        break;
    case XD_ROPE_LINEAR:
        default_table(r.theta, dim, r.inv_freq);
        for (int i = 0; i < dim / 2; i++)
            r.inv_freq[i] /= r.factor;
        break;
    case XD_ROPE_DYNAMIC: {
        if (dim <= 2)
            return xd_err_set(err, XD_ERR_UNSUPPORTED,
                              "%s: key '%srope_type' is dynamic with %d rotary dims; dynamic "
                              "scaling needs more than 2",
                              path, where, dim);
        /* the table of a fresh model: seq_len = max_position_embeddings, python doubles */
        double f = factor, mp = max_position_embeddings;
        double base = theta * pow(f * mp / mp - (f - 1), (double)dim / (double)(dim - 2));
        default_table((float)base, dim, r.inv_freq);
        break;
    }
    case XD_ROPE_YARN:
        TRY(yarn(rp, path, where, theta, dim, &r, err));
        break;
    case XD_ROPE_LLAMA3:
        default_table(r.theta, dim, r.inv_freq);
        TRY(llama3(rp, path, where, dim, &r, err));
        break;
    }
    *ret = r;
    return XD_OK;
}
