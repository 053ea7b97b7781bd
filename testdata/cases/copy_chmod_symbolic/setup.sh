# Run by the test harness in the work directory (see testdata/README.md).
chmod 0600 "$CTX/priv.txt"
chmod 0700 "$CTX/exec.sh"
chmod 0666 "$CTX/ww.txt"
chmod 0640 "$CTX/tree/f.txt"
chmod 0700 "$CTX/tree/sub"
chmod 0744 "$CTX/tree/sub/x.sh"
