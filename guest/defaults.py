"""Facts the guest and the host must agree on, written once."""

VERIFY_MODES = ("full", "pack", "none")
DEFAULT_VERIFY = "pack"
# The virtio-serial port the guest serves on (its name in /sys/class/virtio-ports).
PORT_NAME = "org.docteur.0"
DEFAULT_DISK = "docteur"  # the disk a request with no disk name means (and `run IMAGE` serves)
DEFAULT_BLOCK_SIZE = 512  # what `docteur make` pads an image to (--bs)
# The kernel parameter that names the disks the guest may write (`docteur.rw=NAME,...`;
# the host's `docteur run --rw` attaches them writable and passes it).
RW_PARAM = "docteur.rw"
# The writes' default author (`docteur put`, and a protocol commit that names none).
AUTHOR_NAME = "Dr. Greenthumb"
AUTHOR_EMAIL = "noreply@cypress.hill"
DEFAULT_AUTHOR = f"{AUTHOR_NAME} <{AUTHOR_EMAIL}>"
# A protocol commit's message when the client gives none.
DEFAULT_MESSAGE = "Committed by docteur"
