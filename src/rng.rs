//! A tiny deterministic generator (xorshift64*) for the choices Xen makes at random (the
//! victim of a maptrack steal). Seeded per vCPU context from the hypervisor's seed, so runs are
//! reproducible and loom executions deterministic.

/// Advances `state` and returns the next value.
#[inline]
pub(crate) fn next(state: &mut u64) -> u64 {
    let mut x = *state;
    if x == 0 {
        x = 0x9E37_79B9_7F4A_7C15;
    }
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *state = x;
    x.wrapping_mul(0x2545_F491_4F6C_DD1D)
}

/// A well-mixed seed from a base seed and a stream id.
pub(crate) fn seed(base: u64, stream: u64) -> u64 {
    let mut s = base ^ stream.wrapping_mul(0xD1B5_4A32_D192_ED03);
    next(&mut s) | 1
}
