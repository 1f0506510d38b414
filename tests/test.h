/* A minimal test harness: CHECK records failures without stopping, RUN runs a case. */
#ifndef XD_TEST_H
#define XD_TEST_H

#include <math.h>
#include <stdio.h>
#include <string.h>

static int test_failures __attribute__((unused));
static int test_cases_failed __attribute__((unused));
static int test_cases_passed __attribute__((unused));

#define CHECK(cond, ...)                                                  \
    do {                                                                  \
        if (!(cond)) {                                                    \
            test_failures++;                                              \
            fprintf(stderr, "  FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond); \
            fprintf(stderr, __VA_ARGS__);                                 \
            fputc('\n', stderr);                                          \
        }                                                                 \
    } while (0)

/* Checks that haystack contains needle (error messages name the thing). */
#define CHECK_CONTAINS(haystack, needle)                                     \
    CHECK(strstr((haystack), (needle)) != NULL, "'%s' does not mention '%s'", \
          (haystack), (needle))

#define RUN(fn)                                                 \
    do {                                                        \
        int before_ = test_failures;                            \
        fn();                                                   \
        if (test_failures == before_) {                         \
            test_cases_passed++;                                \
            printf("ok   %s\n", #fn);                           \
        } else {                                                \
            test_cases_failed++;                                \
            printf("FAIL %s\n", #fn);                           \
        }                                                       \
        fflush(stdout);                                         \
    } while (0)

/* Prints the closing line and returns the exit status for main. */
static inline int test_summary(void)
{
    printf("%d passed, %d failed\n", test_cases_passed, test_cases_failed);
    return test_cases_failed ? 1 : 0;
}

#endif
