//! Sluice's kernel programs: socket-LB (cgroup sock_addr), tc NodePort/external IP load
//! balancing, sk_lookup steering to the proxy, and sockmap acceleration (sock_ops + sk_msg).
//!
//! Every entry point is a thin wrapper around a `try_<name>()` returning `Result<verdict,
//! verdict>`: the error side carries the verdict chosen for that failure, and the entry point
//! returns whichever it gets.
#![no_std]
#![no_main]

mod maps;
mod sockaddr;
mod sockmap;
mod steer;
mod tc;
mod util;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
    // The verifier rejects any reachable panic path; this is never executed.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
