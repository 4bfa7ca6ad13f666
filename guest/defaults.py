"""Facts the guest and the host must agree on, written once."""

VERIFY_MODES = ("full", "pack", "none")
DEFAULT_VERIFY = "pack"
# The virtio-serial port the guest serves on (its name in /sys/class/virtio-ports).
PORT_NAME = "org.docteur.0"
DEFAULT_DISK = "docteur"  # the disk a request with no disk name means (and `run IMAGE` serves)
DEFAULT_BLOCK_SIZE = 512  # what `docteur make` pads an image to (--bs)
