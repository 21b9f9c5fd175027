//! What the AMX kernels share: whether the CPU and the OS let this process use the tiles, and
//! the one tile configuration every kernel runs with.
//!
//! AMX holds eight tile registers of up to 16 rows × 64 bytes. Linux keeps their state out of a
//! process until it asks (`arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`): the first tile
//! instruction without that permission is a SIGILL, so [`available`] asks once per process, and
//! says no where the kernel refuses.

use std::sync::OnceLock;

/// Rows of a tile.
pub(crate) const TILE_ROWS: usize = 16;
/// Bytes of a tile row.
pub(crate) const TILE_BYTES: usize = 64;

/// Whether this CPU has the tile instructions that `feature` names (`"amx-bf16"`,
/// `"amx-int8"`) and this process may use them. CPUID is read and the permission asked once per
/// process (every product asks this; CPUID traps to the hypervisor in a VM).
pub(crate) fn available(feature: &str) -> bool {
    let (edx, granted) = tile_state();
    granted && has(edx, feature)
}

/// Whether this CPU has the tile instructions that `feature` names but Linux refused this
/// process their state (kernels before 5.16).
pub(crate) fn refused(feature: &str) -> bool {
    let (edx, granted) = tile_state();
    !granted && has(edx, feature)
}

fn has(edx: u32, feature: &str) -> bool {
    let bit = match feature {
        "amx-bf16" => 22,
        "amx-int8" => 25,
        _ => return false,
    };
    edx & (1 << bit) != 0
}

/// CPUID leaf 7 EDX, and whether the tile state was granted (the CPU has AMX-TILE and Linux
/// said yes), once per process.
fn tile_state() -> (u32, bool) {
    #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
    {
        static STATE: OnceLock<(u32, bool)> = OnceLock::new();
        *STATE.get_or_init(|| {
            let edx = cpuid7_edx();
            const AMX_TILE: u32 = 1 << 24;
            (edx, edx & AMX_TILE != 0 && request_tile_permission())
        })
    }
    #[cfg(not(all(target_arch = "x86_64", target_os = "linux")))]
    {
        (0, false)
    }
}

/// CPUID leaf 7: AMX-BF16 is EDX bit 22, AMX-TILE 24, AMX-INT8 25.
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn cpuid7_edx() -> u32 {
    // CPUID exists on every x86-64 CPU; leaf 7 is asked only where the CPU has it.
    if std::arch::x86_64::__cpuid(0).eax < 7 {
        return 0;
    }
    std::arch::x86_64::__cpuid_count(7, 0).edx
}

/// Asks Linux for the tile data state (process-wide, for every thread).
#[cfg(all(target_arch = "x86_64", target_os = "linux"))]
fn request_tile_permission() -> bool {
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: a plain system call with integer arguments.
    unsafe {
        libc::syscall(
            libc::SYS_arch_prctl,
            ARCH_REQ_XCOMP_PERM,
            XFEATURE_XTILEDATA,
        ) == 0
    }
}

/// The tile configuration (palette 1) with all eight tiles 16 rows × 64 bytes: C tiles of
/// 16 × 16 f32 or i32, A tiles of 16 rows × 64 bytes of k, B tiles of 16 groups of k × 16
/// columns.
#[repr(C, align(64))]
struct TileConfig([u8; 64]);

const CONFIG: TileConfig = {
    let mut c = [0u8; 64];
    c[0] = 1; // palette
    let mut t = 0;
    while t < 8 {
        // bytes per row, little endian u16 at 16 + 2t
        c[16 + 2 * t] = TILE_BYTES as u8;
        // rows at 48 + t
        c[48 + t] = TILE_ROWS as u8;
        t += 1;
    }
    TileConfig(c)
};

/// Loads the tile configuration on this thread for the duration of `f`, then releases the
/// tiles (so the thread's saved state shrinks back on a context switch).
///
/// # Safety
/// [`available`] said yes for the instructions `f` runs.
#[cfg(target_arch = "x86_64")]
pub(crate) unsafe fn with_tiles<R>(f: impl FnOnce() -> R) -> R {
    std::arch::asm!("ldtilecfg [{}]", in(reg) &CONFIG as *const TileConfig, options(nostack, readonly));
    let r = f();
    std::arch::asm!("tilerelease", options(nostack, nomem));
    r
}

/// Rows and columns of the micro-kernels' output block: 2 × 2 tiles of 16 × 16.
pub(crate) const BLOCK: usize = 2 * TILE_ROWS;

/// A 32 × 32 block of f32 or i32 sums as the tiles store it (row-major, stride [`BLOCK`]).
#[repr(C, align(64))]
pub(crate) struct Accumulators<T>(pub [T; BLOCK * BLOCK]);

/// Where a tile product stores its 32 × 32 sums: rows 0-15 from `.0`, rows 16-31 from `.1`,
/// rows `.2` bytes apart.
pub(crate) type Destination<T> = (*mut T, *mut T, usize);

impl<T: Copy + Default> Default for Accumulators<T> {
    fn default() -> Self {
        Accumulators([T::default(); BLOCK * BLOCK])
    }
}

impl<T> Accumulators<T> {
    /// This block as a tile product's destination.
    pub(crate) fn destination(&mut self) -> Destination<T> {
        let c0 = self.0.as_mut_ptr();
        // SAFETY: row 16 of a 32-row block.
        let c1 = unsafe { c0.add(TILE_ROWS * BLOCK) };
        (c0, c1, BLOCK * std::mem::size_of::<T>())
    }
}

/// Where a tile product reads one operand: two tiles (at `.0` and `.1`, rows `.2` bytes apart),
/// each advancing by `.3` bytes per block of k.
pub(crate) type TilePair = (*const u8, *const u8, usize, usize);

/// One tile product kernel per instruction: `acc = a · b` over `blocks` blocks of k, for 32
/// rows of `a` (two A tiles of 16 rows × 64 bytes of k) and 32 columns of `b` (two B tiles of
/// 16 groups of k × 16 columns), in the four C tiles (zeroed by the prologue, or as
/// [`load_accumulators`] left them), then stored to `acc`.
macro_rules! tile_product {
    ($name:ident, $op:literal, $acc:ty, [$($prologue:literal),*]) => {
        /// # Safety
        /// The tiles are configured ([`with_tiles`]) and the CPU has the instruction; `a` and
        /// `b` cover `blocks` steps of their tiles; `blocks > 0`.
        #[cfg(target_arch = "x86_64")]
        #[inline]
        pub(crate) unsafe fn $name(
            (a0, a1, lda, a_step): TilePair,
            (b0, b1, ldb, b_step): TilePair,
            blocks: usize,
            (c0, c1, ldc): Destination<$acc>,
        ) {
            debug_assert!(blocks > 0);
            std::arch::asm!(
                $($prologue,)*
                "2:",
                // Each product right after its operands' loads (5-10% over four loads first).
                "tileloadd tmm4, [{a0} + {lda} * 1]",
                "tileloadd tmm6, [{b0} + {ldb} * 1]",
                concat!($op, " tmm0, tmm4, tmm6"),
                "tileloadd tmm7, [{b1} + {ldb} * 1]",
                concat!($op, " tmm1, tmm4, tmm7"),
                "tileloadd tmm5, [{a1} + {lda} * 1]",
                concat!($op, " tmm2, tmm5, tmm6"),
                concat!($op, " tmm3, tmm5, tmm7"),
                "add {a0}, {a_step}",
                "add {a1}, {a_step}",
                "add {b0}, {b_step}",
                "add {b1}, {b_step}",
                "dec {blocks}",
                "jnz 2b",
                "tilestored [{c0} + {ldc} * 1], tmm0",
                "tilestored [{c0} + {ldc} * 1 + 64], tmm1",
                "tilestored [{c1} + {ldc} * 1], tmm2",
                "tilestored [{c1} + {ldc} * 1 + 64], tmm3",
                a0 = inout(reg) a0 => _,
                a1 = inout(reg) a1 => _,
                b0 = inout(reg) b0 => _,
                b1 = inout(reg) b1 => _,
                blocks = inout(reg) blocks => _,
                lda = in(reg) lda,
                ldb = in(reg) ldb,
                a_step = in(reg) a_step,
                b_step = in(reg) b_step,
                c0 = in(reg) c0,
                c1 = in(reg) c1,
                ldc = in(reg) ldc,
                options(nostack),
            );
        }
    };
}

tile_product!(
    product_bf16,
    "tdpbf16ps",
    f32,
    [
        "tilezero tmm0",
        "tilezero tmm1",
        "tilezero tmm2",
        "tilezero tmm3"
    ]
);
tile_product!(
    product_i8,
    "tdpbssd",
    i32,
    [
        "tilezero tmm0",
        "tilezero tmm1",
        "tilezero tmm2",
        "tilezero tmm3"
    ]
);
// `a · b` added onto the 32 × 32 block that `load_accumulators` put in the C tiles.
tile_product!(product_bf16_onto, "tdpbf16ps", f32, []);

/// Loads a 32 × 32 f32 block (rows 0-15 at `.0`, 16-31 at `.1`, rows `.2` bytes apart) into the
/// C tiles, for [`product_bf16_onto`] to add its products onto (a residual, added by the tiles
/// instead of by a pass over their output).
///
/// # Safety
/// The tiles are configured ([`with_tiles`]); the block is readable; the next tile instruction
/// on this thread is that product.
#[cfg(target_arch = "x86_64")]
#[inline]
pub(crate) unsafe fn load_accumulators((c0, c1, ldc): (*const f32, *const f32, usize)) {
    std::arch::asm!(
        "tileloadd tmm0, [{c0} + {ldc} * 1]",
        "tileloadd tmm1, [{c0} + {ldc} * 1 + 64]",
        "tileloadd tmm2, [{c1} + {ldc} * 1]",
        "tileloadd tmm3, [{c1} + {ldc} * 1 + 64]",
        c0 = in(reg) c0,
        c1 = in(reg) c1,
        ldc = in(reg) ldc,
        options(nostack, readonly),
    );
}
