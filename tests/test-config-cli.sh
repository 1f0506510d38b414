#!/usr/bin/env bash
# Config files from the command line: the example config documents exactly the option table's
# keys with their real defaults and check-config accepts it; check-config's errors name the
# file, the line and the key; precedence defaults < file < environment < flags; generate
# --config.
# Usage: test-config-cli.sh EXPERTD EXAMPLE_CONF FIXTURES_DIR
set -u
expertd=$1 example=$2 fixtures=$3
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
passed=0 failed=0
ok()   { passed=$((passed + 1)); echo "ok   $1"; }
fail() { failed=$((failed + 1)); echo "FAIL $1: $2"; }
unset EXPERTD_MODEL EXPERTD_DEVICE EXPERTD_THREADS EXPERTD_HOST EXPERTD_PORT EXPERTD_LOG_LEVEL \
      EXPERTD_API_KEY

# expect NAME WANT_STATUS NEEDLE -- COMMAND...: exit status and a needle in stdout+stderr.
expect() {
  local name=$1 want=$2 needle=$3; shift 4
  "$@" >"$tmp/out" 2>&1; local got=$?
  if [ "$got" != "$want" ]; then fail "$name" "exit $got, want $want: $(head -c 400 "$tmp/out")"
  elif ! grep -qF -- "$needle" "$tmp/out"; then fail "$name" "output lacks '$needle': $(head -c 400 "$tmp/out")"
  else ok "$name"; fi
}
keys() { grep -oE '^#?[a-z][a-z0-9-]* =' "$1" | tr -d '#=' | tr -d ' ' | sort; }

# --- the example config
if "$expertd" check-config "$example" >"$tmp/example.out" 2>"$tmp/example.err"; then ok example_accepted
else fail example_accepted "$(cat "$tmp/example.err")"; fi
keys "$example" >"$tmp/example.keys"
keys "$tmp/example.out" >"$tmp/table.keys"
if [ -s "$tmp/table.keys" ] && diff "$tmp/example.keys" "$tmp/table.keys" >"$tmp/d"; then ok example_keys_equal_option_table
else fail example_keys_equal_option_table "(< example, > table) $(cat "$tmp/d")"; fi
dups=$(uniq -d "$tmp/example.keys")
if [ -z "$dups" ]; then ok example_keys_once; else fail example_keys_once "$dups"; fi
# every commented `#key = value` is the real default: uncommenting them all changes nothing
sed -E 's/^#([a-z][a-z0-9-]* = .+)$/\1/' "$example" >"$tmp/uncommented.conf"
if "$expertd" check-config "$tmp/uncommented.conf" >"$tmp/unc.out" 2>"$tmp/unc.err" &&
   diff <(tail -n +2 "$tmp/example.out") <(tail -n +2 "$tmp/unc.out") >"$tmp/d"; then
  ok example_documents_real_defaults
else fail example_documents_real_defaults "$(cat "$tmp/unc.err" "$tmp/d")"; fi
# the printed settings are a config file that reads back to themselves
tail -n +2 "$tmp/example.out" >"$tmp/printed.conf"
if "$expertd" check-config "$tmp/printed.conf" >"$tmp/p.out" 2>/dev/null &&
   diff <(tail -n +2 "$tmp/example.out") <(tail -n +2 "$tmp/p.out") >/dev/null; then ok printed_settings_read_back
else fail printed_settings_read_back "$(cat "$tmp/p.out")"; fi

# --- errors name the file, the line and the key
m="model = $tmp/model"
printf '%s\nport = 8001\nfrobnicate = 1\n' "$m" >"$tmp/unknown.conf"
expect unknown_key 1 "$tmp/unknown.conf:3: unknown key 'frobnicate'" -- "$expertd" check-config "$tmp/unknown.conf"
printf '%s\nmax_connections = 1\n' "$m" >"$tmp/underscore.conf"
expect unknown_key_suggests 1 "did you mean 'max-connections'" -- "$expertd" check-config "$tmp/underscore.conf"
printf '%s\n\nport = eighty\n' "$m" >"$tmp/badvalue.conf"
expect bad_value 1 "$tmp/badvalue.conf:3: key 'port': expected an integer" -- "$expertd" check-config "$tmp/badvalue.conf"
printf '%s\nport = 70000\n' "$m" >"$tmp/range.conf"
expect out_of_range 1 "$tmp/range.conf:2: key 'port'" -- "$expertd" check-config "$tmp/range.conf"
printf '%s\nport = 1\nport = 2\n' "$m" >"$tmp/dup.conf"
expect duplicate_key 1 "$tmp/dup.conf:3: key 'port' is already set on line 2" -- "$expertd" check-config "$tmp/dup.conf"
printf '%s\nport 8001\n' "$m" >"$tmp/noeq.conf"
expect missing_equals 1 "$tmp/noeq.conf:2: expected 'key = value'" -- "$expertd" check-config "$tmp/noeq.conf"
printf '%s\nlog-level = loud\n' "$m" >"$tmp/level.conf"
expect validation_names_line 1 "log-level is set on $tmp/level.conf:2" -- "$expertd" check-config "$tmp/level.conf"
printf 'port = 8001\n' >"$tmp/nomodel.conf"
expect model_required 1 "model" -- "$expertd" check-config "$tmp/nomodel.conf"
printf 'api-key = sk-123\n' >"$tmp/apikey.conf"
expect api_key_not_a_key 1 "api-key-file" -- "$expertd" check-config "$tmp/apikey.conf"
expect missing_file 1 "$tmp/none.conf" -- "$expertd" check-config "$tmp/none.conf"
expect no_file_argument 2 "usage: expertd check-config" -- "$expertd" check-config
expect check_config_help 0 "usage: expertd check-config" -- "$expertd" check-config --help

# --- the API key file
printf '%s\napi-key-file = %s\n' "$m" "$tmp/nokey" >"$tmp/keyfile.conf"
expect api_key_file_missing 1 "key 'api-key-file': $tmp/nokey" -- "$expertd" check-config "$tmp/keyfile.conf"
printf 'sk-test\n' >"$tmp/nokey"; chmod 644 "$tmp/nokey"
expect api_key_file_exposed_warns 0 "can be read by its group or others" -- "$expertd" check-config "$tmp/keyfile.conf"
chmod 600 "$tmp/nokey"
"$expertd" check-config "$tmp/keyfile.conf" >"$tmp/out" 2>&1
if ! grep -q "can be read" "$tmp/out" && ! grep -q "sk-test" "$tmp/out"; then ok api_key_file_private_and_never_printed
else fail api_key_file_private_and_never_printed "$(cat "$tmp/out")"; fi

# --- precedence: defaults < file < environment < flags
printf '%s\nport = 8001\nhost = 10.0.0.1\nlog-level = warn\n' "$m" >"$tmp/prec.conf"
"$expertd" check-config "$tmp/prec.conf" >"$tmp/a" 2>/dev/null
EXPERTD_PORT=8002 "$expertd" check-config "$tmp/prec.conf" >"$tmp/b" 2>/dev/null
EXPERTD_PORT=8002 "$expertd" check-config "$tmp/prec.conf" --port 8003 >"$tmp/c" 2>/dev/null
if grep -qx 'port = 8001' "$tmp/a" && grep -qx 'max-waiting = 1024' "$tmp/a" &&
   grep -qx 'port = 8002' "$tmp/b" && grep -qx 'host = 10.0.0.1' "$tmp/b" &&
   grep -qx 'port = 8003' "$tmp/c" && grep -qx 'log-level = warn' "$tmp/c"; then ok precedence
else fail precedence "$(grep -h port "$tmp/a" "$tmp/b" "$tmp/c")"; fi

# --- generate --config gives what the same flags give; flags still win
olmoe=$fixtures/golden/olmoe-f32
printf 'model = %s\nprompt-ids = 1,2,3\nmax-tokens = 6\nignore-eos = true\n' "$olmoe" >"$tmp/gen.conf"
a=$("$expertd" generate --config "$tmp/gen.conf" 2>/dev/null)
b=$("$expertd" generate --model "$olmoe" --prompt-ids 1,2,3 --max-tokens 6 --ignore-eos 2>/dev/null)
c=$("$expertd" generate --config "$tmp/gen.conf" --max-tokens 3 2>/dev/null)
if [ -n "$a" ] && [ "$a" = "$b" ] && [ "$(echo "$c" | tr ',' '\n' | wc -l)" = 3 ]; then ok generate_config_file
else fail generate_config_file "'$a' vs '$b', '$c'"; fi
printf 'model = %s\nmax-tokens = lots\n' "$olmoe" >"$tmp/genbad.conf"
expect generate_config_error 2 "$tmp/genbad.conf:2: key 'max-tokens'" -- "$expertd" generate --config "$tmp/genbad.conf" --prompt-ids 1
printf 'device = tpu\n' >"$tmp/gendev.conf"
expect generate_validation_names_line 2 "device is set on $tmp/gendev.conf:1" -- "$expertd" generate --config "$tmp/gendev.conf" --model "$olmoe" --prompt-ids 1

# meson install's config step: the example goes in where there is no config, and a reinstall
# keeps an administrator's edited file.
installer=$(dirname "$example")/../systemd/install-config.sh
DESTDIR=$tmp/root "$installer" /etc/expertd "$example" >/dev/null
echo "port = 9999" >>"$tmp/root/etc/expertd/expertd.conf"
DESTDIR=$tmp/root "$installer" /etc/expertd "$example" >/dev/null
if tail -1 "$tmp/root/etc/expertd/expertd.conf" | grep -qx "port = 9999" &&
   [ "$(head -5 "$tmp/root/etc/expertd/expertd.conf")" = "$(head -5 "$example")" ]; then
  ok install_keeps_edited_config
else
  fail install_keeps_edited_config "$(tail -3 "$tmp/root/etc/expertd/expertd.conf")"
fi

echo "$passed passed, $failed failed"
[ "$failed" = 0 ]
