# Sourced (not run) by the integration tests that need the test venv, test-http.sh and
# test-loadgen.sh, with $src set to the source root: sets $py to the venv's python (made by
# tools/test-venv.sh), or exits the test with test-venv.sh's status, 77 (skipped, said on
# stdout) when venv or the package index is unavailable, 1 on other failures.
py=$("$src/tools/test-venv.sh" "$src")
rc=$?
if [ $rc != 0 ]; then
  [ $rc = 77 ] && echo "SKIPPED: the test venv could not be made (see above)"
  exit $rc
fi
