#!/usr/bin/env bash
# Re-record the real LVM output that tests/unit/plugins/module_utils/test_lvm.py parses.
#
# Needs root and lvm2.  Works on two sparse 64 MiB files attached as loop
# devices, with a private LVM_SYSTEM_DIR whose lvm.conf disables activation
# and admits only those two devices; removes everything it made on exit.
# Each command's stdout goes to NAME.json (reports) or NAME.stdout.txt, its
# stderr to NAME.stderr.txt, and "NAME<TAB>rc<TAB>argv" to commands.tsv.
# The argv are the ones basalt_core.lvm builds (plus a few failures it only
# ever meets from LVM itself).
set -euo pipefail
out=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d /tmp/basalt-lvm-record.XXXXXX)
VG=basalt-rec
devs=()

cleanup() {
  set +e
  vgremove --force --force "$VG" </dev/null >/dev/null 2>&1
  for dev in "${devs[@]}"; do
    pvremove --force --force --yes "$dev" </dev/null >/dev/null 2>&1
    losetup --detach "$dev"
  done
  rm -rf "$work"
}
trap cleanup EXIT

truncate -s 64M "$work/pv0.img" "$work/pv1.img"
A=$(losetup --find --show "$work/pv0.img"); devs+=("$A")
B=$(losetup --find --show "$work/pv1.img"); devs+=("$B")
# A third, small device holding an ext4 filesystem, which pvcreate must refuse.
truncate -s 8M "$work/sig.img"; mkfs.ext4 -q -F "$work/sig.img"
S=$(losetup --find --show "$work/sig.img"); devs+=("$S")
mkdir "$work/etc"
cat >"$work/etc/lvm.conf" <<CONF
global { activation = 0 }
devices {
  filter = [ "a|^$A\$|", "a|^$B\$|", "a|^$S\$|", "r|.*|" ]
  scan = [ "/dev" ]
  use_devicesfile = 0
  obtain_device_list_from_udev = 0
  hints = "none"
}
backup { backup = 0 archive = 0 }
CONF
export LVM_SYSTEM_DIR="$work/etc" LVM_SUPPRESS_FD_WARNINGS=1 LC_ALL=C LANG=C

rm -f "$out"/*.json "$out"/*.txt "$out/commands.tsv"
{ lvm version 2>/dev/null | sed -n "1,2p"; uname -sr; } >"$out/version.txt"
printf '%s\n%s\n%s\n' "$A" "$B" "$S" >"$out/devices.txt"

# rec NAME KIND ARGV...  (KIND: json for reports, txt otherwise)
rec() {
  local name=$1 kind=$2 rc=0
  shift 2
  "$@" </dev/null >"$work/stdout" 2>"$work/stderr" || rc=$?
  if [ -s "$work/stdout" ]; then
    if [ "$kind" = json ]; then cp "$work/stdout" "$out/$name.json"; else cp "$work/stdout" "$out/$name.stdout.txt"; fi
  fi
  cp "$work/stderr" "$out/$name.stderr.txt"
  printf '%s\t%s\t%s\n' "$name" "$rc" "$*" >>"$out/commands.tsv"
}

LV_COLS=lv_name,vg_name,lv_uuid,lv_size,lv_attr,lv_tags,pool_lv,origin,data_percent,metadata_percent,lv_path,segtype,seg_start_pe,seg_size_pe,seg_pe_ranges,devices
VG_COLS=vg_name,vg_uuid,vg_size,vg_free,vg_extent_size,vg_extent_count,vg_free_count,vg_tags
PV_COLS=pv_name,vg_name,pv_size,pv_free,pe_start
REPORT=(--reportformat json --units b --nosuffix)
NAME_NORMAL=basalt.name:0/1=cHZjLTViMWZkMGMyLW5vcm1hbA   # "pvc-5b1fd0c2-normal"

rec pvcreate txt pvcreate "$A"
pvcreate "$B" </dev/null >/dev/null 2>&1
rec vgcreate txt vgcreate "$VG" "$A" "$B"
rec lvcreate_linear txt lvcreate --yes --name vol-normal --size 12582912b --alloc normal --zero y \
  --wipesignatures y --addtag basalt.managed --addtag "$NAME_NORMAL" "$VG"
rec lvcreate_contiguous txt lvcreate --yes --name vol-contig --size 8388608b --alloc contiguous --zero n \
  --wipesignatures n --addtag basalt.managed "$VG"
rec lvcreate_other txt lvcreate --yes --name other --size 4194304b --alloc normal --zero y --wipesignatures y "$VG"
rec lvextend txt lvextend --yes --size 25165824b "$VG/vol-normal"
rec lvchange_addtag txt lvchange --addtag 'odd/=!:#&+.-_x' --addtag basalt.clone-of "$VG/vol-contig"
rec lvchange_deltag txt lvchange --deltag basalt.clone-of "$VG/vol-contig"
rec lvchange_activate txt lvchange --activate ey --ignoreactivationskip "$VG/vol-normal"
rec lvchange_deactivate txt lvchange --activate n "$VG/vol-normal"
lvcreate --yes --name scratch --size 4194304b --alloc normal --zero y --wipesignatures y "$VG" </dev/null >/dev/null 2>&1
rec lvremove txt lvremove --yes "$VG/scratch"

rec pvs json pvs "${REPORT[@]}" --options "$PV_COLS" --select "vg_name=\"$VG\""
rec vgs json vgs "${REPORT[@]}" --options "$VG_COLS" "$VG"
rec lvs_all json lvs "${REPORT[@]}" --options "$LV_COLS" "$VG"
rec lvs_managed json lvs "${REPORT[@]}" --options "$LV_COLS" --select 'lv_tags={"basalt.managed"}' "$VG"
rec lvs_one json lvs "${REPORT[@]}" --options "$LV_COLS" "$VG/vol-contig"

# Failures.
rec err_lvs_lv_not_found json lvs "${REPORT[@]}" --options "$LV_COLS" "$VG/missing"
rec err_vgs_vg_not_found json vgs "${REPORT[@]}" --options "$VG_COLS" no-such-vg
rec err_lvremove_not_found txt lvremove --yes "$VG/missing"
rec err_lvextend_not_found txt lvextend --yes --size 8388608b "$VG/missing"
rec err_lvchange_not_found txt lvchange --addtag basalt.managed "$VG/missing"
rec err_lvcreate_vg_not_found txt lvcreate --yes --name x --size 4194304b --alloc normal --zero y --wipesignatures y no-such-vg
rec err_lvcreate_exists txt lvcreate --yes --name vol-normal --size 4194304b --alloc normal --zero y --wipesignatures y "$VG"
rec err_lvcreate_no_space txt lvcreate --yes --name big --size 1073741824b --alloc normal --zero y --wipesignatures y "$VG"
rec err_lvextend_no_space txt lvextend --yes --size 1073741824b "$VG/vol-normal"
rec err_lvextend_no_contiguous txt lvextend --yes --size 16777216b "$VG/vol-contig"
rec err_lvextend_shrink txt lvextend --yes --size 4194304b "$VG/vol-normal"
rec err_lvextend_same_size txt lvextend --yes --size 25165824b "$VG/vol-normal"
rec err_lvcreate_not_sector txt lvcreate --yes --name odd --size 5000000b "$VG"
rec err_lvcreate_reserved txt lvcreate --yes --name x_tmeta --size 4194304b "$VG"
rec err_lvcreate_thin_pool_no_dm txt lvcreate --yes --type thin-pool --name pool9 --size 8388608b "$VG"
rec lvs_after_thin_pool_failure json lvs "${REPORT[@]}" --options "$LV_COLS" "$VG"
rec err_lvcreate_cow_snapshot_no_dm txt lvcreate --yes --snapshot --name snap9 --size 4194304b "$VG/vol-contig"
rec err_lvchange_activate_no_dm txt lvchange --config 'global{activation=1}' --activate ey --ignoreactivationskip \
  "$VG/vol-normal"
rec err_lvcreate_linear_no_dm txt lvcreate --config 'global{activation=1}' --yes --name nodm --size 4194304b \
  --alloc normal --zero y --wipesignatures y "$VG"
rec err_pvcreate_signature txt pvcreate "$S"
rec err_vgremove_has_lvs txt vgremove "$VG"

# Thin pool, thin LVs, thin snapshot (activation skip) and a COW snapshot,
# written by hand into the VG metadata (lvcreate cannot without device-mapper).
vgcfgbackup --file "$work/base.vg" "$VG" </dev/null >/dev/null 2>&1
python3 - "$work/base.vg" "$out/thin_lvs.vgtext" "$work/thin.vg" <<'PY'
import sys
base, snippet, target = sys.argv[1:]
text = open(base).read()
lvs = open(snippet).read().replace("@ORIGIN@", "vol-contig").replace("@ORIGIN_EXTENTS@", "2")
marker = "\tlogical_volumes {\n"
assert marker in text
open(target, "w").write(text.replace(marker, marker + "\n" + lvs, 1))
PY
rec vgcfgrestore_thin txt vgcfgrestore --force --file "$work/thin.vg" "$VG"
rec lvs_thin json lvs "${REPORT[@]}" --options "$LV_COLS" "$VG"
rec lvs_thin_managed json lvs "${REPORT[@]}" --options "$LV_COLS" --select 'lv_tags={"basalt.managed"}' "$VG"
rec vgs_thin json vgs "${REPORT[@]}" --options "$VG_COLS" "$VG"
rec err_lvcreate_thin_no_dm txt lvcreate --yes --type thin --name thin9 --virtualsize 8388608b --thinpool pool0 "$VG"
rec err_lvcreate_thin_snapshot_no_dm txt lvcreate --yes --snapshot --name snap9 --setactivationskip y "$VG/thin1"
rec err_lvcreate_thin_pool_missing txt lvcreate --yes --type thin --name thin9 --virtualsize 8388608b \
  --thinpool nopool "$VG"
rec lvextend_thin txt lvextend --yes --size 67108864b "$VG/thin2"
# Fails (rc 5: the kernel pool cannot be told) yet drops thin2 from the metadata.
rec err_lvremove_thin_no_dm txt lvremove --yes "$VG/thin2"
rec lvs_thin_after_remove json lvs "${REPORT[@]}" --options "$LV_COLS" "$VG"
rec lvchange_activate_thin_snapshot txt lvchange --activate ey --ignoreactivationskip "$VG/thinsnap1"
rec vgremove_force txt vgremove --force --force "$VG"
echo "recorded into $out"
