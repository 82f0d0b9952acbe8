//! Map keys and values shared by Sluice's eBPF programs and the userspace loader.
#![no_std]
