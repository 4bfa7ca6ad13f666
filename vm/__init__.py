"""docteur's host runtime: build the guest, launch QEMU, talk the protocol."""
