# Run by the test harness in the work directory (see testdata/README.md).
printf 'outside the context\n' > secret.txt
