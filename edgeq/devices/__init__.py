"""Running bundles elsewhere: qemu emulation, ssh devices."""
