# Run by the test harness in the work directory (see testdata/README.md).
mkdir -p "$CTX/data/sub"
printf 'shared content\n' > "$CTX/data/original.txt"
ln "$CTX/data/original.txt" "$CTX/data/link1.txt"
ln "$CTX/data/original.txt" "$CTX/data/sub/link2.txt"
printf 'alone\n' > "$CTX/data/alone.txt"
