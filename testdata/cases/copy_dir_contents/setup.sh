# Run by the test harness in the work directory (see testdata/README.md).
# git keeps neither empty directories nor modes other than the executable bit.
mkdir "$CTX/src/emptydir" "$CTX/src/ro" "$CTX/src/sticky"
printf 'inside a read-only dir
' > "$CTX/src/ro/inside.txt"
chmod 0444 "$CTX/src/ro/inside.txt"
chmod 0555 "$CTX/src/ro"
chmod 1777 "$CTX/src/sticky"
mkfifo -m 0644 "$CTX/src/pipe"
: > "$CTX/src/empty"
printf 'old
' > "$CTX/src/old.txt"
touch -d @1000000000 "$CTX/src/old.txt"
chmod 0755 "$CTX/src/run.sh"
chmod 0600 "$CTX/src/sub/inner.txt"
chmod 0700 "$CTX/src/sub"
