# Run by the test harness in the work directory (see testdata/README.md).
mkdir -p payload/sub
printf 'top\n' > payload/top.txt
printf 'secret\n' > payload/sub/private.txt
chmod 0600 payload/sub/private.txt
ln -s top.txt payload/link-to-top
touch -d @1100000000 payload/top.txt
own="--numeric-owner --owner=1234 --group=5678"
# One archive with ./ entries, one with bare names.
tar $own -C payload -cf "$CTX/data.bin" .
tar $own -C payload -cf names.tar top.txt sub link-to-top
gzip -9 -n -c names.tar > "$CTX/archive.dat"
bzip2 -c "$CTX/data.bin" > "$CTX/blob"
xz -c names.tar > "$CTX/thing.img"
zstd -q -c "$CTX/data.bin" > "$CTX/pack.zzz"
