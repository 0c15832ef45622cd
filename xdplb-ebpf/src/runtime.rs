//! What every eBPF object of this crate needs: the panic handler and the license.

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // Every panic path must be provably unreachable. If one survives optimisation it calls this
    // undefined symbol, which bpf-linker cannot resolve, so the build fails instead of producing
    // a program that loops silently.
    unsafe extern "C" {
        fn xdplb_reachable_panic() -> !;
    }
    // SAFETY: never executed; see above.
    unsafe { xdplb_reachable_panic() }
}

/// GPL-compatible, so the kernel allows every helper the programs use.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
