#!/usr/bin/env bash
# Runs the model crate's tests on an emulated AVX-512 CPU, so the AVX-512 kernels (the f32 GEMM's
# 12 x 32 tile and its GEGLU, the fused attention's AVX-512 gather, RoPE and softmax), the bf16
# dot-product GEMM (`vdpbf16ps`), the VNNI int8 paths and, on the emulated Sapphire Rapids, the
# AMX tiles, PV in fp16 and the AVX-VNNI kernels execute and are checked somewhere: the 2-core
# development and CI machines have AVX2 only, where those kernels compile but never run.
#
# How: Bochs, an instruction-level x86 emulator, boots Debian's own kernel as a Skylake-X CPU with
# VNNI and BF16 added (AVX-512F/DQ/CD/BW/VL + VNNI + BF16, i.e. a Cooper Lake), or with AVX-VNNI,
# AVX512-FP16 and AMX too (MBPIPE_EMULATED_CPU=sapphire-rapids), from a small ISO with an
# initramfs holding busybox, the release test binaries of mbpipe-model (unit tests and the
# transformers fixture parity) and the fixture they read. /init runs each binary and prints its
# result on the serial port, which Bochs writes to a file.
#
# Bochs: Debian 12's package is 2.7, which has no AVX512-BF16, so the script builds 3.0 from
# Debian 13's source package (checksum pinned below) without a GUI or debugger, about 4 minutes
# on 2 cores, once; it is kept in the target folder. Bochs 3.0 has two bugs in its AVX512-BF16
# instructions, fixed by scripts/bochs-3.0-bf16.patch, and four in AMX (three in saving its
# state, one in `tdpbssd`'s signs), fixed by scripts/bochs-3.0-cpus.patch, which also adds the
# features above and XFD (each patch says what it changes; until 2026-12-06 its XFD MSRs were
# dropped, so context switches zeroed the tiles). Its log is switched off: its timer signal
# handler logs the emulation speed and deadlocks when that interrupts another log line (the
# guest's unknown-MSR reads log on every timer tick).
#
# Cost: Bochs runs over 100 million instructions per second here; booting and the tests took
# 731 s on the Cooper Lake and 870 s on the Sapphire Rapids on 2026-12-06, after a release
# build of the tests. The first run downloads Debian
# packages and the Bochs source (about 80 MB) and builds Bochs.
#
# Usage: scripts/check-avx512.sh [test-binary args, e.g. a test name filter]
# Without arguments it skips the tests that run only candle's kernels here and would take most of
# the emulated time (over 10 minutes for under a second natively): varlen's padded-group attention,
# the f16 parity (f16 has no mbpipe kernel) and the bf16 parity forced onto candle's matmul.
# Environment:
#   MBPIPE_SHARED     the shared/ folder with fixtures/modernbert-tiny (default ../shared beside
#                     the checkout); without it the parity tests report SKIPPED
#   CARGO_TARGET_DIR  default target/avx512-check
#   BOCHS_TIMEOUT     seconds before the emulator is stopped (default 3600)
#   MBPIPE_EMULATED_CPU  cooper-lake (default) or sapphire-rapids (adds AVX-VNNI, AVX512-FP16
#                     and AMX: the fp16 PV, the AVX-VNNI kernels, the AMX tiles)
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$repo/target/avx512-check}
shared=${MBPIPE_SHARED:-$repo/../shared}
log() { echo "check-avx512: $*" >&2; }

# The emulated CPU: a Cooper Lake (AVX-512 with VNNI and BF16), or with what Sapphire Rapids adds
# (AVX-VNNI, AVX512-FP16, AMX), which bochs-3.0-cpus.patch turns on through the environment.
# Bochs's XSAVES/XSAVEC report a compacted state size that does not match their layout on the
# Cooper Lake, and Linux then turns XSAVE off, and AVX with it: `clearcpuid=xsavec,xsaves` (as
# numbers, word 10 bits 1 and 3) makes the kernel use the standard layout, which Bochs gets right.
# Linux gives a process AMX only with XSAVES (XFD depends on it), and with AMX's state Bochs's
# sizes match, so the Sapphire Rapids keeps them. `skipped` names the features whose tests must
# not report SKIPPED there (every test of a kernel this CPU has runs).
case ${MBPIPE_EMULATED_CPU:-cooper-lake} in
  cooper-lake)
    cpu_name="Cooper Lake"
    cpu_flags=(avx512f avx512_vnni avx512_bf16)
    clear_xsaves="clearcpuid=321,323"
    skipped=""
    ;;
  sapphire-rapids)
    cpu_name="Sapphire Rapids"
    cpu_flags=(avx512f avx512_vnni avx512_bf16 avx_vnni avx512_fp16 amx_tile amx_int8 amx_bf16)
    clear_xsaves=""
    skipped='SKIPPED.*(AMX|FP16|VNNI|BF16|avx512bf16|lacks its instructions)'
    export BOCHS_SAPPHIRE_RAPIDS=1
    ;;
  *) log "MBPIPE_EMULATED_CPU: expected cooper-lake or sapphire-rapids, found $MBPIPE_EMULATED_CPU"; exit 2 ;;
esac

need=()
for tool in busybox xorriso cpio curl xz g++ make patch; do
  command -v "$tool" >/dev/null || need+=("$tool")
done
[ -e /usr/lib/ISOLINUX/isolinux.bin ] || need+=(isolinux)
[ -e /usr/share/bochs/BIOS-bochs-latest ] || need+=(bochsbios)
[ -e /usr/share/vgabios/vgabios.bin ] || need+=(vgabios)
if [ ${#need[@]} -gt 0 ]; then
  log "installing busybox, isolinux, xorriso, the Bochs BIOS and a C++ compiler (missing: ${need[*]})"
  sudo=$([ "$(id -u)" = 0 ] || echo sudo)
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq bochsbios vgabios busybox-static \
    isolinux syslinux-common xorriso cpio curl xz-utils g++ make patch >/dev/null
fi

work=$CARGO_TARGET_DIR/emu
mkdir -p "$work"

# Bochs 3.0 from Debian 13's source package (2.7 has no AVX512-BF16), patched.
bochs=$work/bochs-3.0/bochs
bochs_patches=("$repo/scripts/bochs-3.0-bf16.patch" "$repo/scripts/bochs-3.0-cpus.patch")
bochs_flags="--with-nogui --without-x11 --without-sdl2 --without-sdl --without-wx --without-term \
  --disable-debugger --disable-plugins --enable-x86-64 --enable-cpu-level=6 --enable-avx \
  --enable-evex --enable-amx --enable-all-optimizations"
bochs_src=http://deb.debian.org/debian/pool/main/b/bochs/bochs_3.0+dfsg.orig.tar.xz
bochs_sha256=78f6c73d4a6472d5130a87ab9dc306d02c7c71ed8e25b3a8ef642e2a7acd282b
# A changed patch or configure flag rebuilds Bochs.
patch_sum=$( (cat "${bochs_patches[@]}"; echo "$bochs_flags") | sha256sum | cut -d' ' -f1)
if [ ! -x "$bochs" ] || [ "$(cat "$work/bochs-3.0/patch.sha256" 2>/dev/null)" != "$patch_sum" ]; then
  log "building Bochs 3.0 (about 4 minutes on 2 cores, once)"
  rm -rf "$work/bochs-3.0"
  curl -fsSL -o "$work/bochs.tar.xz" "$bochs_src"
  echo "$bochs_sha256  $work/bochs.tar.xz" | sha256sum -c --quiet -
  tar -xJf "$work/bochs.tar.xz" -C "$work"
  rm "$work/bochs.tar.xz"
  (cd "$work/bochs-3.0" && for p in "${bochs_patches[@]}"; do patch -p1 --quiet <"$p" || exit 1; done &&
    # shellcheck disable=SC2086 # the flags are words
    ./configure $bochs_flags >"$work/bochs-configure.log" 2>&1 &&
    make -j"$(nproc)" >"$work/bochs-make.log" 2>&1) ||
    { log "building Bochs failed: see $work/bochs-configure.log and $work/bochs-make.log"; exit 1; }
  echo "$patch_sum" >"$work/bochs-3.0/patch.sha256"
fi

kernel=$work/vmlinuz
if [ ! -s "$kernel" ]; then
  pkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-/ { print $2; exit }')
  log "downloading the kernel ($pkg)"
  (cd "$work" && rm -rf deb kimg && mkdir deb && cd deb && apt-get download "$pkg" 2>/dev/null)
  dpkg-deb -x "$work"/deb/*.deb "$work/kimg"
  cp "$work"/kimg/boot/vmlinuz-* "$kernel"
  rm -rf "$work/deb" "$work/kimg"
fi

log "building the model tests (release)"
tests=$(cargo test --release -p mbpipe-model --lib --test parity --no-run --message-format=json \
  | grep -o '"executable":"[^"]*"' | cut -d'"' -f4)
[ -n "$tests" ] || { log "no test binaries were built"; exit 1; }

# The initramfs: busybox, the test binaries and their shared libraries, the fixture, /init.
root=$work/root
rm -rf "$root"
mkdir -p "$root"/{bin,proc,sys,dev,tmp,t}
cp "$(command -v busybox)" "$root/bin/"
for applet in sh mount cat grep tr echo poweroff; do ln -s busybox "$root/bin/$applet"; done
names=()
for exe in $tests; do
  name=$(basename "$exe" | sed 's/-[0-9a-f]*$//')
  cp "$exe" "$root/t/$name"
  names+=("$name")
  for lib in $(ldd "$exe" | grep -o '/[^ ]*'); do
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
  done
done
if [ -d "$shared/fixtures/modernbert-tiny" ]; then
  mkdir -p "$root/shared/fixtures"
  cp -r "$shared/fixtures/modernbert-tiny" "$root/shared/fixtures/"
else
  log "no fixture at $shared/fixtures/modernbert-tiny: the parity tests will report SKIPPED"
fi
if [ $# -eq 0 ]; then
  # --exact: a skip names one test (`f16_keeps...` is also a substring of `bf16_keeps...`).
  set -- --nocapture --exact --skip varlen::tests::padded_groups_equal_per_sequence_attention \
    --skip f16_keeps_embeddings_and_labels --skip bf16_candle_fallback_keeps_embeddings_and_labels
fi
args=$(printf ' %q' "$@")
cat > "$root/init" <<EOF
#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t tmpfs tmp /tmp
echo "cpu flags: \$(grep -m1 '^flags' /proc/cpuinfo | tr ' ' '\n' | grep -E '^(avx2|fma|avx512.*|avx_vnni|amx.*)\$' | tr '\n' ' ')"
export MBPIPE_SHARED=/shared RAYON_NUM_THREADS=1 TMPDIR=/tmp
for t in ${names[*]}; do
  echo "=== \$t"
  /t/\$t --test-threads=1$args
  echo "=== \$t rc=\$?"
done
poweroff -f
EOF
chmod +x "$root/init"

iso=$work/iso
rm -rf "$iso"
mkdir -p "$iso/isolinux"
cp /usr/lib/ISOLINUX/isolinux.bin /usr/lib/syslinux/modules/bios/ldlinux.c32 "$iso/isolinux/"
cp "$kernel" "$iso/vmlinuz"
(cd "$root" && find . | cpio -o -H newc 2>/dev/null | gzip -1) > "$iso/initrd.gz"
cat > "$iso/isolinux/isolinux.cfg" <<EOF
default linux
prompt 0
timeout 0
label linux
  kernel /vmlinuz
  append initrd=/initrd.gz console=ttyS0,115200 quiet mitigations=off nokaslr lapic=notscdeadline tsc=unstable clocksource=hpet security=none $clear_xsaves
EOF
xorriso -as mkisofs -quiet -o "$work/boot.iso" -b isolinux/isolinux.bin -c isolinux/boot.cat \
  -no-emul-boot -boot-load-size 4 -boot-info-table "$iso" 2>/dev/null

cat > "$work/bochsrc" <<EOF
megs: 1536
cpu: model=corei7_skylake_x, count=1, ips=25000000
romimage: file=/usr/share/bochs/BIOS-bochs-latest
vgaromimage: file=/usr/share/vgabios/vgabios.bin
ata0-master: type=cdrom, path=$work/boot.iso, status=inserted
boot: cdrom
com1: enabled=1, mode=file, dev=$work/serial.out
display_library: nogui
log: $work/bochs.log
clock: sync=none
panic: action=fatal
error: action=ignore
info: action=ignore
EOF
rm -f "$work/serial.out"
log "booting the emulated $cpu_name (Bochs); serial log: $work/serial.out"
start=$(date +%s)
timeout "${BOCHS_TIMEOUT:-3600}" "$bochs" -q -f "$work/bochsrc" >"$work/bochs.stdout" 2>&1 </dev/null ||
  true
log "emulator finished after $(($(date +%s) - start)) s"

out=$work/serial.out
[ -f "$out" ] || { log "no serial output: see $work/bochs.log"; exit 1; }
grep -a -v -E '^\[ *[0-9.]+\]' "$out" | tr -d '\r' | grep -a -E '^(cpu flags|=== |test |test result|SKIPPED|failures|---- |thread|  )' || true
for flag in "${cpu_flags[@]}"; do
  grep -a -q "cpu flags:.* $flag" "$out" ||
    { log "the guest has no $flag: its kernels were not exercised"; exit 1; }
done
fail=0
for name in "${names[@]}"; do
  if ! grep -a -q "=== $name rc=0" "$out"; then
    log "$name failed or did not finish"
    fail=1
  fi
done
if [ -n "$skipped" ] && grep -a -E "$skipped" "$out" | tr -d '\r' | grep -a -v -E '^\[ *[0-9.]+\]'; then
  log "the tests above skipped a kernel the emulated $cpu_name has"
  fail=1
fi
[ "$fail" = 0 ] && log "all model tests passed on the emulated $cpu_name"
exit "$fail"
