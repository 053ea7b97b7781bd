# Run by the test harness in the work directory (see testdata/README.md).
mkdir payload
printf 'inside\n' > payload/inside.txt
tar -C payload -czf "$CTX/bundle.tar.gz" inside.txt
tar -C payload -cf "$CTX/plain.tar" inside.txt
printf 'just text, gzipped\n' | gzip -n > "$CTX/notes.txt.gz"
printf 'not really an archive\n' > "$CTX/fake.tar.gz"
