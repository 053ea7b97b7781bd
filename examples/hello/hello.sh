#!/bin/sh
# hello NAME...: greets each NAME (the image's ENTRYPOINT; CMD makes it "world").
set -eu
HELLO_HOME=${HELLO_HOME:-/opt/hello}
greeting=Hello
# shellcheck source=/dev/null
. "$HELLO_HOME/etc/hello.conf"
[ $# -gt 0 ] || set -- world
for name in "$@"; do
    printf '%s, %s! (uid %s in %s)\n' "$greeting" "$name" "$(id -u)" "$(pwd)"
done
cat "$HELLO_HOME/share/motd.txt"
