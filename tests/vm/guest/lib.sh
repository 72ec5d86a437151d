# Helpers shared by the shell checks (sourced; runs inside the VM only).
set -eu
export LVM_SUPPRESS_FD_WARNINGS=1

step() { echo "  + $*"; }

fail() {
    echo "  FAILED: $*" >&2
    exit 1
}

# write_pattern DEV OFFSET_MIB TAG: writes 1 MiB of random data at OFFSET_MIB
# of DEV (bypassing the page cache) and keeps a copy in /tmp/TAG.bin
write_pattern() {
    head -c 1048576 /dev/urandom >"/tmp/$3.bin"
    dd if="/tmp/$3.bin" of="$1" bs=1M seek="$2" count=1 oflag=direct conv=fsync status=none
}

# same_as DEV OFFSET_MIB TAG: the MiB at OFFSET_MIB of DEV equals /tmp/TAG.bin
same_as() {
    dd if="$1" bs=1M skip="$2" count=1 iflag=direct status=none | cmp -s - "/tmp/$3.bin"
}

wait_for_block() {
    i=0
    while [ ! -b "$1" ]; do
        i=$((i + 1))
        [ "$i" -gt 100 ] && return 1
        sleep 0.1
    done
}
